//! Query and upsert throughput on synthetic clustered data (criterion).
//!
//! `cargo bench --bench query -- --quick` for a smoke run.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tkms_engine::{Client, Index, IndexConfig, IndexKey, Item, QueryParams, StorageConfig};

const DIM: usize = 64;
const N: usize = 10_000;

fn data(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let centers: Vec<Vec<f32>> = (0..32)
        .map(|_| (0..DIM).map(|_| rng.gen_range(-10.0f32..10.0)).collect())
        .collect();
    (0..n)
        .map(|_| {
            let c = &centers[rng.gen_range(0..centers.len())];
            c.iter().map(|x| x + rng.gen_range(-3.0f32..3.0)).collect()
        })
        .collect()
}

fn build(vectors: &[Vec<f32>]) -> (Client, Index) {
    let client = Client::new(StorageConfig::memory()).expect("memory store");
    let index = client
        .create_index(
            "bench",
            &IndexKey::generate(),
            IndexConfig::new(DIM).with_n_lists(100),
        )
        .expect("create");
    let items = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| Item::new(format!("id-{i}"), v.clone()))
        .collect();
    index.upsert(items).expect("upsert");
    index
        .train(&tkms_engine::TrainParams::default())
        .expect("train");
    (client, index)
}

fn bench_query(c: &mut Criterion) {
    let vectors = data(N, 1);
    let queries = data(64, 2);
    let (_client, index) = build(&vectors);
    let mut g = c.benchmark_group("query");
    for probes in [4, 16] {
        let params = QueryParams::new(10).n_probes(probes);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("single/n={N}/d={DIM}/probes={probes}"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % queries.len();
                black_box(index.query(&queries[i], &params).expect("query"))
            });
        });
        g.throughput(Throughput::Elements(queries.len() as u64));
        g.bench_function(format!("batch64/n={N}/d={DIM}/probes={probes}"), |b| {
            b.iter(|| black_box(index.query_batch(&queries, &params).expect("query")));
        });
    }
    g.finish();
}

fn bench_upsert(c: &mut Criterion) {
    let vectors = data(N, 3);
    let fresh = data(1000, 4);
    let (_client, index) = build(&vectors);
    let mut g = c.benchmark_group("upsert");
    g.throughput(Throughput::Elements(fresh.len() as u64));
    let mut round = 0u64;
    g.bench_function(format!("batch1000/d={DIM}"), |b| {
        b.iter_batched(
            || {
                round += 1;
                fresh
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Item::new(format!("new-{round}-{i}"), v.clone()))
                    .collect::<Vec<_>>()
            },
            |items| index.upsert(items).expect("upsert"),
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

criterion_group!(benches, bench_query, bench_upsert);
criterion_main!(benches);
