//! k-means for the IVF coarse quantizer — the "Clustering Model" that assigns each embedding
//! to a cluster in seed 002 §2 — with k-means++ seeding, Lloyd iterations and re-seeding of
//! empty lists; deterministic for a given seed. Assignment is parallel with rayon. Training
//! uses L2 on prepared vectors (unit vectors for cosine); assigning items to lists and
//! choosing the lists a query probes ([`nearest_by`], [`nearest_n`]) rank centroids by the
//! index metric: L2, inner product, or inner product with the normalized centroid.

use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::metric::{dot, l2_squared, Metric};

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
        let changed: usize = assign
            .par_iter_mut()
            .enumerate()
            .map(|(i, a)| {
                let c = nearest(&centroids, dim, row(i));
                let moved = usize::from(*a != c);
                *a = c;
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

/// Index of the centroid nearest (L2) to `v`.
pub(crate) fn nearest(centroids: &[f32], dim: usize, v: &[f32]) -> usize {
    let mut best = (0, f32::INFINITY);
    for (i, c) in centroids.chunks_exact(dim).enumerate() {
        let d = l2_squared(c, v);
        if d < best.1 {
            best = (i, d);
        }
    }
    best.0
}

/// How well centroid `c` matches the prepared vector `v` under `metric` (smaller is better;
/// never NaN).
fn centroid_rank(metric: Metric, c: &[f32], v: &[f32]) -> f32 {
    let r = match metric {
        Metric::Euclidean => l2_squared(c, v),
        Metric::DotProduct => -dot(c, v),
        Metric::Cosine => {
            let n = dot(c, c).sqrt();
            if n > 0.0 {
                -dot(c, v) / n
            } else {
                0.0
            }
        }
    };
    if r.is_nan() {
        f32::INFINITY
    } else {
        r
    }
}

/// Index of the list `v` belongs to under `metric`.
pub(crate) fn nearest_by(centroids: &[f32], dim: usize, v: &[f32], metric: Metric) -> usize {
    let mut best = (0, f32::INFINITY);
    for (i, c) in centroids.chunks_exact(dim).enumerate() {
        let d = centroid_rank(metric, c, v);
        if d < best.1 {
            best = (i, d);
        }
    }
    best.0
}

/// Indices of the `n` centroids best matching `v` under `metric`, best first (ties by
/// index).
pub(crate) fn nearest_n(
    centroids: &[f32],
    dim: usize,
    v: &[f32],
    n: usize,
    metric: Metric,
) -> Vec<usize> {
    let mut d: Vec<(f32, usize)> = centroids
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, c)| (centroid_rank(metric, c, v), i))
        .collect();
    let cmp = |a: &(f32, usize), b: &(f32, usize)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    let n = n.min(d.len());
    if n < d.len() {
        d.select_nth_unstable_by(n, cmp);
        d.truncate(n);
    }
    d.sort_by(cmp);
    d.into_iter().map(|(_, i)| i).collect()
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
        for c in centers {
            let i = nearest(&cents, 2, &c);
            assert!(l2_squared(&cents[i * 2..i * 2 + 2], &c) < 1.0);
        }
        assert_eq!(
            nearest_n(&cents, 2, &[10.0, 10.0], 2, Metric::Euclidean).len(),
            2
        );
        assert_eq!(train(&data, 2, 3, 20, 7), cents, "deterministic for a seed");
    }
}

#[cfg(test)]
mod metric_tests {
    use super::*;

    #[test]
    fn lists_are_ranked_by_the_index_metric() {
        let cents = [1.0f32, 0.0, 10.0, 0.0];
        let v = [2.0, 0.0];
        assert_eq!(nearest_by(&cents, 2, &v, Metric::Euclidean), 0);
        assert_eq!(nearest_by(&cents, 2, &v, Metric::DotProduct), 1);
        assert_eq!(nearest_n(&cents, 2, &v, 2, Metric::DotProduct), vec![1, 0]);
        let cos = [3.0f32, 4.0, 0.0, 0.5];
        let u = [0.0, 1.0];
        // L2 prefers the short centroid, cosine the one pointing the same way.
        assert_eq!(nearest_by(&cos, 2, &u, Metric::Euclidean), 1);
        assert_eq!(nearest_by(&cos, 2, &[0.6, 0.8], Metric::Cosine), 0);
    }
}
