#!/bin/bash
# Baseline and cluster /v0/delegate throughput at concurrency 16, 32 and 64, interleaved, on
# one release testnet (5 nodes, t = 3, --fanout t) with the single-key server beside it, and
# the CPU each process spent per request in each run (from /proc tick counts; the load
# generator's from /usr/bin/time).
# usage: cargo build --release -p tkms-cli && bash cli/bench/sweep.sh
#        (DUR=seconds per run, R=binary, FANOUT=t|all|t+K, LEVELS="16 32 64")
set -eu
R=${R:-$(git rev-parse --show-toplevel)/target/release/tkms}
D=${D:-/tmp/tkms-bench/sweep}; DUR=${DUR:-8}; FANOUT=${FANOUT:-t}; LEVELS=${LEVELS:-16 32 64}
rm -rf "$D"; mkdir -p "$(dirname "$D")"
"$R" testnet up --nodes 5 --threshold 3 --data-dir "$D" --out "$D.json" --detach --fanout "$FANOUT" > "$D.up.log" 2>&1 || { cat "$D.up.log"; exit 1; }
"$R" baseline serve --registry-file "$D/manager/registry.json" --wallet-key-file "$D/manager/wallet.key" --listen 127.0.0.1:18999 > "$D.base.log" 2>&1 &
BP=$!
NODES=$(python3 -c "import json;print(' '.join(str(n['pid']) for n in json.load(open('$D.json'))['nodes']))")
MP=$(python3 -c "import json;print(json.load(open('$D.json'))['manager_pid'])")
stop() { kill "$BP" $NODES "$MP" 2>/dev/null || true; }
trap stop EXIT
sleep 1
ticks() { for p in "$@"; do awk '{print $14+$15}' "/proc/$p/stat"; done | paste -sd+ | bc; }
# One run: throughput, latency, and CPU per request (µs) of the load generator, the
# single-key server, the manager and the five nodes together.
run() {
  local label=$1 c=$2; shift 2
  local b m bb
  b=$(ticks $NODES); m=$(ticks "$MP"); bb=$(ticks "$BP")
  /usr/bin/time -f "%U %S" -o "$D.time" "$R" bench delegate --api v0 --concurrency "$c" --duration "$DUR" --testnet "$D.json" "$@" > "$D.out"
  local nodes=$(( $(ticks $NODES) - b )) manager=$(( $(ticks "$MP") - m )) single=$(( $(ticks "$BP") - bb ))
  python3 - "$label" "$c" "$D.out" "$D.time" "$nodes" "$manager" "$single" <<'EOF'
import json, sys
label, c, out, tm, nodes, manager, single = sys.argv[1:]
d = json.load(open(out)); n = max(d["requests_ok"], 1)
user, system = (float(x) for x in open(tm).read().split()[:2])
us = lambda ticks: int(ticks) * 10000 // n
print("c=%-3s %-9s %5.0f req/s  p50 %5.1f ms  p99 %5.1f ms  errors %s  CPU us/req: client %d, single-key %d, manager %d, nodes %d" % (
    c, label, d["requests_per_second"], d["p50_ms"], d["p99_ms"], d.get("errors"),
    int((user + system) * 1e6 / n), us(single), us(manager), us(nodes)))
EOF
}
"$R" bench delegate --api v0 --concurrency 8 --duration 2 --testnet "$D.json" > /dev/null
for c in $LEVELS; do
  run baseline "$c" --manager-url http://127.0.0.1:18999
  run cluster "$c"
done
