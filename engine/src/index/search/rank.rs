//! Keeping each query's best hits during the exact scan: [`Best`] per query and list, the
//! shared [`Threshold`] across the lists scanned in parallel.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::index::slot_u32;

/// A hit of the exact scan: its rank, the segment (an index into the scan's segment table)
/// and the slot.
#[derive(Clone, Copy)]
pub(super) struct Hit {
    pub(super) rank: f32,
    pub(super) seg: u32,
    pub(super) slot: u32,
}

/// Closer first; equal ranks by id bytes (the order of the final results).
fn hit_cmp<'a>(a: &Hit, b: &Hit, ids: &impl Fn(&Hit) -> &'a [u8]) -> std::cmp::Ordering {
    a.rank.total_cmp(&b.rank).then_with(|| ids(a).cmp(ids(b)))
}

/// A query's best hits: every hit ranked no worse than the `k`-th best seen (ties with it
/// included, up to `2k` of them), so that [`Best::finish`] can order them by (rank, id)
/// exactly. Hits are appended unsorted while they pass the threshold and cut back when `4k`
/// have gathered, so the scan's inner loop is one comparison per item. One `Best` is reused
/// for query after query ([`Best::reset`]).
pub(super) struct Best {
    pub(super) k: usize,
    pub(super) hits: Vec<Hit>,
    /// Hits ranked above this cannot be among the query's best `k`: the `k`-th best rank of
    /// this list so far, or of another list already scanned for the query (see
    /// [`Threshold`]), else infinity.
    pub(super) worst: f32,
}

impl Best {
    pub(super) fn new(k: usize) -> Self {
        Self {
            k,
            hits: Vec::with_capacity(4 * k + 1),
            worst: f32::INFINITY,
        }
    }

    /// Empty, for a query whose best `k` rank no worse than `worst`.
    #[inline]
    pub(super) fn reset(&mut self, worst: f32) {
        self.hits.clear();
        self.worst = worst;
    }

    /// Offers every entry of `row` (the rank of slot `first + j` is `row[j]`) of segment
    /// `seg` that is not `deleted`.
    #[inline]
    pub(super) fn offer_row<'a>(
        &mut self,
        row: &[f32],
        seg: u32,
        first: usize,
        deleted: impl Fn(u32) -> bool,
        ids: &impl Fn(&Hit) -> &'a [u8],
    ) {
        if self.k == 0 {
            return;
        }
        let mut worst = self.worst;
        for (j, &rank) in row.iter().enumerate() {
            if rank > worst {
                continue;
            }
            let slot = slot_u32(first + j);
            if deleted(slot) {
                continue;
            }
            self.hits.push(Hit { rank, seg, slot });
            if self.hits.len() >= 4 * self.k {
                self.cut(ids);
                worst = self.worst;
            }
        }
    }

    /// Keeps the hits ranked no worse than the `k`-th best (and than `worst`), and lowers
    /// `worst` to that rank. When more than `2k` hits tie there, ids decide which `k` stay
    /// (a hit that `k` others beat by (rank, id) cannot be among the best `k`), so many equal
    /// vectors cost amortized constant time per hit, not a cut per hit.
    fn cut<'a>(&mut self, ids: &impl Fn(&Hit) -> &'a [u8]) {
        if self.k == 0 {
            self.hits.clear();
            return;
        }
        if self.hits.len() >= self.k {
            let rank = |a: &Hit, b: &Hit| a.rank.total_cmp(&b.rank);
            let (_, kth, _) = self.hits.select_nth_unstable_by(self.k - 1, rank);
            if kth.rank.total_cmp(&self.worst).is_lt() {
                self.worst = kth.rank;
            }
        }
        let worst = self.worst;
        self.hits.retain(|h| h.rank.total_cmp(&worst).is_le());
        if self.hits.len() > 2 * self.k {
            self.hits
                .select_nth_unstable_by(self.k - 1, |a, b| hit_cmp(a, b, ids));
            self.hits.truncate(self.k);
        }
    }

    /// The `k`-th best rank, once `k` hits are held (after [`Best::cut`]).
    #[inline]
    pub(super) fn kth(&self) -> Option<f32> {
        (self.k > 0 && self.hits.len() >= self.k).then_some(self.worst)
    }

    /// Leaves the best `k`, closer first, equal ranks by id bytes.
    pub(super) fn finish<'a>(&mut self, ids: &impl Fn(&Hit) -> &'a [u8]) {
        self.cut(ids);
        self.hits.sort_unstable_by(|a, b| hit_cmp(a, b, ids));
        self.hits.truncate(self.k);
    }
}

/// Each query's `k`-th best rank over the lists scanned for it so far, shared by the list
/// scans running in parallel: any list's `k`-th best bounds the query's, so a list scanned
/// later offers only hits that can still make the top `k` (exact: ties are kept). Stored as
/// order-preserving `u32` keys of the `f32` ranks.
pub(super) struct Threshold(Vec<AtomicU32>);

impl Threshold {
    pub(super) fn new(queries: usize) -> Self {
        Self(
            (0..queries)
                .map(|_| AtomicU32::new(Self::key(f32::INFINITY)))
                .collect(),
        )
    }

    /// `f32` ordered as `total_cmp` orders it, as a `u32`.
    #[inline]
    fn key(r: f32) -> u32 {
        let b = r.to_bits();
        if b >> 31 == 1 {
            !b
        } else {
            b | (1 << 31)
        }
    }

    #[inline]
    fn rank(key: u32) -> f32 {
        f32::from_bits(if key >> 31 == 1 {
            key & !(1 << 31)
        } else {
            !key
        })
    }

    #[inline]
    pub(super) fn get(&self, q: u32) -> f32 {
        self.0
            .get(q as usize)
            .map_or(f32::INFINITY, |a| Self::rank(a.load(Ordering::Relaxed)))
    }

    #[inline]
    pub(super) fn lower(&self, q: u32, r: f32) {
        if let Some(a) = self.0.get(q as usize) {
            a.fetch_min(Self::key(r), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::scan::sane_rank;

    #[test]
    fn nan_ranks_sort_last() {
        let mut ranks = [sane_rank(f32::NAN), 1.0, sane_rank(-f32::NAN), -3.0];
        ranks.sort_by(f32::total_cmp);
        assert_eq!(ranks[..2], [-3.0, 1.0]);
        assert!(ranks[2..].iter().all(|r| *r == f32::INFINITY));
    }

    /// Ranks drawn from a few values (many ties), signed zeros, infinities and ordinary
    /// floats.
    fn rank() -> impl Strategy<Value = f32> {
        prop_oneof![
            (0u8..4).prop_map(f32::from),
            Just(0.0f32),
            Just(-0.0f32),
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
            -1e6f32..1e6,
        ]
    }

    #[test]
    fn threshold_keys_order_the_edge_values() {
        let edges = [
            -f32::NAN,
            f32::NEG_INFINITY,
            -f32::MAX,
            -f32::MIN_POSITIVE,
            -0.0,
            0.0,
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::INFINITY,
            f32::NAN,
        ];
        for w in edges.windows(2) {
            assert!(
                Threshold::key(w[0]) < Threshold::key(w[1]),
                "{} {}",
                w[0],
                w[1]
            );
        }
        let t = Threshold::new(2);
        t.lower(1, -0.0);
        t.lower(1, 0.0);
        assert_eq!(t.get(1).to_bits(), (-0.0f32).to_bits());
        assert!(t.get(0).is_infinite() && t.get(0) > 0.0);
        assert!(t.get(9).is_infinite() && t.get(9) > 0.0);
    }

    proptest! {
        #[test]
        fn threshold_keys_order_like_total_cmp(a in any::<f32>(), b in any::<f32>()) {
            prop_assert_eq!(Threshold::key(a).cmp(&Threshold::key(b)), a.total_cmp(&b));
            prop_assert_eq!(Threshold::rank(Threshold::key(a)).to_bits(), a.to_bits());
        }

        /// Offered in rows with any starting threshold that does not exclude the true
        /// `k`-th best (as the shared [`Threshold`] never does), `Best` keeps exactly the
        /// sorted top `k` by (rank, id), ties included.
        #[test]
        fn best_is_the_sorted_top_k(
            rows in prop::collection::vec(prop::collection::vec(rank(), 0..60), 1..4),
            k in 0usize..12,
            slack in 0usize..3,
            piece in 1usize..70,
        ) {
            // Unique ids (as live items' are), ordered unlike (segment, slot).
            let ids: Vec<Vec<Vec<u8>>> = rows
                .iter()
                .enumerate()
                .map(|(s, r)| (0..r.len()).map(|j| format!("{:03}-{s}-{j}", (j * 7 + s * 13) % 101).into_bytes()).collect())
                .collect();
            let id = |h: &Hit| ids[h.seg as usize][h.slot as usize].as_slice();
            let mut all: Vec<Hit> = rows
                .iter()
                .enumerate()
                .flat_map(|(s, r)| r.iter().enumerate().map(move |(j, &rank)| Hit {
                    rank, seg: slot_u32(s), slot: slot_u32(j),
                }))
                .filter(|h| h.slot % 5 != 3) // "deleted"
                .collect();
            all.sort_by(|a, b| hit_cmp(a, b, &id));
            all.truncate(k);
            // A starting bound no tighter than the k-th best (or the loosest, with fewer).
            let start = if all.len() == k && k > 0 {
                let mut looser: Vec<f32> = rows.iter().flatten().copied().filter(|r| r.total_cmp(&all[k - 1].rank).is_ge()).collect();
                looser.sort_by(f32::total_cmp);
                looser.get(slack).copied().unwrap_or(f32::INFINITY)
            } else {
                f32::INFINITY
            };
            let mut best = Best::new(k);
            best.reset(start);
            // Each row offered in runs of `piece` slots, as a segment is in runs of tiles.
            for (s, r) in rows.iter().enumerate() {
                for (p, run) in r.chunks(piece).enumerate() {
                    best.offer_row(run, slot_u32(s), p * piece, |slot| slot % 5 == 3, &id);
                }
            }
            best.finish(&id);
            let got: Vec<(u32, u32)> = best.hits.iter().map(|h| (h.seg, h.slot)).collect();
            let want: Vec<(u32, u32)> = all.iter().map(|h| (h.seg, h.slot)).collect();
            prop_assert_eq!(got, want);
        }
    }
}
