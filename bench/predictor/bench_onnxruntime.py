"""The predictor's work done with onnxruntime, the usual Python choice: same model, same
images, same preprocessing (Pillow decode, bicubic resize of the shorter side to 256, centre
crop 224, (x - 127) / 128, NCHW), with --threads intra-op threads (1: one core). Prints one
JSON object per line."""

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ["chelsea.png", "coffee.png", "rocket.jpg"]


def jpeg_bytes(name):
    img = Image.open(ROOT / "samples" / name).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def decode(b):
    return Image.open(io.BytesIO(b)).convert("RGB")


def preprocess(img):
    w, h = img.size
    scale = 256 / min(w, h)
    rw, rh = max(224, round(w * scale)), max(224, round(h * scale))
    img = img.resize((rw, rh), Image.BICUBIC)
    x0, y0 = (rw - 224) // 2, (rh - 224) // 2
    img = img.crop((x0, y0, x0 + 224, y0 + 224))
    a = (np.asarray(img, dtype=np.float32) - 127.0) / 128.0
    return a.transpose(2, 0, 1)[None, ...].copy()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-stages", action="store_true")
    args = p.parse_args()
    tag = {"backend": "python-onnxruntime", "workers": 1, "threads": args.threads, "batch": 1}
    labels = (ROOT / "models/efficientnet-lite0/labels.txt").read_text().splitlines()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    t = time.perf_counter()
    sess = ort.InferenceSession(str(ROOT / "models/efficientnet-lite0/model.onnx"), opts,
                                providers=["CPUExecutionProvider"])
    print(json.dumps({**tag, "op": "load", "ms": (time.perf_counter() - t) * 1000}))
    images = [(n, jpeg_bytes(n)) for n in IMAGES]
    for name, b in ([] if args.no_stages else images):
        out = sess.run(None, {"input": preprocess(decode(b))})[0][0]
        d, pp, inf = [], [], []
        for _ in range(args.iterations):
            t0 = time.perf_counter()
            img = decode(b)
            t1 = time.perf_counter()
            x = preprocess(img)
            t2 = time.perf_counter()
            logits = sess.run(None, {"input": x})[0][0]
            e = np.exp(logits - logits.max())
            probs = e / e.sum()
            t3 = time.perf_counter()
            d.append(t1 - t0)
            pp.append(t2 - t1)
            inf.append(t3 - t2)
        print(json.dumps({
            **tag, "op": "stages", "image": name, "iterations": args.iterations,
            "decode_ms": statistics.median(d) * 1000, "preprocess_ms": statistics.median(pp) * 1000,
            "inference_ms": statistics.median(inf) * 1000, "top1": labels[int(np.argmax(probs))],
        }))
    sess.run(None, {"input": preprocess(decode(images[0][1]))})
    t = time.perf_counter()
    for i in range(args.frames):
        _, b = images[i % len(images)]
        logits = sess.run(None, {"input": preprocess(decode(b))})[0][0]
        e = np.exp(logits - logits.max())
        np.argsort(-(e / e.sum()))[:5]
    print(json.dumps({**tag, "op": "bare_loop", "frames": args.frames,
                      "fps": args.frames / (time.perf_counter() - t)}))


if __name__ == "__main__":
    main()
