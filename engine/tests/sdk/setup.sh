#!/usr/bin/env bash
# Creates (or checks) the venv of the older CyborgDB SDK generation that engine/tests/sdk.rs
# runs beside the current one: <repo>/.venv-cyborgdb-0.12 with the pins of
# requirements-cyborgdb-0.12.txt. Idempotent: does nothing when the venv already imports the
# pinned version. The current SDK (cyborgdb 0.18.0) comes from the root requirements-test.txt
# (<repo>/.venv). Override the venv's location with TKMS_CYBORGDB_012_VENV.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
venv="${TKMS_CYBORGDB_012_VENV:-$repo/.venv-cyborgdb-0.12}"
check='import importlib.metadata as m, cyborgdb, numpy; assert m.version("cyborgdb") == "0.12.0"'
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  -r "$here/requirements-cyborgdb-0.12.txt"
"$venv/bin/python" -c "$check"
echo "cyborgdb 0.12.0 installed in $venv"
