//! Maintenance: training the IVF lists (k-means, re-encrypting every item under a new key
//! generation) and compacting a list's segments into one.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::validate::NewItem;
use super::write::queue_segment_garbage;
use super::{list_u32, open_record, Index, Loaded};
use crate::error::{Error, Result};
use crate::kmeans;
use crate::records::{
    decode, decode_vector, DocRecord, ListState, SegmentState, State, KIND_DOC, KIND_VECTOR,
};
use crate::store::WriteBatch;
use crate::types::{
    auto_n_lists, check_centroids, CompactionStats, IndexConfig, TrainParams, AUTO, MAX_LISTS,
    MAX_TRAIN_ITERS,
};

impl Index {
    /// Builds the IVF lists: k-means (k-means++ seeding) on a sample of the stored vectors,
    /// then every live item is re-encrypted into new segments under a new key generation.
    /// Can be called again to retrain.
    pub fn train(&self, params: &TrainParams) -> Result<()> {
        self.require_write("train")?;
        let mut guard = self.write();
        let old = &guard.state;
        let dim = old.config.dimension;
        let live = old.ids.len();
        let n_lists = match params.n_lists.unwrap_or(old.config.n_lists) {
            AUTO => auto_n_lists(live, dim),
            n => n,
        };
        if n_lists == 0 || n_lists > MAX_LISTS {
            return Err(Error::InvalidArgument(format!(
                "n_lists must be 1..={MAX_LISTS}, got {n_lists}"
            )));
        }
        check_centroids(n_lists, dim).map_err(Error::InvalidArgument)?;
        if params.max_iters > MAX_TRAIN_ITERS {
            return Err(Error::InvalidArgument(format!(
                "max_iters must be at most {MAX_TRAIN_ITERS}, got {}",
                params.max_iters
            )));
        }
        if live < n_lists {
            return Err(Error::NotEnoughVectors {
                have: live,
                need: n_lists,
            });
        }
        let sample_n = params.sample_size.unwrap_or(256 * n_lists).min(live);
        if sample_n < n_lists {
            return Err(Error::InvalidArgument(format!(
                "sample_size {sample_n} is smaller than n_lists {n_lists}"
            )));
        }
        let generation = old
            .generation
            .checked_add(1)
            .ok_or_else(|| Error::InvalidArgument("index retrained too many times".into()))?;

        let mut items = Vec::with_capacity(live);
        for (list, ls) in old.lists.iter().enumerate() {
            for s in &ls.segments {
                items.extend(self.read_segment_items(old, list_u32(list), s)?);
            }
        }
        if items.len() != live {
            return Err(Error::Corrupted(format!(
                "the id map lists {live} items but the segments hold {}",
                items.len()
            )));
        }
        let mut rng = StdRng::seed_from_u64(params.seed);
        let picked = rand::seq::index::sample(&mut rng, items.len(), sample_n);
        let data: Vec<f32> = picked
            .iter()
            .flat_map(|i| items[i].prepared.iter().copied())
            .collect();
        let centroids = kmeans::train(&data, dim, n_lists, params.max_iters, params.seed);

        // Garbage of earlier batches is swept now; every old segment becomes garbage for a
        // later batch.
        let mut b = WriteBatch::new();
        self.delete_garbage(&old.garbage, &mut b);
        let mut state = State {
            config: IndexConfig {
                n_lists,
                ..old.config.clone()
            },
            generation,
            centroids: Some(centroids),
            lists: vec![ListState::default(); n_lists],
            ids: HashMap::with_capacity(live),
            garbage: Vec::new(),
        };
        for (list, ls) in old.lists.iter().enumerate() {
            for s in &ls.segments {
                queue_segment_garbage(&mut state, old.generation, list_u32(list), s);
            }
        }
        self.write_grouped(&mut state, items, &mut b);
        self.commit(&mut guard, state, b)
    }

    /// Merges each list's segments (dropping deleted slots) into one new segment under a new
    /// counter. Query results are unchanged. The old segments are queued as garbage and
    /// removed by a later write (or [`Index::sweep`]), never by the compaction batch itself.
    pub fn compact(&self) -> Result<CompactionStats> {
        self.require_write("compact")?;
        let mut guard = self.write();
        let lists: Vec<u32> = (0..guard.state.lists.len())
            .filter(|&l| {
                let segs = &guard.state.lists[l].segments;
                segs.len() > 1 || segs.iter().any(|s| !s.deleted.is_empty())
            })
            .map(list_u32)
            .collect();
        self.compact_lists(&mut guard, &lists)
    }

    pub(super) fn compact_lists(
        &self,
        loaded: &mut Loaded,
        lists: &[u32],
    ) -> Result<CompactionStats> {
        let mut stats = CompactionStats::default();
        if lists.is_empty() {
            return Ok(stats);
        }
        let mut state = loaded.state.clone();
        let mut b = WriteBatch::new();
        let mut groups = Vec::new();
        for &list in lists {
            let segs = std::mem::take(&mut state.lists[list as usize].segments);
            let mut items = Vec::new();
            for s in &segs {
                items.extend(self.read_segment_items(&loaded.state, list, s)?);
                let generation = state.generation;
                queue_segment_garbage(&mut state, generation, list, s);
                stats.tombstones_dropped += s.deleted.len();
            }
            stats.segments_before += segs.len();
            stats.lists_compacted += 1;
            if !items.is_empty() {
                groups.push((list, items));
                stats.segments_after += 1;
            }
        }
        self.write_segments(&mut state, groups, &mut b);
        self.commit(loaded, state, b)?;
        Ok(stats)
    }

    /// Decrypts the live items of a segment.
    pub(super) fn read_segment_items(
        &self,
        state: &State,
        list: u32,
        s: &SegmentState,
    ) -> Result<Vec<NewItem>> {
        let seg = self.segment_keys(state.generation, list, s.counter, &s.salt);
        let slots: Vec<u32> = (0..s.len).filter(|slot| !s.is_deleted(*slot)).collect();
        let keys: Vec<Vec<u8>> = slots
            .iter()
            .flat_map(|&slot| {
                [
                    self.record_storage_key(&seg, KIND_VECTOR, slot),
                    self.record_storage_key(&seg, KIND_DOC, slot),
                ]
            })
            .collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let mut values = self.store.get_many(&refs)?.into_iter();
        let mut out = Vec::with_capacity(slots.len());
        for pair in keys.chunks_exact(2) {
            let vector = decode_vector(
                &open_record(&seg, &pair[0], values.next().flatten())?,
                state.config.dimension,
            )?;
            let doc: DocRecord = decode(
                &open_record(&seg, &pair[1], values.next().flatten())?,
                "document",
            )?;
            out.push(NewItem {
                prepared: state.config.metric.prepare(&vector),
                id: doc.id,
                vector,
                contents: doc.contents,
                metadata: doc.metadata,
            });
        }
        Ok(out)
    }
}
