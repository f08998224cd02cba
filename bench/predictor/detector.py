#!/usr/bin/env python3
"""`just bench-detector`: the object detector (models/ssdlite-mobilenet-v2-coco) in Lookout's
predictor, tract against the ONNX Runtime backend, on the same images and in the same run:
per frame and stage on one thread (decode, preprocess with the whole frame stretched to
300 x 300, inference with the post-processing), and frames/s of the bare model loop and of the
predictor service through the embedded broker. Prints Markdown tables."""

import glob
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, bench_executable, cpu_model, crate_version, rustc_version  # noqa: E402

MODEL = "models/ssdlite-mobilenet-v2-coco"
ROUNDS = int(os.environ.get("ROUNDS", "3"))
FRAMES = int(os.environ.get("FRAMES", "60"))
ITERATIONS = int(os.environ.get("ITERATIONS", "20"))
BACKENDS = ["tract", "onnxruntime"]
IMAGES = ["chelsea.png", "coffee.png", "rocket.jpg"]
STAGES = ["decode_ms", "preprocess_ms", "inference_ms"]


def onnxruntime_library():
    """ORT_DYLIB_PATH, else the onnxruntime wheel's library that `.ci/run` installs under
    target/ (the one `just bench-predictor` and CI use)."""
    if os.environ.get("ORT_DYLIB_PATH"):
        return os.environ["ORT_DYLIB_PATH"]
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    libs = sorted(glob.glob(str(target / "onnxruntime-venv/lib/python3*/site-packages/"
                                         "onnxruntime/capi/libonnxruntime.so.*")))
    if not libs:
        sys.exit("set ORT_DYLIB_PATH to the onnxruntime wheel's libonnxruntime.so.* (README)")
    return libs[0]


def main():
    exe = bench_executable("lookout-predictor", "predictor", features=["onnxruntime"])
    lib = onnxruntime_library()
    env = dict(os.environ, ORT_DYLIB_PATH=lib, OMP_NUM_THREADS="1")
    results = []
    for r in range(ROUNDS):
        print(f"round {r + 1}/{ROUNDS}", file=sys.stderr)
        for backend in BACKENDS:
            out = subprocess.run([exe, "--model", MODEL, "--backend", backend, "--iterations",
                                  str(ITERATIONS), "--frames", str(FRAMES)], cwd=ROOT,
                                 check=True, capture_output=True, text=True, env=env).stdout
            results += [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def med(op, key, backend, image=None):
        vals = [x[key] for x in results if x["op"] == op and x["backend"] == backend
                and (image is None or x.get("image") == image)]
        return statistics.median(vals) if vals else float("nan")

    print(f"\nMachine: {os.cpu_count()} cores, {cpu_model()}, load average "
          f"{os.getloadavg()[0]:.1f} at the end; {rustc_version()}; tract "
          f"{crate_version('tract-onnx')}; ort {crate_version('ort')} loading "
          f"{Path(lib).name}; Python {platform.python_version()}; medians of {ROUNDS} rounds.\n")
    print(f"Per frame, one thread (ms, median of {ITERATIONS} iterations per image):\n")
    print("| image | stage | tract | Lookout onnxruntime | tract / onnxruntime |")
    print("|---|---|---:|---:|---:|")
    for image in IMAGES:
        for stage in STAGES:
            t, o = (med("stages", stage, b, image) for b in BACKENDS)
            print(f"| {image} | {stage[:-3]} | {t:.2f} | {o:.2f} | {t / o:.2f} |")
        t, o = (sum(med("stages", s, b, image) for s in STAGES) for b in BACKENDS)
        print(f"| {image} | **total** | **{t:.2f}** | **{o:.2f}** | **{t / o:.2f}** |")
    print(f"\nFrames/s, one worker, one thread, {FRAMES} frames; pipeline = the predictor service "
          "through the embedded broker:\n")
    print("| backend | bare loop (frames/s) | pipeline (frames/s) | pipeline / bare |")
    print("|---|---:|---:|---:|")
    for b in BACKENDS:
        bare, pipe = med("bare_loop", "fps", b), med("pipeline", "fps", b)
        print(f"| Lookout {b} | {bare:.1f} | {pipe:.1f} | {pipe / bare:.2f} |")
    print(f"\nModel load: tract {med('load', 'ms', 'tract'):.0f} ms (incl. optimisation), "
          f"Lookout onnxruntime {med('load', 'ms', 'onnxruntime'):.0f} ms")


if __name__ == "__main__":
    main()
