#!/bin/bash
# Across an emulated WAN (docs/BENCHMARKS.md "Across a WAN"): for each round trip in RTTS, a
# `tkms testnet up --netns` cluster with LOSS % loss on every link: the DKG time for n = 5
# (t = 3) and n = 16 (t = 11), one reshare of the 5-node cluster to itself, and /v0/delegate
# throughput and latency (`tkms bench`, concurrency 16, DUR s) from the host (which sees half
# the RTT to the manager). Needs root, iproute2 and iptables. Prints one line per figure.
# usage: sudo bash cli/bench/wan.sh   (R=binary, RTTS="20 50 150", LOSS=1, DUR=10, NS="5 16",
#        UP_ARGS="more testnet up flags", e.g. "--delegation-batches-in-flight 4")
set -eu
R=${R:-$(git rev-parse --show-toplevel)/target/release/tkms}
D=${D:-/tmp/tkms-bench/wan}; DUR=${DUR:-10}; RTTS=${RTTS:-20 50 150}; LOSS=${LOSS:-1}; NS=${NS:-5 16}; UP_ARGS=${UP_ARGS:-}
rm -rf "$D"; mkdir -p "$D"
for rtt in $RTTS; do
  for n in $NS; do
    t=$(( n == 5 ? 3 : 2 * n / 3 + 1 )); name="$D/rtt$rtt-n$n"
    trap '"$R" testnet down --data-dir "$name" --out "$name.json" || true' EXIT
    "$R" testnet up --netns --rtt-ms "$rtt" --loss-pct "$LOSS" --nodes "$n" --threshold "$t" \
      --round-timeout-ms 10000 $UP_ARGS --detach --data-dir "$name" --out "$name.json" > "$name.up.log" 2>&1 \
      || { cat "$name.up.log"; exit 1; }
    echo "rtt=$rtt loss=$LOSS n=$n t=$t $(grep -o 'DKG done in .*' "$name.up.log")"
    if [ "$n" = 5 ]; then
      get() { python3 -c "import json;t=json.load(open('$name.json'));print($1)"; }
      url=$(get "t['manager_url']"); token=$(get "t['admin_token']")
      nodes=$(get "json.dumps(['http://'+x['grpc_addr'] for x in t['nodes']])")
      start=$(date +%s.%N)
      curl -sf -X POST "$url/admin/reshare" -H "authorization: Bearer $token" \
        -H 'content-type: application/json' -d "{\"threshold\": $t, \"nodes\": $nodes}" > /dev/null
      echo "rtt=$rtt loss=$LOSS n=$n reshare 5->5 in $(python3 -c "print(f'{$(date +%s.%N) - $start:.2f} s')")"
      "$R" bench delegate --api v0 --concurrency 16 --duration 2 --testnet "$name.json" > /dev/null
      echo "rtt=$rtt loss=$LOSS n=$n /v0 c=16: $("$R" bench delegate --api v0 --concurrency 16 --duration "$DUR" --testnet "$name.json" | tr '\n' ' ')"
    fi
    "$R" testnet down --data-dir "$name" --out "$name.json"
    trap - EXIT
  done
done
