#!/usr/bin/env python3
"""`just bench-bus`: Lookout's bus against Python confluent-kafka and raw rdkafka, same broker,
same run.

Sets up bench/.venv (confluent-kafka, protobuf, grpcio-tools), builds the `lookout` command and
the bus bench, starts one embedded broker (`lookout broker --listen 127.0.0.1:0`), then for
each round runs crates/lookout-bus/benches/bus.rs (Lookout's typed bus, then raw rdkafka with
`--impl raw`) and bench/bus/bench_confluent.py for each message size, in a rotating order. Every run works in fresh topics under its own
prefix; the embedded broker auto-creates them with 4 partitions on first use, for both sides.
Prints the machine, the versions and a Markdown table of medians; the raw JSON lines go to
bench/out/bus.jsonl.

    python3 bench/bus/run.py [--rounds 5]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import (OUT, ROOT, bench_executable, build_lookout, cpu_model, crate_version,  # noqa: E402
                    rustc_version, setup_venv, start_broker)

PYTHON_PACKAGES = ["confluent-kafka==2.16.1", "protobuf==7.36.2", "grpcio-tools==1.85.1"]

# Per size: messages per repeat, repeats per run. The embedded broker keeps at most 5 MiB per
# partition (4 partitions here), and every repeat's messages must still be there to be read:
# 50k Rust records of 100 B (with Lookout's ~200 B of headers) are ~15 MiB; 401 of 50 KB, ~20 MiB.
SIZES = {100: (50_000, 4), 51_200: (400, 5)}

# (operation, Lookout's implementation, confluent-kafka's, the row's label)
ROWS = [
    ("produce", "lookout-rust", "python-confluent",
     "produce, an acknowledgement per message: `enqueue` + `Pending::wait` / `produce()`"),
    ("produce", "lookout-rust-batched", "python-confluent",
     "produce, acknowledged as a batch: `Publisher::batch` / `produce()`"),
    ("consume", "lookout-rust", "python-confluent-poll",
     "consume, one at a time: `Subscriber::run` / `poll()`"),
    ("consume", "lookout-rust-batched", "python-confluent-consume",
     "consume, batches of 1000: `run_batched` / `consume(1000)`"),
]
RAW = "raw-rdkafka"


def build():
    return build_lookout(), bench_executable("lookout-bus", "bus")


def run_bench(cmd, notes):
    """Runs one bench; returns its JSON lines. Retention warnings are kept as notes."""
    print("+", " ".join(os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c for c in cmd),
          file=sys.stderr, flush=True)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    sys.stderr.write(done.stderr)
    notes += [line for line in done.stderr.splitlines() if line.startswith("retention:")]
    if done.returncode != 0:
        sys.exit(f"bench failed with exit code {done.returncode}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def versions(python):
    crate = crate_version
    py = subprocess.run([python, "-c", (
        "import sys, confluent_kafka, google.protobuf as p;"
        "from google.protobuf.internal import api_implementation as a;"
        "print(sys.version.split()[0], confluent_kafka.__version__,"
        " confluent_kafka.libversion()[0], p.__version__, a.Type())")],
        capture_output=True, text=True, check=True).stdout.split()
    rustc, cpu = rustc_version(), cpu_model()
    return [
        f"machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}",
        f"Lookout: {rustc.strip()}, rdkafka {crate('rdkafka')} "
        f"(librdkafka {crate('rdkafka-sys').split('+')[-1]}), prost {crate('prost')}",
        f"Python {py[0]}: confluent-kafka {py[1]} (librdkafka {py[2]}), "
        f"protobuf {py[3]} ({py[4]} backend)",
        "broker: `lookout broker` (librdkafka's mock cluster, librdkafka "
        f"{crate('rdkafka-sys').split('+')[-1]}), topics auto-created with 4 partitions",
    ]


def median(results, impl, op, size, key="msg_per_s"):
    xs = [r[key] for r in results if (r["impl"], r["op"], r["size"]) == (impl, op, size)]
    return statistics.median(xs) if xs else float("nan")


def table(results):
    rows = ["| operation | frame size | Lookout msg/s | confluent-kafka msg/s | raw rdkafka msg/s "
            "| Lookout / confluent-kafka | Lookout / raw |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for op, ours_impl, theirs_impl, label in ROWS:
        for size in SIZES:
            ours = median(results, ours_impl, op, size)
            theirs = median(results, theirs_impl, op, size)
            raw = median(results, RAW, op, size)
            rows.append(f"| {label} | {size:,} B | {ours:,.0f} | {theirs:,.0f} | {raw:,.0f} | "
                        f"{ours / theirs:.2f}× | {ours / raw:.2f}× |")
    return "\n".join(rows)


def spread(results):
    """Each implementation's slowest and fastest round, to judge the medians."""
    lines = []
    impls = sorted({r["impl"] for r in results})
    for op in ("produce", "consume"):
        for size in SIZES:
            for impl in impls:
                xs = [r["msg_per_s"] for r in results
                      if (r["impl"], r["op"], r["size"]) == (impl, op, size)]
                if xs:
                    lines.append(f"- {op} {size:,} B {impl}: {min(xs):,.0f} .. "
                                 f"{max(xs):,.0f} msg/s")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description="Lookout's bus vs Python confluent-kafka")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    python = setup_venv(PYTHON_PACKAGES)
    lookout, bench = build()
    broker, addr = start_broker(lookout, "broker.log")
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    results, notes = [], []
    try:
        for rnd in range(args.rounds):
            for size, (messages, repeat) in SIZES.items():
                common = ["--brokers", addr, "--size", str(size), "--messages", str(messages),
                          "--repeat", str(repeat)]
                rust = [bench, *common, "--prefix", f"bench{rnd}-rust-{size}."]
                raw = [bench, "--impl", "raw", *common, "--prefix", f"bench{rnd}-raw-{size}."]
                py = [python, os.path.join(ROOT, "bench", "bus", "bench_confluent.py"),
                      *common, "--prefix", f"bench{rnd}-py-{size}."]
                order = [rust, py, raw]
                for cmd in order[rnd % 3:] + order[:rnd % 3]:
                    for r in run_bench(cmd, notes):
                        r["round"] = rnd
                        results.append(r)
    finally:
        broker.terminate()
        broker.wait()
    with open(os.path.join(OUT, "bus.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in results)

    print(f"\n{time.strftime('%Y-%m-%d')}, {args.rounds} rounds in "
          f"{time.monotonic() - started:.0f} s; medians over rounds; "
          "MB = 10^6 bytes of encoded Frame")
    for line in versions(python):
        print(f"- {line}")
    print(f"- load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print()
    print(table(results))
    print("\nslowest .. fastest round:")
    print(spread(results))
    print("\nretention: " + ("; ".join(notes) if notes else
                             "every run read back exactly the frames it produced"))


if __name__ == "__main__":
    main()
