#!/bin/bash
# CPU per /v0/delegate request of the load generator, the single-key server, and the cluster
# (nodes, manager), from /proc tick counts over one run at concurrency C (default 16).
# usage: cargo build --release -p tkms-cli && bash cli/bench/cpu.sh   (C=, R=binary)
set -eu
R=${R:-$(git rev-parse --show-toplevel)/target/release/tkms}
D=${D:-/tmp/tkms-bench/cpu}; C=${C:-16}
rm -rf "$D"; mkdir -p "$(dirname "$D")"
"$R" testnet up --nodes 5 --threshold 3 --data-dir "$D" --out "$D.json" --detach --fanout t > /dev/null 2>&1
"$R" baseline serve --registry-file "$D/manager/registry.json" --wallet-key-file "$D/manager/wallet.key" --listen 127.0.0.1:18999 > /dev/null 2>&1 &
BP=$!
pids=$(python3 -c "import json;print(' '.join(str(n['pid']) for n in json.load(open('$D.json'))['nodes']))")
MP=$(python3 -c "import json;print(json.load(open('$D.json'))['manager_pid'])")
trap 'kill $BP $pids $MP 2>/dev/null || true' EXIT
sleep 1
ticks() { for p in "$@"; do awk '{print $14+$15}' "/proc/$p/stat"; done | paste -sd+ | bc; }
run() {
  local label=$1; shift
  local b m bb n rps cl
  b=$(ticks $pids); m=$(ticks $MP); bb=$(ticks $BP)
  /usr/bin/time -f "%U %S" -o "$D.time" "$R" bench delegate --api v0 --concurrency "$C" --duration 6 --testnet "$D.json" "$@" > "$D.out"
  n=$(python3 -c "import json; d=json.load(open('$D.out')); print(d['requests_ok'])")
  rps=$(python3 -c "import json; d=json.load(open('$D.out')); print(int(d['requests_per_second']))")
  cl=$(awk '{printf "%d", ($1+$2)*1e6}' "$D.time")
  echo "$label: $rps req/s; load generator $((cl/n)) us/req; nodes $(( ($(ticks $pids)-b)*10000/n )) us/req; manager $(( ($(ticks $MP)-m)*10000/n )) us/req; single-key server $(( ($(ticks $BP)-bb)*10000/n )) us/req"
}
"$R" bench delegate --api v0 --concurrency 4 --duration 2 --testnet "$D.json" > /dev/null
run baseline --manager-url http://127.0.0.1:18999
run cluster
