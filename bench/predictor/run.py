#!/usr/bin/env python3
"""`just bench-predictor`: Lookout's predictor with tract and with its ONNX Runtime backend
against Python onnxruntime, on the same model, the same images and the same ONNX Runtime
library (the `onnxruntime` wheel), in the same run: per frame on one thread, and frames/s
(per core) with each setting of workers, intra-op threads and batch size; and the predictor
service through the embedded broker against its bare model loop. Prints Markdown tables."""

import glob
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, bench_executable, cpu_model, crate_version, rustc_version, setup_venv  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "3"))
FRAMES = int(os.environ.get("FRAMES", "120"))
ITERATIONS = 30
# The wheel whose library Lookout's backend loads: ort 2.0.0-rc.13 speaks ONNX Runtime 1.28's API.
PY_PACKAGES = ["onnxruntime==1.28.0", "pillow", "numpy"]
# (backend, workers, threads, batch); the first of each backend also times the stages.
SETTINGS = [
    ("tract", 1, 1, 1),
    ("tract", 2, 1, 1),
    ("onnxruntime", 1, 1, 1),
    ("onnxruntime", 1, 1, 4),
    ("onnxruntime", 1, 2, 1),
    ("onnxruntime", 2, 1, 1),
]
PY_THREADS = [1, 2]


def onnxruntime_library(py):
    capi = subprocess.run([py, "-c", "import onnxruntime, os; print(os.path.join("
                           "os.path.dirname(onnxruntime.__file__), 'capi'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    libs = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so.*")))
    if not libs:
        sys.exit(f"no libonnxruntime.so.* in {capi}")
    return libs[0]


def run(cmd, env):
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, env=env).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main():
    py = setup_venv(PY_PACKAGES)
    exe = bench_executable("lookout-predictor", "predictor", features=["onnxruntime"])
    lib = onnxruntime_library(py)
    env = dict(os.environ, ORT_DYLIB_PATH=lib, OMP_NUM_THREADS="1")
    results = []
    for r in range(ROUNDS):
        print(f"round {r + 1}/{ROUNDS}", file=sys.stderr)
        seen = set()
        for backend, workers, threads, batch in SETTINGS:
            stages = [] if backend not in seen else ["--no-stages"]
            seen.add(backend)
            results += run([exe, "--backend", backend, "--workers", str(workers), "--threads",
                            str(threads), "--batch", str(batch), "--iterations", str(ITERATIONS),
                            "--frames", str(FRAMES), *stages], env)
        for threads in PY_THREADS:
            stages = [] if threads == 1 else ["--no-stages"]
            results += run([py, str(ROOT / "bench/predictor/bench_onnxruntime.py"), "--iterations",
                            str(ITERATIONS), "--frames", str(FRAMES), "--threads", str(threads),
                            *stages], env)

    def med(op, key, backend, workers=1, threads=1, batch=1, image=None):
        vals = [x[key] for x in results if x["op"] == op and x["backend"] == backend
                and (x["workers"], x["threads"], x["batch"]) == (workers, threads, batch)
                and (image is None or x.get("image") == image)]
        return statistics.median(vals) if vals else float("nan")

    ort_version = subprocess.run([py, "-c", "import onnxruntime;print(onnxruntime.__version__)"],
                                 capture_output=True, text=True).stdout.strip()
    print(f"\nMachine: {os.cpu_count()} cores, {cpu_model()}; {rustc_version()}; tract "
          f"{crate_version('tract-onnx')}; ort {crate_version('ort')} loading the onnxruntime "
          f"{ort_version} wheel's library, which Python {platform.python_version()} uses too; "
          f"medians of {ROUNDS} rounds.\n")
    stages = ["decode_ms", "preprocess_ms", "inference_ms"]
    backends = ["tract", "onnxruntime", "python-onnxruntime"]
    print("Per frame, one thread (ms, median of 30 iterations per image):\n")
    print("| image | stage | tract | Lookout onnxruntime | Python onnxruntime | Lookout onnxruntime / Python |")
    print("|---|---|---:|---:|---:|---:|")
    for image in ["chelsea.png", "coffee.png", "rocket.jpg"]:
        for stage in stages:
            t, o, p = (med("stages", stage, b, image=image) for b in backends)
            print(f"| {image} | {stage[:-3]} | {t:.2f} | {o:.2f} | {p:.2f} | {o / p:.2f} |")
        t, o, p = (sum(med("stages", s, b, image=image) for s in stages) for b in backends)
        print(f"| {image} | **total** | **{t:.2f}** | **{o:.2f}** | **{p:.2f}** | **{o / p:.2f}** |")
    print()
    print(f"Frames/s, decode + preprocess + inference, {FRAMES} frames; cores = workers x threads; "
          "pipeline = the predictor service through the embedded broker:\n")
    print("| backend | workers | threads | batch | bare loop (frames/s) | per core | pipeline (frames/s) | pipeline / bare |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = [(b, w, t, n) for b, w, t, n in SETTINGS] + \
        [("python-onnxruntime", 1, t, 1) for t in PY_THREADS]
    for b, w, t, n in rows:
        bare = med("bare_loop", "fps", b, w, t, n)
        pipe = med("pipeline", "fps", b, w, t, n)
        ratio = med("pipeline", "vs_bare", b, w, t, n)
        name = {"onnxruntime": "Lookout onnxruntime", "tract": "Lookout tract"}.get(b, "Python onnxruntime")
        pipe_s = "" if pipe != pipe else f"{pipe:.1f}"
        ratio_s = "" if ratio != ratio else f"{ratio:.2f}"
        print(f"| {name} | {w} | {t} | {n} | {bare:.1f} | {bare / (w * t):.1f} | {pipe_s} | {ratio_s} |")
    print(f"\nModel load: tract {med('load', 'ms', 'tract'):.0f} ms (incl. optimisation), "
          f"Lookout onnxruntime {med('load', 'ms', 'onnxruntime'):.0f} ms, "
          f"Python onnxruntime {med('load', 'ms', 'python-onnxruntime'):.0f} ms")


if __name__ == "__main__":
    main()
