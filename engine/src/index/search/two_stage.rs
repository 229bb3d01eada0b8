//! The two-stage strategy: an SQ8 first stage over the probed segments' codes (and metadata
//! filter), then the exact re-rank of `rerank_mult · top_k` candidates, decrypting only their
//! vectors (see [`super::Strategy`]).

use std::collections::HashMap;

use rayon::prelude::*;

use super::{requested_fields, Plan};
use crate::error::{Error, Result};
use crate::index::{open_record, parse_metadata, Index, Loaded};
use crate::keys::SegmentKeys;
use crate::records::{
    decode, decode_vector, DocRecord, SegmentCodes, SegmentMeta, SegmentState, State, KIND_CODES,
    KIND_DOC, KIND_META, KIND_VECTOR,
};
use crate::scan::{exact_rank, sane_rank};
use crate::types::QueryResult;

/// A first-stage candidate.
struct Candidate {
    rank: f32,
    segment: usize,
    slot: u32,
}

/// A probed segment's decrypted first-stage records (codes, and metadata when filtering).
pub(in crate::index) struct OpenSegment {
    pub(in crate::index) codes: SegmentCodes,
    pub(in crate::index) meta: Option<SegmentMeta>,
}

/// Segments opened once for a whole batch of queries, by (list, counter).
pub(in crate::index) type SharedSegments = HashMap<(u32, u64), OpenSegment>;

impl Index {
    /// Opens, once, every segment of every list probed by some query of `queries`, so a
    /// batch decrypts each probed segment once instead of once per query (the store sees
    /// each of the batch's tokens read once).
    pub(super) fn open_for_batch(
        &self,
        loaded: &Loaded,
        plan: &Plan,
        queries: &[Vec<f32>],
    ) -> Result<SharedSegments> {
        let state = &loaded.state;
        let mut lists: Vec<u32> = queries
            .par_iter()
            .flat_map_iter(|q| {
                let pq = state.config.metric.prepare(q);
                Self::probed_lists(loaded, plan, &pq, &mut Vec::new())
            })
            .collect();
        lists.sort_unstable();
        lists.dedup();
        let opened: Vec<Vec<((u32, u64), OpenSegment)>> = lists
            .par_iter()
            .map(|&list| {
                let segs = self.list_segments(state, list);
                let open = self.open_segments(state, plan.filter.is_some(), &segs)?;
                Ok(segs
                    .iter()
                    .zip(open)
                    .map(|((s, _), o)| ((list, s.counter), o))
                    .collect())
            })
            .collect::<Result<_>>()?;
        Ok(opened.into_iter().flatten().collect())
    }

    /// Tokens of the segments of one probed list (docs/PROTOCOL.md §13: minimal key generation).
    pub(in crate::index) fn list_segments<'s>(
        &self,
        state: &'s State,
        list: u32,
    ) -> Vec<(&'s SegmentState, SegmentKeys)> {
        let seed = self.keys.cluster_seed(state.generation, list);
        state.lists[list as usize]
            .segments
            .iter()
            .map(|s| (s, seed.segment(s.counter, &s.salt)))
            .collect()
    }

    /// Reads and decrypts the first-stage records of `segs`.
    pub(in crate::index) fn open_segments(
        &self,
        state: &State,
        with_meta: bool,
        segs: &[(&SegmentState, SegmentKeys)],
    ) -> Result<Vec<OpenSegment>> {
        let dim = state.config.dimension;
        let mut keys = Vec::with_capacity(segs.len() * 2);
        for (_, seg) in segs {
            keys.push(self.record_storage_key(seg, KIND_CODES, 0));
            if with_meta {
                keys.push(self.record_storage_key(seg, KIND_META, 0));
            }
        }
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let mut values = self.store.get_many(&refs)?.into_iter();
        let mut key_iter = keys.iter();
        let mut out = Vec::with_capacity(segs.len());
        for (s, seg) in segs {
            let ck = key_iter.next().map_or(&[][..], Vec::as_slice);
            let codes: SegmentCodes = decode(
                &open_record(seg, ck, values.next().flatten())?,
                "segment codes",
            )?;
            let len = s.len as usize;
            codes.validate(len, dim)?;
            let meta = if with_meta {
                let mk = key_iter.next().map_or(&[][..], Vec::as_slice);
                let m: SegmentMeta = decode(
                    &open_record(seg, mk, values.next().flatten())?,
                    "segment metadata",
                )?;
                if m.metadata.len() != len {
                    return Err(Error::Corrupted("segment metadata does not match".into()));
                }
                Some(m)
            } else {
                None
            };
            out.push(OpenSegment { codes, meta });
        }
        Ok(out)
    }

    /// Stage 1: score the probed segments' SQ8 codes (metadata filter applied), keep the
    /// best `rerank_mult · top_k` candidates.
    fn first_stage(
        state: &State,
        plan: &Plan,
        pq: &[f32],
        segs: &[(&SegmentState, SegmentKeys)],
        opened: &[&OpenSegment],
    ) -> Result<Vec<Candidate>> {
        let metric = state.config.metric;
        let dim = state.config.dimension;
        let mut cands: Vec<Candidate> = Vec::new();
        for (i, ((s, _), open)) in segs.iter().zip(opened).enumerate() {
            let block = &open.codes;
            let meta = &open.meta;
            let scorer = block.quantizer.scorer(metric, pq);
            for slot in 0..s.len {
                if s.is_deleted(slot) {
                    continue;
                }
                if let (Some(f), Some(m)) = (&plan.filter, &meta) {
                    let value = parse_metadata(m.metadata[slot as usize].as_deref())?;
                    if !f.matches(value.as_ref()) {
                        continue;
                    }
                }
                let code = &block.codes[slot as usize * dim..(slot as usize + 1) * dim];
                cands.push(Candidate {
                    rank: sane_rank(scorer.rank(code)),
                    segment: i,
                    slot,
                });
            }
        }
        if cands.len() > plan.rerank {
            cands.select_nth_unstable_by(plan.rerank, |a, b| {
                a.rank
                    .total_cmp(&b.rank)
                    .then(a.segment.cmp(&b.segment))
                    .then(a.slot.cmp(&b.slot))
            });
            cands.truncate(plan.rerank);
        }
        Ok(cands)
    }

    pub(super) fn search(
        &self,
        loaded: &Loaded,
        plan: &Plan,
        query: &[f32],
        shared: Option<&SharedSegments>,
    ) -> Result<Vec<QueryResult>> {
        let state = &loaded.state;
        let metric = state.config.metric;
        let dim = state.config.dimension;
        let pq = metric.prepare(query);
        let lists = Self::probed_lists(loaded, plan, &pq, &mut Vec::new());

        // Tokens for the probed lists only (docs/PROTOCOL.md §13: minimal key generation).
        let mut segs: Vec<(&SegmentState, SegmentKeys)> = Vec::new();
        let mut seg_lists = Vec::new();
        for list in lists {
            let l = self.list_segments(state, list);
            seg_lists.extend(std::iter::repeat_n(list, l.len()));
            segs.extend(l);
        }
        let own;
        let opened: Vec<&OpenSegment> = if let Some(shared) = shared {
            segs.iter()
                .zip(&seg_lists)
                .map(|((s, _), list)| {
                    shared.get(&(*list, s.counter)).ok_or_else(|| {
                        Error::Corrupted("a probed segment was not opened for the batch".into())
                    })
                })
                .collect::<Result<_>>()?
        } else {
            own = self.open_segments(state, plan.filter.is_some(), &segs)?;
            own.iter().collect()
        };
        let cands = Self::first_stage(state, plan, &pq, &segs, &opened)?;
        let blocks: Vec<&SegmentCodes> = opened.iter().map(|o| &o.codes).collect();

        // Stage 2: decrypt only the candidates' exact vectors and re-rank.
        let vkeys: Vec<Vec<u8>> = cands
            .iter()
            .map(|c| self.record_storage_key(&segs[c.segment].1, KIND_VECTOR, c.slot))
            .collect();
        let refs: Vec<&[u8]> = vkeys.iter().map(Vec::as_slice).collect();
        let vals = self.store.get_many(&refs)?;
        let mut exact: Vec<(f32, &Candidate, Vec<f32>)> = Vec::with_capacity(cands.len());
        for ((c, k), v) in cands.iter().zip(&vkeys).zip(vals) {
            let vector = decode_vector(&open_record(&segs[c.segment].1, k, v)?, dim)?;
            let rank = exact_rank(metric, &pq, &metric.prepare(&vector));
            exact.push((rank, c, vector));
        }
        exact.sort_by(|a, b| {
            a.0.total_cmp(&b.0).then_with(|| {
                blocks[a.1.segment]
                    .id_bytes(a.1.slot as usize)
                    .cmp(blocks[b.1.segment].id_bytes(b.1.slot as usize))
            })
        });
        exact.truncate(plan.top_k);

        let docs = if plan.include.any_doc() {
            let dkeys: Vec<Vec<u8>> = exact
                .iter()
                .map(|(_, c, _)| self.record_storage_key(&segs[c.segment].1, KIND_DOC, c.slot))
                .collect();
            let refs: Vec<&[u8]> = dkeys.iter().map(Vec::as_slice).collect();
            let vals = self.store.get_many(&refs)?;
            let mut docs = Vec::with_capacity(dkeys.len());
            for (((_, c, _), k), v) in exact.iter().zip(&dkeys).zip(vals) {
                let doc: DocRecord = decode(&open_record(&segs[c.segment].1, k, v)?, "document")?;
                docs.push(Some(doc));
            }
            docs
        } else {
            exact.iter().map(|_| None).collect()
        };

        exact
            .into_iter()
            .zip(docs)
            .map(|((rank, c, vector), doc)| {
                let (contents, metadata) = requested_fields(doc, plan.include)?;
                Ok(QueryResult {
                    id: blocks[c.segment].id(c.slot as usize)?,
                    distance: metric.finish(rank),
                    vector: plan.include.vector.then_some(vector),
                    contents,
                    metadata,
                })
            })
            .collect()
    }
}
