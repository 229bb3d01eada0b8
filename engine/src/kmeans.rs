//! k-means for the IVF coarse quantizer — the "Clustering Model" that assigns each embedding to an
//! IVF list (docs/PROTOCOL.md §13) — with k-means++ seeding, Lloyd iterations and re-seeding of
//! empty lists; deterministic for a given seed. Assignment is parallel with rayon. Training uses L2
//! on prepared vectors (unit vectors for cosine); assigning items to lists and choosing the lists a
//! query probes ([`crate::scan::Probe`]) rank centroids by the index metric: L2, inner product, or
//! inner product with the normalized centroid.

use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::metric::{l2_squared, Metric};
use crate::scan::{Probe, MATCHED_TOGETHER};

/// Trains `k` centroids (flattened, `k · dim`) on `data` (flattened rows of `dim`).
/// Requires `k <= rows`.
pub(crate) fn train(data: &[f32], dim: usize, k: usize, iters: usize, seed: u64) -> Vec<f32> {
    let n = data.len() / dim;
    debug_assert!(k >= 1 && k <= n);
    let row = |i: usize| &data[i * dim..(i + 1) * dim];
    let mut rng = StdRng::seed_from_u64(seed);

    // k-means++ seeding.
    let mut centroids = Vec::with_capacity(k * dim);
    centroids.extend_from_slice(row(rng.gen_range(0..n)));
    let mut best: Vec<f32> = (0..n)
        .into_par_iter()
        .map(|i| l2_squared(row(i), &centroids[..dim]))
        .collect();
    for _ in 1..k {
        let total: f64 = best.iter().map(|d| f64::from(*d)).sum();
        let pick = if total > 0.0 {
            let mut target = rng.gen::<f64>() * total;
            let mut chosen = n - 1;
            for (i, d) in best.iter().enumerate() {
                target -= f64::from(*d);
                if target <= 0.0 {
                    chosen = i;
                    break;
                }
            }
            chosen
        } else {
            rng.gen_range(0..n)
        };
        let c = row(pick).to_vec();
        best.par_iter_mut().enumerate().for_each(|(i, b)| {
            *b = b.min(l2_squared(row(i), &c));
        });
        centroids.extend_from_slice(&c);
    }

    // Lloyd iterations.
    let mut assign = vec![0usize; n];
    for _ in 0..iters {
        let probe = Probe::new(&centroids, dim, Metric::Euclidean);
        let changed: usize = assign
            .par_chunks_mut(MATCHED_TOGETHER)
            .enumerate()
            .map_init(Vec::new, |scratch, (chunk, assigned)| {
                let first = chunk * MATCHED_TOGETHER;
                let rows: Vec<&[f32]> = (first..first + assigned.len()).map(row).collect();
                let nearest = probe.nearest_many(&rows, 1, scratch);
                let mut moved = 0;
                for (a, c) in assigned.iter_mut().zip(nearest) {
                    let c = c.first().map_or(0, |c| *c as usize);
                    moved += usize::from(*a != c);
                    *a = c;
                }
                moved
            })
            .sum();
        let mut sums = vec![0f64; k * dim];
        let mut counts = vec![0usize; k];
        for (i, &c) in assign.iter().enumerate() {
            counts[c] += 1;
            for (s, x) in sums[c * dim..(c + 1) * dim].iter_mut().zip(row(i)) {
                *s += f64::from(*x);
            }
        }
        let empty: Vec<usize> = (0..k).filter(|&c| counts[c] == 0).collect();
        let reseeds = sample(&mut rng, n, empty.len().min(n));
        for (c, r) in empty.iter().zip(reseeds.iter()) {
            centroids[c * dim..(c + 1) * dim].copy_from_slice(row(r));
        }
        for c in 0..k {
            if counts[c] > 0 {
                #[allow(clippy::cast_possible_truncation)]
                for (dst, s) in centroids[c * dim..(c + 1) * dim]
                    .iter_mut()
                    .zip(&sums[c * dim..(c + 1) * dim])
                {
                    *dst = (s / counts[c] as f64) as f32;
                }
            }
        }
        if changed == 0 && empty.is_empty() {
            break;
        }
    }
    centroids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_separated_clusters() {
        let centers = [[0.0f32, 0.0], [10.0, 10.0], [-10.0, 10.0]];
        let mut data = Vec::new();
        for i in 0..300 {
            let c = centers[i % 3];
            let jitter = (i as f32 * 0.618).fract() - 0.5;
            data.extend_from_slice(&[c[0] + jitter, c[1] - jitter]);
        }
        let cents = train(&data, 2, 3, 20, 7);
        let probe = Probe::new(&cents, 2, Metric::Euclidean);
        for c in centers {
            let i = probe.nearest(&c, 1, &mut Vec::new())[0] as usize;
            assert!(l2_squared(&cents[i * 2..i * 2 + 2], &c) < 1.0);
        }
        assert_eq!(probe.nearest(&[10.0, 10.0], 2, &mut Vec::new()).len(), 2);
        assert_eq!(train(&data, 2, 3, 20, 7), cents, "deterministic for a seed");
    }
}
