#!/usr/bin/env python3
"""`just bench-e2e`: runs `lookout demo` with a synthetic camera for a fixed time, keeps one
browser-like MJPEG client on the viewer, then reads every service's Prometheus metrics and
prints latency percentiles (capture -> predicted, capture -> shown), the model's own time per
frame (the predictor's inference histogram, same run) and the pipeline's overhead over it, and
frames dropped per stage, as Markdown tables.

    python3 bench/e2e/run.py [--seconds 30] [--fps 30] [--predictors 2] [--detectors 0]"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, free_port, pick, scrape  # noqa: E402



def mjpeg_client(url, stop, counts):
    # The viewer knows the camera once its first frame arrived: 404 until then.
    while True:
        try:
            r = urllib.request.urlopen(url, timeout=10)
            break
        except urllib.error.HTTPError:
            time.sleep(0.2)
    with r:
        while not stop.is_set():
            chunk = r.read(65536)
            if not chunk:
                break
            counts["parts"] += chunk.count(b"\r\nContent-Type: image/jpeg")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--predictors", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5,
                    help="seconds after start-up left out of the latencies (the first frames "
                         "wait for the predictor to join its group and load its model)")
    ap.add_argument("--detectors", type=int, default=0,
                    help="object detector replicas beside the classifier (default 0: the "
                         "latency measured is the classifier's alone)")
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "-p", "lookout"], cwd=ROOT, check=True)
    exe = ROOT / "target/release/lookout"
    viewer_port = free_port()
    workdir = tempfile.mkdtemp(prefix="lookout-e2e-")
    demo = subprocess.Popen(
        [str(exe), "demo", "--source", "synthetic", "--fps", str(args.fps),
         "--predictors", str(args.predictors), "--detectors", str(args.detectors),
         "--viewer-listen", f"127.0.0.1:{viewer_port}",
         "--broker-listen", "127.0.0.1:0", "--dir", workdir],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    admin = {}
    deadline = time.time() + 180
    for line in demo.stdout:
        sys.stderr.write(line)
        m = re.match(r"\s+(\S+)\s+\w+\s+\(admin http://([\d.:]+)/metrics", line)
        if m:
            admin[m.group(1)] = m.group(2)
        if "Lookout is running" in line:
            break
        if time.time() > deadline:
            sys.exit("the demo did not become ready")
    threading.Thread(target=lambda: [None for _ in demo.stdout], daemon=True).start()

    stop, counts = threading.Event(), {"parts": 0}
    client = threading.Thread(target=mjpeg_client, daemon=True, args=(
        f"http://127.0.0.1:{viewer_port}/cameras/synthetic/stream.mjpeg", stop, counts))
    client.start()
    print(f"warming up for {args.warmup} s, then measuring for {args.seconds} s …", file=sys.stderr)
    time.sleep(args.warmup)
    m0 = {name: scrape(f"http://{addr}/metrics") for name, addr in admin.items()}
    time.sleep(args.seconds)
    stop.set()

    m = {name: scrape(f"http://{addr}/metrics") for name, addr in admin.items()}
    demo.send_signal(signal.SIGINT)
    demo.wait(timeout=60)

    preds = [k for k in m if k.startswith("predictor")]
    cam, view = m["camera"], m["viewer"]
    captured = pick(cam, "lookout_camera_frames_captured_total") or 0
    published = pick(cam, "lookout_camera_frames_published_total") or 0
    cam_dropped = pick(cam, "lookout_camera_frames_dropped_total") or 0
    labelled = sum(pick(m[p], "lookout_predictor_frames_total", outcome="labelled") or 0 for p in preds)
    too_old = sum(pick(m[p], "lookout_predictor_frames_total", outcome="too_old") or 0 for p in preds)
    skipped_view = pick(view, "lookout_viewer_frames_skipped_total") or 0

    def q(metrics, name, quantile, base=None):
        """A quantile in ms, estimated from a histogram's buckets (linear within the bucket, as
        Prometheus' histogram_quantile does); with `base`, of what was observed since it."""
        buckets = []
        for key, count in metrics.items():
            if base is not None:
                count -= base.get(key, 0)
            mm = re.match(rf'{re.escape(name)}_bucket\{{(.*)\}}$', key)
            if not mm:
                continue
            le = dict(re.findall(r'(\w+)="([^"]*)"', mm.group(1))).get("le")
            buckets.append((float("inf") if le == "+Inf" else float(le), count))
        if not buckets:
            return None
        totals = {}
        for le, count in buckets:  # several series (labels) of one histogram are summed
            totals[le] = totals.get(le, 0) + count
        ordered = sorted(totals.items())
        total = ordered[-1][1]
        if total == 0:
            return None
        rank, lower, below = float(quantile) * total, 0.0, 0.0
        for le, count in ordered:
            if count >= rank:
                if le == float("inf"):
                    return lower * 1000
                width = count - below
                frac = 0 if width == 0 else (rank - below) / width
                return (lower + (le - lower) * frac) * 1000
            lower, below = le, count
        return None

    def fmt(v):
        return "–" if v is None else f"{v:.0f}"

    print(f"\n{args.seconds} s at {args.fps} fps after {args.warmup} s of warm-up, "
          f"{args.predictors} predictor replica(s), {args.detectors} detector(s), "
          f"{os.cpu_count()} cores, one MJPEG client ({counts['parts']} parts received).\n")
    print(f"| latency | p50 (ms) | p99 (ms) | p99 incl. warm-up (ms) |")
    print("|---|---:|---:|---:|")
    for p in preds:
        name = "lookout_predictor_capture_to_predicted_seconds"
        model = "lookout_predictor_inference_seconds"
        lat50, lat99 = q(m[p], name, '0.5', m0[p]), q(m[p], name, '0.99', m0[p])
        mod50, mod99 = q(m[p], model, '0.5', m0[p]), q(m[p], model, '0.99', m0[p])
        print(f"| capture → predicted ({p}) | {fmt(lat50)} | {fmt(lat99)} | {fmt(q(m[p], name, '0.99'))} |")
        print(f"| model inference ({p}) | {fmt(mod50)} | {fmt(mod99)} | {fmt(q(m[p], model, '0.99'))} |")
        if None not in (lat50, lat99, mod50, mod99):
            print(f"| pipeline overhead ({p}): latency − model time | {fmt(lat50 - mod50)} | "
                  f"{fmt(lat99 - mod99)} | |")
    name = "lookout_viewer_capture_to_shown_seconds"
    print(f"| capture → shown (viewer, MJPEG part written) | {fmt(q(view, name, '0.5', m0['viewer']))} | "
          f"{fmt(q(view, name, '0.99', m0['viewer']))} | {fmt(q(view, name, '0.99'))} |")
    print()
    print("| stage | frames | dropped | note |")
    print("|---|---:|---:|---|")
    print(f"| camera | {captured:.0f} captured, {published:.0f} published | {cam_dropped:.0f} | drop-oldest when the broker lags |")
    print(f"| predictor(s) | {labelled:.0f} labelled | {too_old:.0f} | older than --max-frame-age (2 s) when dequeued |")
    print(f"| viewer → client | {counts['parts']} parts sent | {skipped_view:.0f} | slow client skips ahead |")


if __name__ == "__main__":
    main()
