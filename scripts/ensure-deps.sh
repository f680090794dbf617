#!/usr/bin/env bash
# Installs what building and testing Mecha needs on Debian/Ubuntu when it is missing:
#   cmake (Pingora's zlib-ng build), a C compiler, redis-server (the Redis component tests),
#   in test mode as root iptables + iproute2 (the original-destination test's network
#   namespace; it skips itself when not root), and in test mode, when pip can, Python
#   grpcio + grpcio-tools (the cross-stack test) and xds-protos (the scripted xDS control
#   plane, xds/tests/control_plane/ads_server.py).
# As root with apt-get it installs them; otherwise it says exactly what to install and fails.
# Usage: scripts/ensure-deps.sh [build|test|bench]
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have cargo || { echo "error: cargo not found: install Rust (https://rustup.rs), then re-run" >&2; exit 1; }
have cmake || need+=(cmake)
have cc || need+=(build-essential)
case "${1:-build}" in
  test) have redis-server || need+=(redis-server)
        # integration/tests/original_dst.rs: a netns, a veth pair and an iptables REDIRECT.
        if [ "$(id -u)" = 0 ]; then have iptables || need+=(iptables); have ip || need+=(iproute2); fi ;;
  bench) have redis-server || need+=(redis-server); have h2load || need+=(nghttp2-client)
         have redis-benchmark || need+=(redis-tools) ;;
esac
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && have apt-get; then
    echo "installing: ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "error: missing packages: ${need[*]}" >&2
    echo "install them (Debian/Ubuntu: sudo apt-get install ${need[*]}) and re-run" >&2
    exit 1
  fi
fi
# Optional, test mode only: Python grpcio + grpcio-tools for the cross-stack end-to-end test
# (integration/tests/e2e/cross_stack.rs) and xds-protos for the scripted ADS control plane
# (xds/tests/control_plane/ads_server.py: xds/tests/ads.rs and the xDS integration tests); the
# tests skip themselves, saying why, when they are missing.
# Best effort: a failed install never fails this script.
if [ "${1:-build}" = test ] && have python3 \
   && ! python3 -c 'import grpc, grpc_tools.protoc, envoy.service.discovery.v3.ads_pb2_grpc' >/dev/null 2>&1; then
  if python3 -m pip --version >/dev/null 2>&1; then
    echo "installing python packages: grpcio grpcio-tools xds-protos (cross-stack and xDS tests)" >&2
    python3 -m pip install -q --disable-pip-version-check grpcio grpcio-tools xds-protos >/dev/null 2>&1 \
      || echo "warning: pip install grpcio grpcio-tools xds-protos failed; the cross-stack and xDS control-plane tests will be skipped" >&2
  fi
fi
exit 0
