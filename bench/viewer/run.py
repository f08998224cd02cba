#!/usr/bin/env python3
"""`just bench-viewer`: MJPEG fan-out of one Lookout viewer against the seed article's Flask design.

How many concurrent MJPEG clients of a 30 fps 640x480 camera one viewer process serves on one
core with less than 5% of frames skipped, what each client costs in CPU, and how many bytes the
server reads from Kafka, for `lookout viewer` and bench/viewer/flask_viewer.py (a Kafka consumer
per client, served by waitress) under the same load generator in the same run.

Sets up bench/.venv (pinned packages below), builds the `lookout` command, starts one embedded
broker and one synthetic camera (`lookout camera --source synthetic --fps 30`), then for each
round and each server (alternating which goes first): starts the server pinned to core 1
(`taskset`), and for each client count of --steps runs bench/viewer/loadgen.py on core 0
(with the broker and the camera): N streams, a warm-up until each has frames, then a measured
window of --duration seconds. A server climbs past 5% skipped, to show the trend, and stops
at 25% skipped, at a full core (its own, or the load generator's), when the camera publishes
under 95% of its frames (the broker has fallen behind), or at the last step.
Prints the machine, the versions, a Markdown table of medians over the rounds and the
headline (most clients under 5% skipped, median of the rounds, and the ratio); the raw JSON
lines go to bench/out/viewer.jsonl, the servers' logs to bench/out/viewer-*.log.

Measured per step, over the window:
- frames delivered: distinct frame sequences each client received; skipped % =
  1 - delivered / (30 fps x window), what a viewer of a 30 fps camera misses; the frames the
  camera actually published (its `/metrics`) are shown beside it;
- CPU: utime + stime of the server process (/proc/PID/stat, every thread, librdkafka's
  included), as % of one core and as CPU ms per client-second;
- Kafka bytes read: payload bytes of the Frame messages the server's consumers received.
  Flask counts them itself (`/stats`); for Lookout, frames read (its `/metrics`) times the
  camera's mean encoded frame. The TCP bytes received from the broker (`ss -tinp`, protocol
  included) are kept in the JSON lines as a cross-check.

Both servers' consumers use fetch.wait.max.ms = 25 (see FETCH_WAIT_MS). Everything listens
and connects on 127.0.0.1 only.

    python3 bench/viewer/run.py [--rounds 3] [--duration 8] [--steps 1,25,50,...]
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import (OUT, ROOT, build_lookout, cpu_model, crate_version, free_port,  # noqa: E402
                    rustc_version, setup_venv, start_broker)

HERE = os.path.join(ROOT, "bench", "viewer")
PYTHON_PACKAGES = ["confluent-kafka==2.16.1", "protobuf==7.36.2", "grpcio-tools==1.85.1",
                   "flask==3.1.3", "werkzeug==3.1.9", "waitress==3.0.2"]

FPS, WIDTH, HEIGHT = 30, 640, 480
CAMERA = "synthetic"
JPEG_QUALITY = 95  # ~29 KB frames of the synthetic pattern (85, the default, gives ~24 KB)
SKIP_LIMIT = 5.0  # percent: the question asked
STOP_SKIP = 25.0  # percent: a server climbs on past SKIP_LIMIT until this, to show its trend
CPU_SATURATED = 95.0  # % of one core: or until this
SERVER_CORE, LOAD_CORE = 1, 0
LOAD_SATURATED = 90.0  # % busy of core 0 (our load processes, or all its work) that flags a step
CAMERA_BEHIND = 0.95  # a camera publishing under this share of FPS has fallen behind
LOAD_STOP = 97.0  # % of core 0 used by our load processes past which a climb stops
# The embedded broker holds every fetch for the full fetch.wait.max.ms, even when a frame
# arrives meanwhile, so a consumer gets the frames of each fetch.wait.max.ms at once (15 at
# librdkafka's default of 500 ms, 1 or 2 at 50 ms). A real broker
# answers as soon as a frame is there: about one fetch per frame, one frame per fetch. 25 ms,
# for both servers, gives that here: frames one by one (their gaps never below 20 ms at 30 fps),
# and about 40 fetches per second per consumer, near a real broker's 30.
FETCH_WAIT_MS = 25
STEPS = [1, 25, 50, 75, 100, 150, 200, 400, 700, 1000]
SERVERS = {"lookout": "Lookout viewer", "flask": "Flask + waitress"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def http_get(url, timeout=30.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def metric(text, name, labels=None):
    """Sum of a Prometheus metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.fullmatch(rf"{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)", line.strip())
        if not m:
            continue
        if labels and not all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            continue
        total += float(m.group(2))
    return total


def cpu_seconds(pid):
    """utime + stime of a process, every thread included."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def core_times():
    """Busy and total jiffies of each CPU, every process included (/proc/stat)."""
    cores = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+) (.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                idle = v[3] + v[4]  # idle + iowait
                cores[int(m.group(1))] = (sum(v[:8]) - idle, sum(v[:8]))
    return cores


def listening_ports(pid):
    out = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True, check=True).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines()
            if f"pid={pid}," in line}


def kafka_sockets(pid, broker_ports):
    """Bytes `pid` received on each of its TCP connections to the broker, by local port."""
    out = subprocess.run(["ss", "-tinpH", "state", "established"], capture_output=True,
                         text=True, check=True).stdout
    sockets, owner = {}, None
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            cols = line.split()
            local, peer = (cols[2], cols[3]) if len(cols) > 3 else ("", "")
            port = peer.rsplit(":", 1)[-1]
            owner = local if f"pid={pid}," in line and port.isdigit() \
                and int(port) in broker_ports else None
        elif owner:
            m = re.search(r"bytes_received:(\d+)", line)
            sockets[owner] = int(m.group(1)) if m else 0
            owner = None
    return sockets


def wait_for(what, check, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"timed out waiting for {what} (logs in bench/out/)")


def start_camera(lookout, brokers):
    admin = f"127.0.0.1:{free_port()}"
    camera = subprocess.Popen(
        [lookout, "camera", "--source", CAMERA, "--camera-id", CAMERA, "--fps", str(FPS),
         "--width", str(WIDTH), "--height", str(HEIGHT), "--compression", "none",
         "--jpeg-quality", str(JPEG_QUALITY),
         "--brokers", brokers, "--admin-addr", admin, "--no-ship-logs"],
        cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(OUT, "viewer-camera.log"), "w"))
    url = f"http://{admin}/metrics"
    wait_for("the camera's first frames",
             lambda: metric(http_get(url), "lookout_camera_frames_published_total") > FPS, 60)
    return camera, url


class Server:
    """A server under test, pinned to SERVER_CORE."""

    def __init__(self, kind, lookout, python, brokers, max_clients, fetch_wait_ms):
        self.kind = kind
        self.log = open(os.path.join(OUT, f"viewer-{kind}.log"), "w")
        pin = ["taskset", "-c", str(SERVER_CORE)]
        if kind == "lookout":
            port, admin = free_port(), free_port()
            self.proc = subprocess.Popen(
                pin + [lookout, "viewer", "--brokers", brokers, "--listen", f"127.0.0.1:{port}",
                       "--admin-addr", f"127.0.0.1:{admin}", "--max-clients",
                       str(max_clients + 8),
                       "--kafka-opt", f"fetch.wait.max.ms={fetch_wait_ms}"],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log)
            self.base = f"http://127.0.0.1:{port}"
            self.metrics_url = f"http://127.0.0.1:{admin}/metrics"
            self.url = f"{self.base}/cameras/{CAMERA}/stream.mjpeg"

            def ready():
                cams = json.loads(http_get(f"{self.base}/api/cameras"))
                return any(c["id"] == CAMERA and c["sequence"] is not None for c in cams)
            wait_for("the Lookout viewer", ready, 60)
        else:
            self.proc = subprocess.Popen(
                pin + [python, os.path.join(HERE, "flask_viewer.py"), "--brokers", brokers,
                       "--listen", "127.0.0.1:0", "--threads", str(max_clients + 8),
                       "--fetch-wait-ms", str(fetch_wait_ms)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log, text=True)
            first = self.proc.stdout.readline().strip()
            m = re.fullmatch(r"listening on (\S+)", first)
            if not m:
                self.stop()
                sys.exit(f"the Flask viewer did not start: {first!r} "
                         "(see bench/out/viewer-flask.log)")
            self.base = f"http://{m.group(1)}"
            self.url = f"{self.base}/video"
            wait_for("the Flask viewer", lambda: "clients" in http_get(f"{self.base}/stats"), 30)

    def clients(self):
        if self.kind == "lookout":
            return metric(http_get(self.metrics_url), "lookout_viewer_clients", {"kind": "mjpeg"})
        return json.loads(http_get(f"{self.base}/stats"))["clients"]

    def frames_read(self):
        """Frames the server took from Kafka, those it dropped on arrival (Lookout: older than
        the camera's newest, `outcome="out_of_order"`), and their payload bytes where known
        (Flask), by the server's own count."""
        if self.kind == "lookout":
            text = http_get(self.metrics_url)
            return (metric(text, "lookout_viewer_frames_received_total"),
                    metric(text, "lookout_viewer_frames_received_total",
                           {"outcome": "out_of_order"}), float("nan"))
        try:
            stats = json.loads(http_get(f"{self.base}/stats"))
            return stats["messages"], 0.0, stats["bytes"]
        except OSError:  # a saturated Flask process may not answer in time
            return float("nan"), 0.0, float("nan")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def snapshot(server, load_pids, camera_url, broker_ports, cpu_first):
    """Counters at one edge of the window, each with the time it was read; the server's CPU
    is read closest to the window."""
    snap = {}

    def cpu():
        snap["cpu"] = (time.monotonic(), cpu_seconds(server.proc.pid),
                       *(cpu_seconds(p) for p in load_pids))
        snap["cores"] = core_times()

    def others():
        text = http_get(camera_url)
        snap["camera"] = (time.monotonic(),
                          metric(text, "lookout_camera_frames_published_total"),
                          metric(text, "lookout_bus_produced_bytes_total",
                                 {"topic": "lookout.frames"}))
        snap["server"] = (time.monotonic(), *server.frames_read())
        snap["sockets"] = (time.monotonic(), kafka_sockets(server.proc.pid, broker_ports))

    if cpu_first:
        cpu()
        others()
    else:
        others()
        cpu()
    return snap


def step(server, n, args, python, camera, camera_url, broker, broker_ports):
    lg = subprocess.Popen(
        [python, os.path.join(HERE, "loadgen.py"), "--url", server.url, "--clients", str(n),
         "--duration", str(args.duration), "--warmup-timeout", str(10 + n * 0.1)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = json.loads(lg.stdout.readline())
    load_pids = [lg.pid, camera.pid, broker.pid]
    before = snapshot(server, load_pids, camera_url, broker_ports, cpu_first=False)
    lg.stdin.write("go\n")
    lg.stdin.flush()
    json.loads(lg.stdout.readline())  # done
    after = snapshot(server, load_pids, camera_url, broker_ports, cpu_first=True)
    result = json.loads(lg.stdout.readline())
    lg.wait(30)

    window = result["seconds"]

    def rate(key, i):  # a counter's change per second between the two snapshots
        return (after[key][i] - before[key][i]) / (after[key][0] - before[key][0])

    wall_cpu = after["cpu"][0] - before["cpu"][0]
    cpu = after["cpu"][1] - before["cpu"][1]
    published = rate("camera", 1) * window
    frame_bytes = rate("camera", 2) / rate("camera", 1) if rate("camera", 1) else float("nan")
    expected = FPS * window
    dropped = rate("server", 2) * window
    if server.kind == "lookout":  # frames taken from Kafka, times their mean encoded size
        kafka_payload = rate("server", 1) * window * frame_bytes
    else:  # what every consumer received, as the app counted it
        kafka_payload = rate("server", 3) * window
    # TCP bytes from the broker; only connections open at both edges are comparable
    (t0, s0), (t1, s1) = before["sockets"], after["sockets"]
    kafka_tcp = sum(s1[k] - s0[k] for k in s1 if k in s0) * window / (t1 - t0)
    kafka_tcp_churn = len(set(s0) ^ set(s1))
    clients = result["per_client"]
    delivered = [c["distinct"] for c in clients]
    skipped = [max(0.0, 1 - d / expected) * 100 for d in delivered]
    parts = sum(c["parts"] for c in clients)
    r = {
        "server": server.kind, "clients": n, "seconds": window,
        "warm_clients": ready["warm_clients"], "warmup_s": ready["warmup_s"],
        "published_fps": published / window,
        "frame_bytes": frame_bytes,
        "fps_per_client": statistics.mean(delivered) / window,
        # against the camera's nominal 30 fps: what a viewer of a 30 fps camera misses
        "skipped_pct": max(0.0, 1 - sum(delivered) / (n * expected)) * 100,
        "worst_skipped_pct": max(skipped),
        # against what the camera managed to publish in the window
        "skipped_of_published_pct": max(0.0, 1 - sum(delivered) / (n * published)) * 100
        if published else float("nan"),
        "ingest_dropped_pct": max(0.0, dropped / published * 100) if published else 0.0,
        "backward_pct": sum(c["backward"] for c in clients) / parts * 100 if parts else 0.0,
        "cpu_pct": cpu / wall_cpu * 100,
        "cpu_ms_per_client_s": cpu * 1000 / (wall_cpu * n),
        "load_cpu_pct": sum(after["cpu"][i] - before["cpu"][i] for i in (2, 3, 4))
        / wall_cpu * 100,
        # each core's busy share, every process on the machine included
        **{f"core{c}_busy_pct": (after["cores"][c][0] - before["cores"][c][0])
           / max(1, after["cores"][c][1] - before["cores"][c][1]) * 100
           for c in (LOAD_CORE, SERVER_CORE)},
        # the load core's share per process: load generator, camera, broker
        "loadgen_cpu_pct": (after["cpu"][2] - before["cpu"][2]) / wall_cpu * 100,
        "camera_cpu_pct": (after["cpu"][3] - before["cpu"][3]) / wall_cpu * 100,
        "broker_cpu_pct": (after["cpu"][4] - before["cpu"][4]) / wall_cpu * 100,
        "kafka_mb": kafka_payload / 1e6,
        "kafka_tcp_mb": kafka_tcp / 1e6,
        "kafka_tcp_connections_changed": kafka_tcp_churn,
        "served_mb": result["bytes"] / 1e6,
        "bad_parts": sum(c["bad"] for c in clients),
        "errors": sorted({c["error"] for c in clients if c["error"]}),
    }
    # Let the server see every stream close before the next step.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if server.clients() == 0:
                break
        except OSError:
            pass
        time.sleep(0.2)
    return r


def versions(python, lookout):
    crate = crate_version
    py = subprocess.run([python, "-c", (
        "import sys, confluent_kafka, flask, waitress, google.protobuf as p;"
        "from importlib.metadata import version as v;"
        "print(sys.version.split()[0], confluent_kafka.__version__,"
        " confluent_kafka.libversion()[0], v('flask'), v('werkzeug'), v('waitress'),"
        " p.__version__)")],
        capture_output=True, text=True, check=True).stdout.split()
    rustc, cpu = rustc_version(), cpu_model()
    return [
        f"machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}; servers on core "
        f"{SERVER_CORE}, load generator, camera and broker on core {LOAD_CORE}",
        f"Lookout: {rustc.strip()}, axum {crate('axum')}, hyper {crate('hyper')}, "
        f"tokio {crate('tokio')}, rdkafka {crate('rdkafka')} "
        f"(librdkafka {crate('rdkafka-sys').split('+')[-1]})",
        f"Python {py[0]}: Flask {py[3]}, Werkzeug {py[4]}, waitress {py[5]}, "
        f"confluent-kafka {py[1]} (librdkafka {py[2]}), protobuf {py[6]}",
    ]


def median(xs):
    xs = [x for x in xs if x == x]  # NaN: a counter that could not be read
    return statistics.median(xs) if xs else float("nan")


def table(results, rounds):
    rows = ["| clients | server | rounds | camera frames/s | frames/s per client "
            "| skipped % (worst client) | CPU % of one core | CPU ms per client-second "
            "| Kafka MB read |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n in sorted({r["clients"] for r in results}):
        for kind, name in SERVERS.items():
            rs = [r for r in results if r["server"] == kind and r["clients"] == n]
            if not rs:
                continue

            def med(key):
                return median([r[key] for r in rs])

            flag = " †" if any(load_busy(r) >= LOAD_SATURATED for r in rs) else ""
            rows.append(
                f"| {n} | {name} | {len(rs)} of {rounds} | {med('published_fps'):.1f} | "
                f"{med('fps_per_client'):.1f} | "
                f"{med('skipped_pct'):.1f} ({med('worst_skipped_pct'):.1f}){flag} | "
                f"{med('cpu_pct'):.0f} | {med('cpu_ms_per_client_s'):.2f} | "
                f"{med('kafka_mb'):,.1f} |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description="Lookout viewer vs the Flask design, MJPEG fan-out")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0, help="measured seconds per step")
    ap.add_argument("--steps", default=",".join(map(str, STEPS)),
                    help="client counts, ascending")
    ap.add_argument("--servers", default="lookout,flask")
    ap.add_argument("--fetch-wait-ms", type=int, default=FETCH_WAIT_MS,
                    help="fetch.wait.max.ms of both servers' consumers")
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    kinds = args.servers.split(",")

    if not os.path.exists("/proc/self/stat") or os.cpu_count() < 2:
        sys.exit("needs Linux and 2 CPUs (one for the server, one for the load)")
    python = setup_venv(PYTHON_PACKAGES)
    lookout = build_lookout()
    os.makedirs(OUT, exist_ok=True)
    # This script and everything it starts run on the load core; servers are pinned apart.
    os.sched_setaffinity(0, {LOAD_CORE})
    broker, addr = start_broker(lookout, "viewer-broker.log")
    broker_ports = listening_ports(broker.pid)
    camera, camera_url = start_camera(lookout, addr)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    results = []
    try:
        for rnd in range(args.rounds):
            order = kinds if rnd % 2 == 0 else kinds[::-1]
            for kind in order:
                log(f"round {rnd + 1}/{args.rounds}: {SERVERS[kind]}")
                server = Server(kind, lookout, python, addr, max(steps), args.fetch_wait_ms)
                try:
                    for n in steps:
                        r = step(server, n, args, python, camera, camera_url, broker,
                                 broker_ports)
                        r["round"] = rnd
                        results.append(r)
                        log(f"  {n:4d} clients: {r['fps_per_client']:5.1f} fps/client, skipped "
                            f"{r['skipped_pct']:5.1f}% (worst client "
                            f"{r['worst_skipped_pct']:.1f}%), camera {r['published_fps']:.1f} "
                            f"fps, CPU {r['cpu_pct']:4.0f}%, {r['cpu_ms_per_client_s']:.2f} "
                            f"ms/client-s, Kafka {r['kafka_mb']:.1f} MB (TCP "
                            f"{r['kafka_tcp_mb']:.1f}), load core {r['load_cpu_pct']:.0f}% "
                            f"(broker {r['broker_cpu_pct']:.0f}%), cores busy "
                            f"{r['core0_busy_pct']:.0f}%/{r['core1_busy_pct']:.0f}%"
                            + (f", dropped on arrival {r['ingest_dropped_pct']:.1f}%"
                               if r["ingest_dropped_pct"] else "")
                            + (f", errors {r['errors']}" if r["errors"] else "")
                            + (f", {r['bad_parts']} bad parts" if r["bad_parts"] else ""))
                        # Past SKIP_LIMIT, climb on to show where each design's cost goes;
                        # stop when clients lose a quarter of the frames, a core is full, or
                        # the camera itself falls behind (the broker is then the limit).
                        if r["skipped_pct"] >= STOP_SKIP or r["cpu_pct"] >= CPU_SATURATED \
                                or r["load_cpu_pct"] >= LOAD_STOP \
                                or r["published_fps"] < CAMERA_BEHIND * FPS \
                                or r["errors"] or r["bad_parts"]:
                            break
                finally:
                    server.stop()
    finally:
        camera.terminate()
        camera.wait()
        broker.terminate()
        broker.wait()
    with open(os.path.join(OUT, "viewer.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in results)
    report(results, args, kinds, steps, python, lookout, started, load_before)


def load_busy(r):
    """How busy the load core was: by our load processes, or by anything (other work too)."""
    return max(r["load_cpu_pct"], r.get(f"core{LOAD_CORE}_busy_pct", 0.0))


def limit(results, kind, rnd):
    """The largest client count of a round's climb before its first step with SKIP_LIMIT or
    more skipped (0 when the first step fails), and what that step shows: `cpu` (the
    server's core was full), `camera` (the camera published under 95% of its frames: the
    broker fell behind), `load` (the load core was saturated), `skip` (none of these), or
    `end` (no step failed: the climb ran out of steps or stopped at a saturated load core)."""
    best, rs = 0, sorted((r for r in results if r["server"] == kind and r["round"] == rnd),
                         key=lambda r: r["clients"])
    for r in rs:
        if r["skipped_pct"] >= SKIP_LIMIT or r["errors"] or r["bad_parts"]:
            if r["cpu_pct"] >= CPU_SATURATED:
                return best, "cpu"
            if r["published_fps"] < CAMERA_BEHIND * FPS:
                return best, "camera"
            return best, "load" if load_busy(r) >= LOAD_SATURATED else "skip"
        best = r["clients"]
    return best, "end"


def report(results, args, kinds, steps, python, lookout, started, load_before):
    print(f"\n{time.strftime('%Y-%m-%d')}, {args.rounds} rounds in "
          f"{time.monotonic() - started:.0f} s, {args.duration:g} s measured per step; "
          f"a {WIDTH}x{HEIGHT} synthetic camera at {FPS} fps, JPEG quality {JPEG_QUALITY}; "
          f"fetch.wait.max.ms {args.fetch_wait_ms}; medians over rounds; MB = 10^6 bytes")
    for line in versions(python, lookout):
        print(f"- {line}")
    sizes = [r["frame_bytes"] for r in results if r["frame_bytes"] == r["frame_bytes"]]
    print(f"- encoded Frame: {median(sizes):,.0f} B (median of steps)")
    print(f"- load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print()
    print(table(results, args.rounds))
    if any(load_busy(r) >= LOAD_SATURATED for r in results):
        print(f"\n† in at least one round the load core (load generator, camera, broker, and "
              f"any other work on the machine) was above {LOAD_SATURATED:.0f}% busy")
    print()
    heads = {}
    note = {"skip": "", "cpu": " (server core full)", "load": " (load core saturated)",
            "camera": " (camera below 95%: broker behind)", "end": " (no step failed)"}
    for kind in kinds:
        per_round = [limit(results, kind, rnd) for rnd in range(args.rounds)]
        best = median([b for b, _ in per_round])
        open_ended = sum(why in ("load", "end") for _, why in per_round) > len(per_round) / 2
        heads[kind] = (best, open_ended)
        print(f"- {SERVERS[kind]}: most clients with under {SKIP_LIMIT:g}% of frames skipped: "
              f"{'at least ' if open_ended else ''}{best:g} (median; per round: "
              f"{', '.join(f'{b}{note[why]}' for b, why in per_round)})")
    if len(kinds) == 2 and heads[kinds[1]][0] > 0:
        (a, a_open), (b, b_open) = heads[kinds[0]], heads[kinds[1]]
        at_least = "at least " if a_open and not b_open else ""
        print(f"- ratio {SERVERS[kinds[0]]} / {SERVERS[kinds[1]]}: {at_least}{a / b:.1f}×")
    for kind in kinds:
        rs = [r for r in results if r["server"] == kind]
        passing = [r["clients"] for r in rs if r["skipped_pct"] < SKIP_LIMIT and not r["errors"]]
        if passing:
            n = max(passing)
            ms = median([r["cpu_ms_per_client_s"] for r in rs if r["clients"] == n])
            dropped = max(r["ingest_dropped_pct"] for r in rs)
            backward = max(r["backward_pct"] for r in rs)
            print(f"- {SERVERS[kind]}: CPU at {n} clients (its largest step under "
                  f"{SKIP_LIMIT:g}% skipped in some round): {ms:.2f} ms per client-second; "
                  f"frames dropped on arrival at most {dropped:.1f}%, parts older than the "
                  f"one before at most {backward:.1f}% in a step")


if __name__ == "__main__":
    main()
