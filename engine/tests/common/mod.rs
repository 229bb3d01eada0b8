//! Deterministic synthetic data shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used)] // shared test helpers

pub mod moto;
pub mod process;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Mutex;

use tkms_engine::store::{Applied, MemoryStore, Store, WriteBatch};
use tkms_engine::Metric;

/// A Gaussian mixture: `n` points in `dim` dimensions around `centers` random centers.
pub struct Mixture {
    pub dim: usize,
    centers: Vec<Vec<f32>>,
    sigma: f32,
    rng: StdRng,
}

impl Mixture {
    pub fn new(dim: usize, centers: usize, sigma: f32, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let centers = (0..centers)
            .map(|_| (0..dim).map(|_| rng.gen_range(-10.0f32..10.0)).collect())
            .collect();
        Self {
            dim,
            centers,
            sigma,
            rng,
        }
    }

    fn gauss(&mut self) -> f32 {
        // Box-Muller.
        let u1: f32 = self.rng.gen_range(f32::EPSILON..1.0);
        let u2: f32 = self.rng.gen();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }

    pub fn point(&mut self) -> Vec<f32> {
        let c = self.rng.gen_range(0..self.centers.len());
        let center = self.centers[c].clone();
        center
            .iter()
            .map(|x| x + self.sigma * self.gauss())
            .collect()
    }

    pub fn points(&mut self, n: usize) -> Vec<Vec<f32>> {
        (0..n).map(|_| self.point()).collect()
    }
}

pub fn distance(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    match metric {
        Metric::Euclidean | Metric::SquaredEuclidean => {
            a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
        }
        Metric::DotProduct => -dot,
        Metric::Cosine => {
            let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
            let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
            1.0 - dot / (na * nb)
        }
    }
}

/// Indices of the exact `k` nearest data points.
pub fn brute_force(metric: Metric, data: &[Vec<f32>], q: &[f32], k: usize) -> Vec<usize> {
    let mut d: Vec<(f32, usize)> = data
        .iter()
        .enumerate()
        .map(|(i, v)| (distance(metric, q, v), i))
        .collect();
    d.sort_by(|a, b| a.0.total_cmp(&b.0));
    d.into_iter().take(k).map(|(_, i)| i).collect()
}

pub fn id(i: usize) -> String {
    format!("item-{i:06}")
}

/// A store that remembers every key read and every batch applied.
#[derive(Default)]
pub struct RecordingStore {
    pub inner: MemoryStore,
    pub reads: Mutex<Vec<Vec<u8>>>,
    pub batches: Mutex<Vec<WriteBatch>>,
}

impl Store for RecordingStore {
    fn get(&self, key: &[u8]) -> tkms_engine::Result<Option<Vec<u8>>> {
        self.reads.lock().unwrap().push(key.to_vec());
        self.inner.get(key)
    }
    fn get_many(&self, keys: &[&[u8]]) -> tkms_engine::Result<Vec<Option<Vec<u8>>>> {
        self.reads
            .lock()
            .unwrap()
            .extend(keys.iter().map(|k| k.to_vec()));
        self.inner.get_many(keys)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> tkms_engine::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan_prefix(prefix)
    }
    fn apply(&self, batch: WriteBatch) -> tkms_engine::Result<Applied> {
        self.batches.lock().unwrap().push(batch.clone());
        self.inner.apply(batch)
    }
}
