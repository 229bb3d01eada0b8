//! `cargo bench -p tkms-sdk --bench ecrecover`: Ethereum signer recovery, alloy (k256:
//! constant-time recovery, then a verification) against `tkms_sdk::ecrecover`; and the
//! `/v0` EIP-712 digest every node and the manager compute per request, against alloy's
//! generic `eip712_signing_hash`.

#![allow(clippy::unwrap_used)] // benchmarks may panic on failure

use alloy_primitives::{Signature, B256};
use alloy_sol_types::SolStruct;
use criterion::{criterion_group, criterion_main, Criterion};
use k256::ecdsa::SigningKey;
use tkms_sdk::{ecrecover::recover_address, nox};

fn bench(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[5u8; 32].into()).unwrap();
    let digest = B256::from([1u8; 32]);
    let (sig, recid) = key.sign_prehash_recoverable(digest.as_slice()).unwrap();
    let signature = Signature::from_bytes_and_parity(&sig.to_bytes(), recid.is_y_odd());
    let mut group = c.benchmark_group("ecrecover");
    group.bench_function("alloy recover_address_from_prehash", |b| {
        b.iter(|| signature.recover_address_from_prehash(&digest).unwrap());
    });
    group.bench_function("tkms_sdk::ecrecover::recover_address", |b| {
        b.iter(|| recover_address(&signature, &digest).unwrap());
    });
    group.finish();

    // A compressed ephemeral key and an RSA-2048 SPKI, as hex strings of their real lengths.
    let ephemeral = format!("0x02{}", "ab".repeat(32));
    let target = format!("0x{}", "cd".repeat(294));
    let mut group = c.benchmark_group("v0 authorization digest");
    group.bench_function("alloy eip712_signing_hash", |b| {
        b.iter(|| {
            nox::DelegateAuthorization {
                ephemeralPubKey: ephemeral.clone(),
                targetPubKey: target.clone(),
            }
            .eip712_signing_hash(&nox::authorization_domain(421_614))
        });
    });
    group.bench_function("tkms_sdk::nox::authorization_signing_hash", |b| {
        b.iter(|| nox::authorization_signing_hash(421_614, &ephemeral, &target));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
