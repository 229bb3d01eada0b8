//! Regression tests for the first review: stale handles, forward privacy of compaction and
//! overwrite, rollback-safe tokens, hostile values, input caps, stale deletes, dot-product
//! probing, and plaintext in error strings.
// Helpers outside `#[test]` functions unwrap too: clippy's allow-unwrap-in-tests
// does not reach them.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{id, Mixture, RecordingStore};
use serde_json::json;
use tkms_engine::store::{Store, WriteBatch, WriteOp};
use tkms_engine::{
    Client, Error, IndexConfig, IndexKey, Item, Metric, QueryParams, Scope, StorageConfig,
    TrainParams,
};

fn items(n: usize, dim: usize, seed: u64) -> Vec<Item> {
    let mut mix = Mixture::new(dim, 4, 1.0, seed);
    (0..n)
        .map(|i| {
            Item::new(id(i), mix.point())
                .with_contents(format!("c{i}"))
                .with_metadata(json!({ "n": i }))
        })
        .collect()
}

fn puts(b: &WriteBatch) -> Vec<Vec<u8>> {
    b.ops()
        .iter()
        .filter_map(|op| match op {
            WriteOp::Put(k, _) => Some(k.clone()),
            _ => None,
        })
        .collect()
}

fn deletes(b: &WriteBatch) -> Vec<Vec<u8>> {
    b.ops()
        .iter()
        .filter_map(|op| match op {
            WriteOp::Delete(k) | WriteOp::DeletePrefix(k) => Some(k.clone()),
            WriteOp::Put(..) => None,
        })
        .collect()
}

/// A segment record's key, `x/<uid:16>/d/<record key:32>` (not the state `x/<uid>/s` or its
/// version record `x/<uid>/v`).
fn is_data_key(k: &[u8]) -> bool {
    k.len() > 20 && k[19..21] == *b"d/"
}

fn data_keys(store: &dyn Store) -> HashSet<Vec<u8>> {
    store
        .scan_prefix(b"x/")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| is_data_key(k))
        .collect()
}

/// B1: a separately loaded read-only handle keeps working (after a transparent reload) while
/// an admin handle deletes, overwrites, compacts and retrains.
#[test]
fn stale_read_only_handle_reloads_transparently() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    let key = IndexKey::generate();
    let data = items(200, 8, 3);
    let admin = client
        .create_index("shared", &key, IndexConfig::new(8).with_n_lists(4))
        .unwrap();
    admin.upsert(data.clone()).unwrap();
    admin.train(&TrainParams::default()).unwrap();
    let reader = admin.mint_user_key(Scope::ReadOnly).unwrap();
    let ro_query = client.load_index_with_user_key("shared", &reader).unwrap();
    let ro_get = client.load_index_with_user_key("shared", &reader).unwrap();
    let params = QueryParams::new(5).n_probes(4);
    assert_eq!(
        ro_query.query(&data[7].vector, &params).unwrap()[0].id,
        id(7)
    );
    assert_eq!(ro_get.get(&[id(8)]).unwrap()[0].vector, data[8].vector);

    // Every kind of write, then one more write so deferred garbage is swept as well.
    admin.delete(&[id(7)]).unwrap();
    admin
        .upsert(vec![Item::new(id(8), data[9].vector.clone())])
        .unwrap();
    admin.compact().unwrap();
    admin.train(&TrainParams::default().seed(99)).unwrap();
    admin.upsert(vec![Item::new("late", vec![0.5; 8])]).unwrap();
    admin.sweep().unwrap();

    let hits = ro_query.query(&data[7].vector, &params).unwrap();
    assert!(hits.iter().all(|h| h.id != id(7)), "deleted item returned");
    let got = ro_get.get(&[id(8), id(9)]).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].vector, data[9].vector, "overwrite not seen");
    assert_eq!(ro_get.len(), admin.len());
    assert!(ro_get.upsert(vec![Item::new("w", vec![0.0; 8])]).is_err());
}

/// B1': a handle whose segment cache holds a segment never returns an item of it that another
/// handle deleted before the read began, even when nothing was swept (every record the stale
/// handle would read is still stored): each read checks the state version first.
#[test]
fn cached_segments_do_not_hide_another_handles_delete() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    let key = IndexKey::generate();
    let data = items(100, 8, 5);
    let admin = client
        .create_index("cached", &key, IndexConfig::new(8).with_n_lists(2))
        .unwrap();
    admin.upsert(data.clone()).unwrap();
    admin.train(&TrainParams::default()).unwrap();
    let other = client.load_index("cached", &key).unwrap();
    let params = QueryParams::new(3).n_probes(2);
    let batch = vec![data[5].vector.clone(), data[6].vector.clone()];
    assert_eq!(other.query(&data[5].vector, &params).unwrap()[0].id, id(5));
    assert_eq!(other.query_batch(&batch, &params).unwrap()[1][0].id, id(6));
    assert!(other.segment_cache_used() > 0);

    admin.delete(&[id(5), id(6)]).unwrap();
    let hits = other.query(&data[5].vector, &params).unwrap();
    assert!(hits.iter().all(|h| h.id != id(5)), "deleted item returned");
    let hits = other.query_batch(&batch, &params).unwrap();
    assert!(hits
        .iter()
        .flatten()
        .all(|h| h.id != id(5) && h.id != id(6)));
    assert!(other.get(&[id(5)]).unwrap().is_empty());
    assert_eq!(other.len(), 98);

    // A deleted index is reported, not served from the cache.
    client.delete_index("cached", &key).unwrap();
    let err = other.query(&data[7].vector, &params).unwrap_err();
    assert!(matches!(err, Error::IndexNotFound(_)), "{err}");
}

/// B2: after a query, neither compaction nor an overwrite deletes the keys the query fetched
/// in the batch that writes the new segment; the garbage is removed by a later batch.
#[test]
fn compaction_and_overwrite_do_not_link_new_segments_to_past_queries() {
    let store = Arc::new(RecordingStore::default());
    let client = Client::with_store(store.clone());
    let index = client
        .create_index(
            "fp",
            &IndexKey::generate(),
            IndexConfig::new(8).with_n_lists(2),
        )
        .unwrap();
    let data = items(120, 8, 4);
    index.upsert(data[..60].to_vec()).unwrap();
    index.train(&TrainParams::default()).unwrap();
    index.upsert(data[60..].to_vec()).unwrap();
    index.sweep().unwrap();
    assert!(index.segment_count() > 2);

    let q = data[3].vector.clone();
    let params = QueryParams::new(5).n_probes(2);
    store.reads.lock().unwrap().clear();
    index.query(&q, &params).unwrap();
    index.get(&[id(3), id(70)]).unwrap();
    let fetched: HashSet<Vec<u8>> = store.reads.lock().unwrap().drain(..).collect();
    assert!(!fetched.is_empty());

    // Overwrite.
    store.batches.lock().unwrap().clear();
    index
        .upsert(vec![Item::new(id(3), data[4].vector.clone())])
        .unwrap();
    // Compaction.
    index.compact().unwrap();
    let batches: Vec<WriteBatch> = store.batches.lock().unwrap().drain(..).collect();
    assert_eq!(batches.len(), 2);
    for b in &batches {
        assert!(puts(b).len() > 1, "each batch writes a new segment");
        for d in deletes(b) {
            assert!(
                !fetched.contains(&d),
                "a batch writing a new segment deletes a key a past query fetched"
            );
        }
    }
    // The fetched records still exist until a later sweep removes them.
    let before_sweep = data_keys(store.as_ref());
    let stale: Vec<&Vec<u8>> = fetched
        .iter()
        .filter(|k| before_sweep.contains(*k))
        .collect();
    assert!(!stale.is_empty());
    index.sweep().unwrap();
    let after = data_keys(store.as_ref());
    let sweep_batch = store.batches.lock().unwrap().pop().unwrap();
    let sweep_puts = puts(&sweep_batch);
    assert!(
        sweep_puts.len() == 2 && sweep_puts.iter().all(|k| k.len() == 20),
        "a sweep writes only the state and its version record (x/<uid>/s, x/<uid>/v)"
    );
    for k in stale {
        assert!(!after.contains(k), "garbage survived the sweep");
    }
    let hits = index.query(&q, &params).unwrap();
    assert_eq!(index.len(), 120);
    assert!(!hits.is_empty());
    // Nothing but live records remains: per segment its codes, metadata and block records
    // (kinds 0, 1, 4), per item its vector and document records (kinds 2, 3).
    let segs = index.segment_count();
    assert_eq!(after.len(), 3 * segs + 2 * 120);
}

/// S2: replaying an old state must not make the client reuse the tokens and keys it used
/// for the segment written after that state.
#[test]
fn replayed_state_does_not_reuse_segment_tokens() {
    let store = Arc::new(RecordingStore::default());
    let client = Client::with_store(store.clone());
    let index = client
        .create_index("rb", &IndexKey::generate(), IndexConfig::new(4))
        .unwrap();
    index
        .upsert(vec![Item::new("a", vec![1.0, 2.0, 3.0, 4.0])])
        .unwrap();
    let state: Vec<(Vec<u8>, Vec<u8>)> = store
        .scan_prefix(b"x/")
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.ends_with(b"/s") && k.len() == 20)
        .collect();
    assert_eq!(state.len(), 1);

    store.batches.lock().unwrap().clear();
    index
        .upsert(vec![Item::new("b", vec![4.0, 3.0, 2.0, 1.0])])
        .unwrap();
    let first: HashSet<Vec<u8>> = puts(&store.batches.lock().unwrap()[0])
        .into_iter()
        .filter(|k| is_data_key(k))
        .collect();

    // The server rolls the state back and the client writes again.
    let mut b = WriteBatch::new();
    b.put(state[0].0.clone(), state[0].1.clone());
    store.inner.apply(b).unwrap();
    index.reload().unwrap();
    store.batches.lock().unwrap().clear();
    index
        .upsert(vec![Item::new("c", vec![0.0, 3.0, 2.0, 1.0])])
        .unwrap();
    let second: HashSet<Vec<u8>> = puts(&store.batches.lock().unwrap()[0])
        .into_iter()
        .filter(|k| is_data_key(k))
        .collect();
    assert!(!first.is_empty() && !second.is_empty());
    assert!(
        first.is_disjoint(&second),
        "the replayed state made the client reuse segment tokens"
    );
}

/// S4: huge finite components are refused; a large but accepted outlier never ranks first.
#[test]
fn hostile_vector_values_are_refused() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    for metric in [Metric::Euclidean, Metric::DotProduct, Metric::Cosine] {
        let name = format!("hostile-{metric:?}").to_lowercase();
        let index = client
            .create_index(
                &name,
                &IndexKey::generate(),
                IndexConfig::new(4).with_metric(metric),
            )
            .unwrap();
        index
            .upsert(vec![
                Item::new("a", vec![1.0, 0.0, 0.0, 0.0]),
                Item::new("b", vec![0.0, 1.0, 0.0, 0.0]),
            ])
            .unwrap();
        let hostile = vec![1e38, -1e38, 1e38, -1e38];
        let err = index
            .upsert(vec![Item::new("evil", hostile.clone())])
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains("position 0"), "{err}");
        let err = index.query(&hostile, &QueryParams::new(1)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert_eq!(index.len(), 2);

        // The largest accepted magnitude keeps distances finite.
        index
            .upsert(vec![Item::new("big", vec![1e15, -1e15, 1e15, -1e15])])
            .unwrap();
        let hits = index
            .query(&[1.0, 0.1, 0.0, 0.0], &QueryParams::new(3))
            .unwrap();
        assert!(hits.iter().all(|h| !h.distance.is_nan()), "{hits:?}");
        if metric == Metric::Euclidean {
            assert_eq!(hits[0].id, "a");
            assert_eq!(hits[2].id, "big");
        }
    }
}

/// S5: deleting through a stale handle must not delete a recreated index of the same name.
#[test]
fn stale_handle_cannot_delete_recreated_index() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    let key = IndexKey::generate();
    client
        .create_index("again", &key, IndexConfig::new(2))
        .unwrap();
    let stale = client.load_index("again", &key).unwrap();
    client.delete_index("again", &key).unwrap();
    let fresh = client
        .create_index("again", &key, IndexConfig::new(2))
        .unwrap();
    fresh.upsert(vec![Item::new("x", vec![1.0, 2.0])]).unwrap();

    let err = stale.delete_index().unwrap_err();
    assert!(matches!(err, Error::IndexNotFound(_)), "{err}");
    let reloaded = client.load_index("again", &key).unwrap();
    assert_eq!(reloaded.list_ids().unwrap(), vec!["x"]);
}

/// S9: a dot-product index assigns and probes lists by inner product, not by L2.
#[test]
fn dot_product_probes_by_inner_product() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    let index = client
        .create_index(
            "mips",
            &IndexKey::generate(),
            IndexConfig::new(2)
                .with_metric(Metric::DotProduct)
                .with_n_lists(2),
        )
        .unwrap();
    let mut batch = Vec::new();
    for i in 0..50u8 {
        let j = f32::from(i) * 0.002;
        batch.push(Item::new(format!("small-{i}"), vec![1.0 + j, j]));
        batch.push(Item::new(format!("large-{i}"), vec![10.0 + j, -j]));
    }
    index.upsert(batch).unwrap();
    index.train(&TrainParams::default()).unwrap();
    let hits = index
        .query(&[1.0, 0.0], &QueryParams::new(1).n_probes(1))
        .unwrap();
    assert!(hits[0].id.starts_with("large-"), "{hits:?}");
}

/// S10: unbounded inputs are capped with clear errors.
#[test]
fn oversized_inputs_are_refused() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    let key = IndexKey::generate();
    let err = client
        .create_index("huge", &key, IndexConfig::new(65_536).with_n_lists(65_536))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");

    let index = client
        .create_index("capped", &key, IndexConfig::new(2).with_n_lists(2))
        .unwrap();
    let big_contents = Item::new("c", vec![0.0, 1.0]).with_contents(vec![7u8; 17 << 20]);
    let err = index.upsert(vec![big_contents]).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let big_meta =
        Item::new("m", vec![0.0, 1.0]).with_metadata(json!({ "blob": "x".repeat(200_000) }));
    let err = index.upsert(vec![big_meta]).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(index.is_empty());

    index
        .upsert(vec![
            Item::new("p", vec![0.0, 1.0]),
            Item::new("q", vec![1.0, 0.0]),
            Item::new("r", vec![1.0, 1.0]),
        ])
        .unwrap();
    let err = index
        .query(&[0.0, 0.0], &QueryParams::new(10_000).rerank_mult(1000))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let err = index
        .train(&TrainParams::new().max_iters(10_000_000))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(!index.is_trained());
}

/// S11: errors name the batch position, never the plaintext id or metadata.
#[test]
fn errors_do_not_echo_plaintext() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    let index = client
        .create_index("quiet", &IndexKey::generate(), IndexConfig::new(2))
        .unwrap();
    let secret = "patient-4711-hiv-positive";
    let ok = Item::new("fine", vec![0.0, 0.0]);
    let cases = vec![
        vec![ok.clone(), Item::new(secret, vec![1.0])],
        vec![ok.clone(), Item::new(secret, vec![f32::NAN, 0.0])],
        vec![ok.clone(), Item::new(secret, vec![1e30, 0.0])],
        vec![
            Item::new(secret, vec![0.0, 1.0]),
            Item::new(secret, vec![0.0, 1.0]),
        ],
        vec![
            ok.clone(),
            Item::new("x", vec![0.0, 1.0]).with_metadata(json!(secret)),
        ],
        vec![
            ok.clone(),
            Item::new(secret, vec![0.0, 1.0]).with_metadata(json!([secret])),
        ],
    ];
    for batch in cases {
        let msg = index.upsert(batch).unwrap_err().to_string();
        assert!(!msg.contains(secret), "error echoes plaintext: {msg}");
        assert!(msg.contains("position 1"), "error names no position: {msg}");
    }
}
