#!/usr/bin/env bash
# Runs the Redis component tests (capabilities/tests/redis_*.rs) against a real redis-server.
#
#   scripts/test-redis.sh [extra cargo test args]
#
# Environment:
#   REDIS_URL     optional, e.g. redis://127.0.0.1:6379/0 — the non-destructive tests (behaviour,
#                 conformance) use this server, isolating their keys and topics with unique
#                 prefixes and never flushing anything. Unset: each test binary starts its own
#                 throw-away redis-server (free port, temp dir, AOF with appendfsync always).
#                 The fault tests (redis_faults.rs) kill and restart Redis, so they ALWAYS start
#                 their own throw-away server, whatever REDIS_URL says.
#   REDIS_SERVER  optional path to the redis-server binary (default: redis-server on PATH).
#
# redis-server is installed with apt-get when missing and we are root.
set -euo pipefail
cd "$(dirname "$0")/.."

server="${REDIS_SERVER:-redis-server}"
if ! command -v "$server" >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "redis-server not found; installing it with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q redis-server >/dev/null ||
      { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; }
  else
    echo "redis-server not found: install it, or set REDIS_SERVER to its path" >&2
    exit 1
  fi
fi

exec cargo test -p mecha-capabilities --test 'redis_*' "$@"
