//! Scalar quantization (SQ8) of the first search stage.
//!
//! Decrypting full fp32 vectors for every probed item is what limits an encrypted IVF-Flat
//! (issue: ~11 MB/query at 384-d); like CyborgDB's DiskIVF, the first stage scans compact
//! codes and only `rerank_mult·top_k` exact vectors are decrypted. Each segment carries its
//! own per-dimension `min`/`scale` (trained on the segment's own vectors), so no global
//! quantizer training is needed and small segments quantize almost exactly.

use serde::{Deserialize, Serialize};

use crate::metric::{lane_sum, Metric, LANES};

/// Per-dimension affine 8-bit quantizer: `x ≈ min + scale · code`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sq8 {
    min: Vec<f32>,
    scale: Vec<f32>,
}

impl Sq8 {
    /// Fits the quantizer to `vectors` (all of length `dim`, at least one).
    pub(crate) fn fit<'a>(dim: usize, vectors: impl IntoIterator<Item = &'a [f32]>) -> Self {
        let mut min = vec![f32::INFINITY; dim];
        let mut max = vec![f32::NEG_INFINITY; dim];
        for v in vectors {
            for ((lo, hi), x) in min.iter_mut().zip(max.iter_mut()).zip(v) {
                *lo = lo.min(*x);
                *hi = hi.max(*x);
            }
        }
        let scale = min
            .iter_mut()
            .zip(&max)
            .map(|(lo, hi)| {
                if !lo.is_finite() {
                    *lo = 0.0;
                    return 0.0;
                }
                (hi - *lo) / 255.0
            })
            .collect();
        Self { min, scale }
    }

    pub(crate) fn dim(&self) -> usize {
        self.min.len()
    }

    /// Appends the code of `v` to `out`.
    pub(crate) fn encode(&self, v: &[f32], out: &mut Vec<u8>) {
        for ((x, lo), s) in v.iter().zip(&self.min).zip(&self.scale) {
            let c = if *s > 0.0 {
                ((x - lo) / s).round()
            } else {
                0.0
            };
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            out.push(c.clamp(0.0, 255.0) as u8);
        }
    }

    /// A scorer giving the approximate ranking key of `query` (prepared) against codes.
    pub(crate) fn scorer(&self, metric: Metric, query: &[f32]) -> Scorer {
        match metric {
            Metric::Euclidean | Metric::SquaredEuclidean => Scorer::L2 {
                shifted: query.iter().zip(&self.min).map(|(q, m)| q - m).collect(),
                scale: self.scale.clone(),
            },
            Metric::Cosine | Metric::DotProduct => Scorer::Dot {
                base: query.iter().zip(&self.min).map(|(q, m)| q * m).sum(),
                weights: query.iter().zip(&self.scale).map(|(q, s)| q * s).collect(),
                offset: if metric == Metric::Cosine { 1.0 } else { 0.0 },
            },
        }
    }
}

/// Approximate distance of one query to SQ8 codes of one segment.
pub(crate) enum Scorer {
    L2 {
        shifted: Vec<f32>,
        scale: Vec<f32>,
    },
    Dot {
        base: f32,
        weights: Vec<f32>,
        offset: f32,
    },
}

impl Scorer {
    /// Ranking key (same scale as [`Metric::rank`]) of one code.
    pub(crate) fn rank(&self, code: &[u8]) -> f32 {
        match self {
            Scorer::L2 { shifted, scale } => {
                // Σ (q'_i − s_i·c_i)², vectorizable: first s_i·c_i per lane, then the square.
                let mut acc = [0f32; LANES];
                let chunks = shifted
                    .chunks_exact(LANES)
                    .zip(scale.chunks_exact(LANES))
                    .zip(code.chunks_exact(LANES));
                for ((q, s), c) in chunks {
                    for l in 0..LANES {
                        let d = q[l] - s[l] * f32::from(c[l]);
                        acc[l] += d * d;
                    }
                }
                let done = shifted.len() / LANES * LANES;
                let tail: f32 = (done..shifted.len())
                    .map(|i| {
                        let d = shifted[i] - scale[i] * f32::from(code[i]);
                        d * d
                    })
                    .sum();
                acc.iter().sum::<f32>() + tail
            }
            Scorer::Dot {
                base,
                weights,
                offset,
            } => offset - (base + lane_sum(weights, code, |w, c| w * f32::from(c))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sq8_approximates_distances() {
        let vs: Vec<Vec<f32>> = (0..50)
            .map(|i| {
                (0..8)
                    .map(|d| ((i * 7 + d * 3) % 17) as f32 * 0.37 - 2.0)
                    .collect()
            })
            .collect();
        let q: Vec<f32> = (0..8).map(|d| d as f32 * 0.1).collect();
        for metric in [Metric::Euclidean, Metric::DotProduct, Metric::Cosine] {
            let prepared: Vec<Vec<f32>> = vs.iter().map(|v| metric.prepare(v)).collect();
            let pq = metric.prepare(&q);
            let sq = Sq8::fit(8, prepared.iter().map(Vec::as_slice));
            assert_eq!(sq.dim(), 8);
            let scorer = sq.scorer(metric, &pq);
            for v in &prepared {
                let mut code = Vec::new();
                sq.encode(v, &mut code);
                let exact = metric.rank(&pq, v);
                let approx = scorer.rank(&code);
                assert!(
                    (exact - approx).abs() < 0.05 * (1.0 + exact.abs()),
                    "{metric:?}"
                );
            }
        }
    }

    #[test]
    fn constant_dimension_is_exact() {
        let vs = [vec![1.0, 5.0], vec![1.0, 6.0]];
        let sq = Sq8::fit(2, vs.iter().map(Vec::as_slice));
        let mut code = Vec::new();
        sq.encode(&vs[0], &mut code);
        let s = sq.scorer(Metric::Euclidean, &vs[0]);
        assert!(s.rank(&code) < 1e-6);
    }
}
