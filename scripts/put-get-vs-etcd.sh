#!/usr/bin/env bash
# Put and linearizable-get throughput, synod against etcd in one run: `synod up`
# (three serve processes) and three etcd processes on the same ports, the same
# client (`synod bench`, 64 clients, 20,000 requests), interleaved, two rounds.
# Needs etcd and etcdctl and a release build. Loopback only; stops what it starts.
set -u
S=${SYNOD:-$(dirname "$0")/../target/release/synod}
w=$(mktemp -d)
export ETCDCTL_API=3
EPS=127.0.0.1:22379,127.0.0.1:32379,127.0.0.1:42379
ready() { until etcdctl --endpoints=127.0.0.1:22379 --command-timeout=1s put x y >/dev/null 2>&1; do sleep 0.05; done; }
run_synod() { $S up --data-dir $w/s$1 --base-port 22379 >/dev/null 2>&1 & SP=$!; ready; }
stop_synod() { kill -TERM $SP; wait $SP; }
run_etcd() {
  ic="e1=http://127.0.0.1:22380,e2=http://127.0.0.1:32380,e3=http://127.0.0.1:42380"; EP=()
  for i in 1 2 3; do c=$((12379 + i*10000)); p=$((c+1))
    etcd --name e$i --data-dir $w/e$1-$i --listen-client-urls http://127.0.0.1:$c --advertise-client-urls http://127.0.0.1:$c \
      --listen-peer-urls http://127.0.0.1:$p --initial-advertise-peer-urls http://127.0.0.1:$p --initial-cluster $ic >/dev/null 2>&1 &
    EP+=($!); done; ready; }
stop_etcd() { kill -TERM ${EP[@]}; wait ${EP[@]} 2>/dev/null; }
for r in 1 2; do
  for op in put get; do
  run_synod $r$op; echo "synod r$r $op 64: $($S bench --endpoints $EPS --op $op --clients 64 --requests 20000 2>&1 | tail -1)"; stop_synod
  run_etcd $r$op; echo "etcd  r$r $op 64: $($S bench --endpoints $EPS --op $op --clients 64 --requests 20000 2>&1 | tail -1)"; stop_etcd
  done
done
rm -rf $w
