#!/usr/bin/env bash
# Prints the gas table used in GAS.md: one realistic life cycle (test/Gas.t.sol) where every
# top-level call is its own transaction (--isolate), so numbers include the 21000 base cost.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/install.sh
"$FORGE" test --match-contract TkmsRegistryGas --isolate --gas-report "$@"
