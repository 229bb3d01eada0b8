//! In-process cache of decrypted segments (ids and the dimension-major block of prepared
//! vectors), bounded by plaintext bytes.
//!
//! The threat model of the engine is the storage backend (memory, disk, S3), not the engine
//! process, which holds the index keys anyway (docs/ARCHITECTURE.md §4.4). Keeping recently probed
//! segments decrypted in memory removes their AES-GCM opens and storage reads from repeated
//! queries. Segments are immutable and a cache entry is named by everything that names the
//! segment's storage tokens — key generation, list, counter and per-segment salt — so a new
//! segment (new counter, new salt, new generation after training) is never served from an
//! old entry; deleted slots are filtered with the handle's state at query time.
//!
//! Freshness: an entry is only as current as the state that names it, so the cache relies
//! on the handle's state being current. Every read first checks it against storage through
//! the small state version record (`Index::ensure_fresh`: one 32-byte read per query, per
//! batch or per `get`, rather than reading and hashing the whole state); a handle whose state
//! is stale reloads it before touching the cache, so it cannot return an item another handle
//! deleted, even though the deleted item's segment is still cached. Without that check a
//! stale handle noticed only when a record it read had been removed (after a sweep or a
//! compaction); a cached segment needs no storage read at all, so it never noticed.
//!
//! Evicted entries are wiped when their last reader drops them (see [`crate::scan::Block`]
//! and [`SegmentIds`]). Least-recently-used entries go first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::keys::SEGMENT_SALT_LEN;
use crate::records::SegmentIds;
use crate::scan::Block;

/// Default budget of a handle's cache: 256 MiB of plaintext.
pub const DEFAULT_SEGMENT_CACHE_BYTES: usize = 256 << 20;

/// What names a segment: key generation, list, counter, salt.
pub(crate) type SegmentId = (u32, u32, u64, [u8; SEGMENT_SALT_LEN]);

/// A decrypted segment: its ids and its prepared vectors.
pub(crate) struct Decoded {
    pub ids: Arc<SegmentIds>,
    pub block: Block,
}

impl Decoded {
    fn bytes(&self) -> usize {
        self.block.bytes() + self.ids.bytes()
    }
}

struct Entry {
    segment: Arc<Decoded>,
    last_used: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<SegmentId, Entry>,
    bytes: usize,
    tick: u64,
    budget: usize,
}

/// The cache of one index handle.
pub(crate) struct SegmentCache {
    inner: Mutex<Inner>,
}

impl SegmentCache {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                budget,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every mutation leaves the map consistent, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn enabled(&self) -> bool {
        self.lock().budget > 0
    }

    pub(crate) fn budget(&self) -> usize {
        self.lock().budget
    }

    /// Plaintext bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Changes the budget (0 disables the cache and drops every entry).
    pub(crate) fn set_budget(&self, budget: usize) {
        let mut g = self.lock();
        g.budget = budget;
        evict(&mut g);
    }

    pub(crate) fn get(&self, id: &SegmentId) -> Option<Arc<Decoded>> {
        let mut g = self.lock();
        g.tick += 1;
        let tick = g.tick;
        g.map.get_mut(id).map(|e| {
            e.last_used = tick;
            Arc::clone(&e.segment)
        })
    }

    pub(crate) fn insert(&self, id: SegmentId, segment: Arc<Decoded>) {
        let size = segment.bytes();
        let mut g = self.lock();
        if size > g.budget {
            return;
        }
        g.tick += 1;
        let last_used = g.tick;
        if let Some(old) = g.map.insert(id, Entry { segment, last_used }) {
            g.bytes -= old.segment.bytes();
        }
        g.bytes += size;
        evict(&mut g);
    }
}

/// Drops least-recently-used entries until the cache is within its budget (down to 7/8 of
/// it, so that eviction is not run on every insert).
fn evict(g: &mut Inner) {
    if g.bytes <= g.budget {
        return;
    }
    let target = g.budget - g.budget / 8;
    let mut order: Vec<(u64, SegmentId)> = g.map.iter().map(|(k, e)| (e.last_used, *k)).collect();
    order.sort_unstable_by_key(|(t, _)| *t);
    for (_, k) in order {
        if g.bytes <= target {
            break;
        }
        if let Some(e) = g.map.remove(&k) {
            g.bytes -= e.segment.bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(n: usize) -> Arc<Decoded> {
        let rows = vec![vec![1.0f32; 4]; n];
        Arc::new(Decoded {
            ids: Arc::new(SegmentIds::default()),
            block: Block::from_rows(4, n, rows.iter().map(Vec::as_slice)),
        })
    }

    #[test]
    fn bounded_lru() {
        let one = seg(16).bytes();
        let c = SegmentCache::new(3 * one);
        for i in 0..3 {
            c.insert((0, i, 0, [0; SEGMENT_SALT_LEN]), seg(16));
        }
        assert!(c.get(&(0, 0, 0, [0; SEGMENT_SALT_LEN])).is_some());
        c.insert((0, 3, 0, [0; SEGMENT_SALT_LEN]), seg(16));
        assert!(c.bytes() <= 3 * one);
        // List 1 was the least recently used.
        assert!(c.get(&(0, 1, 0, [0; SEGMENT_SALT_LEN])).is_none());
        assert!(c.get(&(0, 0, 0, [0; SEGMENT_SALT_LEN])).is_some());
        // Another salt or counter is another segment.
        assert!(c.get(&(0, 0, 0, [1; SEGMENT_SALT_LEN])).is_none());
        assert!(c.get(&(0, 0, 1, [0; SEGMENT_SALT_LEN])).is_none());
        c.set_budget(0);
        assert_eq!(c.bytes(), 0);
        assert!(!c.enabled());
        c.insert((0, 0, 0, [0; SEGMENT_SALT_LEN]), seg(1));
        assert_eq!(c.bytes(), 0);
    }
}
