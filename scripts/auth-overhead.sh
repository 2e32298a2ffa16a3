#!/bin/bash
# The cost of auth on the request path: a fresh `synod up` per measurement
# (the store grows with every put, which slows later runs), interleaved
# rounds of auth off, on as root, and on as a user whose role grants
# readwrite on bench/. Run from the repository after `cargo build --release`.
B=${SYNOD:-target/release/synod}
EP=127.0.0.1:4379,127.0.0.1:14379,127.0.0.1:24379
E="etcdctl --endpoints 127.0.0.1:4379"
for round in 1 2 3; do
for mode in off root alice; do
  d=$(mktemp -d)
  setsid $B up --data-dir $d --base-port 4379 > $d/up.log 2>&1 &
  pid=$!
  for i in $(seq 100); do $E endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
  user=""
  if [ $mode != off ]; then
    $E user add root:rootpw >/dev/null; $E role add root >/dev/null; $E user grant-role root root >/dev/null
    $E user add alice:apw >/dev/null; $E role add b >/dev/null; $E role grant-permission b readwrite bench/ --prefix=true >/dev/null; $E user grant-role alice b >/dev/null
    $E auth enable >/dev/null
    user="--user=$mode:$([ $mode = root ] && echo rootpw || echo apw)"
  fi
  for op in put get; do
    echo "round $round $mode $op: $($B bench --endpoints $EP --op $op --clients 64 --duration 4 --warmup 1 $user 2>&1 | grep requests/s | sed 's/.*endpoints: //')"
  done
  kill -TERM -$pid; wait $pid 2>/dev/null; rm -rf $d
done
done
