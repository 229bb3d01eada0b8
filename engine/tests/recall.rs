//! Recall@10 of the IVF + SQ8 + re-rank search against brute-force ground truth.
// Helpers outside `#[test]` functions unwrap too: clippy's allow-unwrap-in-tests
// does not reach them.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Instant;

use common::{brute_force, id, Mixture};
use tkms_engine::{
    Client, IndexConfig, IndexKey, Item, Metric, QueryParams, StorageConfig, TrainParams,
};

fn recall_at_10(metric: Metric, n: usize, dim: usize, n_lists: usize, n_probes: usize) -> f64 {
    let sigma: f32 = std::env::var("TKMS_SIGMA")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6.0);
    let mut mix = Mixture::new(dim, 64, sigma, 42);
    let data = mix.points(n);
    let queries = mix.points(200);

    let client = Client::new(StorageConfig::memory()).unwrap();
    let key = IndexKey::generate();
    let cfg = IndexConfig::new(dim)
        .with_metric(metric)
        .with_n_lists(n_lists);
    let index = client.create_index("recall", &key, cfg).unwrap();

    let t = Instant::now();
    for (b, chunk) in data.chunks(5000).enumerate() {
        let items = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| Item::new(id(b * 5000 + i), v.clone()))
            .collect();
        index.upsert(items).unwrap();
    }
    let t_upsert = t.elapsed();
    let t = Instant::now();
    index.train(&TrainParams::default()).unwrap();
    let t_train = t.elapsed();
    assert!(index.is_trained());
    assert_eq!(index.len(), n);

    for probes in [1, 2, 4, n_lists] {
        let res = index
            .query_batch(&queries, &QueryParams::new(10).n_probes(probes))
            .unwrap();
        let hits: usize = queries
            .iter()
            .zip(&res)
            .map(|(q, r)| {
                let truth: HashSet<String> = brute_force(metric, &data, q, 10)
                    .into_iter()
                    .map(id)
                    .collect();
                r.iter().filter(|x| truth.contains(&x.id)).count()
            })
            .sum();
        eprintln!(
            "  probes={probes}: recall@10={:.4}",
            hits as f64 / (10 * queries.len()) as f64
        );
    }
    let t = Instant::now();
    let params = QueryParams::new(10).n_probes(n_probes);
    let results = index.query_batch(&queries, &params).unwrap();
    let t_query = t.elapsed();

    let mut hits = 0usize;
    for (q, res) in queries.iter().zip(&results) {
        assert_eq!(res.len(), 10);
        let truth: HashSet<String> = brute_force(metric, &data, q, 10)
            .into_iter()
            .map(id)
            .collect();
        hits += res.iter().filter(|r| truth.contains(&r.id)).count();
        assert!(res.windows(2).all(|w| w[0].distance <= w[1].distance));
    }
    let recall = hits as f64 / (10 * queries.len()) as f64;
    eprintln!(
        "{metric:?} n={n} dim={dim} lists={n_lists} probes={n_probes}: recall@10={recall:.4} \
         (upsert {t_upsert:?}, train {t_train:?}, 200 queries {t_query:?})"
    );
    recall
}

#[test]
fn euclidean_recall_20k_x_64() {
    let r = recall_at_10(Metric::Euclidean, 20_000, 64, 128, 8);
    assert!(r >= 0.95, "recall@10 = {r}");
}

#[test]
fn cosine_recall_5k_x_32() {
    let r = recall_at_10(Metric::Cosine, 5_000, 32, 32, 8);
    assert!(r >= 0.95, "recall@10 = {r}");
}

#[test]
fn dot_product_recall_5k_x_32() {
    let r = recall_at_10(Metric::DotProduct, 5_000, 32, 32, 8);
    assert!(r >= 0.95, "recall@10 = {r}");
}

#[test]
fn untrained_index_searches_exhaustively() {
    let mut mix = Mixture::new(16, 8, 1.0, 7);
    let data = mix.points(1000);
    let client = Client::new(StorageConfig::memory()).unwrap();
    let index = client
        .create_index("flat", &IndexKey::generate(), IndexConfig::new(16))
        .unwrap();
    index
        .upsert(
            data.iter()
                .enumerate()
                .map(|(i, v)| Item::new(id(i), v.clone()))
                .collect(),
        )
        .unwrap();
    assert!(!index.is_trained());
    for q in mix.points(20) {
        let res = index.query(&q, &QueryParams::new(5)).unwrap();
        let truth: Vec<String> = brute_force(Metric::Euclidean, &data, &q, 5)
            .into_iter()
            .map(id)
            .collect();
        let got: Vec<String> = res.into_iter().map(|r| r.id).collect();
        assert_eq!(got, truth);
    }
}
