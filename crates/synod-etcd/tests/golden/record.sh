#!/usr/bin/env bash
# Records etcd's answers to the parity scenarios (tests/scenarios/) into this
# directory: starts a fresh single-member etcd (Debian: etcd-server) on
# loopback, runs the recorder, stops etcd. Run from anywhere:
#   crates/synod-etcd/tests/golden/record.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
port="${ETCD_GOLDEN_PORT:-24479}"
dir="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
etcd --name golden --data-dir "$dir/data" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-cluster "golden=http://127.0.0.1:$((port + 1))" >"$dir/etcd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$port" endpoint health >/dev/null 2>&1 && break
    sleep 0.1
done
etcd --version | head -1 >"$here/ETCD_VERSION"
cargo run -q -p synod-etcd --example record_golden -- "http://127.0.0.1:$port" "$here"
