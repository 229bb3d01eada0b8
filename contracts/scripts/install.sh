#!/usr/bin/env bash
# Installs the pinned chain tools (package-lock.json) into contracts/node_modules, once:
# skipped while node_modules matches the lock file. Sourced by build.sh, check-artifact.sh,
# test.sh and gas.sh; defines FORGE, ANVIL.
set -euo pipefail
CONTRACTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_lock_sum="$(sha256sum "$CONTRACTS_DIR/package-lock.json" "$CONTRACTS_DIR/package.json" | sha256sum | cut -d' ' -f1)"
_marker="$CONTRACTS_DIR/node_modules/.tkms-installed"
if [[ ! -f "$_marker" || "$(cat "$_marker")" != "$_lock_sum" ]]; then
  command -v npm >/dev/null || { echo "contracts: npm (Node.js >= 20) is required" >&2; exit 1; }
  echo "contracts: installing pinned chain tools (npm ci)" >&2
  (cd "$CONTRACTS_DIR" && npm ci --no-audit --no-fund --loglevel=error >&2)
  echo "$_lock_sum" > "$_marker"
fi
FORGE="$CONTRACTS_DIR/node_modules/@foundry-rs/forge-linux-amd64/bin/forge"
ANVIL="$CONTRACTS_DIR/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
export FORGE ANVIL
