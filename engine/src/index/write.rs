//! The write path: upsert and delete, new segments and their sealed records, tombstones, and
//! the garbage queue that a later batch sweeps (see the [module docs](super)).

use std::collections::BTreeMap;

use rand::rngs::OsRng;
use rand::RngCore;
use rayon::prelude::*;
use zeroize::Zeroizing;

use super::validate::{detect_dimension, prepare_items, NewItem};
use super::{list_u32, slot_u32, Index, Record};
use crate::error::Result;
use crate::keys::{SegmentKeys, SEGMENT_SALT_LEN};
use crate::quantize::Sq8;
use crate::records::{
    encode, encode_vector, DocRecord, Garbage, Location, SegmentBlock, SegmentCodes, SegmentIds,
    SegmentMeta, SegmentState, State, KIND_BLOCK, KIND_CODES, KIND_DOC, KIND_META, KIND_VECTOR,
};
use crate::scan::{Probe, MATCHED_TOGETHER};
use crate::store::WriteBatch;
use crate::types::Item;

impl Index {
    /// Removes the records queued as garbage by earlier writes (deleted and overwritten
    /// items, compacted and retrained segments) in one batch that writes nothing but the
    /// state. Every upsert, delete and train also sweeps at its start; compaction does not.
    /// Returns the number of garbage entries (segments or slot groups) removed.
    pub fn sweep(&self) -> Result<usize> {
        self.require_write("sweep")?;
        let mut guard = self.write();
        if guard.state.garbage.is_empty() {
            return Ok(0);
        }
        let mut state = guard.state.clone();
        let mut b = WriteBatch::new();
        let n = self.sweep_into(&mut state, &mut b);
        self.commit(&mut guard, state, b)?;
        Ok(n)
    }

    /// Moves the garbage queued by earlier batches into `b` as deletions.
    pub(super) fn sweep_into(&self, state: &mut State, b: &mut WriteBatch) -> usize {
        let garbage = std::mem::take(&mut state.garbage);
        self.delete_garbage(&garbage, b);
        garbage.len()
    }

    pub(super) fn delete_garbage(&self, garbage: &[Garbage], b: &mut WriteBatch) {
        for g in garbage {
            let seg = self.segment_keys(g.generation, g.list, g.counter, &g.salt);
            for &slot in &g.slots {
                b.delete(self.record_storage_key(&seg, KIND_VECTOR, slot));
                b.delete(self.record_storage_key(&seg, KIND_DOC, slot));
            }
            if let Some(len) = g.segment_len {
                b.delete(self.record_storage_key(&seg, KIND_CODES, 0));
                b.delete(self.record_storage_key(&seg, KIND_META, 0));
                b.delete(self.record_storage_key(&seg, KIND_BLOCK, 0));
                for slot in 0..len {
                    b.delete(self.record_storage_key(&seg, KIND_VECTOR, slot));
                    b.delete(self.record_storage_key(&seg, KIND_DOC, slot));
                }
            }
        }
    }

    pub(super) fn sealed_record(
        &self,
        seg: &SegmentKeys,
        kind: u8,
        slot: u32,
        plain: &[u8],
    ) -> Record {
        let key = self.record_storage_key(seg, kind, slot);
        let sealed = seg.cipher.seal(&key, plain);
        (key, sealed)
    }

    /// Writes each `(list, items)` group as one new segment `(list, next counter)` and
    /// updates the id map; the records of the segments are built and sealed in parallel.
    pub(super) fn write_segments(
        &self,
        state: &mut State,
        groups: Vec<(u32, Vec<NewItem>)>,
        b: &mut WriteBatch,
    ) {
        let mut jobs = Vec::with_capacity(groups.len());
        for (list, items) in groups {
            let ls = &mut state.lists[list as usize];
            let counter = ls.next_counter;
            ls.next_counter += 1;
            let mut salt = [0u8; SEGMENT_SALT_LEN];
            OsRng.fill_bytes(&mut salt);
            ls.segments.push(SegmentState {
                counter,
                salt,
                len: slot_u32(items.len()),
                deleted: Vec::new(),
            });
            for (slot, p) in items.iter().enumerate() {
                state.ids.insert(
                    p.id.clone(),
                    Location {
                        list,
                        counter,
                        slot: slot_u32(slot),
                    },
                );
            }
            jobs.push((list, counter, salt, items));
        }
        let generation = state.generation;
        let dim = state.config.dimension;
        let records: Vec<Vec<Record>> = jobs
            .into_par_iter()
            .map(|(list, counter, salt, items)| {
                let seg = self.segment_keys(generation, list, counter, &salt);
                self.segment_records(&seg, dim, items)
            })
            .collect();
        for (key, sealed) in records.into_iter().flatten() {
            b.put(key, sealed);
        }
    }

    /// The sealed records of one new segment: codes, metadata, block, and per slot the
    /// vector and the document.
    pub(super) fn segment_records(
        &self,
        seg: &SegmentKeys,
        dim: usize,
        items: Vec<NewItem>,
    ) -> Vec<Record> {
        let mut out = Vec::with_capacity(3 + 2 * items.len());
        let quantizer = Sq8::fit(dim, items.iter().map(|p| p.prepared.as_slice()));
        let mut codes = Vec::with_capacity(items.len() * dim);
        for p in &items {
            quantizer.encode(&p.prepared, &mut codes);
        }
        let ids = || items.iter().map(|p| p.id.as_str());
        let plain = Zeroizing::new(encode(&SegmentCodes::new(ids(), quantizer, codes)));
        out.push(self.sealed_record(seg, KIND_CODES, 0, &plain));
        let metadata = items.iter().map(|p| p.metadata.clone()).collect();
        let plain = Zeroizing::new(encode(&SegmentMeta { metadata }));
        out.push(self.sealed_record(seg, KIND_META, 0, &plain));
        let block = SegmentBlock {
            ids: SegmentIds::new(ids()),
            vectors: items
                .iter()
                .flat_map(|p| p.prepared.iter().flat_map(|x| x.to_le_bytes()))
                .collect(),
        };
        let plain = Zeroizing::new(encode(&block));
        out.push(self.sealed_record(seg, KIND_BLOCK, 0, &plain));
        for (slot, p) in items.into_iter().enumerate() {
            let slot = slot_u32(slot);
            let plain = Zeroizing::new(encode_vector(&p.vector));
            out.push(self.sealed_record(seg, KIND_VECTOR, slot, &plain));
            let doc = DocRecord {
                id: p.id,
                contents: p.contents,
                metadata: p.metadata,
            };
            let plain = Zeroizing::new(encode(&doc));
            out.push(self.sealed_record(seg, KIND_DOC, slot, &plain));
        }
        out
    }

    /// Marks `loc` deleted and queues its vector and document records as garbage; drops the
    /// segment (queueing all of it) when nothing in it is live. Nothing is deleted from
    /// storage here: see [`Index::sweep`].
    pub(super) fn tombstone(state: &mut State, loc: Location) {
        let generation = state.generation;
        let Some(ls) = state.lists.get_mut(loc.list as usize) else {
            return;
        };
        let Some(pos) = ls.segments.iter().position(|s| s.counter == loc.counter) else {
            return;
        };
        let s = &mut ls.segments[pos];
        if let Err(i) = s.deleted.binary_search(&loc.slot) {
            s.deleted.insert(i, loc.slot);
        }
        if s.live() == 0 {
            let s = ls.segments.remove(pos);
            queue_segment_garbage(state, generation, loc.list, &s);
            return;
        }
        let salt = s.salt;
        match state.garbage.last_mut() {
            Some(g)
                if g.generation == generation
                    && g.list == loc.list
                    && g.counter == loc.counter
                    && g.segment_len.is_none() =>
            {
                g.slots.push(loc.slot);
            }
            _ => state.garbage.push(Garbage {
                generation,
                list: loc.list,
                counter: loc.counter,
                salt,
                slots: vec![loc.slot],
                segment_len: None,
            }),
        }
    }

    /// The list of each item: the nearest centroid under the index metric.
    pub(super) fn assign(state: &State, items: &[NewItem]) -> Vec<u32> {
        match &state.centroids {
            None => vec![0; items.len()],
            Some(c) => {
                let probe = Probe::new(c, state.config.dimension, state.config.metric);
                items
                    .par_chunks(MATCHED_TOGETHER)
                    .map_init(Vec::new, |scratch, items| {
                        let vs: Vec<&[f32]> = items.iter().map(|p| p.prepared.as_slice()).collect();
                        probe
                            .nearest_many(&vs, 1, scratch)
                            .into_iter()
                            .map(|l| l.first().copied().unwrap_or(0))
                            .collect::<Vec<u32>>()
                    })
                    .flatten_iter()
                    .collect()
            }
        }
    }

    pub(super) fn write_grouped(&self, state: &mut State, items: Vec<NewItem>, b: &mut WriteBatch) {
        let lists = Self::assign(state, &items);
        let mut groups: BTreeMap<u32, Vec<NewItem>> = BTreeMap::new();
        for (p, l) in items.into_iter().zip(lists) {
            groups.entry(l).or_default().push(p);
        }
        self.write_segments(state, groups.into_iter().collect(), b);
    }

    /// Inserts or replaces items. The whole batch is validated first (dimension, finite
    /// values, unique non-empty ids, object metadata) and written atomically; items of one
    /// batch that fall in the same list share one new segment.
    pub fn upsert(&self, items: Vec<Item>) -> Result<()> {
        self.require_write("upsert")?;
        if items.is_empty() {
            return Ok(());
        }
        let mut guard = self.write();
        let config = detect_dimension(&guard.state.config, &items)?;
        let prepared = prepare_items(&config, items)?;
        let mut state = guard.state.clone();
        state.config.dimension = config.dimension;
        let mut b = WriteBatch::new();
        self.sweep_into(&mut state, &mut b);
        for p in &prepared {
            if let Some(loc) = state.ids.get(&p.id).copied() {
                Self::tombstone(&mut state, loc);
            }
        }
        self.write_grouped(&mut state, prepared, &mut b);
        self.commit(&mut guard, state, b)?;

        let max = guard.state.config.max_segments_per_list;
        let crowded: Vec<u32> = (0..guard.state.lists.len())
            .filter(|&l| guard.state.lists[l].segments.len() > max)
            .map(list_u32)
            .collect();
        if !crowded.is_empty() {
            // The upsert is committed; a failed automatic compaction leaves a valid index and
            // is retried after the next upsert, so it is not reported as an upsert failure.
            let _ = self.compact_lists(&mut guard, &crowded);
        }
        Ok(())
    }

    /// Deletes items by id; unknown ids are ignored. Returns how many were deleted.
    pub fn delete<S: AsRef<str>>(&self, ids: &[S]) -> Result<usize> {
        self.require_write("delete")?;
        let mut guard = self.write();
        let mut state = guard.state.clone();
        let mut b = WriteBatch::new();
        // Garbage of earlier batches first; this batch's own garbage waits for a later one.
        self.sweep_into(&mut state, &mut b);
        let mut n = 0;
        for id in ids {
            if let Some(loc) = state.ids.remove(id.as_ref()) {
                Self::tombstone(&mut state, loc);
                n += 1;
            }
        }
        if n > 0 {
            self.commit(&mut guard, state, b)?;
        }
        Ok(n)
    }
}

/// Queues every record of segment `s` of `list` (under `generation`) as garbage.
pub(super) fn queue_segment_garbage(
    state: &mut State,
    generation: u32,
    list: u32,
    s: &SegmentState,
) {
    state.garbage.push(Garbage {
        generation,
        list,
        counter: s.counter,
        salt: s.salt,
        slots: Vec::new(),
        segment_len: Some(s.len),
    });
}
