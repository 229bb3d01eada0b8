//! Strict decoding: every malformed encoding gets its own clear error, never a panic, and
//! secrets never show their value.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use proptest::prelude::*;
use subtle::ConstantTimeEq;
use tkms_crypto::{
    delegation::PartialDelegation,
    dkg::{Confirmation, Dealing, Response},
    dleq::DleqProof,
    ecies::Ciphertext,
    pre::{PartialReencryption, ReencryptedCapsule},
    schnorr::Signature,
    shamir::Commitment,
    EncodingError, Error, NodeIndex, Secp256k1, SecretScalar, SharedSecret, Suite, P256,
};

const SECP_ORDER: &str = "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141";
const P256_ORDER: &str = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";
const SECP_P: &str = "fffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f";

fn points<S: Suite>() {
    let g = S::encode_point(&S::mul_by_generator(&S::Scalar::from(1u64)));
    assert_eq!(
        S::decode_point(&g).unwrap(),
        S::mul_by_generator(&S::Scalar::from(1u64))
    );
    assert_eq!(
        S::decode_point(&g[..32]),
        Err(EncodingError::Length {
            expected: 33,
            actual: 32
        })
    );
    assert_eq!(S::decode_point(&[0u8; 33]), Err(EncodingError::Identity));
    assert_eq!(
        S::decode_point(&[0u8; 1]),
        Err(EncodingError::Length {
            expected: 33,
            actual: 1
        })
    );
    let mut uncompressed = g;
    uncompressed[0] = 0x04;
    assert_eq!(
        S::decode_point(&uncompressed),
        Err(EncodingError::NotCompressed)
    );
    // About half of all x-coordinates are not on the curve: each small x either decodes or is
    // refused as off-curve, and some are refused.
    let mut refused = 0;
    for x in 1u8..=20 {
        let mut candidate = [0u8; 33];
        candidate[0] = 0x02;
        candidate[32] = x;
        match S::decode_point(&candidate) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e, EncodingError::NotOnCurve);
                refused += 1;
            }
        }
    }
    assert!(refused > 0);
    // The identity never encodes to something that decodes.
    let identity = S::mul_by_generator(&S::Scalar::from(0u64));
    assert_eq!(
        S::decode_point(&S::encode_point(&identity)),
        Err(EncodingError::Identity)
    );
    assert_eq!(S::x_coordinate(&identity), None);
}

fn scalars<S: Suite>(order: &str) {
    let q = hex::decode(order).unwrap();
    assert_eq!(S::decode_scalar(&q), Err(EncodingError::ScalarOutOfRange));
    assert_eq!(
        S::decode_scalar(&[0xff; 32]),
        Err(EncodingError::ScalarOutOfRange)
    );
    assert_eq!(
        S::decode_scalar(&[1; 31]),
        Err(EncodingError::Length {
            expected: 32,
            actual: 31
        })
    );
    let mut below = q.clone();
    below[31] -= 1;
    assert!(S::decode_scalar(&below).is_ok());
    assert_eq!(
        SecretScalar::<S>::from_bytes(&[0; 32]).unwrap_err(),
        EncodingError::ZeroScalar
    );
    assert_eq!(
        SecretScalar::<S>::from_bytes(&q).unwrap_err(),
        EncodingError::ScalarOutOfRange
    );
}

#[test]
fn strict_point_and_scalar_decoding() {
    points::<Secp256k1>();
    points::<P256>();
    scalars::<Secp256k1>(SECP_ORDER);
    scalars::<P256>(P256_ORDER);
    // secp256k1: an x-coordinate >= p is not canonical.
    let mut big_x = vec![0x02];
    big_x.extend(hex::decode(SECP_P).unwrap());
    assert_eq!(
        Secp256k1::decode_point(&big_x),
        Err(EncodingError::NotOnCurve)
    );
}

#[test]
fn node_indices() {
    assert_eq!(NodeIndex::new(0), None);
    assert_eq!(
        NodeIndex::from_bytes(&[0, 0]),
        Err(EncodingError::ZeroIndex)
    );
    assert_eq!(NodeIndex::from_bytes(&[0, 7]).unwrap().get(), 7);
    assert_eq!(
        NodeIndex::from_bytes(&[7]),
        Err(EncodingError::Length {
            expected: 2,
            actual: 1
        })
    );
    assert_eq!(NodeIndex::try_from(65535).unwrap().to_string(), "65535");
}

#[test]
fn ciphertext_containers() {
    assert_eq!(
        Ciphertext::<Secp256k1>::from_bytes(&[2u8; 60]).unwrap_err(),
        Error::CiphertextTooShort {
            minimum: 61,
            actual: 60
        }
    );
    let mut bytes = vec![0x05];
    bytes.extend([0u8; 60]);
    assert_eq!(
        Ciphertext::<Secp256k1>::from_bytes(&bytes).unwrap_err(),
        Error::Encoding(EncodingError::NotCompressed)
    );
}

#[test]
fn secrets_do_not_show_their_value() {
    let secret = SecretScalar::<Secp256k1>::from_bytes(&[0x11; 32]).unwrap();
    let shown = format!("{secret:?}");
    assert_eq!(shown, "SecretScalar<secp256k1>(..)");
    assert!(!shown.contains("11"));
    let shared = SharedSecret::from_bytes([0x22; 32]);
    assert_eq!(format!("{shared:?}"), "SharedSecret(..)");
    // Constant-time equality.
    assert!(bool::from(
        secret.ct_eq(&SecretScalar::from_bytes(&[0x11; 32]).unwrap())
    ));
    assert!(!bool::from(
        secret.ct_eq(&SecretScalar::from_bytes(&[0x12; 32]).unwrap())
    ));
}

proptest! {
    /// Every decoder of untrusted bytes returns an error or a value, never panics, and what
    /// decodes re-encodes to the same bytes.
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(p) = Secp256k1::decode_point(&bytes) {
            prop_assert_eq!(Secp256k1::encode_point(&p).to_vec(), bytes.clone());
        }
        let _ = P256::decode_point(&bytes);
        let _ = Secp256k1::decode_scalar(&bytes);
        if let Ok(c) = Ciphertext::<Secp256k1>::from_bytes(&bytes) {
            prop_assert_eq!(c.to_bytes(), bytes.clone());
        }
        let _ = DleqProof::<Secp256k1>::from_bytes(&bytes);
        let _ = Signature::<P256>::from_bytes(&bytes);
        let _ = Commitment::<Secp256k1>::from_bytes(&bytes);
        let _ = PartialDelegation::<Secp256k1>::from_bytes(&bytes);
        let _ = PartialReencryption::<Secp256k1>::from_bytes(&bytes);
        let _ = ReencryptedCapsule::<Secp256k1>::from_bytes(&bytes);
        let _ = Dealing::<Secp256k1>::from_bytes(&bytes);
        let _ = Response::<Secp256k1>::from_bytes(&bytes);
        let _ = Confirmation::<Secp256k1>::from_bytes(&bytes);
    }

    /// Structured garbage: valid points in every slot still decode or fail cleanly.
    #[test]
    fn partials_built_from_valid_points_decode_or_fail_cleanly(seed in any::<[u8; 32]>(), index in any::<u16>()) {
        let s = SecretScalar::<Secp256k1>::from_bytes(&seed).unwrap_or_else(|_| SecretScalar::from_bytes(&[1; 32]).unwrap());
        let p = Secp256k1::encode_point(&s.public_point());
        let mut bytes = index.to_be_bytes().to_vec();
        for _ in 0..3 { bytes.extend_from_slice(&p); }
        bytes.extend_from_slice(&seed);
        let result = PartialDelegation::<Secp256k1>::from_bytes(&bytes);
        if index == 0 {
            prop_assert_eq!(result.unwrap_err(), Error::Encoding(EncodingError::ZeroIndex));
        }
    }
}
