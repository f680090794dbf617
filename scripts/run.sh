#!/usr/bin/env bash
# Builds Mecha (release) and runs it; with no arguments on the embedded default config
# (runtime API on 127.0.0.1:34904, admin on 127.0.0.1:34999). Arguments go to `mecha run`,
# e.g. scripts/run.sh -c configs/redis.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh build
cargo build --release --bin mecha
exec target/release/mecha run "$@"
