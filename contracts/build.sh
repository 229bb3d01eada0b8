#!/usr/bin/env bash
# Compiles src/ with the pinned npm solc into artifacts/TkmsRegistry.json
# ({contractName, sourceName, abi, bytecode, deployedBytecode, compiler: {version, settings}}).
# Usage: bash contracts/build.sh [output-dir]   (default: contracts/artifacts)
set -euo pipefail
cd "$(dirname "$0")"
source scripts/install.sh
node scripts/compile.js "${1:-artifacts}"
