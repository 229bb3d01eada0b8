//! `cargo bench -p tkms-sdk --bench ecrecover`: Ethereum signer recovery, alloy (k256:
//! constant-time recovery, then a verification) against `tkms_sdk::ecrecover`.

#![allow(clippy::unwrap_used)] // benchmarks may panic on failure

use alloy_primitives::{Signature, B256};
use criterion::{criterion_group, criterion_main, Criterion};
use k256::ecdsa::SigningKey;
use tkms_sdk::ecrecover::recover_address;

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
}

criterion_group!(benches, bench);
criterion_main!(benches);
