//! KMS envelopes (docs/ARCHITECTURE.md §4.4 "KMS envelopes"): the `KMSBlob` FlatBuffer stored
//! beside the keystore, its create/push/get/delete semantics on the memory and disk backends, and
//! the `aws-kms` provider against a local `moto_server` KMS started by the test (installed by
//! `./test.sh`): create an index under a KMS-wrapped KEK, reload it through its envelope from a
//! fresh client, and refuse swapped, foreign and missing envelopes with clear errors.
#![allow(clippy::unwrap_used)]

mod common;

use common::moto::Moto;
use serde_json::json;
use tkms_engine::kms::{
    AwsCredentials, AwsKmsConfig, AwsKmsProvider, KeyProvider, KmsBlob, PROVIDER_AWS_KMS,
};
use tkms_engine::{
    Client, Error, IndexConfig, IndexKey, Item, QueryParams, StorageConfig, TrainParams,
};
use zeroize::Zeroizing;

fn aws_blob(wrapped: Vec<u8>) -> KmsBlob {
    KmsBlob {
        kms_name: "prod-kms".into(),
        provider: PROVIDER_AWS_KMS.into(),
        key_id: "arn:aws:kms:us-east-1:123456789012:key/abcd".into(),
        region: "us-east-1".into(),
        wrapped_kek: wrapped,
        version: 1,
        created_at: 1_767_225_600,
    }
}

fn envelope_life_cycle(client: &Client) {
    // Strict insert, then a second strict insert is refused and changes nothing.
    let first = aws_blob(vec![1; 48]);
    client.create_index_kms("docs", &first).unwrap();
    let second = KmsBlob {
        version: 2,
        ..aws_blob(vec![2; 48])
    };
    assert!(matches!(
        client.create_index_kms("docs", &second),
        Err(Error::KmsEnvelopeExists(n)) if n == "docs"
    ));
    assert_eq!(client.get_index_kms("docs").unwrap(), first);
    // Upsert replaces.
    client.push_index_kms("docs", &second).unwrap();
    assert_eq!(client.get_index_kms("docs").unwrap(), second);
    // Bad inputs are refused and change nothing.
    let bad = KmsBlob {
        provider: "gcp-kms".into(),
        ..aws_blob(vec![3; 8])
    };
    assert!(matches!(
        client.push_index_kms("docs", &bad),
        Err(Error::InvalidEnvelope(_))
    ));
    assert!(matches!(
        client.push_index_kms("bad name!", &second),
        Err(Error::InvalidIndexName(_))
    ));
    assert_eq!(client.get_index_kms("docs").unwrap(), second);
    // Envelopes are not indexes.
    assert!(client.list_indexes().unwrap().is_empty());
    // Delete is idempotent.
    client.delete_index_kms("docs").unwrap();
    client.delete_index_kms("docs").unwrap();
    assert!(matches!(
        client.get_index_kms("docs"),
        Err(Error::KmsEnvelopeNotFound(n)) if n == "docs"
    ));
    // Provider "none": nothing key-derived is stored, and loading through it is refused.
    client
        .create_index_kms("plain", &KmsBlob::none("local"))
        .unwrap();
    let got = client.get_index_kms("plain").unwrap();
    assert_eq!(got.provider, "none");
    assert!(got.wrapped_kek.is_empty());
}

#[test]
fn envelope_life_cycle_in_memory() {
    envelope_life_cycle(&Client::new(StorageConfig::memory()).unwrap());
}

#[test]
fn envelope_persists_on_disk_and_goes_with_its_index() {
    let dir = tempfile::tempdir().unwrap();
    {
        let client = Client::new(StorageConfig::disk(dir.path())).unwrap();
        envelope_life_cycle(&client);
        client
            .push_index_kms("docs", &aws_blob(vec![9; 40]))
            .unwrap();
    }
    let client = Client::new(StorageConfig::disk(dir.path())).unwrap();
    assert_eq!(client.get_index_kms("docs").unwrap(), aws_blob(vec![9; 40]));
    // Deleting an index deletes its envelope in the same batch.
    let key = IndexKey::generate();
    client
        .create_index("docs", &key, IndexConfig::new(2))
        .unwrap();
    client.delete_index("docs", &key).unwrap();
    assert!(matches!(
        client.get_index_kms("docs"),
        Err(Error::KmsEnvelopeNotFound(_))
    ));
}

/// A moto KMS with one symmetric key; returns the server and the key's id.
fn moto_kms() -> (Moto, String) {
    let moto = Moto::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key_id = rt.block_on(moto.create_kms_key());
    (moto, key_id)
}

fn provider(moto: &Moto, key_id: &str) -> AwsKmsProvider {
    AwsKmsProvider::new(AwsKmsConfig {
        key_id: key_id.to_owned(),
        region: "us-east-1".into(),
        endpoint: Some(moto.endpoint()),
        credentials: Some(AwsCredentials {
            access_key_id: "test".into(),
            secret_access_key: Zeroizing::new("test".into()),
            session_token: None,
        }),
    })
    .unwrap()
}

#[test]
fn aws_kms_envelope_opens_the_index_and_wrong_envelopes_are_refused() {
    let (moto, key_id) = moto_kms();
    let kms = provider(&moto, &key_id);
    let dir = tempfile::tempdir().unwrap();

    // Create an index under a fresh KEK wrapped by KMS; the envelope is stored with it.
    {
        let client = Client::new(StorageConfig::disk(dir.path())).unwrap();
        let index = client
            .create_index_with_kms("docs", &kms, "moto", IndexConfig::new(3).with_n_lists(2))
            .unwrap();
        index
            .upsert(vec![
                Item::new("a", vec![1.0, 0.0, 0.0]).with_metadata(json!({"k": "v"})),
                Item::new("b", vec![0.0, 1.0, 0.0]),
                Item::new("c", vec![0.0, 0.0, 1.0]),
            ])
            .unwrap();
        index.train(&TrainParams::default()).unwrap();
        let blob = client.get_index_kms("docs").unwrap();
        assert_eq!(blob.provider, "aws-kms");
        assert_eq!(blob.kms_name, "moto");
        assert_eq!(blob.region, "us-east-1");
        assert!(blob.key_id.contains(&key_id), "{}", blob.key_id);
        assert!(!blob.wrapped_kek.is_empty());
        // Creating it again is refused, whichever of index or envelope exists.
        assert!(matches!(
            client.create_index_with_kms("docs", &kms, "moto", IndexConfig::new(3)),
            Err(Error::KmsEnvelopeExists(_) | Error::IndexExists(_))
        ));
    }

    // A fresh client (a restarted service) loads the index through its envelope.
    let client = Client::new(StorageConfig::disk(dir.path())).unwrap();
    let index = client.load_index_kms("docs", &kms).unwrap();
    let hits = index
        .query(&[0.9, 0.1, 0.0], &QueryParams::new(1).n_probes(2))
        .unwrap();
    assert_eq!(hits[0].id, "a");

    // The KEK itself is nowhere in the store: scan every stored byte for it.
    let kek = client.index_key_from_kms("docs", &kms).unwrap();
    let raw = std::fs::read(dir.path().join(tkms_engine::store::DISK_FILE_NAME)).unwrap();
    assert!(!raw.windows(32).any(|w| w == kek.expose_secret().as_slice()));

    // The same wrapped KEK copied onto another index's envelope: the KMS encryption context
    // names the index, so KMS refuses to decrypt it.
    let other_key = IndexKey::generate();
    client
        .create_index("other", &other_key, IndexConfig::new(3))
        .unwrap();
    let stolen = client.get_index_kms("docs").unwrap();
    client.create_index_kms("other", &stolen).unwrap();
    assert!(matches!(
        client.load_index_kms("other", &kms),
        Err(Error::Kms(m)) if m.contains("other")
    ));

    // An envelope that unwraps fine but to a KEK that is not this index's: WrongKey.
    let foreign = KmsBlob::wrap(&kms, "moto", "other", &IndexKey::generate()).unwrap();
    client.push_index_kms("other", &foreign).unwrap();
    assert!(matches!(
        client.load_index_kms("other", &kms),
        Err(Error::WrongKey { index }) if index == "other"
    ));
    // ... while the right one opens it.
    let right = KmsBlob::wrap(&kms, "moto", "other", &other_key).unwrap();
    client.push_index_kms("other", &right).unwrap();
    client.load_index_kms("other", &kms).unwrap();

    // A tampered wrapped KEK is refused by KMS.
    let mut tampered = client.get_index_kms("docs").unwrap();
    let last = tampered.wrapped_kek.len() - 1;
    tampered.wrapped_kek[last] ^= 1;
    client.push_index_kms("tampered", &tampered).unwrap();
    assert!(matches!(
        client.index_key_from_kms("tampered", &kms),
        Err(Error::Kms(_))
    ));

    // Missing envelope, provider "none", and an envelope from another region.
    assert!(matches!(
        client.load_index_kms("nothing", &kms),
        Err(Error::KmsEnvelopeNotFound(_))
    ));
    client
        .push_index_kms("other", &KmsBlob::none("local"))
        .unwrap();
    assert!(matches!(
        client.load_index_kms("other", &kms),
        Err(Error::InvalidEnvelope(m)) if m.contains("none")
    ));
    let mut elsewhere = client.get_index_kms("docs").unwrap();
    elsewhere.region = "eu-west-1".into();
    client.push_index_kms("other", &elsewhere).unwrap();
    assert!(matches!(
        client.load_index_kms("other", &kms),
        Err(Error::InvalidEnvelope(m)) if m.contains("eu-west-1")
    ));

    // Deleting the index removes its envelope too.
    client.delete_index("docs", &kek).unwrap();
    assert!(matches!(
        client.get_index_kms("docs"),
        Err(Error::KmsEnvelopeNotFound(_))
    ));
}

#[test]
fn aws_kms_provider_works_inside_a_tokio_runtime_and_reports_an_unknown_key() {
    let (moto, key_id) = moto_kms();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Built, used and dropped inside an async context: must not panic.
        let kms = provider(&moto, &key_id);
        let kek = IndexKey::generate();
        let w = kms.wrap("idx", &kek).unwrap();
        let blob = KmsBlob {
            kms_name: "m".into(),
            provider: "aws-kms".into(),
            key_id: w.key_id,
            region: w.region,
            wrapped_kek: w.wrapped_kek,
            version: 1,
            created_at: 0,
        };
        assert_eq!(kms.unwrap("idx", &blob).unwrap(), kek);
        drop(kms);
    });
    let missing = provider(&moto, "11111111-2222-3333-4444-555555555555");
    assert!(matches!(
        missing.wrap("idx", &IndexKey::generate()),
        Err(Error::Kms(m)) if m.contains("idx")
    ));
    assert!(matches!(
        AwsKmsProvider::new(AwsKmsConfig {
            key_id: String::new(),
            region: "us-east-1".into(),
            endpoint: None,
            credentials: None,
        }),
        Err(Error::InvalidArgument(_))
    ));
}
