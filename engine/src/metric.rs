//! Distance metrics and their use in the two search stages (docs/PROTOCOL.md §13 "Optional
//! decryption": only the re-ranked candidates' exact vectors are decrypted).
//!
//! Distances are "smaller is closer": Euclidean returns the L2 distance, squared Euclidean
//! its square (CyborgDB's `squared_euclidean`; same ranking, no square root), cosine returns
//! `1 - cos(q, v)`, dot product returns `-q·v`. For cosine, vectors are normalized before
//! clustering and quantization ("prepared"), so every stage works on unit vectors.

use serde::{Deserialize, Serialize};

/// How closeness is measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Metric {
    /// L2 distance.
    #[default]
    Euclidean,
    /// `1 - cosine similarity`.
    Cosine,
    /// Negated inner product (maximum inner product search).
    DotProduct,
    /// Squared L2 distance: ranks exactly like [`Metric::Euclidean`], reports `‖q - v‖²`.
    SquaredEuclidean,
}

impl Metric {
    /// The vector as the index stores it for clustering and codes: normalized for cosine.
    pub(crate) fn prepare(self, v: &[f32]) -> Vec<f32> {
        match self {
            Metric::Cosine => normalized(v),
            Metric::Euclidean | Metric::SquaredEuclidean | Metric::DotProduct => v.to_vec(),
        }
    }

    /// Ranking key between two *prepared* vectors (monotone in [`Metric::finish`]); the
    /// search uses [`crate::scan::exact_rank`], this lane-summed form is the tests' reference.
    #[cfg(test)]
    pub(crate) fn rank(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::Euclidean | Metric::SquaredEuclidean => l2_squared(a, b),
            Metric::Cosine => 1.0 - dot(a, b),
            Metric::DotProduct => -dot(a, b),
        }
    }

    /// The distance reported to the caller for a ranking key.
    pub(crate) fn finish(self, rank: f32) -> f32 {
        match self {
            Metric::Euclidean => rank.max(0.0).sqrt(),
            Metric::SquaredEuclidean => rank.max(0.0),
            Metric::Cosine | Metric::DotProduct => rank,
        }
    }
}

/// Number of independent accumulators: lets the compiler vectorize float sums, which it may
/// not reorder on its own.
pub(crate) const LANES: usize = 8;

/// `Σ f(a_i, b_i)` over equal-length slices with [`LANES`] accumulators.
#[inline]
pub(crate) fn lane_sum<A: Copy, B: Copy>(a: &[A], b: &[B], f: impl Fn(A, B) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l]);
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| f(*x, *y)).sum();
    acc.iter().sum::<f32>() + tail
}

pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    lane_sum(a, b, |x, y| x * y)
}

pub(crate) fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    lane_sum(a, b, |x, y| {
        let d = x - y;
        d * d
    })
}

pub(crate) fn normalized(v: &[f32]) -> Vec<f32> {
    let n = dot(v, v).sqrt();
    if n > 0.0 && n.is_finite() {
        v.iter().map(|x| x / n).collect()
    } else {
        v.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics() {
        let a = [3.0, 4.0];
        let b = [0.0, 0.0];
        assert!((Metric::Euclidean.finish(Metric::Euclidean.rank(&a, &b)) - 5.0).abs() < 1e-6);
        let pa = Metric::Cosine.prepare(&a);
        let pc = Metric::Cosine.prepare(&[6.0, 8.0]);
        assert!(Metric::Cosine.rank(&pa, &pc).abs() < 1e-6);
        assert!((Metric::DotProduct.rank(&a, &a) + 25.0).abs() < 1e-6);
        let sq = Metric::SquaredEuclidean;
        assert!((sq.finish(sq.rank(&a, &b)) - 25.0).abs() < 1e-6);
        assert_eq!(Metric::Cosine.prepare(&[0.0, 0.0]), vec![0.0, 0.0]);
    }
}
