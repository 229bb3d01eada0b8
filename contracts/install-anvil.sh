#!/usr/bin/env bash
# Installs the pinned anvil (npm @foundry-rs/anvil-linux-amd64, package-lock.json) into
# contracts/node_modules for the Rust tests and `tkms testnet up --chain`, and prints its path.
# Idempotent: reuses scripts/install.sh, which runs `npm ci` only when the lock file changed.
# The Rust side (tkms_registry::anvil::anvil_path) finds the binary there; TKMS_ANVIL
# overrides it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/install.sh"
if ! version="$("$ANVIL" --version 2>&1 | head -1)"; then
  echo "contracts: $ANVIL does not run: $version" >&2
  exit 1
fi
echo "contracts: $version at $ANVIL" >&2
echo "$ANVIL"
