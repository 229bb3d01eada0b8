#!/bin/bash
# /v0/delegate throughput with the front door on (audit logs at the manager and the nodes,
# quotas at their defaults) and off (no audit log anywhere, every quota off), in one run: two
# release testnets (5 nodes, t = 3, --fanout t) side by side, benchmarked in turn at
# concurrency 16, 32 and 64, ROUNDS times. Both keep the bounded listeners and the replay
# journals (they cost nothing on /v0). Prints one line per measurement.
# usage: cargo build --release -p tkms-cli && bash cli/bench/front.sh   (DUR=s, ROUNDS=n, R=binary,
#        ON_ARGS="--manager-arg=--audit-sync=always": more arguments for the 'on' testnet)
set -eu
R=${R:-$(git rev-parse --show-toplevel)/target/release/tkms}
D=${D:-/tmp/tkms-bench/front}; DUR=${DUR:-8}; ROUNDS=${ROUNDS:-3}
rm -rf "$D"; mkdir -p "$D"
"$R" testnet up --nodes 5 --threshold 3 --data-dir "$D/on" --out "$D/on.json" --detach --fanout t ${ON_ARGS:-} > "$D/on.up.log" 2>&1 || { cat "$D/on.up.log"; exit 1; }
"$R" testnet up --nodes 5 --threshold 3 --data-dir "$D/off" --out "$D/off.json" --detach --fanout t --node-arg=--no-audit-log > "$D/off.up.log" 2>&1 || { cat "$D/off.up.log"; exit 1; }
pids() { python3 -c "import json;t=json.load(open('$1'));print(' '.join(str(x) for x in [t['manager_pid']]+[n['pid'] for n in t['nodes']]))"; }
stop() { for p in $(pids "$D/on.json") $(pids "$D/off.json"); do kill "$p" 2>/dev/null || true; done; }
trap stop EXIT
# The 'off' manager again, without its audit log and with every quota off.
kill "$(python3 -c "import json;print(json.load(open('$D/off.json'))['manager_pid'])")"
sleep 1
python3 - "$D/off.json" "$D/off.manager.log" <<'EOF' > "$D/off.pid"
import json, subprocess, sys
path, log = sys.argv[1], sys.argv[2]
t = json.load(open(path))
cmd, skip = [], 0
for a in t["manager_command"]:
    if skip:
        skip -= 1
        continue
    if a in ("--audit-log", "--nonce-journal"):
        skip = 1
        continue
    cmd.append(a)
# The testnet starts the manager with --config FILE: the same file without the two settings.
if "--config" in cmd:
    k = cmd.index("--config") + 1
    lines = open(cmd[k]).read().splitlines()
    off = cmd[k].replace(".toml", ".off.toml")
    open(off, "w").write("\n".join(l for l in lines if not l.startswith(("audit-log", "nonce-journal"))) + "\n")
    cmd[k] = off
cmd += ["--quota-gateway", "off", "--quota-runner", "off", "--quota-client-address", "off", "--quota-admin", "off"]
p = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
t["manager_pid"] = p.pid
json.dump(t, open(path, "w"))
print(p.pid)
EOF
for i in $(seq 50); do curl -sf "$(python3 -c "import json;print(json.load(open('$D/off.json'))['manager_url'])")/v0/public-key" > /dev/null && break; sleep 0.2; done
for side in on off; do "$R" bench delegate --api v0 --concurrency 8 --duration 2 --testnet "$D/$side.json" > /dev/null; done
fmt='import json,sys; d=json.load(sys.stdin); print("%5.0f req/s  p50 %5.1f ms  p99 %5.1f ms  errors %s" % (d["requests_per_second"], d["p50_ms"], d["p99_ms"], d.get("errors")))'
for round in $(seq "$ROUNDS"); do
  for c in 16 32 64; do
    # Alternate which side goes first, so neither always runs on a warmer machine.
    order="on off"; [ $((round % 2)) = 0 ] && order="off on"
    for side in $order; do
      echo -n "round $round c=$c front door $side: "
      "$R" bench delegate --api v0 --concurrency $c --duration "$DUR" --testnet "$D/$side.json" | python3 -c "$fmt"
    done
  done
done
echo "manager audit entries: $(wc -l < "$D/on/manager/audit.jsonl"); node 1: $(wc -l < "$D/on/node-1/audit.jsonl")"
