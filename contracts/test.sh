#!/usr/bin/env bash
# Installs the pinned tools if needed and runs the contract tests:
#   1. forge test (src/ + test/, solc from npm through scripts/solc, offline);
#   2. scripts/anvil-smoke.js: deploys the committed artifact on the npm anvil over JSON-RPC.
# Extra arguments go to `forge test` (e.g. -vvv, --match-test NAME).
# Exits non-zero on any failure; the last line is "contracts: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")"
source scripts/install.sh
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

set +e
"$FORGE" test "$@" 2>&1 | tee "$log"
forge_status=${PIPESTATUS[0]}
node scripts/anvil-smoke.js 2>&1 | tee -a "$log"
smoke_status=${PIPESTATUS[0]}
set -e

passed=0
failed=0
if summary="$(grep -Eo '[0-9]+ tests passed, [0-9]+ failed' "$log" | tail -1)"; then
  passed=$((passed + $(sed -E 's/^([0-9]+) tests passed.*/\1/' <<<"$summary")))
  failed=$((failed + $(sed -E 's/.* ([0-9]+) failed$/\1/' <<<"$summary")))
elif [[ $forge_status -eq 0 ]]; then
  echo "contracts: could not read forge's summary" >&2
  forge_status=1
fi
if smoke="$(grep -Eo '^anvil-smoke: [0-9]+ passed, [0-9]+ failed' "$log" | tail -1)"; then
  passed=$((passed + $(sed -E 's/^anvil-smoke: ([0-9]+) passed.*/\1/' <<<"$smoke")))
  failed=$((failed + $(sed -E 's/.* ([0-9]+) failed$/\1/' <<<"$smoke")))
fi
[[ $forge_status -eq 0 ]] || echo "contracts: forge test failed (exit $forge_status)" >&2
[[ $smoke_status -eq 0 ]] || echo "contracts: anvil smoke test failed (exit $smoke_status)" >&2
echo "contracts: $passed passed, $failed failed"
[[ $forge_status -eq 0 && $smoke_status -eq 0 ]]
