//! The secp256k1 suite's secret multiplications through libsecp256k1 (Bitcoin Core's
//! library, by the `secp256k1` crate): its constant-time ladders (`secp256k1_ecdh`'s
//! `ecmult_const` for `s·P`, `ecmult_gen` for `s·G`) take about half k256's time on this
//! machine, and they run once or twice per partial on every node
//! (`cargo bench -p tkms-crypto --bench protocols -- 'secret multiplication'`).
//!
//! Results come back affine, so encoding them costs no field inversion; the k256 point is
//! rebuilt from the affine coordinates (an on-curve check, no square root). The secret is
//! handed to libsecp256k1 as a `SecretKey`, which is erased after use (as best effort as
//! k256's own zeroizing scalars).
//!
//! It speaks k256 types and SEC1 bytes only, so it depends on no other module of the crate;
//! `crate::suite` wraps its results into [`Encoded`](crate::suite::Encoded) points.

use k256::elliptic_curve::sec1::FromEncodedPoint;
use secp256k1::{ecdh, PublicKey, SecretKey, SECP256K1};
use zeroize::Zeroizing;

/// Length of a SEC1 compressed point.
const POINT_LEN: usize = 33;
/// Length of a SEC1 uncompressed point.
const UNCOMPRESSED_POINT_LEN: usize = 65;

/// A point and its SEC1 compressed encoding.
pub(crate) type PointAndBytes = (k256::ProjectivePoint, [u8; POINT_LEN]);

/// `s·P` for the point `P` encoded as `p`; `None` only if libsecp256k1 refuses an input k256
/// accepted (never, for valid points and non-zero scalars), in which case the caller
/// multiplies with k256.
pub(crate) fn mul(p: &[u8; POINT_LEN], s: &k256::Scalar) -> Option<PointAndBytes> {
    let base = parsed(p)?;
    let mut key = secret_key(s)?;
    let xy = Zeroizing::new(ecdh::shared_secret_point(&base, &key));
    key.non_secure_erase();
    from_affine(&xy)
}

/// `s·P`, with its SEC1 uncompressed encoding (from the same affine result).
pub(crate) fn mul_uncompressed(
    p: &[u8; POINT_LEN],
    s: &k256::Scalar,
) -> Option<(PointAndBytes, [u8; UNCOMPRESSED_POINT_LEN])> {
    let base = parsed(p)?;
    let mut key = secret_key(s)?;
    let xy = Zeroizing::new(ecdh::shared_secret_point(&base, &key));
    key.non_secure_erase();
    let encoded = from_affine(&xy)?;
    let mut wide = [0u8; UNCOMPRESSED_POINT_LEN];
    wide[0] = 0x04;
    wide[1..].copy_from_slice(&*xy);
    Some((encoded, wide))
}

/// `s·G`.
pub(crate) fn mul_generator(s: &k256::Scalar) -> Option<PointAndBytes> {
    let mut key = secret_key(s)?;
    let public = PublicKey::from_secret_key(SECP256K1, &key);
    key.non_secure_erase();
    let uncompressed = public.serialize_uncompressed();
    let mut xy = [0u8; 64];
    xy.copy_from_slice(&uncompressed[1..]);
    from_affine(&xy)
}

/// Decompress a 33-byte SEC1 point (libsecp256k1's square root is about twice as fast as
/// k256's); `None` if it is not a valid point, for k256 to say why.
pub(crate) fn decode(bytes: &[u8]) -> Option<k256::ProjectivePoint> {
    let public = parsed(bytes.try_into().ok()?)?;
    let uncompressed = public.serialize_uncompressed();
    let encoded = k256::EncodedPoint::from_bytes(uncompressed).ok()?;
    let affine =
        Option::<k256::AffinePoint>::from(k256::AffinePoint::from_encoded_point(&encoded))?;
    Some(k256::ProjectivePoint::from(affine))
}

thread_local! {
    /// The last point this thread decompressed. A node decodes `K` and then multiplies it by
    /// its share and by the proof's nonce, three square roots for one point without it.
    static LAST: std::cell::Cell<Option<([u8; POINT_LEN], PublicKey)>> =
        const { std::cell::Cell::new(None) };
}

/// `bytes` as a libsecp256k1 point, decompressed once per run of uses on this thread.
fn parsed(bytes: &[u8; POINT_LEN]) -> Option<PublicKey> {
    if let Some((last, point)) = LAST.get() {
        if last == *bytes {
            return Some(point);
        }
    }
    let point = PublicKey::from_byte_array_compressed(*bytes).ok()?;
    LAST.set(Some((*bytes, point)));
    Some(point)
}

fn secret_key(s: &k256::Scalar) -> Option<SecretKey> {
    let bytes = Zeroizing::new(<[u8; 32]>::from(s.to_bytes()));
    SecretKey::from_byte_array(*bytes).ok()
}

/// An affine point `x || y` (big-endian) and its compressed encoding.
fn from_affine(xy: &[u8; 64]) -> Option<PointAndBytes> {
    let (x, y) = xy.split_at(32);
    let uncompressed = k256::EncodedPoint::from_affine_coordinates(x.into(), y.into(), false);
    let affine =
        Option::<k256::AffinePoint>::from(k256::AffinePoint::from_encoded_point(&uncompressed))?;
    let mut bytes = [0u8; POINT_LEN];
    bytes[0] = 0x02 | (y[31] & 1);
    bytes[1..].copy_from_slice(x);
    Some((k256::ProjectivePoint::from(affine), bytes))
}

#[cfg(test)]
mod tests {
    use elliptic_curve::Field;
    use rand_core::OsRng;

    use super::*;
    use crate::suite::{Encoded, Secp256k1, SecretScalar, Suite};

    /// The libsecp256k1 paths themselves answer (the suite falls back to k256 when they do
    /// not, which `suite::tests` alone could not tell apart).
    #[test]
    fn libsecp_multiplies_and_agrees_with_k256() {
        for _ in 0..32 {
            let s = SecretScalar::<Secp256k1>::random(&mut OsRng);
            let base = Encoded::<Secp256k1>::new(Secp256k1::mul_by_generator(
                &k256::Scalar::random(&mut OsRng),
            ));
            let product = mul(base.bytes(), s.expose()).expect("libsecp256k1 multiplies");
            let product = Encoded::<Secp256k1>::from_parts(product.0, product.1);
            assert_eq!(*product.point(), *base.point() * s.expose());
            assert_eq!(product.bytes(), &Secp256k1::encode_point(product.point()));
            let public = mul_generator(s.expose()).expect("libsecp256k1 multiplies G");
            let public = Encoded::<Secp256k1>::from_parts(public.0, public.1);
            assert_eq!(*public.point(), s.public_point());
            assert_eq!(public.bytes(), &Secp256k1::encode_point(public.point()));
        }
    }

    proptest::proptest! {
        /// libsecp256k1's decoder accepts exactly the 33-byte strings k256's does (x below p,
        /// on the curve), and to the same point.
        #[test]
        fn libsecp_decodes_exactly_what_k256_decodes(
            odd in proptest::bool::ANY,
            x in proptest::array::uniform32(proptest::num::u8::ANY),
            near_p in proptest::bool::ANY,
        ) {
            let mut bytes = [0u8; POINT_LEN];
            bytes[0] = if odd { 0x03 } else { 0x02 };
            bytes[1..].copy_from_slice(&x);
            if near_p {
                // Around the field prime p = 2^256 - 2^32 - 977: x >= p must be refused.
                bytes[1..29].fill(0xff);
            }
            let sec1 = k256::EncodedPoint::from_bytes(bytes).unwrap();
            let k256 = Option::<k256::AffinePoint>::from(k256::AffinePoint::from_encoded_point(&sec1))
                .map(k256::ProjectivePoint::from);
            proptest::prop_assert_eq!(decode(&bytes), k256);
        }
    }
}
