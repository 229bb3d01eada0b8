#!/usr/bin/env bash
# CI check: rebuilds the artifacts from the sources into a temporary directory and compares
# them with the committed contracts/artifacts/. Exit 0 if identical, 1 on any difference.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/install.sh
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
node scripts/compile.js "$tmp" >/dev/null
if diff -ru artifacts "$tmp" > "$tmp.diff" 2>&1; then
  rm -f "$tmp.diff"
  echo "contracts: committed artifacts match the sources"
else
  head -c 4000 "$tmp.diff" >&2
  rm -f "$tmp.diff"
  echo >&2
  echo "contracts: committed artifacts are stale: run 'bash contracts/build.sh' and commit contracts/artifacts/" >&2
  exit 1
fi
