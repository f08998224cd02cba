#!/usr/bin/env python3
"""`just soak`: many synthetic cameras through the whole pipeline for a long time, with
cameras leaving and new ones joining throughout. Every 10 s it samples the resident memory of
every service; at the end it stops the cameras, lets the pipeline drain, and accounts for every
frame: published by the cameras (the frames topic's offsets), labelled or skipped with a
reason by the predictors, received by the recorder. It prints Markdown tables (memory per
service: after warm-up, at the end, growth per hour by a least-squares fit; frames per stage;
labelling latency), writes the samples as CSV, and, when matplotlib is there (`pip install
matplotlib`), one memory plot (PNG) per service.

    python3 bench/soak/run.py                                  # 100 cameras at 1 fps, 10 minutes
    python3 bench/soak/run.py --cameras 12 --seconds 60 --check  # the short version CI runs
    python3 bench/soak/run.py --seconds 86400                  # a day

With --check it exits non-zero when a frame is unaccounted for, a service died, or memory
grew by more than --max-growth-mib per hour after warm-up (only judged on runs of 5 minutes or
more)."""

import argparse
import csv
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import OUT, ROOT, build_lookout, pick, scrape, start_broker  # noqa: E402


def rss_mib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def total(metrics, name, **labels):
    return pick(metrics, name, **labels) or 0.0


def quantile(metrics, name, q):
    """A quantile from a Prometheus histogram's cumulative buckets (upper bound of the bucket)."""
    buckets = []
    for key, v in metrics.items():
        m = re.match(rf'{name}_bucket\{{(.*)\}}$', key)
        if m:
            le = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))["le"]
            buckets.append((float("inf") if le == "+Inf" else float(le), v))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    want = q * buckets[-1][1]
    for le, count in buckets:
        if count >= want:
            return le
    return None


class Service:
    def __init__(self, lookout, name, args, common, logdir):
        self.name = name
        self.admin = free_admin_port()
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [lookout, *args, *common, "--instance", name, "--admin-addr",
             f"127.0.0.1:{self.admin}"],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": "info"})

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=30):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def metrics(self):
        return scrape(f"http://127.0.0.1:{self.admin}/metrics")


_ports = set()


def free_admin_port():
    import socket
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports:
            _ports.add(port)
            return port


def camera_stats(log_path):
    """The final line of a stopped camera: captured, published, dropped."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", open(log_path, errors="replace").read())
    lines = [line for line in text.splitlines() if "camera stopped" in line]
    line = lines[-1] if lines else ""

    def get(key):
        m = re.search(rf"\b{key}=(\d+)", line)
        return int(m.group(1)) if m else None
    return {k: get(k) for k in ("captured", "published", "dropped")}


def topic_high(lookout, common, topic):
    """Sum of the partitions' high offsets of a topic, from `lookout topics`."""
    out = subprocess.run([lookout, "topics", *common], cwd=ROOT, capture_output=True,
                         text=True, timeout=60).stdout
    for line in out.splitlines():
        cols = line.split()
        if cols and cols[0].endswith(topic):
            return sum(int(hi) for _, hi in re.findall(r"(\d+)\.\.(\d+)", line))
    return None


def fit_per_hour(points):
    """Least-squares slope of (seconds, MiB) points, in MiB per hour."""
    n = len(points)
    if n < 3:
        return None
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx * 3600


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, default=100)
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--predictors", type=int, default=2)
    ap.add_argument("--churn-every", type=int, default=30, help="seconds between churns")
    ap.add_argument("--churn", type=int, default=5, help="cameras replaced at each churn")
    ap.add_argument("--sample-every", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=180, help="seconds left out of the fit")
    ap.add_argument("--size", default="320x240", help="synthetic frame size")
    ap.add_argument("--snapshot-memory", default="64M",
                    help="the recorder's frame buffer budget (its RSS rises until it is full)")
    ap.add_argument("--lookout", help="the lookout executable (default: a release build)")
    ap.add_argument("--check", action="store_true", help="exit 1 when something is off")
    ap.add_argument("--max-growth-mib", type=float, default=20.0,
                    help="--check: most memory growth per hour after warm-up, per service")
    args = ap.parse_args()

    lookout = args.lookout or build_lookout()
    width, height = args.size.split("x")
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix="lookout-soak-")
    broker, brokers = start_broker(lookout, "soak-broker.log")
    common = ["--brokers", brokers]
    problems = []
    services = {}
    cameras = {}
    stopped_cameras = []
    next_id = 0

    def start_camera():
        nonlocal next_id
        cid = f"cam-{next_id:04d}"
        next_id += 1
        cameras[cid] = Service(lookout, cid, [
            "camera", "--source", "synthetic", "--camera-id", cid, "--fps", str(args.fps),
            "--width", width, "--height", height], common, work)

    def stop_camera(cid):
        cam = cameras.pop(cid)
        cam.stop()
        stopped_cameras.append(camera_stats(cam.log_path))

    try:
        for i in range(args.predictors):
            services[f"predictor-{i + 1}"] = Service(lookout, f"predictor-{i + 1}", [
                "predictor", "--model", "models/efficientnet-lite0"], common, work)
        db = os.path.join(work, "recorder.db")
        services["recorder"] = Service(lookout, "recorder", [
            "recorder", "--database-url", f"sqlite://{db}?mode=rwc",
            "--snapshot-memory", args.snapshot_memory], common, work)
        services["viewer"] = Service(lookout, "viewer", [
            "viewer", "--listen", "127.0.0.1:0"], common, work)
        services["logship"] = Service(lookout, "logship", [
            "logship", "--sink", f"file:{os.path.join(work, 'logs')}"], common, work)
        for _ in range(args.cameras):
            start_camera()

        samples = []  # (t, name, MiB)
        dead = []
        start = time.monotonic()
        next_sample = next_churn = 0.0
        last_report = -60
        print(f"soak: {args.cameras} cameras at {args.fps} fps for {args.seconds} s; logs in {work}",
              file=sys.stderr, flush=True)
        while (now := time.monotonic() - start) < args.seconds:
            if now >= next_sample:
                next_sample += args.sample_every
                dead = [n for n, s in services.items() if not s.alive()]
                if dead:
                    break
                for name, s in services.items():
                    samples.append((now, name, rss_mib(s.proc.pid)))
                cams = [rss_mib(c.proc.pid) for c in cameras.values() if c.alive()]
                samples.append((now, "cameras (all)", sum(x for x in cams if x)))
                if now - last_report >= 60:
                    last_report = now
                    print(f"soak: {now:.0f} s, " + ", ".join(
                        f"{n} {m:.0f} MiB" for t, n, m in samples if t == now and m),
                        file=sys.stderr, flush=True)
            if args.churn and now >= next_churn + args.churn_every:
                next_churn = now
                for cid in random.sample(sorted(cameras), min(args.churn, len(cameras))):
                    stop_camera(cid)
                for _ in range(args.churn):
                    start_camera()
            time.sleep(0.5)

        if dead:
            for n in dead:
                s = services[n]
                problems.append(f"{n} exited (code {s.proc.returncode}); see {s.log_path}")
            print("\n".join(problems), file=sys.stderr)
            sys.exit(1)
        # The end: cameras stop, the pipeline drains.
        for cid in sorted(cameras):
            stop_camera(cid)
        published = topic_high(lookout, common, "lookout.frames")
        deadline = time.monotonic() + 120
        while True:
            handled = sum(total(services[f"predictor-{i + 1}"].metrics(), "lookout_predictor_frames_total")
                          for i in range(args.predictors))
            if handled >= published or time.monotonic() > deadline:
                break
            time.sleep(1)
        predictions = topic_high(lookout, common, "lookout.predictions")
        deadline = time.monotonic() + 120
        while True:
            rec = services["recorder"].metrics()
            received = total(rec, "lookout_recorder_predictions_total")
            if received >= predictions or time.monotonic() > deadline:
                break
            time.sleep(1)
        pm = [services[f"predictor-{i + 1}"].metrics() for i in range(args.predictors)]
        by_outcome = {}
        for m in pm:
            for key, v in m.items():
                o = re.match(r'lookout_predictor_frames_total\{.*outcome="(\w+)"', key)
                if o:
                    by_outcome[o.group(1)] = by_outcome.get(o.group(1), 0) + v
        p50 = max((quantile(m, "lookout_predictor_capture_to_predicted_seconds", 0.5) or 0) for m in pm)
        p99 = max((quantile(m, "lookout_predictor_capture_to_predicted_seconds", 0.99) or 0) for m in pm)
        viewer = services["viewer"].metrics()
        cam_captured = sum(c["captured"] or 0 for c in stopped_cameras)
        cam_published = sum(c["published"] or 0 for c in stopped_cameras)
        cam_dropped = sum(c["dropped"] or 0 for c in stopped_cameras)
        unreported = sum(1 for c in stopped_cameras if c["captured"] is None)
    finally:
        for s in list(services.values()) + list(cameras.values()):
            s.stop()
        broker.kill()

    # Memory.
    names = list(dict.fromkeys(n for _, n, _ in samples))
    csv_path = os.path.join(OUT, "soak-memory.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seconds", "service", "rss_mib"])
        w.writerows((f"{t:.0f}", n, f"{m:.1f}") for t, n, m in samples if m is not None)
    print(f"\n{len(stopped_cameras)} cameras in all ({args.cameras} at a time, {args.churn} replaced "
          f"every {args.churn_every} s), {args.fps} fps, {args.size}, {args.seconds} s, "
          f"{args.predictors} predictors\n")
    print("| service | RSS after warm-up (MiB) | RSS at the end (MiB) | peak (MiB) | growth after warm-up (MiB/h, least squares) |")
    print("|---|---:|---:|---:|---:|")
    judged = args.seconds >= 300
    for n in names:
        pts = [(t, m) for t, nn, m in samples if nn == n and m is not None]
        after = [(t, m) for t, m in pts if t >= args.warmup] or pts
        slope = fit_per_hour(after)
        print(f"| {n} | {after[0][1]:.1f} | {pts[-1][1]:.1f} | {max(m for _, m in pts):.1f} | "
              f"{'n/a' if slope is None else f'{slope:+.1f}'} |")
        per_camera = n == "cameras (all)"
        if judged and slope is not None and not per_camera and slope > args.max_growth_mib:
            problems.append(f"{n}: memory grows {slope:.1f} MiB/h after warm-up")
    print("\n| stage | frames |\n|---|---:|")
    print(f"| captured by the cameras | {cam_captured} |")
    print(f"| dropped by the cameras (counted, with the reason in their last log line) | {cam_dropped} |")
    print(f"| published by the cameras (their count) | {cam_published} |")
    print(f"| on the frames topic | {published} |")
    for o, v in sorted(by_outcome.items()):
        print(f"| predictors: {o} | {v:.0f} |")
    print(f"| on the predictions topic | {predictions} |")
    print(f"| received by the recorder | {received:.0f} |")
    print(f"| received by the viewer | {total(viewer, 'lookout_viewer_predictions_received_total'):.0f} (predictions) |")
    print(f"\nCapture → predicted: p50 ≤ {p50 * 1000:.0f} ms, p99 ≤ {p99 * 1000:.0f} ms (histogram bucket bounds)")
    if unreported:
        problems.append(f"{unreported} cameras did not report their counts when stopped")
    if cam_published != published:
        problems.append(f"the cameras counted {cam_published} published, the topic holds {published}")
    if cam_captured != cam_published + cam_dropped:
        problems.append(f"captured {cam_captured} != published {cam_published} + dropped {cam_dropped}")
    if sum(by_outcome.values()) != published:
        problems.append(f"the predictors handled {sum(by_outcome.values()):.0f} of {published} frames")
    if predictions != published * 1:
        problems.append(f"{predictions} predictions for {published} frames")
    if received < predictions:
        problems.append(f"the recorder received {received:.0f} of {predictions} predictions")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        for n in names:
            pts = [(t, m) for t, nn, m in samples if nn == n and m is not None]
            fig, ax = plt.subplots(figsize=(6, 2.4), dpi=100)
            ax.plot([t / 60 for t, _ in pts], [m for _, m in pts])
            ax.set_title(f"{n}: resident memory")
            ax.set_xlabel("minutes")
            ax.set_ylabel("MiB")
            ax.set_ylim(bottom=0)
            ax.axvline(args.warmup / 60, color="grey", linestyle=":", linewidth=1)
            fig.tight_layout()
            path = os.path.join(OUT, "soak-" + re.sub(r"[^a-z0-9]+", "-", n).strip("-") + ".png")
            fig.savefig(path)
            plt.close(fig)
            print(f"plot: {os.path.relpath(path, ROOT)}", file=sys.stderr)
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)
    print(f"samples: {os.path.relpath(csv_path, ROOT)}", file=sys.stderr)

    if problems:
        print("\nPROBLEMS:\n" + "\n".join(f"- {p}" for p in problems), file=sys.stderr)
        if args.check:
            sys.exit(1)


if __name__ == "__main__":
    main()
