//! Every decoder of untrusted bytes: must return a value or an error, never panic, and what
//! decodes must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tkms_crypto::{
    ceremony::Message,
    delegation::PartialDelegation,
    dkg::{Confirmation, Dealing, Response},
    dleq::DleqProof,
    ecies::Ciphertext,
    pre::{PartialReencryption, ReencryptedCapsule},
    schnorr::Signature,
    shamir::Commitment,
    Secp256k1, Suite, P256,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Secp256k1::decode_point(data) {
        assert_eq!(&Secp256k1::encode_point(&p)[..], data);
    }
    if let Ok(p) = P256::decode_point(data) {
        assert_eq!(&P256::encode_point(&p)[..], data);
    }
    let _ = Secp256k1::decode_scalar(data);
    if let Ok(c) = Ciphertext::<Secp256k1>::from_bytes(data) {
        assert_eq!(c.to_bytes(), data);
    }
    if let Ok(p) = PartialDelegation::<Secp256k1>::from_bytes(data) {
        assert_eq!(&p.to_bytes()[..], data);
    }
    if let Ok(p) = PartialReencryption::<Secp256k1>::from_bytes(data) {
        assert_eq!(&p.to_bytes()[..], data);
    }
    let _ = ReencryptedCapsule::<Secp256k1>::from_bytes(data);
    let _ = DleqProof::<Secp256k1>::from_bytes(data);
    let _ = Signature::<Secp256k1>::from_bytes(data);
    let _ = Commitment::<Secp256k1>::from_bytes(data);
    if let Ok(d) = Dealing::<Secp256k1>::from_bytes(data) {
        assert_eq!(d.to_bytes(), data);
    }
    if let Ok(r) = Response::<Secp256k1>::from_bytes(data) {
        assert_eq!(r.to_bytes(), data);
    }
    let _ = Confirmation::<P256>::from_bytes(data);
    if let Ok(m) = Message::<Secp256k1>::from_bytes(data) {
        assert_eq!(m.to_bytes(), data);
    }
});
