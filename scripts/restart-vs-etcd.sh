#!/usr/bin/env bash
# Restart time, memory and disk use, synod against etcd, on the same machine in
# one run.
#
# For each round and each system (interleaved: synod, etcd, synod, etcd, ...):
# start three members as separate processes with the same etcd flags, load KEYS
# keys of 256 bytes with `synod bench`, read the members' resident memory, stop
# them with SIGTERM, measure the data directories, start them again and time
# from the launch of the processes to the first acknowledged write (an etcdctl
# put, retried every few milliseconds), and read their memory once more.
#
# Usage: scripts/restart-vs-etcd.sh [KEYS] [ROUNDS]   (defaults: 200000 2)
# Needs: etcd and etcdctl (Debian: etcd-server, etcd-client), and a release build
# (cargo build --release). Traffic stays on 127.0.0.1; everything started is
# stopped on exit.
set -euo pipefail
KEYS=${1:-200000}
ROUNDS=${2:-2}
SYNOD=${SYNOD:-$(dirname "$0")/../target/release/synod}
export ETCDCTL_API=3
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

ports=(52379 52479 52579)
cluster="m1=http://127.0.0.1:52380,m2=http://127.0.0.1:52480,m3=http://127.0.0.1:52580"
endpoints="127.0.0.1:52379,127.0.0.1:52479,127.0.0.1:52579"

start() { # SYSTEM DIR
  local sys=$1 dir=$2 i cp pp
  pids=()
  for i in 1 2 3; do
    cp=${ports[$((i - 1))]}
    pp=$((cp + 1))
    local cmd=(etcd)
    [ "$sys" = synod ] && cmd=("$SYNOD" serve)
    "${cmd[@]}" --name "m$i" --data-dir "$dir/m$i" \
      --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
      --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
      --initial-cluster "$cluster" --initial-cluster-token restart-bench \
      --initial-cluster-state new >>"$dir/m$i.log" 2>&1 &
    pids+=($!)
  done
}

stop() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

# Resident memory of the running members together, in MB.
rss_mb() {
  local kb=0 p
  for p in "${pids[@]}"; do kb=$((kb + $(awk '/^VmRSS/ {print $2}' /proc/$p/status))); done
  echo $((kb / 1024))
}

# Milliseconds from $1 (ns since the epoch) to the first acknowledged write.
first_write_ms() {
  local t0=$1
  until etcdctl --endpoints="$endpoints" --dial-timeout=200ms --command-timeout=300ms \
    put restart-probe x >/dev/null 2>&1; do
    sleep 0.005
  done
  echo $((($(date +%s%N) - t0) / 1000000))
}

echo "| round | system | keys | RSS after load (MB, 3 members) | disk after load (MB) | start to first write, restarted (ms) | RSS after restart (MB) |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for round in $(seq 1 "$ROUNDS"); do
  for sys in ${SYSTEMS:-synod etcd}; do
    dir="$work/$sys-$round"
    mkdir -p "$dir"
    start "$sys" "$dir"
    first_write_ms "$(date +%s%N)" >/dev/null
    "$SYNOD" bench --endpoints "$endpoints" --clients 64 --requests "$KEYS" --keys "$KEYS" \
      >"$dir/bench.log"
    rss=$(rss_mb)
    stop
    mb=$(du -sm "$dir" | cut -f1)
    t0=$(date +%s%N)
    start "$sys" "$dir"
    ms=$(first_write_ms "$t0")
    rss2=$(rss_mb)
    stop
    echo "| $round | $sys | $KEYS | $rss | $mb | $ms | $rss2 |"
    [ -n "${KEEP:-}" ] || rm -rf "$dir"
  done
done
