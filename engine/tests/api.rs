//! The public API end to end: CRUD, filters, persistence, compaction, bad input.
// Helpers outside `#[test]` functions unwrap too: clippy's allow-unwrap-in-tests
// does not reach them.
#![allow(clippy::unwrap_used)]

mod common;

use common::{brute_force, id, Mixture};
use serde_json::json;
use tkms_engine::{
    Client, Error, Include, Index, IndexConfig, IndexKey, Item, Metric, QueryParams, StorageConfig,
    TrainParams,
};

fn dataset(n: usize, dim: usize) -> Vec<Item> {
    let mut mix = Mixture::new(dim, 8, 2.0, 5);
    (0..n)
        .map(|i| {
            let color = ["red", "green", "blue"][i % 3];
            Item::new(id(i), mix.point())
                .with_contents(format!("contents of {i}"))
                .with_metadata(json!({
                    "color": color,
                    "n": i,
                    "tags": if i % 2 == 0 { json!(["even"]) } else { json!(["odd", "x"]) },
                    "nested": {"bucket": i / 100},
                }))
        })
        .collect()
}

fn trained_index(client: &Client, name: &str, items: &[Item]) -> Index {
    let dim = items[0].vector.len();
    let index = client
        .create_index(
            name,
            &IndexKey::generate(),
            IndexConfig::new(dim).with_n_lists(16),
        )
        .unwrap();
    index.upsert(items.to_vec()).unwrap();
    index.train(&TrainParams::default()).unwrap();
    index
}

type Check = fn(&Error) -> bool;

fn snapshot(client: &Client) -> Vec<(Vec<u8>, Vec<u8>)> {
    client.store().scan_prefix(b"").unwrap()
}

#[test]
fn get_delete_list_ids() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    let items = dataset(500, 8);
    let index = trained_index(&client, "crud", &items);
    assert_eq!(index.len(), 500);
    assert_eq!(
        index.list_ids().unwrap(),
        (0..500).map(id).collect::<Vec<_>>()
    );

    let got = index.get(&[id(7), "nope".into(), id(3)]).unwrap();
    assert_eq!(got, vec![items[7].clone(), items[3].clone()]);

    assert_eq!(index.delete(&[id(7), id(8), "nope".into()]).unwrap(), 2);
    assert!(index.get(&[id(7)]).unwrap().is_empty());
    assert_eq!(index.len(), 498);
    assert!(!index.list_ids().unwrap().contains(&id(8)));
    let hits = index
        .query(&items[7].vector, &QueryParams::new(5).n_probes(16))
        .unwrap();
    assert!(
        hits.iter().all(|h| h.id != id(7)),
        "deleted items are not returned"
    );

    // Upsert replaces.
    let mut changed = items[9].clone();
    changed.vector = vec![100.0; 8];
    changed.metadata = Some(json!({"color": "purple"}));
    index.upsert(vec![changed.clone()]).unwrap();
    assert_eq!(index.get(&[id(9)]).unwrap(), vec![changed]);
    assert_eq!(index.len(), 498);
    let hit = &index
        .query(&[100.0; 8], &QueryParams::new(1).n_probes(16))
        .unwrap()[0];
    assert_eq!(hit.id, id(9));
    assert!(hit.distance < 1e-3);
}

#[test]
fn query_includes_and_distances() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    let items = dataset(300, 8);
    let index = trained_index(&client, "inc", &items);
    let q = &items[42].vector;
    let bare = index.query(q, &QueryParams::new(3).n_probes(16)).unwrap();
    assert_eq!(bare[0].id, id(42));
    assert!(bare[0].distance.abs() < 1e-4);
    assert!(bare[0].vector.is_none() && bare[0].metadata.is_none() && bare[0].contents.is_none());
    let full = index
        .query(q, &QueryParams::new(3).n_probes(16).include(Include::all()))
        .unwrap();
    assert_eq!(full[0].vector.as_ref(), Some(&items[42].vector));
    assert_eq!(full[0].contents, items[42].contents);
    assert_eq!(full[0].metadata, items[42].metadata);
    // Exact distances.
    let truth = brute_force(
        Metric::Euclidean,
        &items.iter().map(|i| i.vector.clone()).collect::<Vec<_>>(),
        q,
        3,
    );
    for (r, t) in full.iter().zip(truth) {
        assert_eq!(r.id, id(t));
        let d = common::distance(Metric::Euclidean, q, &items[t].vector).sqrt();
        assert!((r.distance - d).abs() < 1e-4);
    }
}

#[test]
fn metadata_filters() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    let items = dataset(600, 8);
    let index = trained_index(&client, "filters", &items);
    let q = &items[0].vector;
    let run = |f: serde_json::Value| -> Vec<usize> {
        let res = index
            .query(
                q,
                &QueryParams::new(1000).n_probes(16).rerank_mult(1).filter(f),
            )
            .unwrap();
        let mut ns: Vec<usize> = res.iter().map(|r| r.id[5..].parse().unwrap()).collect();
        ns.sort_unstable();
        ns
    };
    let all: Vec<usize> = (0..600).collect();
    let expect =
        |p: &dyn Fn(usize) -> bool| all.iter().copied().filter(|i| p(*i)).collect::<Vec<_>>();

    assert_eq!(run(json!({"color": "red"})), expect(&|i| i % 3 == 0));
    assert_eq!(
        run(json!({"color": {"$ne": "red"}})),
        expect(&|i| i % 3 != 0)
    );
    assert_eq!(
        run(json!({"color": {"$in": ["green", "blue"]}})),
        expect(&|i| i % 3 != 0)
    );
    assert_eq!(
        run(json!({"color": {"$nin": ["green", "blue"]}})),
        expect(&|i| i % 3 == 0)
    );
    assert_eq!(
        run(json!({"n": {"$gte": 10, "$lt": 20}})),
        expect(&|i| (10..20).contains(&i))
    );
    assert_eq!(run(json!({"n": {"$gt": 590}})), expect(&|i| i > 590));
    assert_eq!(run(json!({"n": {"$lte": 2}})), expect(&|i| i <= 2));
    assert_eq!(run(json!({"tags": "odd"})), expect(&|i| i % 2 == 1));
    assert_eq!(run(json!({"nested.bucket": 3})), expect(&|i| i / 100 == 3));
    assert_eq!(
        run(json!({"missing": {"$exists": true}})),
        Vec::<usize>::new()
    );
    assert_eq!(run(json!({"color": {"$exists": true}})), all);
    assert_eq!(
        run(json!({"$or": [{"n": {"$lt": 3}}, {"n": {"$gt": 597}}]})),
        vec![0, 1, 2, 598, 599]
    );
    assert_eq!(
        run(json!({"$and": [{"color": "red"}, {"n": {"$lt": 10}}]})),
        vec![0, 3, 6, 9]
    );
    let before = snapshot(&client);
    for bad in [
        json!({"n": {"$regex": "x"}}),
        json!({"$and": "x"}),
        json!(3),
    ] {
        let err = index
            .query(q, &QueryParams::new(3).filter(bad))
            .unwrap_err();
        assert!(matches!(err, Error::InvalidFilter(_)), "{err}");
    }
    assert_eq!(snapshot(&client), before);
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    let items = dataset(100, 8);
    let index = trained_index(&client, "strict", &items[..50]);
    let before = snapshot(&client);
    let good = items[60].clone();

    let cases: Vec<(Vec<Item>, Check)> = vec![
        (vec![good.clone(), Item::new("short", vec![1.0; 7])], |e| {
            matches!(
                e,
                Error::DimensionMismatch {
                    expected: 8,
                    got: 7,
                    ..
                }
            )
        }),
        (
            vec![good.clone(), Item::new("nan", vec![f32::NAN; 8])],
            |e| matches!(e, Error::NonFiniteVector { .. }),
        ),
        (
            vec![good.clone(), Item::new("inf", vec![f32::INFINITY; 8])],
            |e| matches!(e, Error::NonFiniteVector { .. }),
        ),
        (vec![good.clone(), good.clone()], |e| {
            matches!(e, Error::DuplicateId(_))
        }),
        (vec![Item::new("", vec![0.0; 8])], |e| {
            matches!(e, Error::InvalidArgument(_))
        }),
        (vec![Item::new("x".repeat(2000), vec![0.0; 8])], |e| {
            matches!(e, Error::InvalidArgument(_))
        }),
        (
            vec![Item::new("deep", vec![0.0; 8]).with_metadata({
                let mut v = json!({"leaf": 1});
                for _ in 0..40 {
                    v = json!({ "d": v });
                }
                v
            })],
            |e| matches!(e, Error::InvalidArgument(_)),
        ),
        (
            vec![Item::new("m", vec![0.0; 8]).with_metadata(json!([1, 2]))],
            |e| matches!(e, Error::InvalidArgument(_)),
        ),
    ];
    for (batch, check) in cases {
        let err = index.upsert(batch).unwrap_err();
        assert!(check(&err), "unexpected error {err}");
    }
    let q = vec![0.0; 8];
    for (v, p) in [
        (vec![0.0; 3], QueryParams::new(3)),
        (vec![f32::NAN; 8], QueryParams::new(3)),
        (q.clone(), QueryParams::new(0)),
        (q.clone(), QueryParams::new(3).n_probes(0)),
        (q.clone(), QueryParams::new(3).rerank_mult(0)),
    ] {
        assert!(index.query(&v, &p).is_err());
    }
    assert!(index
        .query_batch(&[q.clone(), vec![1.0]], &QueryParams::new(3))
        .is_err());
    assert!(matches!(
        index.train(&TrainParams::new().sample_size(2)),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(snapshot(&client), before, "refused input changed the store");
    assert_eq!(index.len(), 50);
}

#[test]
fn index_management_errors() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    let items = dataset(100, 8);
    let _strict = trained_index(&client, "strict", &items[..50]);
    let before = snapshot(&client);
    let key = IndexKey::generate();
    assert!(matches!(
        client.create_index("strict", &key, IndexConfig::new(8)),
        Err(Error::IndexExists(_))
    ));
    for name in ["", "has space", "slash/", &"n".repeat(200)] {
        assert!(matches!(
            client.create_index(name, &key, IndexConfig::new(8)),
            Err(Error::InvalidIndexName(_))
        ));
    }
    for cfg in [
        IndexConfig::new(tkms_engine::MAX_DIMENSION + 1),
        IndexConfig::new(8).with_n_lists(tkms_engine::MAX_LISTS + 1),
        IndexConfig::new(8).with_rerank_mult(0),
    ] {
        assert!(matches!(
            client.create_index("cfg", &key, cfg),
            Err(Error::InvalidConfig(_))
        ));
    }
    let small = client
        .create_index("small", &key, IndexConfig::new(8).with_n_lists(10))
        .unwrap();
    small.upsert(items[..5].to_vec()).unwrap();
    assert!(matches!(
        small.train(&TrainParams::default()),
        Err(Error::NotEnoughVectors { have: 5, need: 10 })
    ));
    assert_eq!(client.list_indexes().unwrap(), vec!["small", "strict"]);
    client.delete_index("small", &key).unwrap();
    assert_eq!(client.list_indexes().unwrap(), vec!["strict"]);
    assert!(matches!(
        client.load_index("small", &key),
        Err(Error::IndexNotFound(_))
    ));
    assert!(
        client.store().scan_prefix(b"").unwrap().len() == before.len(),
        "deleting an index removes all of its records"
    );
}

#[test]
fn disk_index_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let key = IndexKey::generate();
    let items = dataset(400, 8);
    let queries: Vec<Vec<f32>> = items.iter().step_by(40).map(|i| i.vector.clone()).collect();
    let params = QueryParams::new(5).n_probes(4).include(Include::all());
    let before = {
        let client = Client::new(StorageConfig::disk(dir.path())).unwrap();
        let index = trained_index_with_key(&client, "persist", &items, &key);
        index.delete(&[id(0)]).unwrap();
        index.query_batch(&queries, &params).unwrap()
    };
    let client = Client::new(StorageConfig::disk(dir.path())).unwrap();
    assert_eq!(client.list_indexes().unwrap(), vec!["persist"]);
    let index = client.load_index("persist", &key).unwrap();
    assert!(index.is_trained());
    assert_eq!(index.len(), 399);
    assert_eq!(index.query_batch(&queries, &params).unwrap(), before);
    assert_eq!(index.get(&[id(5)]).unwrap(), vec![items[5].clone()]);
    assert!(matches!(
        client.load_index("persist", &IndexKey::generate()),
        Err(Error::WrongKey { .. })
    ));
}

fn trained_index_with_key(client: &Client, name: &str, items: &[Item], key: &IndexKey) -> Index {
    let index = client
        .create_index(name, key, IndexConfig::new(8).with_n_lists(16))
        .unwrap();
    index.upsert(items.to_vec()).unwrap();
    index.train(&TrainParams::default()).unwrap();
    index
}

#[test]
fn compaction_preserves_results() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    let items = dataset(800, 8);
    let index = client
        .create_index(
            "compact",
            &IndexKey::generate(),
            IndexConfig::new(8).with_n_lists(8),
        )
        .unwrap();
    index.upsert(items[..200].to_vec()).unwrap();
    index.train(&TrainParams::default()).unwrap();
    // Many small upserts: many segments per list.
    for chunk in items[200..].chunks(50) {
        index.upsert(chunk.to_vec()).unwrap();
    }
    index
        .delete(&(0..800).step_by(7).map(id).collect::<Vec<_>>())
        .unwrap();
    let segments_before = index.segment_count();
    assert!(segments_before > 8);

    let queries: Vec<Vec<f32>> = items.iter().step_by(16).map(|i| i.vector.clone()).collect();
    let params = QueryParams::new(10)
        .n_probes(8)
        .rerank_mult(100)
        .include(Include::all());
    let before = index.query_batch(&queries, &params).unwrap();

    let stats = index.compact().unwrap();
    assert_eq!(stats.segments_before, segments_before);
    assert_eq!(index.segment_count(), stats.segments_after);
    assert!(stats.segments_after <= 8);
    assert!(stats.tombstones_dropped > 0);

    let after = index.query_batch(&queries, &params).unwrap();
    assert_eq!(after, before);
    assert_eq!(index.len(), 800 - 800_usize.div_ceil(7));
    // Compacting a compact index changes nothing.
    assert_eq!(index.compact().unwrap().lists_compacted, 0);
    // Retraining keeps every item too.
    index.train(&TrainParams::new().seed(1)).unwrap();
    assert_eq!(index.list_ids().unwrap().len(), index.len());
    assert_eq!(index.get(&[id(1)]).unwrap(), vec![items[1].clone()]);
}

#[test]
fn automatic_compaction_bounds_segments() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    let items = dataset(200, 8);
    let cfg = IndexConfig::new(8).with_max_segments_per_list(4);
    let index = client
        .create_index("auto", &IndexKey::generate(), cfg)
        .unwrap();
    for it in &items[..20] {
        index.upsert(vec![it.clone()]).unwrap();
        assert!(index.segment_count() <= 4);
    }
    assert_eq!(index.len(), 20);
    assert_eq!(index.get(&[id(0), id(19)]).unwrap().len(), 2);
}

#[test]
fn concurrent_handles_do_not_lose_writes() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    let key = IndexKey::generate();
    let a = client
        .create_index("shared", &key, IndexConfig::new(2))
        .unwrap();
    let b = client.load_index("shared", &key).unwrap();
    a.upsert(vec![Item::new("from-a", vec![0.0, 1.0])]).unwrap();
    let err = b
        .upsert(vec![Item::new("from-b", vec![1.0, 0.0])])
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    b.reload().unwrap();
    b.upsert(vec![Item::new("from-b", vec![1.0, 0.0])]).unwrap();
    a.reload().unwrap();
    assert_eq!(a.list_ids().unwrap(), vec!["from-a", "from-b"]);
}

#[test]
fn cosine_and_threads() {
    let client = Client::new(StorageConfig::memory()).unwrap();
    let index = client
        .create_index(
            "cos",
            &IndexKey::generate(),
            IndexConfig::new(3)
                .with_metric(Metric::Cosine)
                .with_n_lists(2),
        )
        .unwrap();
    index
        .upsert(vec![
            Item::new("x", vec![1.0, 0.0, 0.0]),
            Item::new("x2", vec![5.0, 0.1, 0.0]),
            Item::new("y", vec![0.0, 3.0, 0.0]),
            Item::new("zero", vec![0.0, 0.0, 0.0]),
        ])
        .unwrap();
    index.train(&TrainParams::default()).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let r = index
                    .query(&[2.0, 0.0, 0.0], &QueryParams::new(2).n_probes(2))
                    .unwrap();
                assert_eq!(r[0].id, "x");
                assert!(r[0].distance.abs() < 1e-5);
                assert_eq!(r[1].id, "x2");
            });
        }
    });
}

/// `AUTO` dimension: taken from the first upsert (queries before it find nothing, later
/// vectors must match it); `AUTO` lists: chosen at the first training from the item count,
/// overridable per training, kept by a retraining without one.
#[test]
fn automatic_dimension_and_list_count() {
    use tkms_engine::{auto_n_lists, AUTO};
    let client = Client::new(StorageConfig::memory()).unwrap();
    let key = IndexKey::generate();
    let index = client
        .create_index("auto", &key, IndexConfig::new(AUTO).with_n_lists(AUTO))
        .unwrap();
    assert_eq!((index.config().dimension, index.n_lists()), (AUTO, 1));
    assert!(index
        .query(&[1.0, 2.0, 3.0], &QueryParams::new(3))
        .unwrap()
        .is_empty());
    assert!(matches!(
        index.query(&[f32::NAN], &QueryParams::new(3)),
        Err(Error::NonFiniteVector { .. })
    ));
    assert!(matches!(
        index.train(&TrainParams::default()),
        Err(Error::NotEnoughVectors { have: 0, need: 1 })
    ));
    // An empty first vector cannot fix a dimension; nothing is written.
    assert!(matches!(
        index.upsert(vec![Item::new("e", vec![])]),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(index.config().dimension, AUTO);
    let items = dataset(500, 8);
    index.upsert(items.clone()).unwrap();
    assert_eq!(index.config().dimension, 8);
    // Another handle sees the dimension too (it was stored with the items).
    let other = client.load_index("auto", &key).unwrap();
    assert_eq!(other.config().dimension, 8);
    assert!(matches!(
        index.upsert(vec![Item::new("wide", vec![0.0; 9])]),
        Err(Error::DimensionMismatch {
            expected: 8,
            got: 9,
            ..
        })
    ));
    index.train(&TrainParams::default()).unwrap();
    assert_eq!(index.n_lists(), auto_n_lists(500, 8));
    assert_eq!(auto_n_lists(500, 8), 12);
    index.train(&TrainParams::default().n_lists(5)).unwrap();
    assert_eq!((index.n_lists(), index.config().n_lists), (5, 5));
    index.train(&TrainParams::default()).unwrap();
    assert_eq!(index.n_lists(), 5);
    assert!(matches!(
        index.train(&TrainParams::default().n_lists(501)),
        Err(Error::NotEnoughVectors {
            have: 500,
            need: 501
        })
    ));
    let hits = index
        .query(&items[7].vector, &QueryParams::new(1).n_probes(5))
        .unwrap();
    assert_eq!(hits[0].id, items[7].id);
}
