//! Decrypting attacker-chosen containers with a fixed key: never panics, never succeeds on
//! bytes this key did not encrypt (AES-GCM authenticates).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tkms_crypto::{ecies, SecretScalar, Secp256k1};

fuzz_target!(|data: &[u8]| {
    let Ok(secret) = SecretScalar::<Secp256k1>::from_bytes(&[0x42; 32]) else { return };
    if let Ok(ciphertext) = ecies::Ciphertext::<Secp256k1>::from_bytes(data) {
        assert!(ecies::decrypt(&secret, &ciphertext).is_err());
    }
});
