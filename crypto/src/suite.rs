//! Curve suites: secp256k1 (the default; Ethereum- and Nox-compatible) and P-256.
//!
//! Every protocol in this crate is generic over [`Suite`], so it runs and is tested on both.
//! Encodings are strict (docs/PROTOCOL.md §1): points are 33-byte SEC1 compressed, never the
//! identity; scalars are 32-byte big-endian below the group order.

use core::fmt::{self, Debug};
use elliptic_curve::{
    group::{Group, GroupEncoding},
    hash2curve::{ExpandMsgXmd, GroupDigest},
    ops::{LinearCombinationExt, MulByGenerator},
    point::AffineCoordinates,
    sec1::{FromEncodedPoint, ToEncodedPoint},
    zeroize::DefaultIsZeroes,
    Field, PrimeField,
};

use rand_core::CryptoRngCore;
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{codec::EncodingError, libsecp};

/// Length of an encoded point: SEC1 compressed.
pub const POINT_LEN: usize = 33;
/// Length of a SEC1 uncompressed point, `0x04 || x || y` (sent where the receiver should not
/// pay a square root to decompress).
pub const UNCOMPRESSED_POINT_LEN: usize = 65;
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

    /// SEC1 uncompressed encoding, `0x04 || x || y` (one field inversion). The identity
    /// encodes as 65 zero bytes, which [`Suite::decode_uncompressed`] rejects.
    fn encode_uncompressed(p: &Self::Point) -> [u8; UNCOMPRESSED_POINT_LEN];

    /// Strict decoding of a SEC1 uncompressed point: exactly 65 bytes, prefix 0x04, canonical
    /// coordinates on the curve (checked with the curve equation: no square root).
    fn decode_uncompressed(bytes: &[u8]) -> Result<Self::Point, EncodingError>;

    /// The affine x-coordinate, big-endian; `None` for the identity.
    fn x_coordinate(p: &Self::Point) -> Option<[u8; SCALAR_LEN]>;

    /// Big-endian encoding of a scalar.
    fn encode_scalar(s: &Self::Scalar) -> [u8; SCALAR_LEN];

    /// Strict decoding: exactly 32 bytes, value below the group order (zero is allowed here;
    /// secrets reject it separately).
    fn decode_scalar(bytes: &[u8]) -> Result<Self::Scalar, EncodingError>;

    /// RFC 9380 `hash_to_field` (expand_message_xmd, SHA-256, L = 48) of `msg` under `dst`.
    fn hash_to_field(dst: &[u8], msg: &[&[u8]]) -> Self::Scalar;

    /// `s·P` for a secret `s`, encoded; constant-time in `s`. secp256k1 uses libsecp256k1.
    fn mul_secret(p: &Encoded<Self>, s: &SecretScalar<Self>) -> Encoded<Self> {
        Encoded::new(*p.point() * s.expose())
    }

    /// `s·P` for a secret `s`, encoded both ways (compressed, and SEC1 uncompressed for the
    /// wire); constant-time in `s`. secp256k1 uses libsecp256k1, whose affine result needs
    /// no inversion for either.
    fn mul_secret_uncompressed(
        p: &Encoded<Self>,
        s: &SecretScalar<Self>,
    ) -> (Encoded<Self>, [u8; UNCOMPRESSED_POINT_LEN]) {
        let product = *p.point() * s.expose();
        (Encoded::new(product), Self::encode_uncompressed(&product))
    }

    /// `s·G` for a secret `s`, encoded; constant-time in `s`. secp256k1 uses libsecp256k1.
    fn mul_generator_secret(s: &SecretScalar<Self>) -> Encoded<Self> {
        Encoded::new(Self::mul_by_generator(s.expose()))
    }
}

fn check_compressed(bytes: &[u8]) -> Result<(), EncodingError> {
    let bytes = crate::codec::exact::<POINT_LEN>(bytes)?;
    match bytes[0] {
        0x02 | 0x03 => Ok(()),
        0x00 if bytes.iter().all(|b| *b == 0) => Err(EncodingError::Identity),
        _ => Err(EncodingError::NotCompressed),
    }
}

macro_rules! impl_suite {
    ($suite:ident, $crate_:ident, $curve:ty, $name:literal, $doc:literal, $lincomb:path, $decode:path $(, $extra:item)*) => {
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
                if let Some(point) = $decode(bytes) {
                    return Ok(point);
                }
                // The curve crate's decoder, which names what is wrong.
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

            fn encode_uncompressed(p: &Self::Point) -> [u8; UNCOMPRESSED_POINT_LEN] {
                let mut out = [0u8; UNCOMPRESSED_POINT_LEN];
                let encoded = p.to_affine().to_encoded_point(false);
                let bytes = encoded.as_bytes();
                if bytes.len() == UNCOMPRESSED_POINT_LEN {
                    out.copy_from_slice(bytes);
                }
                out
            }

            fn decode_uncompressed(bytes: &[u8]) -> Result<Self::Point, EncodingError> {
                let bytes = crate::codec::exact::<UNCOMPRESSED_POINT_LEN>(bytes)?;
                if bytes[0] != 0x04 {
                    return Err(EncodingError::NotUncompressed);
                }
                let encoded = $crate_::EncodedPoint::from_bytes(bytes)
                    .map_err(|_| EncodingError::NotUncompressed)?;
                // The curve crate checks both coordinates are canonical and on the curve.
                let affine: Option<$crate_::AffinePoint> =
                    $crate_::AffinePoint::from_encoded_point(&encoded).into();
                Ok($crate_::ProjectivePoint::from(
                    affine.ok_or(EncodingError::NotOnCurve)?,
                ))
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
                let array = *crate::codec::exact::<SCALAR_LEN>(bytes)?;
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

            $($extra)*
        }
    };
}

impl_suite!(
    Secp256k1,
    k256,
    k256::Secp256k1,
    "secp256k1",
    "secp256k1 (k256): the default suite, Ethereum- and Nox-compatible.",
    k256_lincomb,
    libsecp::decode,
    fn mul_secret(p: &Encoded<Self>, s: &SecretScalar<Self>) -> Encoded<Self> {
        libsecp::mul(p.bytes(), s.expose()).map_or_else(
            || Encoded::new(*p.point() * s.expose()),
            |(point, bytes)| Encoded::from_parts(point, bytes),
        )
    },
    fn mul_secret_uncompressed(
        p: &Encoded<Self>,
        s: &SecretScalar<Self>,
    ) -> (Encoded<Self>, [u8; UNCOMPRESSED_POINT_LEN]) {
        libsecp::mul_uncompressed(p.bytes(), s.expose()).map_or_else(
            || {
                let product = *p.point() * s.expose();
                (Encoded::new(product), Self::encode_uncompressed(&product))
            },
            |((point, bytes), wide)| (Encoded::from_parts(point, bytes), wide),
        )
    },
    fn mul_generator_secret(s: &SecretScalar<Self>) -> Encoded<Self> {
        libsecp::mul_generator(s.expose()).map_or_else(
            || Encoded::new(Self::mul_by_generator(s.expose())),
            |(point, bytes)| Encoded::from_parts(point, bytes),
        )
    }
);
impl_suite!(
    P256,
    p256,
    p256::NistP256,
    "P-256",
    "NIST P-256 (p256): the second suite.",
    straus::<p256::ProjectivePoint>,
    no_fast_decode
);

/// The suite the cluster runs: secp256k1, as Ethereum and the Nox KMS. The one definition
/// every crate uses (the nodes, the manager, the SDK, the CLI, the simulator; this crate is
/// the one they all depend on); `tkms_proto::ClusterSuite` re-exports it.
pub type ClusterSuite = Secp256k1;

/// P-256 has no faster decoder than p256's own.
fn no_fast_decode(_: &[u8]) -> Option<p256::ProjectivePoint> {
    None
}

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

/// A point together with its 33-byte SEC1 encoding: points that are hashed (into proof
/// challenges) keep the bytes they arrived as, so verifying never pays a field inversion to
/// re-encode them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoded<S: Suite> {
    point: S::Point,
    bytes: [u8; POINT_LEN],
}

impl<S: Suite> Encoded<S> {
    /// Encode a point (one field inversion).
    pub fn new(point: S::Point) -> Self {
        Self {
            point,
            bytes: S::encode_point(&point),
        }
    }

    /// A point and its encoding computed elsewhere (libsecp256k1's affine results).
    pub(crate) fn from_parts(point: S::Point, bytes: [u8; POINT_LEN]) -> Self {
        Self { point, bytes }
    }

    /// Strict decoding of a SEC1 uncompressed point ([`Suite::decode_uncompressed`]: the
    /// curve equation, no square root), keeping its compressed encoding.
    pub fn from_uncompressed(bytes: &[u8]) -> Result<Self, EncodingError> {
        let point = S::decode_uncompressed(bytes)?;
        let mut compressed = [0u8; POINT_LEN];
        compressed[0] = 0x02 | (bytes[UNCOMPRESSED_POINT_LEN - 1] & 1);
        compressed[1..].copy_from_slice(&bytes[1..POINT_LEN]);
        Ok(Self {
            point,
            bytes: compressed,
        })
    }

    /// Strict decoding, keeping the bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EncodingError> {
        let point = S::decode_point(bytes)?;
        let mut array = [0u8; POINT_LEN];
        array.copy_from_slice(bytes);
        Ok(Self {
            point,
            bytes: array,
        })
    }

    /// The point.
    pub fn point(&self) -> &S::Point {
        &self.point
    }

    /// Its SEC1 compressed encoding.
    pub fn bytes(&self) -> &[u8; POINT_LEN] {
        &self.bytes
    }
}

// ---------------------------------------------------------------------------------------------
// Secret scalars (re-exported as `crate::secret::SecretScalar`): here, beside the trait whose
// constant-time multiplications take them, so that the two modules do not import each other.

/// A non-zero secret scalar: a private key, a key share, a nonce.
pub struct SecretScalar<S: Suite>(S::Scalar);

impl<S: Suite> SecretScalar<S> {
    /// A uniformly random non-zero scalar.
    pub fn random(rng: &mut impl CryptoRngCore) -> Self {
        loop {
            let s = <S::Scalar as ff::Field>::random(&mut *rng);
            if !bool::from(ff::Field::is_zero(&s)) {
                return Self(s);
            }
        }
    }

    /// Wrap a scalar; `None` if it is zero.
    pub fn new(value: S::Scalar) -> Option<Self> {
        if bool::from(ff::Field::is_zero(&value)) {
            None
        } else {
            Some(Self(value))
        }
    }

    /// Strict decoding of 32 big-endian bytes (below the order, non-zero).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EncodingError> {
        let s = S::decode_scalar(bytes)?;
        Self::new(s).ok_or(EncodingError::ZeroScalar)
    }

    /// The 32-byte big-endian encoding, zeroized when dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; SCALAR_LEN]> {
        Zeroizing::new(S::encode_scalar(&self.0))
    }

    /// The public point `self·G`.
    pub fn public_point(&self) -> S::Point {
        S::mul_by_generator(&self.0)
    }

    /// The public point `self·G` with its encoding.
    pub fn public_encoded(&self) -> Encoded<S> {
        S::mul_generator_secret(self)
    }

    /// The scalar, for protocol arithmetic inside this crate and its drivers.
    pub fn expose(&self) -> &S::Scalar {
        &self.0
    }
}

impl<S: Suite> Clone for SecretScalar<S> {
    fn clone(&self) -> Self {
        Self(self.0)
    }
}

impl<S: Suite> Drop for SecretScalar<S> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<S: Suite> ZeroizeOnDrop for SecretScalar<S> {}

impl<S: Suite> ConstantTimeEq for SecretScalar<S> {
    fn ct_eq(&self, other: &Self) -> Choice {
        self.0.ct_eq(&other.0)
    }
}

impl<S: Suite> fmt::Debug for SecretScalar<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretScalar<{}>(..)", S::NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    /// libsecp256k1's secret multiplications give k256's points and encodings: random
    /// scalars and bases, and the edges -1 (`n - 1`) and 1, on the generator too.
    #[test]
    fn secret_multiplications_match_the_curve_crate() {
        fn one<S: Suite>(s: &SecretScalar<S>, base: &Encoded<S>) {
            let product = S::mul_secret(base, s);
            assert_eq!(*product.point(), *base.point() * s.expose());
            assert_eq!(product.bytes(), &S::encode_point(product.point()));
            let public = S::mul_generator_secret(s);
            assert_eq!(*public.point(), s.public_point());
            assert_eq!(public.bytes(), &S::encode_point(public.point()));
            let (same, wide) = S::mul_secret_uncompressed(base, s);
            assert_eq!(same, product);
            assert_eq!(wide, S::encode_uncompressed(product.point()));
            assert_eq!(Encoded::<S>::from_uncompressed(&wide).unwrap(), product);
        }
        fn all<S: Suite>() {
            let generator = Encoded::<S>::new(S::Point::generator());
            for _ in 0..64 {
                let s = SecretScalar::<S>::random(&mut OsRng);
                let base = Encoded::new(S::mul_by_generator(&S::Scalar::random(&mut OsRng)));
                one(&s, &base);
                one(&s, &generator);
            }
            for edge in [S::Scalar::ONE, -S::Scalar::ONE, S::Scalar::from(2u64)] {
                let s = SecretScalar::<S>::new(edge).unwrap();
                one(&s, &generator);
                one(
                    &s,
                    &Encoded::new(S::mul_by_generator(&S::Scalar::from(7u64))),
                );
            }
        }
        all::<Secp256k1>();
        all::<P256>();
    }

    /// Uncompressed points decode strictly: the curve equation, canonical coordinates, the
    /// 0x04 prefix and the length are all checked.
    #[test]
    fn uncompressed_points_decode_strictly() {
        fn all<S: Suite>() {
            let p = S::mul_by_generator(&S::Scalar::random(&mut OsRng));
            let wide = S::encode_uncompressed(&p);
            assert_eq!(S::decode_uncompressed(&wide).unwrap(), p);
            let mut off = wide;
            off[64] ^= 1;
            assert_eq!(S::decode_uncompressed(&off), Err(EncodingError::NotOnCurve));
            let mut prefix = wide;
            prefix[0] = 0x06;
            assert_eq!(
                S::decode_uncompressed(&prefix),
                Err(EncodingError::NotUncompressed)
            );
            assert!(S::decode_uncompressed(&wide[..64]).is_err());
            assert!(S::decode_uncompressed(&[0u8; UNCOMPRESSED_POINT_LEN]).is_err());
            // A coordinate at or above the field prime is not canonical.
            let mut big = wide;
            big[1..33].fill(0xff);
            assert!(S::decode_uncompressed(&big).is_err());
        }
        all::<Secp256k1>();
        all::<P256>();
    }
}
