#!/bin/bash
# /v0/delegate throughput of two builds of tkms, side by side in one run: a release 5/3
# testnet (--fanout t) started by each binary, measured in turn at concurrency 16, 32 and 64,
# ROUNDS rounds, with the same load generator (binary B's `tkms bench`), every answer checked.
# Extra arguments for each side's manager go in A_MANAGER_ARGS / B_MANAGER_ARGS (e.g.
# B_MANAGER_ARGS=--delegation-proofs=per-item to compare a build before the aggregated proofs
# on the same proof path); environment variables for each side's processes in A_ENV / B_ENV
# (e.g. B_ENV=TOKIO_WORKER_THREADS=1; `TKMS_*` ones are not passed on: the testnet sets its own).
# Each line also gives that testnet's CPU per request (manager and five nodes, from /proc
# tick counts over the run), steadier than throughput on a shared machine.
# usage: bash cli/bench/compare.sh A_BINARY B_BINARY   (DUR=s, ROUNDS=n, LEVELS="16 32 64")
set -eu
A=$1; B=$2
D=${D:-/tmp/tkms-bench/compare}; DUR=${DUR:-6}; ROUNDS=${ROUNDS:-3}; LEVELS=${LEVELS:-16 32 64}
rm -rf "$D"; mkdir -p "$D"
up() {
  local side=$1 bin=$2 extra=$3 vars=() args=()
  read -ra vars <<< "$4"
  for a in $extra; do args+=("--manager-arg=$a"); done
  env ${vars[@]+"${vars[@]}"} "$bin" testnet up --nodes 5 --threshold 3 --data-dir "$D/$side" --out "$D/$side.json" --detach --fanout t "${args[@]}" > "$D/$side.up.log" 2>&1 || { cat "$D/$side.up.log"; exit 1; }
}
up a "$A" "${A_MANAGER_ARGS:-}" "${A_ENV:-}"
up b "$B" "${B_MANAGER_ARGS:-}" "${B_ENV:-}"
pids() { python3 -c "import json;t=json.load(open('$1'));print(' '.join(str(x) for x in [t['manager_pid']]+[n['pid'] for n in t['nodes']]))"; }
stop() { for p in $(pids "$D/a.json") $(pids "$D/b.json"); do kill "$p" 2>/dev/null || true; done; }
trap stop EXIT
fmt='import json,sys; d=json.load(open(sys.argv[1])); us=int(sys.argv[2]); print("%5.0f req/s  p50 %5.1f ms  p99 %5.1f ms  errors %s  CPU %d us/req" % (d["requests_per_second"], d["p50_ms"], d["p99_ms"], d.get("errors"), us // max(d["requests_ok"], 1)))'
# utime + stime of each process in µs (fields 14 and 15 of /proc/PID/stat, counted after the
# command name, which may hold spaces).
HZ=$(getconf CLK_TCK)
ticks() { for p in $(pids "$1"); do sed 's/.*) //' "/proc/$p/stat"; done | awk -v hz="$HZ" '{s += $12 + $13} END {printf "%d\n", s * 1000000 / hz}'; }
for side in a b; do "$B" bench delegate --api v0 --concurrency 8 --duration 2 --testnet "$D/$side.json" > /dev/null; done
for round in $(seq "$ROUNDS"); do
  echo "round $round ($(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg))"
  for c in $LEVELS; do
    # Alternate which side goes first, so neither always runs on a warmer machine.
    order="a b"; [ $((round % 2)) = 0 ] && order="b a"
    for side in $order; do
      echo -n "c=$c $side: "
      before=$(ticks "$D/$side.json")
      "$B" bench delegate --api v0 --concurrency "$c" --duration "$DUR" --testnet "$D/$side.json" > "$D/out.json"
      python3 -c "$fmt" "$D/out.json" $(( $(ticks "$D/$side.json") - before ))
    done
  done
done
