#!/bin/bash
# Baseline and cluster /v0/delegate throughput at concurrency 16, 32 and 64, interleaved, on
# one release testnet (5 nodes, t = 3, --fanout t) with the single-key server beside it.
# usage: cargo build --release -p tkms-cli && bash cli/bench/sweep.sh   (DUR=seconds, R=binary)
set -eu
R=${R:-$(git rev-parse --show-toplevel)/target/release/tkms}
D=${D:-/tmp/tkms-bench/sweep}; DUR=${DUR:-8}
rm -rf "$D"; mkdir -p "$(dirname "$D")"
"$R" testnet up --nodes 5 --threshold 3 --data-dir "$D" --out "$D.json" --detach --fanout t > "$D.up.log" 2>&1 || { cat "$D.up.log"; exit 1; }
"$R" baseline serve --registry-file "$D/manager/registry.json" --wallet-key-file "$D/manager/wallet.key" --listen 127.0.0.1:18999 > "$D.base.log" 2>&1 &
BP=$!
stop() {
  kill "$BP" 2>/dev/null || true
  for p in $(python3 -c "import json;t=json.load(open('$D.json'));print(' '.join(str(x) for x in [t['manager_pid']]+[n['pid'] for n in t['nodes']]))"); do kill "$p" 2>/dev/null || true; done
}
trap stop EXIT
sleep 1
"$R" bench delegate --api v0 --concurrency 8 --duration 2 --testnet "$D.json" > /dev/null
fmt='import json,sys; d=json.load(sys.stdin); print("%5.0f req/s  p50 %5.1f ms  p99 %5.1f ms  errors %s" % (d["requests_per_second"], d["p50_ms"], d["p99_ms"], d.get("errors")))'
for c in 16 32 64; do
  echo -n "c=$c baseline: "; "$R" bench delegate --api v0 --concurrency $c --duration "$DUR" --manager-url http://127.0.0.1:18999 --testnet "$D.json" | python3 -c "$fmt"
  echo -n "c=$c cluster:  "; "$R" bench delegate --api v0 --concurrency $c --duration "$DUR" --testnet "$D.json" | python3 -c "$fmt"
done
