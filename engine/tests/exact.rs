//! The list-major exact search is exact: probing every list, a batch returns the brute-force
//! top-k in order — ties (duplicate vectors under different ids) broken by id, deleted items
//! never returned — across several segments per list, query groups larger than one scoring
//! pass, and with the segment cache on or off; a single query returns what the batch does.
#![allow(clippy::unwrap_used)]

mod common;

use common::{distance, id, Mixture};
use tkms_engine::{
    Client, Index, IndexConfig, IndexKey, Item, Metric, QueryParams, StorageConfig, TrainParams,
};

const DIM: usize = 20;
const LISTS: usize = 16;
const K: usize = 10;

/// The ids of the `k` nearest live items, ties by id.
fn truth(metric: Metric, items: &[(String, Vec<f32>)], q: &[f32], k: usize) -> Vec<String> {
    let mut d: Vec<(f32, &str)> = items
        .iter()
        .map(|(i, v)| (distance(metric, q, v), i.as_str()))
        .collect();
    d.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    d.into_iter().take(k).map(|(_, i)| i.to_owned()).collect()
}

/// An index of 3,000 points, duplicates, copies and deletions (see the comments), with
/// several segments per list; the live items, and the copied vectors.
#[allow(clippy::type_complexity)]
fn build(metric: Metric, mix: &mut Mixture) -> (Index, Vec<(String, Vec<f32>)>, Vec<Vec<f32>>) {
    let mut items: Vec<(String, Vec<f32>)> = mix
        .points(3000)
        .into_iter()
        .enumerate()
        .map(|(i, v)| (id(i), v))
        .collect();
    // Duplicates under other ids: equal ranks, ordered by id. Some sort before their
    // original ("dup-" < "item-"), some after ("zzz-").
    for i in (0..3000).step_by(20) {
        let prefix = if i % 40 == 0 { "dup" } else { "zzz" };
        items.push((format!("{prefix}-{i:06}"), items[i].1.clone()));
    }
    let client = Client::new(StorageConfig::memory()).unwrap();
    let index = client
        .create_index(
            "exact",
            &IndexKey::generate(),
            IndexConfig::new(DIM)
                .with_metric(metric)
                .with_n_lists(LISTS),
        )
        .unwrap();
    let upsert = |part: &[(String, Vec<f32>)]| {
        index
            .upsert(
                part.iter()
                    .map(|(i, v)| Item::new(i.clone(), v.clone()))
                    .collect(),
            )
            .unwrap();
    };
    upsert(&items[..1500]);
    index.train(&TrainParams::default()).unwrap();
    // Three more writes into the trained index: several segments per list.
    for part in items[1500..].chunks(600) {
        upsert(part);
    }
    // Fourteen copies each of five vectors, written in two more calls (two segments of
    // the same list) with the later copies sorting first: a query at one of them has 14
    // items tied at rank 0 for its 10 places, and which 10 is decided by id alone.
    let copied: Vec<Vec<f32>> = (0..5).map(|j| items[100 + 211 * j].1.clone()).collect();
    for half in 0..2 {
        let copies: Vec<(String, Vec<f32>)> = copied
            .iter()
            .enumerate()
            .flat_map(|(j, v)| {
                (0..7).map(move |c| (format!("cpy-{j}-{:02}", 13 - (2 * c + half)), v.clone()))
            })
            .collect();
        upsert(&copies);
        items.extend(copies);
    }
    assert!(index.segment_count() > LISTS, "{}", index.segment_count());
    let deleted: Vec<String> = (0..3000).step_by(29).map(id).collect();
    assert_eq!(index.delete(&deleted).unwrap(), deleted.len());
    items.retain(|(i, _)| !deleted.contains(i));
    (index, items, copied)
}

fn exhaustive_batch_matches_brute_force(metric: Metric) {
    let mut mix = Mixture::new(DIM, 12, 1.5, 42);
    let (index, items, copied) = build(metric, &mut mix);
    // 70 queries (more than one scoring group of 64): fresh points, points that are exactly
    // a duplicated vector (the tie is at the very top), and the copied vectors.
    let mut queries = mix.points(50);
    queries.extend((0..15).map(|j| items[(j * 97) % 1400].1.clone()));
    queries.extend(copied);
    let params = QueryParams::new(K).n_probes(LISTS);
    let want: Vec<Vec<String>> = queries
        .iter()
        .map(|q| truth(metric, &items, q, K))
        .collect();

    let warm = index.query_batch(&queries, &params).unwrap();
    for ((got, want), q) in warm.iter().zip(&want).zip(&queries) {
        let ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, *want, "{metric:?}");
        for r in got {
            let v = &items.iter().find(|(i, _)| *i == r.id).unwrap().1;
            let d = distance(metric, q, v);
            let exact = if metric == Metric::Euclidean {
                d.sqrt()
            } else {
                d
            };
            assert!(
                (r.distance - exact).abs() <= 1e-4 * exact.abs().max(1.0),
                "{metric:?} {} vs {exact}",
                r.distance
            );
        }
    }
    assert!(
        want.iter().flatten().any(|i| i.starts_with("dup-")),
        "some duplicate ranks in the top {K}"
    );
    // Cached (the second batch) and single queries give the same answers.
    assert_eq!(ids_of(&index.query_batch(&queries, &params).unwrap()), want);
    let single: Vec<Vec<String>> = queries
        .iter()
        .map(|q| {
            index
                .query(q, &params)
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect()
        })
        .collect();
    assert_eq!(single, want);
    // A small k: the kept hits are cut back often, so the copies met after a cut tie the
    // threshold exactly and must still be kept for their ids to decide.
    for k in [1, 3] {
        let want: Vec<Vec<String>> = queries
            .iter()
            .map(|q| truth(metric, &items, q, k))
            .collect();
        let params = QueryParams::new(k).n_probes(LISTS);
        assert_eq!(
            ids_of(&index.query_batch(&queries, &params).unwrap()),
            want,
            "k = {k}"
        );
    }
    // Cold: every batch decrypts the blocks it scans.
    index.set_segment_cache_bytes(0);
    assert_eq!(ids_of(&index.query_batch(&queries, &params).unwrap()), want);
}

fn ids_of(results: &[Vec<tkms_engine::QueryResult>]) -> Vec<Vec<String>> {
    results
        .iter()
        .map(|r| r.iter().map(|h| h.id.clone()).collect())
        .collect()
}

#[test]
fn euclidean_exhaustive_batch_is_exact() {
    exhaustive_batch_matches_brute_force(Metric::Euclidean);
}

/// Squared Euclidean ranks as Euclidean and reports the squared L2 distance (CyborgDB's
/// `squared_euclidean`), not its square root.
#[test]
fn squared_euclidean_exhaustive_batch_is_exact() {
    exhaustive_batch_matches_brute_force(Metric::SquaredEuclidean);
}

#[test]
fn dot_product_exhaustive_batch_is_exact() {
    exhaustive_batch_matches_brute_force(Metric::DotProduct);
}

/// Items far apart (so in different lists) but with exactly equal inner product with the
/// query: the threshold one list sets must keep the other lists' hits tied with it, for ids
/// to decide. And lists smaller than `k` (about 3 items each) never set a threshold from
/// fewer than `k` hits.
#[test]
fn ties_across_lists_and_lists_smaller_than_k_are_exact() {
    let mut mix = Mixture::new(8, 6, 1.0, 9);
    let mut items: Vec<(String, Vec<f32>)> = mix
        .points(240)
        .into_iter()
        .enumerate()
        .map(|(i, mut v)| {
            v[0] = v[0].clamp(-4.0, 4.0);
            (id(i), v)
        })
        .collect();
    // 30 items with first component exactly 5 (a rank of exactly -5 against e_0), spread
    // over the other dimensions; ids interleave with their positions.
    for j in 0..30u8 {
        let mut v = vec![0.0f32; 8];
        v[0] = 5.0;
        v[1 + usize::from(j % 7)] = if j % 2 == 0 { 40.0 } else { -40.0 } + f32::from(j);
        items.push((format!("tie-{:02}", (j * 7) % 30), v));
    }
    let client = Client::new(StorageConfig::memory()).unwrap();
    let index = client
        .create_index(
            "ties",
            &IndexKey::generate(),
            IndexConfig::new(8)
                .with_metric(Metric::DotProduct)
                .with_n_lists(90),
        )
        .unwrap();
    index
        .upsert(
            items
                .iter()
                .map(|(i, v)| Item::new(i.clone(), v.clone()))
                .collect(),
        )
        .unwrap();
    index.train(&TrainParams::default()).unwrap();
    let mut queries = vec![{
        let mut e = vec![0.0f32; 8];
        e[0] = 1.0;
        e
    }];
    queries.extend(mix.points(80));
    for k in [1, 4, 10, 25] {
        let params = QueryParams::new(k).n_probes(90);
        let want: Vec<Vec<String>> = queries
            .iter()
            .map(|q| truth(Metric::DotProduct, &items, q, k))
            .collect();
        assert!(
            want[0].iter().all(|i| i.starts_with("tie-")),
            "{:?}",
            want[0]
        );
        assert_eq!(
            ids_of(&index.query_batch(&queries, &params).unwrap()),
            want,
            "k = {k}"
        );
    }
}
