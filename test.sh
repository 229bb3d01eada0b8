#!/usr/bin/env bash
# Runs every test of tkms, after installing what the tests need where it is missing.
#
#   ./test.sh            set up, then run every test (what CI runs, after fmt and clippy)
#   ./test.sh --setup    set up only (then e.g. `cargo test -p tkms-engine` works on its own)
#
# Set-up is idempotent and project-local (nothing is installed into the system):
#   - contracts/node_modules: the pinned anvil, forge and solc from npm (contracts/package-lock.json);
#     reinstalled only when the lock file changes;
#   - .venv: a Python virtual environment (no system site packages) with the pinned packages of
#     the requirements files below; reinstalled only when one of them (or the Python) changes.
# The tests find these by themselves (tkms_testkit: $TKMS_PYTHON, else .venv/bin/python, else
# python3; tkms_registry::anvil: $TKMS_ANVIL, else contracts/node_modules).
#
# Needs: root on Linux (tests/wan.rs makes network namespaces; iproute2 and iptables are
# installed with apt-get where missing), cargo, python3 (with venv), node and npm (>= 20), on a
# machine that reaches crates.io,
# PyPI and the npm registry the first time.
set -euo pipefail
cd "$(dirname "$0")"

# Python environments, one per line: "<venv dir> <requirements file>...". To add packages,
# add a requirements file to a line; to add an environment (e.g. an older SDK), add a line.
PYTHON_ENVS=(
  ".venv requirements-test.txt"
  # The older CyborgDB SDK generation (service API 0.12) that engine/tests/sdk.rs runs beside
  # the current one, against the same server.
  ".venv-cyborgdb-0.12 engine/tests/sdk/requirements-cyborgdb-0.12.txt"
)

# Build as CI does unless told otherwise: no debug info and no incremental state make the cold
# build of the many test binaries much faster on 2 cores. Run plain cargo with the same two
# variables to reuse this build.
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-false}"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

python_bin="${PYTHON:-python3}"

log() { echo "test.sh: $*" >&2; }

# Creates the venv $1 (if missing) and installs the requirements files $2... into it, unless
# it already holds exactly them (a stamp keeps their hash and the Python version).
setup_venv() {
  local dir="$1"
  shift
  local stamp="$dir/.tkms-requirements"
  local want
  want="$( (cat "$@"; "$python_bin" --version 2>&1) | sha256sum | cut -d' ' -f1)"
  if [[ -x "$dir/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  if [[ ! -x "$dir/bin/python" ]]; then
    log "creating the Python environment $dir"
    "$python_bin" -m venv "$dir"
  fi
  log "installing $* into $dir"
  local args=()
  for file in "$@"; do args+=(-r "$file"); done
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "${args[@]}"
  echo "$want" > "$stamp"
}

# tests/wan.rs runs a cluster across network namespaces: it needs iproute2 and iptables
# (Debian packages; as root, which CI is). Installed only where missing.
setup_network_tools() {
  local missing=()
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  if ((${#missing[@]})); then
    log "installing ${missing[*]} (tests/wan.rs)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
  fi
}

setup() {
  local started=$SECONDS
  setup_network_tools
  for env in "${PYTHON_ENVS[@]}"; do
    # shellcheck disable=SC2086 # one line holds the directory and its requirements files
    setup_venv $env
  done
  # The pinned chain tools; defines FORGE and ANVIL (contracts/scripts/install.sh).
  source contracts/scripts/install.sh
  "$ANVIL" --version >/dev/null
  log "set-up done in $((SECONDS - started)) s"
}

setup
if [[ "${1:-}" == "--setup" ]]; then
  exit 0
fi

echo "== the independent reference implementation (crypto/tests/vectors/reference.py)"
"${TKMS_PYTHON:-.venv/bin/python}" crypto/tests/vectors/reference.py selftest

echo "== contracts (npm-pinned solc/forge/anvil; the committed artifact must match the sources)"
bash contracts/check-artifact.sh
bash contracts/test.sh

echo "== cargo test --workspace"
cargo test --workspace --locked
