//! Curve suites: secp256k1 (the default; Ethereum- and Nox-compatible) and P-256.
//!
//! Every protocol in this crate is generic over [`Suite`], so it runs and is tested on both.
//! Encodings are strict (DESIGN.md §3): points are 33-byte SEC1 compressed, never the
//! identity; scalars are 32-byte big-endian below the group order.

use core::fmt::Debug;

use elliptic_curve::{
    group::{Group, GroupEncoding},
    hash2curve::{ExpandMsgXmd, GroupDigest},
    ops::{LinearCombinationExt, MulByGenerator},
    point::AffineCoordinates,
    sec1::{FromEncodedPoint, ToEncodedPoint},
    zeroize::DefaultIsZeroes,
    Field, PrimeField,
};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::EncodingError;

/// Length of an encoded point: SEC1 compressed.
pub const POINT_LEN: usize = 33;
/// Length of an encoded scalar or x-coordinate.
pub const SCALAR_LEN: usize = 32;

/// A prime-order curve with the operations the protocols need.
pub trait Suite: Copy + Clone + Debug + Default + PartialEq + Eq + Send + Sync + 'static {
    /// Scalars modulo the group order.
    type Scalar: PrimeField + DefaultIsZeroes + ConstantTimeEq + Debug + Send + Sync;
    /// Group elements.
    type Point: Group<Scalar = Self::Scalar> + GroupEncoding + Debug + Send + Sync;

    /// The suite's name, bound into every hash (`"secp256k1"`, `"P-256"`).
    const NAME: &'static str;

    /// `s·G`, with the curve's precomputed generator tables where it has them.
    fn mul_by_generator(s: &Self::Scalar) -> Self::Point;

    /// `Σ s_i·P_i` (multi-scalar multiplication; Straus with GLV on secp256k1).
    fn lincomb(terms: &[(Self::Point, Self::Scalar)]) -> Self::Point;

    /// SEC1 compressed encoding. The identity, which no protocol value may be, encodes as 33
    /// zero bytes, which [`Suite::decode_point`] rejects.
    fn encode_point(p: &Self::Point) -> [u8; POINT_LEN];

    /// Strict decoding: exactly 33 bytes, prefix 0x02/0x03, canonical x on the curve.
    fn decode_point(bytes: &[u8]) -> Result<Self::Point, EncodingError>;

    /// The affine x-coordinate, big-endian; `None` for the identity.
    fn x_coordinate(p: &Self::Point) -> Option<[u8; SCALAR_LEN]>;

    /// Big-endian encoding of a scalar.
    fn encode_scalar(s: &Self::Scalar) -> [u8; SCALAR_LEN];

    /// Strict decoding: exactly 32 bytes, value below the group order (zero is allowed here;
    /// secrets reject it separately).
    fn decode_scalar(bytes: &[u8]) -> Result<Self::Scalar, EncodingError>;

    /// RFC 9380 `hash_to_field` (expand_message_xmd, SHA-256, L = 48) of `msg` under `dst`.
    fn hash_to_field(dst: &[u8], msg: &[&[u8]]) -> Self::Scalar;
}

fn check_compressed(bytes: &[u8]) -> Result<(), EncodingError> {
    if bytes.len() != POINT_LEN {
        return Err(EncodingError::Length {
            expected: POINT_LEN,
            actual: bytes.len(),
        });
    }
    match bytes[0] {
        0x02 | 0x03 => Ok(()),
        0x00 if bytes.iter().all(|b| *b == 0) => Err(EncodingError::Identity),
        _ => Err(EncodingError::NotCompressed),
    }
}

macro_rules! impl_suite {
    ($suite:ident, $crate_:ident, $curve:ty, $name:literal, $doc:literal, $lincomb:path) => {
        #[doc = $doc]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub struct $suite;

        impl Suite for $suite {
            type Scalar = $crate_::Scalar;
            type Point = $crate_::ProjectivePoint;
            const NAME: &'static str = $name;

            fn mul_by_generator(s: &Self::Scalar) -> Self::Point {
                <$crate_::ProjectivePoint as MulByGenerator>::mul_by_generator(s)
            }

            fn lincomb(terms: &[(Self::Point, Self::Scalar)]) -> Self::Point {
                $lincomb(terms)
            }

            fn encode_point(p: &Self::Point) -> [u8; POINT_LEN] {
                let mut out = [0u8; POINT_LEN];
                let encoded = p.to_affine().to_encoded_point(true);
                let bytes = encoded.as_bytes();
                if bytes.len() == POINT_LEN {
                    out.copy_from_slice(bytes);
                }
                out
            }

            fn decode_point(bytes: &[u8]) -> Result<Self::Point, EncodingError> {
                check_compressed(bytes)?;
                let encoded = $crate_::EncodedPoint::from_bytes(bytes)
                    .map_err(|_| EncodingError::NotCompressed)?;
                let affine: Option<$crate_::AffinePoint> =
                    $crate_::AffinePoint::from_encoded_point(&encoded).into();
                let point =
                    $crate_::ProjectivePoint::from(affine.ok_or(EncodingError::NotOnCurve)?);
                if bool::from(point.is_identity()) {
                    return Err(EncodingError::Identity);
                }
                Ok(point)
            }

            fn x_coordinate(p: &Self::Point) -> Option<[u8; SCALAR_LEN]> {
                if bool::from(p.is_identity()) {
                    return None;
                }
                Some(p.to_affine().x().into())
            }

            fn encode_scalar(s: &Self::Scalar) -> [u8; SCALAR_LEN] {
                s.to_repr().into()
            }

            fn decode_scalar(bytes: &[u8]) -> Result<Self::Scalar, EncodingError> {
                if bytes.len() != SCALAR_LEN {
                    return Err(EncodingError::Length {
                        expected: SCALAR_LEN,
                        actual: bytes.len(),
                    });
                }
                let array: [u8; SCALAR_LEN] =
                    bytes.try_into().map_err(|_| EncodingError::Length {
                        expected: SCALAR_LEN,
                        actual: bytes.len(),
                    })?;
                let repr = $crate_::FieldBytes::from(array);
                Option::from($crate_::Scalar::from_repr(repr))
                    .ok_or(EncodingError::ScalarOutOfRange)
            }

            fn hash_to_field(dst: &[u8], msg: &[&[u8]]) -> Self::Scalar {
                // Errors only for an empty or over-long DST, which the constants module rules
                // out; fall back to a fixed value rather than panic.
                <$curve as GroupDigest>::hash_to_scalar::<ExpandMsgXmd<Sha256>>(msg, &[dst])
                    .unwrap_or(<$crate_::Scalar as Field>::ONE)
            }
        }
    };
}

impl_suite!(
    Secp256k1,
    k256,
    k256::Secp256k1,
    "secp256k1",
    "secp256k1 (k256): the default suite, Ethereum- and Nox-compatible.",
    k256_lincomb
);
impl_suite!(
    P256,
    p256,
    p256::NistP256,
    "P-256",
    "NIST P-256 (p256): the second suite.",
    straus::<p256::ProjectivePoint>
);

/// k256's own multi-scalar multiplication (Straus with the GLV endomorphism).
fn k256_lincomb(terms: &[(k256::ProjectivePoint, k256::Scalar)]) -> k256::ProjectivePoint {
    <k256::ProjectivePoint as LinearCombinationExt<[(k256::ProjectivePoint, k256::Scalar)]>>::lincomb_ext(terms)
}

/// Straus' interleaved fixed-window (4-bit) multi-scalar multiplication, for curves without
/// an optimized one (p256 multiplies term by term): 256 shared doublings, then one table
/// addition per point per window. Constant-time in the scalars (masked table lookups, no
/// skipped windows), as it also multiplies secrets.
fn straus<P>(terms: &[(P, P::Scalar)]) -> P
where
    P: Group + Copy + subtle::ConditionallySelectable,
    P::Scalar: PrimeField,
{
    const WINDOW: usize = 4;
    let tables: Vec<[P; 16]> = terms
        .iter()
        .map(|(p, _)| {
            let mut table = [P::identity(); 16];
            for k in 1..16 {
                table[k] = table[k - 1] + p;
            }
            table
        })
        .collect();
    // Big-endian scalar bytes for both suites' `to_repr`.
    let reprs: Vec<_> = terms.iter().map(|(_, s)| s.to_repr()).collect();
    let mut acc = P::identity();
    let bytes = reprs.first().map_or(0, |r| r.as_ref().len());
    for byte in 0..bytes {
        for half in [4u8, 0u8] {
            if byte > 0 || half == 0 {
                for _ in 0..WINDOW {
                    acc = acc.double();
                }
            }
            for (table, repr) in tables.iter().zip(&reprs) {
                let nibble = (repr.as_ref()[byte] >> half) & 0x0f;
                let mut entry = P::identity();
                for (k, candidate) in (0u8..).zip(table.iter()) {
                    entry.conditional_assign(candidate, k.ct_eq(&nibble));
                }
                acc += entry;
            }
        }
    }
    acc
}
