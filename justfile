# Lookout's everyday commands. `just --list` shows them; each is a plain cargo command too.

default:
    @just --list

# Format all code.
fmt:
    cargo fmt --all

# Clippy on everything, warnings are errors.
lint:
    cargo clippy --workspace --all-targets -- -D warnings

# The whole test suite (the README's test command).
test:
    cargo test --workspace

# What CI checks: formatting, lints, tests.
verify:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo test --workspace

# Supply chain against deny.toml: known vulnerabilities (RustSec, fetched from GitHub), licences,
# duplicate versions, sources. Needs `cargo install cargo-deny --locked`.
deny:
    cargo deny --locked check --hide-inclusion-graph

# Every fuzz target for SECONDS each (fuzz/: message decoding and headers, MJPEG splitting,
# predictor decode + preprocess, model manifests, log-record renderings, durations and sizes),
# starting from the corpus kept in fuzz/corpus; new inputs are added to it. Needs
# `cargo install cargo-fuzz --locked`; runs on the stable toolchain. No sanitizer: the C
# libraries under lookout-bus (librdkafka, zstd) do not build with AddressSanitizer, and the
# fuzzed code is safe Rust; panics, overflow checks and debug assertions are the findings.
fuzz SECONDS="60":
    cd fuzz && for t in $(cargo fuzz list); do cargo fuzz run --sanitizer none "$t" -- -max_total_time={{SECONDS}} || exit 1; done

# Many synthetic cameras through every service for a long time, cameras leaving and joining:
# memory of every service sampled each 10 s, every frame accounted for, latency; plots with
# matplotlib. `just soak` is 100 cameras for 10 minutes; `just soak --seconds 86400` a day.
soak *ARGS:
    python3 bench/soak/run.py {{ARGS}}

# The whole pipeline on this machine: open the printed viewer URL; Ctrl-C stops it.
demo *ARGS:
    cargo run --release -p lookout -- demo {{ARGS}}

# The whole pipeline in Docker (needs a Docker engine).
up:
    docker compose up --build

down:
    docker compose down

# Run an embedded Kafka broker on 127.0.0.1:9092.
broker:
    cargo run --release -p lookout -- broker

# Every benchmark.
bench: bench-bus bench-predictor bench-detector bench-viewer bench-recorder bench-e2e

# Bus throughput, Lookout vs Python confluent-kafka, on the same broker in the same run.
bench-bus:
    python3 bench/bus/run.py

# Predictor per-frame cost and frames/s: tract, the ONNX Runtime backend and Python onnxruntime;
# workers, threads and batches; pipeline vs bare model loop.
bench-predictor:
    python3 bench/predictor/run.py

# The object detector's per-frame cost and frames/s: tract against the ONNX Runtime backend.
bench-detector:
    python3 bench/predictor/detector.py

# MJPEG fan-out: clients one viewer serves on one core, vs a Flask consumer-per-client design.
bench-viewer:
    python3 bench/viewer/run.py

# Recorder: predictions/s with few and many changes, SQLite and Postgres.
bench-recorder:
    cargo bench -p lookout-recorder --bench recorder

# The whole pipeline at 30 fps: capture → predicted / shown latency and drops per stage.
bench-e2e:
    python3 bench/e2e/run.py
