//! `tkms_sdk::ecrecover::recover_address` against alloy's `recover_address_from_prehash`
//! (k256 underneath): the same address for every valid signature (low and high `s`), the
//! same refusal for every malformed one.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use alloy_primitives::{Address, Signature, B256, U256};
use k256::ecdsa::SigningKey;
use proptest::prelude::*;
use tkms_sdk::ecrecover::recover_address;

/// The secp256k1 group order.
const N: U256 = U256::from_be_bytes([
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
]);

fn alloy(signature: &Signature, digest: &B256) -> Option<Address> {
    signature.recover_address_from_prehash(digest).ok()
}

fn ours(signature: &Signature, digest: &B256) -> Option<Address> {
    recover_address(signature, digest).ok()
}

fn signed(key: [u8; 32], digest: [u8; 32]) -> Option<(Signature, Address)> {
    let key = SigningKey::from_bytes(&key.into()).ok()?;
    let (sig, recid) = key.sign_prehash_recoverable(&digest).ok()?;
    let signature = Signature::from_bytes_and_parity(&sig.to_bytes(), recid.is_y_odd());
    Some((signature, Address::from_private_key(&key)))
}

fn same(signature: &Signature, digest: &B256) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        ours(signature, digest),
        alloy(signature, digest),
        "{:?}",
        signature
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn valid_signatures_recover_the_signer(key in any::<[u8; 32]>(), digest in any::<[u8; 32]>()) {
        let Some((signature, address)) = signed(key, digest) else { return Ok(()) };
        let digest = B256::from(digest);
        prop_assert_eq!(ours(&signature, &digest), Some(address));
        same(&signature, &digest)?;
        // The high-s twin (s -> n - s, parity flipped) recovers the same signer, as in alloy.
        let high = Signature::new(signature.r(), N - signature.s(), !signature.v());
        prop_assert_eq!(ours(&high, &digest), Some(address));
        same(&high, &digest)?;
        // Either parity alone, or another digest, gives another key or none: as alloy.
        same(&Signature::new(signature.r(), signature.s(), !signature.v()), &digest)?;
        same(&Signature::new(signature.r(), N - signature.s(), signature.v()), &digest)?;
        let mut other = digest;
        other.0[0] ^= 1;
        same(&signature, &other)?;
    }

    #[test]
    fn arbitrary_signatures_agree_with_alloy(
        r in any::<[u8; 32]>(),
        s in any::<[u8; 32]>(),
        parity in any::<bool>(),
        digest in any::<[u8; 32]>(),
    ) {
        let (r, s) = (U256::from_be_bytes(r), U256::from_be_bytes(s));
        let digest = B256::from(digest);
        // Random values below the order (the usual case), and the raw values themselves.
        same(&Signature::new(r % N, s % N, parity), &digest)?;
        if s < N {
            same(&Signature::new(r, s, parity), &digest)?;
        }
    }
}

#[test]
fn edge_values_are_refused_like_alloy() {
    let (signature, _) = signed([7; 32], [9; 32]).unwrap();
    let digest = B256::from([9; 32]);
    let (r, s) = (signature.r(), signature.s());
    for (r, s) in [
        (U256::ZERO, s),
        (r, U256::ZERO),
        (N, s),
        (r, N),
        (U256::MAX, s),
        (N - U256::from(1), s),
        (U256::from(1), s),
    ] {
        for parity in [false, true] {
            let candidate = Signature::new(r, s, parity);
            assert_eq!(
                ours(&candidate, &digest),
                alloy(&candidate, &digest),
                "{candidate:?}"
            );
        }
    }
    assert!(ours(&Signature::new(U256::ZERO, s, false), &digest).is_none());
    // The zero digest is a valid input (z = 0).
    let (signature, address) = signed([3; 32], [0; 32]).unwrap();
    assert_eq!(ours(&signature, &B256::ZERO), Some(address));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// The wallet's signatures (made by libsecp256k1) are byte for byte the RFC 6979 low-`s`
    /// signatures k256 makes, with `v` = 27/28, and recover to the wallet.
    #[test]
    fn wallet_signatures_are_k256_signatures(
        key in any::<[u8; 32]>(),
        chain_id in any::<u64>(),
        salt in any::<[u8; 32]>(),
        answer in "[0-9a-f]{0,64}",
    ) {
        let Ok(wallet) = SigningKey::from_bytes(&key.into()) else { return Ok(()) };
        let salt = B256::from(salt);
        let proof = tkms_sdk::nox::sign_response(&wallet, chain_id, salt, &answer);
        let digest = tkms_sdk::nox::response_signing_hash(chain_id, salt, &answer);
        let (sig, recid) = wallet.sign_prehash_recoverable(digest.as_slice()).unwrap();
        let k256 = Signature::from_bytes_and_parity(&sig.to_bytes(), recid.is_y_odd());
        prop_assert_eq!(&proof, &format!("0x{}", hex::encode(k256.as_bytes())));
        prop_assert_eq!(
            tkms_sdk::nox::verify_response(chain_id, salt, &answer, &proof).unwrap(),
            Address::from_private_key(&wallet)
        );
    }
}
