#!/bin/bash
# Baseline and cluster /v0/delegate throughput at concurrency 16, 32 and 64, interleaved, on
# one release testnet (5 nodes, t = 3, --fanout t) with the single-key server beside it, and
# the CPU each process spent per request in each run (from /proc tick counts; the load
# generator's from /usr/bin/time). ROUNDS rounds; in each, per concurrency: the baseline, then
# the cluster. With PER_ITEM=1 a second testnet, whose manager asks for one proof per partial
# (--delegation-proofs per-item, the path before aggregated proofs), runs beside the first
# and is measured right after it.
# usage: cargo build --release -p tkms-cli && bash cli/bench/sweep.sh
#        (DUR=seconds per run, R=binary, FANOUT=t|all|t+K, LEVELS="16 32 64", ROUNDS=n,
#         PER_ITEM=0|1)
set -eu
R=${R:-$(git rev-parse --show-toplevel)/target/release/tkms}
D=${D:-/tmp/tkms-bench/sweep}; DUR=${DUR:-8}; FANOUT=${FANOUT:-t}; LEVELS=${LEVELS:-16 32 64}
ROUNDS=${ROUNDS:-1}; PER_ITEM=${PER_ITEM:-0}
rm -rf "$D" "$D-per-item"; mkdir -p "$(dirname "$D")"
"$R" testnet up --nodes 5 --threshold 3 --data-dir "$D" --out "$D.json" --detach --fanout "$FANOUT" > "$D.up.log" 2>&1 || { cat "$D.up.log"; exit 1; }
P="$D-per-item"
if [ "$PER_ITEM" = 1 ]; then
  "$R" testnet up --nodes 5 --threshold 3 --data-dir "$P" --out "$P.json" --detach --fanout "$FANOUT" --manager-arg=--delegation-proofs=per-item > "$P.up.log" 2>&1 || { cat "$P.up.log"; exit 1; }
fi
"$R" baseline serve --registry-file "$D/manager/registry.json" --wallet-key-file "$D/manager/wallet.key" --listen 127.0.0.1:18999 > "$D.base.log" 2>&1 &
BP=$!
nodes() { python3 -c "import json;print(' '.join(str(n['pid']) for n in json.load(open('$1'))['nodes']))"; }
manager() { python3 -c "import json;print(json.load(open('$1'))['manager_pid'])"; }
ALL="$BP $(nodes "$D.json") $(manager "$D.json")"
if [ "$PER_ITEM" = 1 ]; then ALL="$ALL $(nodes "$P.json") $(manager "$P.json")"; fi
stop() { kill $ALL 2>/dev/null || true; }
trap stop EXIT
sleep 1
ticks() { for p in "$@"; do awk '{print $14+$15}' "/proc/$p/stat"; done | paste -sd+ | bc; }
# One run against testnet $2's manager (or the single-key server): throughput, latency, and
# CPU per request (µs) of the load generator, the single-key server, and that testnet's
# manager and five nodes together.
run() {
  local label=$1 testnet=$2 c=$3; shift 3
  local ns mp b m bb
  ns=$(nodes "$testnet"); mp=$(manager "$testnet")
  b=$(ticks $ns); m=$(ticks "$mp"); bb=$(ticks "$BP")
  /usr/bin/time -f "%U %S" -o "$D.time" "$R" bench delegate --api v0 --concurrency "$c" --duration "$DUR" --testnet "$testnet" "$@" > "$D.out"
  local n=$(( $(ticks $ns) - b )) mm=$(( $(ticks "$mp") - m )) single=$(( $(ticks "$BP") - bb ))
  python3 - "$label" "$c" "$D.out" "$D.time" "$n" "$mm" "$single" <<'EOF'
import json, sys
label, c, out, tm, nodes, manager, single = sys.argv[1:]
d = json.load(open(out)); n = max(d["requests_ok"], 1)
user, system = (float(x) for x in open(tm).read().split()[:2])
us = lambda ticks: int(ticks) * 10000 // n
server = us(single) if label == "baseline" else us(manager) + us(nodes)
print("c=%-3s %-9s %5.0f req/s  p50 %5.1f ms  p99 %5.1f ms  errors %s  CPU us/req: server %d (manager %d, nodes %d), client %d" % (
    c, label, d["requests_per_second"], d["p50_ms"], d["p99_ms"], d.get("errors"),
    server, us(manager) if label != "baseline" else 0, us(nodes) if label != "baseline" else 0,
    int((user + system) * 1e6 / n)))
EOF
}
"$R" bench delegate --api v0 --concurrency 8 --duration 2 --testnet "$D.json" > /dev/null
if [ "$PER_ITEM" = 1 ]; then "$R" bench delegate --api v0 --concurrency 8 --duration 2 --testnet "$P.json" > /dev/null; fi
for round in $(seq "$ROUNDS"); do
  echo "round $round ($(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg))"
  for c in $LEVELS; do
    run baseline "$D.json" "$c" --manager-url http://127.0.0.1:18999
    run cluster "$D.json" "$c"
    if [ "$PER_ITEM" = 1 ]; then run per-item "$P.json" "$c"; fi
  done
done
