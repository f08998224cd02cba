"""Helpers the benchmark scripts share: paths, the Python virtualenv of the peers, cargo
builds, the embedded broker, Prometheus pages, and the versions a result table names."""

import json
import os
import platform
import re
import socket
import subprocess
import sys
import urllib.request
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = os.path.join(ROOT, "bench", ".venv")
OUT = os.path.join(ROOT, "bench", "out")


def sh(cmd, **kw):
    """Runs a command in the checkout, echoing it; fails the benchmark if it fails."""
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, cwd=ROOT, check=True, **kw)


def setup_venv(packages):
    """bench/.venv with `packages` installed; returns its python."""
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        venv.create(VENV, with_pip=True)
    sh([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages])
    return python


def build_lookout():
    """The release `lookout` executable, built if needed."""
    sh(["cargo", "build", "--release", "-p", "lookout", "--bin", "lookout"])
    return os.path.join(ROOT, "target", "release", "lookout")


def bench_executable(package, bench, features=()):
    """Builds a cargo bench target (with cargo `features`) without running it and returns its
    executable."""
    extra = ["--features", ",".join(features)] if features else []
    out = sh(["cargo", "bench", "-p", package, "--bench", bench, *extra, "--no-run",
              "--message-format=json"], stdout=subprocess.PIPE, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == bench \
                and "bench" in msg["target"]["kind"] and msg.get("executable"):
            return msg["executable"]
    sys.exit(f"cargo did not report the {bench} bench executable")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(lookout, log_name):
    """Starts `lookout broker` on a free port; returns the process and its address."""
    os.makedirs(OUT, exist_ok=True)
    log_file = open(os.path.join(OUT, log_name), "w")
    broker = subprocess.Popen([lookout, "broker", "--listen", "127.0.0.1:0"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=log_file, text=True)
    first = broker.stdout.readline().strip()
    m = re.fullmatch(r"listening on (\S+)", first)
    if not m:
        broker.kill()
        sys.exit(f"the broker did not start: {first!r} (see bench/out/{log_name})")
    return broker, m.group(1)


def crate_version(name):
    """The version of a crate in Cargo.lock, or "?"."""
    lock = open(os.path.join(ROOT, "Cargo.lock")).read()
    m = re.search(rf'name = "{name}"\nversion = "([^"]+)"', lock)
    return m.group(1) if m else "?"


def cpu_model():
    return next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                 if line.startswith("model name")), platform.processor())


def rustc_version():
    return subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()


def scrape(url):
    """A Prometheus text page as {series: value}."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def pick(metrics, name, **labels):
    """Sum of a metric's series whose labels include `labels`."""
    total, found = 0.0, False
    for key, v in metrics.items():
        m = re.match(r"([^{]+)(?:\{(.*)\})?$", key)
        if m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v2 for k, v2 in labels.items()):
            total += v
            found = True
    return total if found else None
