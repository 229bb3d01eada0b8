#!/bin/bash
# Across an emulated WAN (docs/BENCHMARKS.md "Across an emulated WAN"): for each round trip in
# RTTS, a `tkms testnet up --netns` cluster with LOSS % loss on every link: the DKG time for
# n = 5 (t = 3) and n = 16 (t = 11), as the client saw it and at the nodes (the longest
# "ceremony finished" of the node logs: the ceremony alone, what the simulator models), one
# reshare of the 5-node cluster to itself (the same two figures), and /v0/delegate throughput
# and latency (`tkms bench`, concurrency 16, DUR s) from the host (which sees half the RTT to
# the manager). REPS runs of each. Needs root, iproute2 and iptables. One line per figure.
# usage: sudo bash cli/bench/wan.sh   (R=binary, RTTS="20 50 150", LOSS=1, DUR=10, NS="5 16",
#        REPS=1, UP_ARGS="more testnet up flags", e.g. "--delegation-batches-in-flight 4")
set -eu
R=${R:-$(git rev-parse --show-toplevel)/target/release/tkms}
D=${D:-/tmp/tkms-bench/wan}; DUR=${DUR:-10}; RTTS=${RTTS:-20 50 150}; LOSS=${LOSS:-1}; NS=${NS:-5 16}
REPS=${REPS:-1}; UP_ARGS=${UP_ARGS:-}
# The longest "ceremony finished" of epoch $2 in the node logs under $1.
at_nodes() {
  python3 - "$1" "$2" <<'PY'
import glob, re, sys
times = []
for log in glob.glob(sys.argv[1] + "/node-*/node.log"):
    for line in open(log, errors="replace"):
        m = re.search(r"ceremony finished epoch=%s\b.*elapsed=([0-9.]+)(ms|µs|s)" % sys.argv[2],
                      re.sub(r"\x1b\[[0-9;]*m", "", line))
        if m:
            times.append(float(m.group(1)) * {"ms": 1e-3, "µs": 1e-6, "s": 1}[m.group(2)])
print(f"{max(times):.2f} s at the nodes" if times else "no ceremony in the node logs")
PY
}
rm -rf "$D"; mkdir -p "$D"
for rtt in $RTTS; do
  for n in $NS; do
    for rep in $(seq "$REPS"); do
      t=$(( n == 5 ? 3 : 2 * n / 3 + 1 )); name="$D/rtt$rtt-n$n-$rep"
      trap '"$R" testnet down --data-dir "$name" --out "$name.json" || true' EXIT
      "$R" testnet up --netns --rtt-ms "$rtt" --loss-pct "$LOSS" --nodes "$n" --threshold "$t" \
        --round-timeout-ms 10000 $UP_ARGS --detach --data-dir "$name" --out "$name.json" > "$name.up.log" 2>&1 \
        || { cat "$name.up.log"; exit 1; }
      echo "rtt=$rtt loss=$LOSS n=$n t=$t $(grep -o 'DKG done in .*' "$name.up.log"), $(at_nodes "$name" 1)"
      if [ "$n" = 5 ]; then
        get() { python3 -c "import json;t=json.load(open('$name.json'));print($1)"; }
        url=$(get "t['manager_url']"); token=$(get "t['admin_token']")
        nodes=$(get "json.dumps(['http://'+x['grpc_addr'] for x in t['nodes']])")
        start=$(date +%s.%N)
        curl -sf -X POST "$url/admin/reshare" -H "authorization: Bearer $token" \
          -H 'content-type: application/json' -d "{\"threshold\": $t, \"nodes\": $nodes}" > /dev/null
        echo "rtt=$rtt loss=$LOSS n=$n reshare 5->5 in $(python3 -c "print(f'{$(date +%s.%N) - $start:.2f} s')"), $(at_nodes "$name" 2)"
        if [ "$rep" = 1 ]; then
          "$R" bench delegate --api v0 --concurrency 16 --duration 2 --testnet "$name.json" > /dev/null
          echo "rtt=$rtt loss=$LOSS n=$n /v0 c=16: $("$R" bench delegate --api v0 --concurrency 16 --duration "$DUR" --testnet "$name.json" | tr '\n' ' ')"
        fi
      fi
      "$R" testnet down --data-dir "$name" --out "$name.json"
      trap - EXIT
    done
  done
done
