//! S3 backend against a local `moto_server` (started by the test itself; installed by
//! `./test.sh`). Covers the index life cycle over S3, reopening from a new
//! client, wrong keys, concurrent-handle conflicts (conditional put), store-level batch
//! semantics, use from inside a tokio runtime, and a raw scan of every object in the bucket
//! for plaintext.
// Helpers outside `#[test]` functions unwrap too: clippy's allow-unwrap-in-tests
// does not reach them.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use common::moto::{http, is_ok, Moto};
use common::{brute_force, Mixture};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::json;
use tkms_engine::store::{value_digest, Applied, Precondition, S3Store, Store, WriteBatch};
use tkms_engine::{
    Client, Error, IndexConfig, IndexKey, Item, Metric, QueryParams, S3Config, StorageConfig,
    TrainParams,
};

const SECRET_META: &str = "confidential-metadata-value";
const SECRET_CONTENTS: &str = "the eagle lands at midnight";

impl Moto {
    /// Creates `bucket` (moto accepts an unsigned `PUT /bucket`).
    fn bucket(&self, bucket: &str) {
        let r = http(self.port, "PUT", &format!("/{bucket}")).unwrap();
        assert!(is_ok(&r), "bucket creation failed: {r}");
    }

    fn config(&self, bucket: &str, prefix: &str) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: Some(format!("http://127.0.0.1:{}", self.port)),
            region: "us-east-1".into(),
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            allow_http: true,
        }
    }

    /// Every object of the bucket, read directly through object_store: (name, bytes).
    fn dump(&self, bucket: &str) -> Vec<(String, Vec<u8>)> {
        let s3 = AmazonS3Builder::new()
            .with_endpoint(format!("http://127.0.0.1:{}", self.port))
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let metas: Vec<_> = s3.list(None).try_collect().await.unwrap();
            let mut out = Vec::new();
            for m in metas {
                let bytes = s3.get(&m.location).await.unwrap().bytes().await.unwrap();
                out.push((m.location.to_string(), bytes.to_vec()));
            }
            out
        })
    }
}

fn items(n: usize) -> Vec<Item> {
    let mut mix = Mixture::new(16, 8, 1.0, 7);
    (0..n)
        .map(|i| {
            Item::new(format!("patient-record-{i:05}"), mix.point())
                .with_contents(format!("{SECRET_CONTENTS} #{i}"))
                .with_metadata(json!({ "secret": SECRET_META, "n": i }))
        })
        .collect()
}

fn needles(items: &[Item]) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("metadata value".into(), SECRET_META.as_bytes().to_vec()),
        ("contents".into(), SECRET_CONTENTS.as_bytes().to_vec()),
        ("id prefix".into(), b"patient-record-".to_vec()),
    ];
    for it in items {
        out.push((format!("id {}", it.id), it.id.as_bytes().to_vec()));
        for w in it.vector.windows(2).step_by(3) {
            let le: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
            let be: Vec<u8> = w.iter().flat_map(|x| x.to_be_bytes()).collect();
            out.push((format!("vector of {}", it.id), le));
            out.push((format!("vector of {}", it.id), be));
        }
    }
    out
}

fn recall(index: &tkms_engine::Index, items: &[Item], live: &[usize]) -> f64 {
    let data: Vec<Vec<f32>> = live.iter().map(|&i| items[i].vector.clone()).collect();
    let mut hit = 0usize;
    let mut total = 0usize;
    for q in (0..live.len()).step_by(live.len() / 20) {
        let query = &data[q];
        let truth: Vec<&str> = brute_force(Metric::Euclidean, &data, query, 10)
            .into_iter()
            .map(|j| items[live[j]].id.as_str())
            .collect();
        let got = index
            .query(query, &QueryParams::new(10).n_probes(4))
            .unwrap();
        total += truth.len();
        hit += truth
            .iter()
            .filter(|t| got.iter().any(|g| g.id == **t))
            .count();
    }
    hit as f64 / total as f64
}

#[test]
fn s3_index_life_cycle_and_no_plaintext_in_bucket() {
    let t0 = Instant::now();
    let moto = Moto::start();
    eprintln!("moto_server up in {:?}", t0.elapsed());
    moto.bucket("tkms-life");
    let config = moto.config("tkms-life", "tenant-a/engine");
    let key = IndexKey::generate();
    let items = items(400);

    let client = Client::new(StorageConfig::s3(config.clone())).unwrap();
    let index = client
        .create_index("docs", &key, IndexConfig::new(16).with_n_lists(8))
        .unwrap();
    assert!(matches!(
        client.create_index("docs", &key, IndexConfig::new(16)),
        Err(Error::IndexExists(_))
    ));
    index.upsert(items[..250].to_vec()).unwrap();
    index.upsert(items[250..].to_vec()).unwrap();
    index.train(&TrainParams::default()).unwrap();
    let all: Vec<usize> = (0..items.len()).collect();
    let r = recall(&index, &items, &all);
    assert!(r >= 0.85, "recall@10 over S3 = {r}");

    let got = index.get(&[items[5].id.as_str()]).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].metadata, items[5].metadata);
    assert_eq!(got[0].contents, items[5].contents);

    assert_eq!(
        index
            .delete(&[items[5].id.as_str(), items[6].id.as_str()])
            .unwrap(),
        2
    );
    assert!(index.get(&[items[5].id.as_str()]).unwrap().is_empty());
    index.sweep().unwrap();
    assert_eq!(index.len(), 398);

    // A second handle, then the first one writes: the second is stale and must conflict
    // (the conditional put on the state object loses).
    let stale = client.load_index("docs", &key).unwrap();
    index.upsert(vec![items[5].clone()]).unwrap();
    assert!(matches!(
        stale.upsert(vec![items[6].clone()]),
        Err(Error::Conflict(_))
    ));
    stale.reload().unwrap();
    stale.upsert(vec![items[6].clone()]).unwrap();
    drop((index, stale, client));

    // Reopen from a brand-new client with the same configuration.
    let client = Client::new(StorageConfig::s3(config.clone())).unwrap();
    assert_eq!(client.list_indexes().unwrap(), vec!["docs".to_string()]);
    let index = client.load_index("docs", &key).unwrap();
    assert_eq!(index.len(), 400);
    let r = recall(&index, &items, &all);
    assert!(r >= 0.85, "recall@10 after reopen = {r}");
    let hits = index
        .query(
            &items[0].vector,
            &QueryParams::new(3).n_probes(4).filter(json!({"n": 0})),
        )
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, items[0].id);

    // Wrong KEK refused.
    assert!(matches!(
        client.load_index("docs", &IndexKey::generate()),
        Err(Error::WrongKey { .. })
    ));

    // Raw scan of every object in the bucket.
    let dump = moto.dump("tkms-life");
    assert!(dump.len() > 20, "bucket should hold the records");
    assert!(dump
        .iter()
        .all(|(name, _)| name.starts_with("tenant-a/engine/")));
    let mut hay = Vec::new();
    for (name, bytes) in &dump {
        hay.extend_from_slice(name.as_bytes());
        hay.push(0xff);
        hay.extend_from_slice(bytes);
        hay.push(0xff);
    }
    for (what, needle) in needles(&items) {
        assert!(
            !hay.windows(needle.len()).any(|w| w == needle.as_slice()),
            "bucket contains plaintext {what}"
        );
    }

    // Deleting the index removes its objects.
    index.delete_index().unwrap();
    assert!(client.list_indexes().unwrap().is_empty());
    assert!(moto.dump("tkms-life").is_empty());
    eprintln!("S3 life-cycle test body took {:?}", t0.elapsed());
}

#[test]
fn s3_store_batch_semantics_and_async_callers() {
    let moto = Moto::start();
    moto.bucket("tkms-store");
    let store = S3Store::open(&moto.config("tkms-store", "")).unwrap();

    let mut b = WriteBatch::new();
    b.put(b"a/1".to_vec(), b"x".to_vec());
    b.put(b"a/2".to_vec(), b"y".to_vec());
    b.put(b"b".to_vec(), b"z".to_vec());
    b.require(Precondition::Absent(b"b".to_vec()));
    assert_eq!(store.apply(b).unwrap(), Applied::Committed);
    assert_eq!(
        store.scan_prefix(b"a/").unwrap(),
        vec![
            (b"a/1".to_vec(), b"x".to_vec()),
            (b"a/2".to_vec(), b"y".to_vec())
        ]
    );
    // Exact-prefix key and ordering across the whole store.
    assert_eq!(store.scan_prefix(b"b").unwrap().len(), 1);
    assert_eq!(store.scan_prefix(b"").unwrap().len(), 3);
    assert_eq!(
        store.get_many(&[b"b", b"nope"]).unwrap(),
        vec![Some(b"z".to_vec()), None]
    );

    // Failed preconditions change nothing.
    let mut b = WriteBatch::new();
    b.put(b"c/new".to_vec(), b"w".to_vec());
    b.put(b"b".to_vec(), b"z2".to_vec());
    b.require(Precondition::Absent(b"b".to_vec()));
    assert_eq!(store.apply(b).unwrap(), Applied::PreconditionFailed);
    let mut b = WriteBatch::new();
    b.put(b"c/new".to_vec(), b"w".to_vec());
    b.put(b"b".to_vec(), b"z2".to_vec());
    b.require(Precondition::Digest(b"b".to_vec(), value_digest(b"wrong")));
    assert_eq!(store.apply(b).unwrap(), Applied::PreconditionFailed);
    assert_eq!(store.get(b"c/new").unwrap(), None);
    assert_eq!(store.get(b"b").unwrap().unwrap(), b"z");

    // Digest precondition + conditional update, prefix delete sparing a later put.
    let mut b = WriteBatch::new();
    b.delete_prefix(b"a/".to_vec());
    b.put(b"a/3".to_vec(), b"v".to_vec());
    b.put(b"b".to_vec(), b"z2".to_vec());
    b.require(Precondition::Digest(b"b".to_vec(), value_digest(b"z")));
    assert_eq!(store.apply(b).unwrap(), Applied::Committed);
    assert_eq!(
        store.scan_prefix(b"").unwrap(),
        vec![
            (b"a/3".to_vec(), b"v".to_vec()),
            (b"b".to_vec(), b"z2".to_vec())
        ]
    );

    // Usable and droppable from inside another tokio runtime (no nested-runtime panic).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let config = moto.config("tkms-store", "async");
    rt.block_on(async move {
        let client = Client::new(StorageConfig::s3(config)).unwrap();
        let index = client
            .create_index("inside", &IndexKey::generate(), IndexConfig::new(2))
            .unwrap();
        index.upsert(vec![Item::new("x", vec![1.0, 2.0])]).unwrap();
        assert_eq!(index.len(), 1);
        drop(index);
        drop(client);
        drop(store);
    });
}

/// Concurrent compare-and-swap on one key: the read-compare of step 1 can pass for two
/// writers at once, and only the conditional put (If-Match) keeps one of them from losing the
/// other's update. No lost update, and the losers' fresh records are removed again.
///
/// The client's requests still race each other, from four threads; but moto serves them one
/// at a time here: its threaded server checks a put's If-Match and writes the object without
/// a lock, so two conditional puts could both succeed there (a moto race, not the client's),
/// whereas S3 makes each conditional put atomic, as a single thread does.
#[test]
fn s3_concurrent_commits_do_not_lose_updates() {
    let moto = Moto::start_single_threaded();
    moto.bucket("tkms-race");
    let store = std::sync::Arc::new(S3Store::open(&moto.config("tkms-race", "r")).unwrap());
    let mut b = WriteBatch::new();
    b.put(b"ctr".to_vec(), b"0".to_vec());
    assert_eq!(store.apply(b).unwrap(), Applied::Committed);
    let commits: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let store = std::sync::Arc::clone(&store);
                s.spawn(move || {
                    let mut won = 0;
                    for i in 0..12 {
                        let cur = store.get(b"ctr").unwrap().unwrap();
                        let n: usize = String::from_utf8(cur.clone()).unwrap().parse().unwrap();
                        let mut b = WriteBatch::new();
                        b.put(format!("rec/{t}-{i}").into_bytes(), b"r".to_vec());
                        b.put(b"ctr".to_vec(), (n + 1).to_string().into_bytes());
                        b.require(Precondition::Digest(b"ctr".to_vec(), value_digest(&cur)));
                        if store.apply(b).unwrap() == Applied::Committed {
                            won += 1;
                        }
                    }
                    won
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert!(commits > 0);
    let ctr: usize = String::from_utf8(store.get(b"ctr").unwrap().unwrap())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ctr, commits, "a committed update was lost");
    assert_eq!(store.scan_prefix(b"rec/").unwrap().len(), commits);
}
