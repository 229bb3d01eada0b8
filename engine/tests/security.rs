//! Confidentiality and key-handling properties: no plaintext in storage (memory and disk,
//! raw bytes), wrong keys refused, unlinkable re-insertions, scoped user keys.
// Helpers outside `#[test]` functions unwrap too: clippy's allow-unwrap-in-tests
// does not reach them.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashSet};

use common::{Mixture, RecordingStore};
use serde_json::json;
use tkms_engine::{
    Client, Error, IndexConfig, IndexKey, Item, QueryParams, Scope, StorageConfig, TrainParams,
    UserKey,
};

const SECRET_META: &str = "confidential-metadata-value";
const SECRET_FIELD: &str = "classified_field_name";
const SECRET_CONTENTS: &str = "the eagle lands at midnight";

fn sensitive_items(n: usize) -> Vec<Item> {
    let mut mix = Mixture::new(16, 4, 1.0, 99);
    (0..n)
        .map(|i| {
            Item::new(format!("patient-record-{i:05}"), mix.point())
                .with_contents(format!("{SECRET_CONTENTS} #{i}"))
                .with_metadata(json!({ SECRET_FIELD: SECRET_META, "n": i }))
        })
        .collect()
}

/// Every plaintext an attacker could look for.
fn needles(items: &[Item]) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        (
            "metadata value".to_string(),
            SECRET_META.as_bytes().to_vec(),
        ),
        (
            "metadata field".to_string(),
            SECRET_FIELD.as_bytes().to_vec(),
        ),
        ("contents".to_string(), SECRET_CONTENTS.as_bytes().to_vec()),
        ("id prefix".to_string(), b"patient-record-".to_vec()),
    ];
    for it in items {
        out.push((format!("id {}", it.id), it.id.as_bytes().to_vec()));
        // Any two consecutive f32 components, little- or big-endian.
        for w in it.vector.windows(2).step_by(3) {
            let le: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
            let be: Vec<u8> = w.iter().flat_map(|x| x.to_be_bytes()).collect();
            out.push((format!("vector of {}", it.id), le));
            out.push((format!("vector of {}", it.id), be));
        }
    }
    out
}

fn assert_no_plaintext(what: &str, hay: &[u8], items: &[Item]) {
    // Index every 8-byte window of the haystack once; all needles are at least 8 bytes, so a
    // needle can only occur where its first 8 bytes do, and only those places are compared.
    let mut windows: std::collections::HashMap<[u8; 8], Vec<usize>> =
        std::collections::HashMap::new();
    for (i, w) in hay.windows(8).enumerate() {
        windows.entry(w.try_into().unwrap()).or_default().push(i);
    }
    for (name, needle) in needles(items) {
        assert!(needle.len() >= 8);
        let head: [u8; 8] = needle[..8].try_into().unwrap();
        let found = windows
            .get(&head)
            .is_some_and(|at| at.iter().any(|&i| hay[i..].starts_with(&needle)));
        assert!(!found, "{what} contains plaintext {name}");
    }
}

fn populate(index: &tkms_engine::Index, items: &[Item]) {
    index.upsert(items[..150].to_vec()).unwrap();
    index.upsert(items[150..].to_vec()).unwrap();
    index.train(&TrainParams::default()).unwrap();
    index.delete(&[items[3].id.as_str()]).unwrap();
    index.upsert(vec![items[4].clone()]).unwrap();
    index.compact().unwrap();
}

#[test]
fn memory_store_holds_no_plaintext() {
    let items = sensitive_items(300);
    let client = Client::new(StorageConfig::memory()).unwrap();
    let index = client
        .create_index(
            "secrets",
            &IndexKey::generate(),
            IndexConfig::new(16).with_n_lists(8),
        )
        .unwrap();
    populate(&index, &items);
    let _ = index.mint_user_key(Scope::ReadOnly).unwrap();

    let dump = client.store().scan_prefix(b"").unwrap();
    assert!(dump.len() > 600, "store should hold the records");
    let mut all = Vec::new();
    for (k, v) in &dump {
        all.extend_from_slice(k);
        all.push(0xff);
        all.extend_from_slice(v);
        all.push(0xff);
    }
    assert_no_plaintext("memory store", &all, &items);
    // And the data is really there and usable.
    let hit = index
        .query(&items[10].vector, &QueryParams::new(1).n_probes(8))
        .unwrap();
    assert_eq!(hit[0].id, items[10].id);
}

#[test]
fn disk_file_holds_no_plaintext() {
    let items = sensitive_items(300);
    let dir = tempfile::tempdir().unwrap();
    {
        let client = Client::new(StorageConfig::disk(dir.path())).unwrap();
        let index = client
            .create_index(
                "secrets",
                &IndexKey::generate(),
                IndexConfig::new(16).with_n_lists(8),
            )
            .unwrap();
        populate(&index, &items);
    }
    let mut files = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.is_empty());
        assert_no_plaintext(&path.display().to_string(), &bytes, &items);
        files += 1;
    }
    assert_eq!(files, 1, "disk storage is one file");
}

#[test]
fn wrong_kek_is_refused_and_changes_nothing() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    let key = IndexKey::generate();
    let index = client
        .create_index("vault", &key, IndexConfig::new(16))
        .unwrap();
    index.upsert(sensitive_items(20)).unwrap();
    let before = client.store().scan_prefix(b"").unwrap();

    let wrong = IndexKey::generate();
    let err = client.load_index("vault", &wrong).unwrap_err();
    assert!(
        matches!(err, Error::WrongKey { ref index } if index == "vault"),
        "{err}"
    );
    assert!(err.to_string().contains("wrong key"), "{err}");
    assert!(matches!(
        client.delete_index("vault", &wrong),
        Err(Error::WrongKey { .. })
    ));
    assert!(matches!(
        IndexKey::from_bytes(&[1u8; 16]),
        Err(Error::InvalidKey(_))
    ));
    assert_eq!(
        client.store().scan_prefix(b"").unwrap(),
        before,
        "nothing changed"
    );

    // A key for one index does not open another.
    client
        .create_index("other", &IndexKey::generate(), IndexConfig::new(4))
        .unwrap();
    assert!(matches!(
        client.load_index("other", &key),
        Err(Error::WrongKey { .. })
    ));

    // The right key still works.
    let again = client.load_index("vault", &key).unwrap();
    assert_eq!(again.len(), 20);
    assert!(matches!(
        client.load_index("missing", &key),
        Err(Error::IndexNotFound(_))
    ));
}

#[test]
fn identical_items_give_unrelated_ciphertexts_and_keys() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    let index = client
        .create_index("twins", &IndexKey::generate(), IndexConfig::new(4))
        .unwrap();
    let item = Item::new("same", vec![1.0, 2.0, 3.0, 4.0])
        .with_contents("same contents")
        .with_metadata(json!({"k": "v"}));

    let snap = |c: &Client| -> BTreeMap<Vec<u8>, Vec<u8>> {
        c.store().scan_prefix(b"").unwrap().into_iter().collect()
    };
    index.upsert(vec![item.clone()]).unwrap();
    let first = snap(&client);
    index.upsert(vec![item.clone()]).unwrap(); // same id, same everything: replaces
    let second = snap(&client);
    let twin = Item {
        id: "same-2".into(),
        ..item.clone()
    };
    index.upsert(vec![twin]).unwrap(); // same vector/contents/metadata, other id
    let third = snap(&client);

    let values =
        |m: &BTreeMap<Vec<u8>, Vec<u8>>| -> HashSet<Vec<u8>> { m.values().cloned().collect() };
    for (older, newer) in [(&first, &second), (&second, &third)] {
        let added: Vec<_> = newer.keys().filter(|k| !older.contains_key(*k)).collect();
        assert!(
            added.len() >= 4,
            "codes, metadata, vector and document records are new"
        );
        let old_values = values(older);
        for k in &added {
            assert!(
                !old_values.contains(&newer[*k]),
                "a new ciphertext repeats an old one"
            );
        }
    }
    // The replaced item's records are not deleted by the batch that writes its replacement
    // (that would link the two); the next write sweeps them. After it, the catalog entry, the
    // index state and its version record (`x/<uid:16>/s`, `x/<uid:16>/v`, rewritten in place)
    // are the only keys left from the first snapshot.
    let fixed = |k: &[u8]| {
        k.starts_with(b"c/") || (k.len() == 20 && (k.ends_with(b"/s") || k.ends_with(b"/v")))
    };
    let replaced: Vec<_> = first.keys().filter(|k| !fixed(k)).collect();
    assert!(replaced.len() >= 4);
    assert!(replaced.iter().all(|k| second.contains_key(*k)));
    let kept: Vec<_> = first.keys().filter(|k| third.contains_key(*k)).collect();
    assert!(kept.iter().all(|k| fixed(k)), "{kept:?}");
    assert_eq!(index.len(), 2);
    assert_eq!(index.get(&["same", "same-2"]).unwrap().len(), 2);
}

#[test]
fn read_only_user_key_can_read_but_not_write() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    let key = IndexKey::generate();
    let admin = client
        .create_index("shared", &key, IndexConfig::new(16).with_n_lists(4))
        .unwrap();
    let items = sensitive_items(100);
    admin.upsert(items.clone()).unwrap();
    admin.train(&TrainParams::default()).unwrap();

    let ro = admin.mint_user_key(Scope::ReadOnly).unwrap();
    let rw = admin.mint_user_key(Scope::ReadWrite).unwrap();
    assert!(format!("{ro:?}").contains("ReadOnly"));

    // Hand the key over as bytes, as a service would.
    let ro = UserKey::from_bytes(&ro.to_bytes()).unwrap();
    let reader = client.load_index_with_user_key("shared", &ro).unwrap();
    assert_eq!(reader.user_scope(), Some(Scope::ReadOnly));
    let before = client.store().scan_prefix(b"").unwrap();
    assert_eq!(
        reader
            .query(&items[0].vector, &QueryParams::new(3).n_probes(4))
            .unwrap()[0]
            .id,
        items[0].id
    );
    assert_eq!(reader.get(&[items[1].id.as_str()]).unwrap()[0], items[1]);
    assert_eq!(reader.list_ids().unwrap().len(), 100);
    for err in [
        reader
            .upsert(vec![Item::new("new", vec![0.0; 16])])
            .unwrap_err(),
        reader.delete(&[items[0].id.as_str()]).unwrap_err(),
        reader.train(&TrainParams::default()).unwrap_err(),
        reader.compact().unwrap_err(),
        reader.mint_user_key(Scope::ReadWrite).unwrap_err(),
    ] {
        assert!(matches!(err, Error::PermissionDenied { .. }), "{err}");
    }
    assert!(matches!(
        reader.delete_index(),
        Err(Error::PermissionDenied { .. })
    ));
    assert_eq!(
        client.store().scan_prefix(b"").unwrap(),
        before,
        "nothing changed"
    );

    // Read-write key writes but cannot mint or delete the index.
    let writer = client.load_index_with_user_key("shared", &rw).unwrap();
    writer
        .upsert(vec![Item::new("by-writer", vec![0.5; 16])])
        .unwrap();
    assert!(matches!(
        writer.mint_user_key(Scope::ReadOnly),
        Err(Error::PermissionDenied { .. })
    ));
    admin.reload().unwrap();
    assert_eq!(admin.get(&["by-writer"]).unwrap().len(), 1);

    // Forged scope byte: refused.
    let mut forged = ro.to_bytes().to_vec();
    forged[1] = 2;
    let forged = UserKey::from_bytes(&forged).unwrap();
    assert!(matches!(
        client.load_index_with_user_key("shared", &forged),
        Err(Error::WrongKey { .. })
    ));
    // Revoked: refused.
    assert!(admin.revoke_user_key(&ro.key_id()).unwrap());
    assert!(matches!(
        client.load_index_with_user_key("shared", &ro),
        Err(Error::WrongKey { .. })
    ));
}

#[test]
#[should_panic(expected = "contains plaintext")]
fn scanner_detects_planted_plaintext() {
    // Negative control: the scan above would catch a vector stored in the clear.
    let items = sensitive_items(3);
    let mut hay = vec![0u8; 1000];
    hay.extend(items[2].vector.iter().flat_map(|x| x.to_le_bytes()));
    hay.extend([7u8; 100]);
    assert_no_plaintext("planted", &hay, &items);
}

#[test]
fn tampered_storage_is_detected_not_trusted() {
    use std::sync::Arc;
    use tkms_engine::store::{MemoryStore, Store, WriteBatch};

    let store = Arc::new(MemoryStore::new());
    let client = Client::with_store(store.clone());
    let key = IndexKey::generate();
    let index = client
        .create_index("tamper", &key, IndexConfig::new(16).with_n_lists(4))
        .unwrap();
    let items = sensitive_items(50);
    index.upsert(items.clone()).unwrap();
    index.train(&TrainParams::default()).unwrap();
    // Remove the pre-training segments now (garbage is otherwise swept by the next write):
    // unreferenced records are never read, so flipping their bytes would go unnoticed.
    assert!(index.sweep().unwrap() > 0);
    drop(index);

    // Flip one byte in every stored record, one at a time: loading, querying and getting
    // must either fail with a clear error or keep returning correct data, never panic.
    let all = store.scan_prefix(b"").unwrap();
    let mut detected = 0;
    for (k, v) in &all {
        let mut bad = v.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x01;
        let mut b = WriteBatch::new();
        b.put(k.clone(), bad);
        store.apply(b).unwrap();

        let outcome = client.load_index("tamper", &key).and_then(|ix| {
            ix.query(&items[0].vector, &QueryParams::new(5).n_probes(4))?;
            ix.get(&items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>())
        });
        match outcome {
            Err(Error::Corrupted(_) | Error::WrongKey { .. }) => detected += 1,
            Err(e) => panic!("unexpected error {e}"),
            Ok(got) => assert_eq!(got, items, "tampering went unnoticed and changed data"),
        }
        let mut b = WriteBatch::new();
        b.put(k.clone(), v.clone());
        store.apply(b).unwrap();
    }
    // Every record is read by a full get + a full-probe query except codes/metadata
    // of unprobed lists and user records; most flips must be caught.
    assert!(detected * 2 > all.len(), "{detected} of {}", all.len());
    assert_eq!(client.load_index("tamper", &key).unwrap().len(), 50);
}

#[test]
fn new_inserts_are_unlinkable_to_past_query_tokens() {
    use std::sync::Arc;
    use tkms_engine::store::Store;

    let store = Arc::new(RecordingStore::default());
    let client = Client::with_store(store.clone());
    let index = client
        .create_index(
            "fp",
            &IndexKey::generate(),
            IndexConfig::new(16).with_n_lists(4),
        )
        .unwrap();
    let items = sensitive_items(200);
    index.upsert(items[..100].to_vec()).unwrap();
    index.train(&TrainParams::default()).unwrap();

    // A past query, probing every list, and the storage tokens it used.
    let q = items[150].vector.clone();
    store.reads.lock().unwrap().clear();
    let params = QueryParams::new(5).n_probes(4);
    index.query(&q, &params).unwrap();
    let past_tokens: HashSet<Vec<u8>> = store.reads.lock().unwrap().drain(..).collect();
    assert!(!past_tokens.is_empty());

    // New inserts land in the same lists, under new counters.
    let before: HashSet<Vec<u8>> = store
        .scan_prefix(b"")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    index.upsert(items[100..].to_vec()).unwrap();
    let new_keys: Vec<Vec<u8>> = store
        .scan_prefix(b"")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !before.contains(k))
        .collect();
    assert!(
        new_keys.len() >= 200,
        "vector + document records of 100 items"
    );
    for k in &new_keys {
        assert!(
            !past_tokens.contains(k),
            "a new record reuses a past query token"
        );
    }

    // A fresh query does derive the new tokens and finds the new item.
    let hits = index.query(&q, &params).unwrap();
    assert_eq!(hits[0].id, items[150].id);
    let fresh: HashSet<Vec<u8>> = store.reads.lock().unwrap().drain(..).collect();
    assert!(new_keys.iter().any(|k| fresh.contains(k)));

    // A query probing one list reads fewer segment tokens than one probing all. Compared on
    // the storage path: with the segment cache (on by default) both repeated queries would
    // read only the 32-byte state version record, as the next lines check first.
    index.query(&q, &params).unwrap();
    let cached: Vec<Vec<u8>> = store.reads.lock().unwrap().drain(..).collect();
    assert_eq!(
        cached.len(),
        1,
        "a cached query reads only the state version"
    );
    assert!(cached[0].ends_with(b"/v"));
    index.set_segment_cache_bytes(0);
    index
        .query(&q, &QueryParams::new(5).n_probes(1).rerank_mult(1))
        .unwrap();
    let one = store.reads.lock().unwrap().drain(..).count();
    index
        .query(&q, &QueryParams::new(5).n_probes(4).rerank_mult(1))
        .unwrap();
    let all = store.reads.lock().unwrap().drain(..).count();
    assert!(
        one < all,
        "probing 1 list read {one} keys, 4 lists read {all}"
    );
}
