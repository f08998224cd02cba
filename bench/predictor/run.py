#!/usr/bin/env python3
"""`just bench-predictor`: tract (Lookout's predictor) against onnxruntime on the same model and
the same images, single thread, in the same run; and the predictor's sustained frames/s through
the embedded broker against the bare model loop. Prints a Markdown table."""

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, bench_executable, setup_venv  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "3"))
PY_PACKAGES = ["onnxruntime", "pillow", "numpy"]


def python():
    return setup_venv(PY_PACKAGES)


def bench_binary():
    return bench_executable("lookout-predictor", "predictor")


def run(cmd, env=None):
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, env=env).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def main():
    py = python()
    exe = bench_binary()
    # One thread for both sides: the comparison is per core.
    env = dict(os.environ, OMP_NUM_THREADS="1", RAYON_NUM_THREADS="1")
    results = []
    for r in range(ROUNDS):
        print(f"round {r + 1}/{ROUNDS}", file=sys.stderr)
        results += run([exe, "--iterations", "30", "--pipeline-frames", "120"], env)
        results += run([py, str(ROOT / "bench/predictor/bench_onnxruntime.py"), "--iterations", "30",
                        "--frames", "120"], env)

    def med(impl, op, key, image=None):
        vals = [x[key] for x in results if x["impl"] == impl and x["op"] == op
                and (image is None or x.get("image") == image)]
        return statistics.median(vals)


    ort_version = subprocess.run([py, "-c", "import onnxruntime;print(onnxruntime.__version__)"],
                                 capture_output=True, text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"\nMachine: {os.cpu_count()} cores, {cpu}; Python {platform.python_version()}, "
          f"onnxruntime {ort_version}; medians of {ROUNDS} rounds x 30 iterations.\n")
    print("| image | stage | tract (ms) | onnxruntime (ms) | tract / onnxruntime |")
    print("|---|---|---:|---:|---:|")
    for image in ["chelsea.png", "coffee.png", "rocket.jpg"]:
        for stage in ["decode_ms", "preprocess_ms", "inference_ms"]:
            t = med("tract", "stages", stage, image)
            o = med("onnxruntime", "stages", stage, image)
            print(f"| {image} | {stage[:-3]} | {t:.2f} | {o:.2f} | {t / o:.2f} |")
        t = sum(med("tract", "stages", s, image) for s in ["decode_ms", "preprocess_ms", "inference_ms"])
        o = sum(med("onnxruntime", "stages", s, image) for s in ["decode_ms", "preprocess_ms", "inference_ms"])
        print(f"| {image} | **total** | **{t:.2f}** | **{o:.2f}** | **{t / o:.2f}** |")
    print()
    print("| loop | frames/s |")
    print("|---|---:|")
    print(f"| onnxruntime bare loop (decode + preprocess + inference) | {med('onnxruntime', 'bare_loop', 'fps'):.1f} |")
    print(f"| tract bare loop (decode + preprocess + inference) | {med('tract', 'bare_loop', 'fps'):.1f} |")
    print(f"| lookout-predictor through the embedded broker | {med('lookout-predictor', 'pipeline', 'fps'):.1f} |")
    print(f"\nPipeline / bare tract loop: {med('lookout-predictor', 'pipeline', 'vs_bare'):.2f}")
    print(f"Model load: tract {med('tract', 'load', 'ms'):.0f} ms (incl. optimisation), "
          f"onnxruntime {med('onnxruntime', 'load', 'ms'):.0f} ms")


if __name__ == "__main__":
    main()
