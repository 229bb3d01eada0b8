//! Shamir secret sharing with Feldman commitments and Lagrange interpolation (docs/PROTOCOL.md
//! §4 "Shares"): a degree `t-1` polynomial `f`, `share_i = f(i)`, commitments `A_k = a_k·G`,
//! public share `PK_i = Σ_k i^k·A_k`, `PK = A_0`, `λ_i^T = Π_{j∈T, j≠i} j/(j-i)`.

use core::fmt;
use std::collections::BTreeMap;

use elliptic_curve::group::Group;
use ff::{Field, PrimeField};
use rand_core::CryptoRngCore;
use zeroize::Zeroize;

pub use crate::index::NodeIndex;
use crate::{
    error::{EncodingError, Error},
    msm::{msm_small, msm_vartime},
    suite::{Encoded, SecretScalar, Suite, POINT_LEN},
};

/// A secret polynomial of degree `t-1`; coefficients are zeroized on drop.
pub struct SecretPolynomial<S: Suite> {
    coefficients: Vec<S::Scalar>,
}

impl<S: Suite> SecretPolynomial<S> {
    /// A random polynomial with `threshold` coefficients and a random non-zero constant term.
    pub fn random(threshold: u16, rng: &mut impl CryptoRngCore) -> Self {
        let constant = SecretScalar::<S>::random(rng);
        Self::with_constant(&constant, threshold, rng)
    }

    /// A random polynomial with `threshold` coefficients and the given constant term (used by
    /// resharing, where `g_i(0) = share_i`).
    pub fn with_constant(
        constant: &SecretScalar<S>,
        threshold: u16,
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        let mut coefficients = Vec::with_capacity(usize::from(threshold.max(1)));
        coefficients.push(*constant.expose());
        for _ in 1..threshold.max(1) {
            coefficients.push(S::Scalar::random(&mut *rng));
        }
        Self { coefficients }
    }

    /// The threshold `t` (number of coefficients).
    pub fn threshold(&self) -> u16 {
        u16::try_from(self.coefficients.len()).unwrap_or(u16::MAX)
    }

    /// The constant term `f(0)`.
    pub fn constant(&self) -> Option<SecretScalar<S>> {
        SecretScalar::new(self.coefficients[0])
    }

    /// `f(i)`, by Horner's rule.
    pub fn evaluate(&self, index: NodeIndex) -> Option<SecretScalar<S>> {
        let x = index.to_scalar::<S>();
        let mut acc = S::Scalar::ZERO;
        for c in self.coefficients.iter().rev() {
            acc = acc * x + c;
        }
        let share = SecretScalar::new(acc);
        acc.zeroize();
        share
    }

    /// Feldman commitments `A_k = a_k·G`.
    pub fn commit(&self) -> Commitment<S> {
        Commitment(self.coefficients.iter().map(S::mul_by_generator).collect())
    }
}

impl<S: Suite> Drop for SecretPolynomial<S> {
    fn drop(&mut self) {
        self.coefficients.iter_mut().for_each(Zeroize::zeroize);
    }
}

impl<S: Suite> fmt::Debug for SecretPolynomial<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SecretPolynomial<{}>(degree {}, ..)",
            S::NAME,
            self.coefficients.len() - 1
        )
    }
}

/// Feldman commitments `A_0 .. A_{t-1}` to a polynomial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commitment<S: Suite>(Vec<S::Point>);

impl<S: Suite> Commitment<S> {
    /// Wrap commitments; rejects an empty list or more than `u16::MAX` entries.
    pub fn new(points: Vec<S::Point>) -> Result<Self, EncodingError> {
        if points.is_empty() || points.len() > usize::from(u16::MAX) {
            return Err(EncodingError::Length {
                expected: 1,
                actual: points.len(),
            });
        }
        Ok(Self(points))
    }

    /// The threshold `t` this commits to.
    pub fn threshold(&self) -> u16 {
        u16::try_from(self.0.len()).unwrap_or(u16::MAX)
    }

    /// The committed points.
    pub fn points(&self) -> &[S::Point] {
        &self.0
    }

    /// `A_0`, the commitment to the constant term (the public key for a fresh DKG).
    pub fn constant(&self) -> S::Point {
        self.0[0]
    }

    /// `Σ_k i^k·A_k`: the public image `f(i)·G` of the share of node `i`.
    pub fn evaluate(&self, index: NodeIndex) -> S::Point {
        let x = index.to_scalar::<S>();
        let mut power = S::Scalar::ONE;
        let terms: Vec<(S::Point, S::Scalar)> = self
            .0
            .iter()
            .map(|a| {
                let term = (*a, power);
                power *= x;
                term
            })
            .collect();
        msm_vartime::<S>(&terms)
    }

    /// Coefficient-wise sum of commitments (the joint commitment of a DKG).
    pub fn sum<'a>(commitments: impl IntoIterator<Item = &'a Self>) -> Option<Self> {
        let mut iter = commitments.into_iter();
        let first = iter.next()?.0.clone();
        let summed = iter.try_fold(first, |mut acc, c| {
            if c.0.len() != acc.len() {
                return None;
            }
            acc.iter_mut().zip(&c.0).for_each(|(a, b)| *a += b);
            Some(acc)
        })?;
        Some(Self(summed))
    }

    /// `Σ λ_i·C_i`: the combination of commitments with Lagrange weights (resharing).
    pub fn weighted_sum(weighted: &[(S::Scalar, &Self)]) -> Option<Self> {
        let len = weighted.first()?.1 .0.len();
        if weighted.iter().any(|(_, c)| c.0.len() != len) {
            return None;
        }
        let points = (0..len)
            .map(|k| {
                let terms: Vec<_> = weighted.iter().map(|(l, c)| (c.0[k], *l)).collect();
                msm_vartime::<S>(&terms)
            })
            .collect();
        Some(Self(points))
    }

    /// Concatenated compressed points.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|p| S::encode_point(p)).collect()
    }

    /// Strict decoding of concatenated compressed points.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EncodingError> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(POINT_LEN) {
            return Err(EncodingError::Length {
                expected: POINT_LEN * (bytes.len() / POINT_LEN).max(1),
                actual: bytes.len(),
            });
        }
        let points = bytes
            .chunks_exact(POINT_LEN)
            .map(S::decode_point)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(points)
    }
}

/// The Lagrange coefficient at zero `λ_i^T = Π_{j∈T, j≠i} j/(j-i)` for `i ∈ T`.
///
/// Returns `None` if `i ∉ T` or `T` has a duplicate index.
pub fn lagrange_coefficient<S: Suite>(index: NodeIndex, set: &[NodeIndex]) -> Option<S::Scalar> {
    if !set.contains(&index) {
        return None;
    }
    let xi = index.to_scalar::<S>();
    let mut numerator = S::Scalar::ONE;
    let mut denominator = S::Scalar::ONE;
    let mut seen_self = false;
    for j in set {
        if *j == index {
            if seen_self {
                return None;
            }
            seen_self = true;
            continue;
        }
        let xj = j.to_scalar::<S>();
        numerator *= xj;
        denominator *= xj - xi;
    }
    Option::from(denominator.invert()).map(|inv: S::Scalar| numerator * inv)
}

/// Lagrange coefficients at zero for every index of `set` (distinct indices required), with
/// one field inversion for the whole set (Montgomery's trick).
pub fn lagrange_coefficients<S: Suite>(set: &[NodeIndex]) -> Result<Vec<S::Scalar>, Error> {
    let mut sorted = set.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::DuplicateIndex(w[0]));
    }
    let xs: Vec<S::Scalar> = set.iter().map(|i| i.to_scalar::<S>()).collect();
    let mut numerators = Vec::with_capacity(xs.len());
    let mut denominators = Vec::with_capacity(xs.len());
    for (a, xi) in xs.iter().enumerate() {
        let mut num = S::Scalar::ONE;
        let mut den = S::Scalar::ONE;
        for (b, xj) in xs.iter().enumerate() {
            if a != b {
                num *= xj;
                den *= *xj - xi;
            }
        }
        numerators.push(num);
        denominators.push(den);
    }
    // Batch inversion: prefix products, one inversion, walk back.
    let mut prefix = Vec::with_capacity(denominators.len());
    let mut acc = S::Scalar::ONE;
    for d in &denominators {
        prefix.push(acc);
        acc *= d;
    }
    let mut inv: S::Scalar = Option::from(acc.invert()).ok_or(Error::DuplicateIndex(set[0]))?;
    let mut out = vec![S::Scalar::ZERO; set.len()];
    for k in (0..denominators.len()).rev() {
        out[k] = numerators[k] * prefix[k] * inv;
        inv *= denominators[k];
    }
    Ok(out)
}

/// Interpolation at zero of points given at the indices of one set: `Σ λ_i·P_i`.
///
/// The Lagrange weights of a set of small indices are fractions of small integers, `λ_i =
/// c_i / l` with one common denominator `l`. So `Σ λ_i·P_i = l⁻¹·Σ c_i·P_i`: a few doublings
/// and additions for the integer sum, and one multiplication by `l⁻¹`, none at all when
/// `l = 1` (as for every set of consecutive indices from 1, `{1, 2, 3}`, `{2, 3, 4}`, ...).
/// A full multi-scalar multiplication by the field weights costs about three times as much for
/// `t = 3`. Only for **public** points (combining verified partials): the running time depends
/// on the indices and the points. Sets whose integer weights or the products that lead to
/// them overflow 128-bit integers (large indices, large sets) use the field weights.
pub struct ZeroInterpolation<S: Suite> {
    weights: Weights<S>,
}

enum Weights<S: Suite> {
    Integer {
        numerators: Vec<i128>,
        /// `l⁻¹` (public; a `SecretScalar` only to reach libsecp256k1's multiplication), or
        /// `None` when the common denominator `l` is 1.
        inverse_denominator: Option<SecretScalar<S>>,
    },
    Field(Vec<S::Scalar>),
}

impl<S: Suite> ZeroInterpolation<S> {
    /// The weights for `set` (distinct indices required), in its order.
    pub fn new(set: &[NodeIndex]) -> Result<Self, Error> {
        let integer = integer_lagrange(set).and_then(|(numerators, l)| {
            let inverse_denominator = if l == 1 {
                None
            } else {
                let inverse = Option::<S::Scalar>::from(S::Scalar::from_u128(l).invert())?;
                Some(SecretScalar::new(inverse)?)
            };
            Some(Weights::Integer {
                numerators,
                inverse_denominator,
            })
        });
        let weights = match integer {
            Some(weights) => weights,
            None => Weights::Field(lagrange_coefficients::<S>(set)?),
        };
        Ok(Self { weights })
    }

    /// `Σ λ_i·P_i` for `points` in the order of the set given to [`ZeroInterpolation::new`],
    /// one point per index.
    pub fn apply(&self, points: &[S::Point]) -> Result<S::Point, Error> {
        let indices = match &self.weights {
            Weights::Integer { numerators, .. } => numerators.len(),
            Weights::Field(weights) => weights.len(),
        };
        if points.len() != indices {
            return Err(Error::InterpolationShape {
                points: points.len(),
                indices,
            });
        }
        Ok(match &self.weights {
            Weights::Integer {
                numerators,
                inverse_denominator,
            } => {
                let terms: Vec<_> = points
                    .iter()
                    .copied()
                    .zip(numerators.iter().copied())
                    .collect();
                let sum = msm_small::<S>(&terms);
                match inverse_denominator {
                    // libsecp256k1's ladder beats k256's variable-time multiplication here (37
                    // against 56 µs, encoding included: docs/BENCHMARKS.md, "What changed the
                    // numbers").
                    Some(inverse) if !bool::from(sum.is_identity()) => {
                        *S::mul_secret(&Encoded::new(sum), inverse).point()
                    }
                    _ => sum,
                }
            }
            Weights::Field(weights) => {
                let terms: Vec<_> = points
                    .iter()
                    .copied()
                    .zip(weights.iter().copied())
                    .collect();
                msm_vartime::<S>(&terms)
            }
        })
    }
}

/// The Lagrange weights at zero of `set` as integers over one positive common denominator,
/// `λ_i = c_i / l` in lowest terms: `Some((c, l))`, or `None` if two indices are equal or any
/// intermediate product (`Π x_j`, `Π (x_j - x_i)`, `l`, `c_i`) overflows 128-bit integers.
fn integer_lagrange(set: &[NodeIndex]) -> Option<(Vec<i128>, u128)> {
    let xs: Vec<i128> = set.iter().map(|i| i128::from(i.get())).collect();
    // λ_i = p_i / q_i, reduced, q_i > 0.
    let mut fractions = Vec::with_capacity(xs.len());
    for (a, xi) in xs.iter().enumerate() {
        let (mut p, mut q) = (1i128, 1i128);
        for (b, xj) in xs.iter().enumerate() {
            if a != b {
                p = p.checked_mul(*xj)?;
                q = q.checked_mul(xj - xi)?;
            }
        }
        if q == 0 {
            return None;
        }
        let g = gcd(p.unsigned_abs(), q.unsigned_abs());
        let sign = if (p < 0) == (q < 0) { 1 } else { -1 };
        let p = i128::try_from(p.unsigned_abs() / g).ok()? * sign;
        fractions.push((p, q.unsigned_abs() / g));
    }
    let l = fractions
        .iter()
        .try_fold(1u128, |l, (_, q)| (l / gcd(l, *q)).checked_mul(*q))?;
    let numerators = fractions
        .iter()
        .map(|(p, q)| p.checked_mul(i128::try_from(l / q).ok()?))
        .collect::<Option<Vec<i128>>>()?;
    Some((numerators, l))
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The public side of a shared key: threshold, Feldman commitment of the joint polynomial
/// (so `PK = A_0` and any `PK_i` can be derived), and the committee's public shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeySet<S: Suite> {
    commitment: Commitment<S>,
    public_key: Encoded<S>,
    public_shares: BTreeMap<NodeIndex, Encoded<S>>,
}

impl<S: Suite> PublicKeySet<S> {
    /// Build from the joint commitment and the committee's indices (computes and encodes each
    /// public share once; verifiers then hash the cached bytes).
    pub fn new(commitment: Commitment<S>, committee: impl IntoIterator<Item = NodeIndex>) -> Self {
        let public_shares = committee
            .into_iter()
            .map(|i| (i, Encoded::new(commitment.evaluate(i))))
            .collect();
        Self {
            public_key: Encoded::new(commitment.constant()),
            commitment,
            public_shares,
        }
    }

    /// `PK_i` of a committee member with its encoding.
    pub fn public_share_encoded(&self, index: NodeIndex) -> Result<&Encoded<S>, Error> {
        self.public_shares
            .get(&index)
            .ok_or(Error::UnknownNode(index))
    }

    /// The public key with its encoding.
    pub fn public_key_encoded(&self) -> &Encoded<S> {
        &self.public_key
    }

    /// The threshold `t`.
    pub fn threshold(&self) -> u16 {
        self.commitment.threshold()
    }

    /// The public key `PK = A_0`.
    pub fn public_key(&self) -> S::Point {
        self.commitment.constant()
    }

    /// The joint Feldman commitment.
    pub fn commitment(&self) -> &Commitment<S> {
        &self.commitment
    }

    /// `PK_i` of a committee member.
    pub fn public_share(&self, index: NodeIndex) -> Result<S::Point, Error> {
        self.public_share_encoded(index).map(|e| *e.point())
    }

    /// All public shares of the committee, by index.
    pub fn public_shares(&self) -> impl Iterator<Item = (NodeIndex, &S::Point)> + '_ {
        self.public_shares.iter().map(|(i, e)| (*i, e.point()))
    }

    /// The committee size `n`.
    pub fn committee_size(&self) -> usize {
        self.public_shares.len()
    }
}

/// One node's secret share `f(i)`, with its public share computed once.
#[derive(Clone, Debug)]
pub struct KeyShare<S: Suite> {
    index: NodeIndex,
    value: SecretScalar<S>,
    public: Encoded<S>,
}

impl<S: Suite> KeyShare<S> {
    /// Wrap a share value for index `i`.
    pub fn new(index: NodeIndex, value: SecretScalar<S>) -> Self {
        let public = value.public_encoded();
        Self {
            index,
            value,
            public,
        }
    }

    /// The share's node index.
    pub fn index(&self) -> NodeIndex {
        self.index
    }

    /// The secret share value.
    pub fn value(&self) -> &SecretScalar<S> {
        &self.value
    }

    /// `PK_i = share_i·G`.
    pub fn public_share(&self) -> S::Point {
        *self.public.point()
    }

    /// `PK_i` with its encoding.
    pub fn public_share_encoded(&self) -> &Encoded<S> {
        &self.public
    }
}

/// Deal a fresh secret to `n` nodes with indices `1..=n` (trusted dealer; for tests, tools and
/// simulations — the cluster uses the DKG). Returns the shares and the public key set.
pub fn deal<S: Suite>(
    secret: &SecretScalar<S>,
    threshold: u16,
    n: u16,
    rng: &mut impl CryptoRngCore,
) -> Result<(Vec<KeyShare<S>>, PublicKeySet<S>), Error> {
    if threshold == 0 || threshold > n {
        return Err(Error::InvalidThreshold {
            threshold,
            n: usize::from(n),
        });
    }
    let poly = SecretPolynomial::with_constant(secret, threshold, rng);
    let indices: Vec<NodeIndex> = (1..=n).filter_map(NodeIndex::new).collect();
    let shares = indices
        .iter()
        .map(|i| {
            poly.evaluate(*i)
                .map(|v| KeyShare::new(*i, v))
                .ok_or(Error::InvalidThreshold {
                    threshold,
                    n: usize::from(n),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((shares, PublicKeySet::new(poly.commit(), indices)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand_core::OsRng;

    use super::*;
    use crate::{msm::tests::signed, Secp256k1, P256};

    fn set(indices: &[u16]) -> Vec<NodeIndex> {
        indices.iter().filter_map(|i| NodeIndex::new(*i)).collect()
    }

    /// Interpolating at zero with the integer weights gives what the field weights give.
    fn same_as_field_weights<S: Suite>(indices: &[NodeIndex]) {
        let points: Vec<S::Point> = indices
            .iter()
            .map(|_| S::mul_by_generator(&S::Scalar::random(&mut OsRng)))
            .collect();
        // Expected: one plain multiplication per point, by λ_i computed on its own.
        let expected = indices
            .iter()
            .zip(&points)
            .fold(S::Point::identity(), |acc, (i, p)| {
                acc + *p * lagrange_coefficient::<S>(*i, indices).unwrap()
            });
        let interpolation = ZeroInterpolation::<S>::new(indices).unwrap();
        assert_eq!(interpolation.apply(&points), Ok(expected));
        assert!(matches!(
            interpolation.apply(&points[1..]),
            Err(Error::InterpolationShape { .. })
        ));
    }

    #[test]
    fn integer_weights_are_the_lagrange_weights() {
        // Every non-empty subset of {1..7}.
        for mask in 1u32..(1 << 7) {
            let indices: Vec<u16> = (1..=7u16).filter(|i| mask & (1 << (i - 1)) != 0).collect();
            let indices = set(&indices);
            let (numerators, l) = integer_lagrange(&indices).unwrap();
            let lambdas = lagrange_coefficients::<Secp256k1>(&indices).unwrap();
            let inverse =
                Option::<k256::Scalar>::from(k256::Scalar::from_u128(l).invert()).unwrap();
            for (c, lambda) in numerators.iter().zip(&lambdas) {
                assert_eq!(signed::<Secp256k1>(*c) * inverse, *lambda, "{indices:?}");
            }
            same_as_field_weights::<Secp256k1>(&indices);
            same_as_field_weights::<P256>(&indices);
        }
        // Consecutive sets need no multiplication at all; others one, by l⁻¹.
        for (indices, expected) in [
            (&[1u16, 2, 3], (vec![3i128, -3, 1], 1u128)),
            (&[3, 4, 5], (vec![10, -15, 6], 1)),
            (&[1, 2, 5], (vec![15, -10, 1], 6)),
            (&[5, 2, 1], (vec![1, -10, 15], 6)),
        ] {
            assert_eq!(
                integer_lagrange(&set(indices)),
                Some(expected),
                "{indices:?}"
            );
        }
    }

    #[test]
    fn repeated_indices_and_large_sets() {
        assert!(matches!(
            ZeroInterpolation::<Secp256k1>::new(&set(&[1, 2, 1])),
            Err(Error::DuplicateIndex(_))
        ));
        // Products over 127 bits fall back to the field weights, with the same result.
        let large: Vec<u16> = (0..12).map(|k| 65_535 - k * 997).collect();
        assert_eq!(integer_lagrange(&set(&large)), None);
        same_as_field_weights::<Secp256k1>(&set(&large));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_set_interpolates_as_the_field_weights(
            indices in proptest::collection::btree_set(1u16..=u16::MAX, 1..10),
            small in any::<bool>(),
        ) {
            let indices: Vec<u16> = indices.into_iter().map(|i| if small { i % 64 + 1 } else { i }).collect();
            let mut distinct = indices.clone();
            distinct.sort_unstable();
            distinct.dedup();
            prop_assume!(distinct.len() == indices.len());
            same_as_field_weights::<Secp256k1>(&set(&indices));
        }
    }
}
