#!/usr/bin/env bash
# Every check CI runs: formatting, clippy (-D warnings), and all tests — unit, component
# conformance against a real redis-server, and end-to-end tests against the real binary.
# Redis: set REDIS_URL to use a server you run; otherwise the tests start throw-away
# redis-server instances on free ports (AOF on) and stop them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh test
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests spawn target/debug/mecha: build it first.
cargo build --locked --bin mecha
cargo test --workspace --locked
