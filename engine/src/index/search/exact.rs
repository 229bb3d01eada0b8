//! The exact strategy: rank every live item of the probed segments' decrypted vector blocks,
//! list-major (each list scanned once for all the queries that probe it), then merge each
//! query's best hits (see [`super::Strategy`]).

use std::sync::Arc;

use rayon::prelude::*;
use zeroize::Zeroizing;

use super::rank::{Best, Hit, Threshold};
use super::{requested_fields, Plan};
use crate::cache::{Decoded, SegmentId};
use crate::error::{Error, Result};
use crate::index::{list_u32, open_record, slot_u32, Index, Loaded};
use crate::keys::SegmentKeys;
use crate::records::{
    decode, decode_vector, DocRecord, SegmentBlock, SegmentCodes, SegmentIds, SegmentState, State,
    KIND_BLOCK, KIND_CODES, KIND_DOC, KIND_VECTOR,
};
use crate::scan::{Block, MATCHED_TOGETHER, TILE};
use crate::types::QueryResult;

/// One list's exact scan: its segments (state and ids) and each query's best hits in it.
struct ListScan<'s> {
    segments: Vec<(&'s SegmentState, Arc<SegmentIds>)>,
    hits: Vec<(u32, Hit)>,
}

/// Queries of a list scored together, against runs of [`TILES_SCORED_TOGETHER`] tiles: the
/// score buffer holds at most `64 · 1024` ranks (256 KiB), however large a segment.
const SCORED_TOGETHER: usize = 64;

const TILES_SCORED_TOGETHER: usize = 64;

impl Index {
    /// Exact list-major search of `queries` (no filter).
    pub(super) fn exact_search(
        &self,
        loaded: &Loaded,
        plan: &Plan,
        queries: &[&[f32]],
    ) -> Result<Vec<Vec<QueryResult>>> {
        let state = &loaded.state;
        let metric = state.config.metric;
        let pqs: Vec<Vec<f32>> = queries.par_iter().map(|q| metric.prepare(q)).collect();
        let mut by_list: Vec<Vec<u32>> = vec![Vec::new(); state.lists.len()];
        let probes: Vec<Vec<u32>> = pqs
            .par_chunks(MATCHED_TOGETHER)
            .map_init(Vec::new, |scratch, pqs| {
                let vs: Vec<&[f32]> = pqs.iter().map(Vec::as_slice).collect();
                Self::probed_lists_many(loaded, plan, &vs, scratch)
            })
            .flatten_iter()
            .collect();
        for (q, lists) in probes.iter().enumerate() {
            for &l in lists {
                if let Some(v) = by_list.get_mut(l as usize) {
                    v.push(slot_u32(q));
                }
            }
        }
        let work: Vec<(u32, Vec<u32>)> = by_list
            .into_iter()
            .enumerate()
            .filter(|(_, qs)| !qs.is_empty())
            .map(|(l, qs)| (list_u32(l), qs))
            .collect();
        let threshold = Threshold::new(queries.len());
        let scanned: Vec<ListScan<'_>> = work
            .par_iter()
            .map(|(list, qs)| self.scan_list(state, *list, qs, &pqs, plan.top_k, &threshold))
            .collect::<Result<_>>()?;

        // Merge: every query's hits from all its lists, in one table of segments.
        let mut table: Vec<(u32, &SegmentState, Arc<SegmentIds>)> = Vec::new();
        let mut per_query: Vec<Vec<Hit>> = vec![Vec::new(); queries.len()];
        for ((list, _), scan) in work.iter().zip(scanned) {
            let base = slot_u32(table.len());
            table.extend(scan.segments.into_iter().map(|(s, ids)| (*list, s, ids)));
            for (q, h) in scan.hits {
                per_query[q as usize].push(Hit {
                    seg: h.seg + base,
                    ..h
                });
            }
        }
        per_query
            .into_par_iter()
            .map(|hits| {
                let ids = |h: &Hit| table[h.seg as usize].2.id_bytes(h.slot as usize);
                let mut top = Best {
                    k: plan.top_k,
                    hits,
                    worst: f32::INFINITY,
                };
                top.finish(&ids);
                let top = top.hits;
                self.materialize(state, plan, &table, &top)
            })
            .collect()
    }

    /// Scans every segment of `list` for each query of `qs`; keeps each query's `top_k`.
    fn scan_list<'s>(
        &self,
        state: &'s State,
        list: u32,
        qs: &[u32],
        pqs: &[Vec<f32>],
        top_k: usize,
        threshold: &Threshold,
    ) -> Result<ListScan<'s>> {
        let metric = state.config.metric;
        let decoded = self.decoded_segments(state, list)?;
        let queries: Vec<&[f32]> = qs.iter().map(|&q| pqs[q as usize].as_slice()).collect();
        let ids = |h: &Hit| decoded[h.seg as usize].1.ids.id_bytes(h.slot as usize);
        let mut hits = Vec::with_capacity(qs.len() * top_k);
        let mut bests: Vec<Best> = (0..qs.len().min(SCORED_TOGETHER))
            .map(|_| Best::new(top_k))
            .collect();
        // A group's ranks against a run of tiles (plaintext-derived: wiped when done).
        let mut scores = Zeroizing::new(Vec::new());
        for (group, gqs) in queries
            .chunks(SCORED_TOGETHER)
            .zip(qs.chunks(SCORED_TOGETHER))
        {
            let bests = &mut bests[..gqs.len()];
            for (best, &q) in bests.iter_mut().zip(gqs) {
                best.reset(threshold.get(q));
            }
            for (si, (s, d)) in decoded.iter().enumerate() {
                let deleted = |slot| !s.deleted.is_empty() && s.is_deleted(slot);
                for start in (0..d.block.tiles()).step_by(TILES_SCORED_TOGETHER) {
                    let tiles = start..(start + TILES_SCORED_TOGETHER).min(d.block.tiles());
                    let width = tiles.len() * TILE;
                    let first = start * TILE;
                    let live = d.block.len().saturating_sub(first).min(width);
                    d.block.rank_tiles(metric, group, tiles, &mut scores);
                    for (row, best) in scores.chunks_exact(width).zip(bests.iter_mut()) {
                        best.offer_row(&row[..live], slot_u32(si), first, deleted, &ids);
                    }
                }
            }
            for (best, &q) in bests.iter_mut().zip(gqs) {
                best.finish(&ids);
                if let Some(kth) = best.kth() {
                    threshold.lower(q, kth);
                }
                hits.extend(best.hits.drain(..).map(|h| (q, h)));
            }
        }
        Ok(ListScan {
            segments: decoded
                .iter()
                .map(|(s, d)| (*s, Arc::clone(&d.ids)))
                .collect(),
            hits,
        })
    }

    /// The decrypted segments of `list`, from the cache or opened (one block record each)
    /// and cached.
    fn decoded_segments<'s>(
        &self,
        state: &'s State,
        list: u32,
    ) -> Result<Vec<(&'s SegmentState, Arc<Decoded>)>> {
        let segs = &state.lists[list as usize].segments;
        let id = |s: &SegmentState| -> SegmentId { (state.generation, list, s.counter, s.salt) };
        let mut out: Vec<Option<Arc<Decoded>>> =
            segs.iter().map(|s| self.cache.get(&id(s))).collect();
        let missing: Vec<usize> = (0..segs.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            let seed = self.keys.cluster_seed(state.generation, list);
            let keys: Vec<SegmentKeys> = missing
                .iter()
                .map(|&i| seed.segment(segs[i].counter, &segs[i].salt))
                .collect();
            let rkeys: Vec<Vec<u8>> = keys
                .iter()
                .map(|k| self.record_storage_key(k, KIND_BLOCK, 0))
                .collect();
            let refs: Vec<&[u8]> = rkeys.iter().map(Vec::as_slice).collect();
            let values = self.store.get_many(&refs)?;
            for (((&i, seg), rk), v) in missing.iter().zip(&keys).zip(&rkeys).zip(values) {
                let s = &segs[i];
                let d = Arc::new(match v {
                    Some(v) => Self::decode_block(state, s, &open_record(seg, rk, Some(v))?)?,
                    // Segments written before block records existed.
                    None => self.decode_from_slots(state, s, seg)?,
                });
                self.cache.insert(id(s), Arc::clone(&d));
                out[i] = Some(d);
            }
        }
        Ok(segs
            .iter()
            .zip(out)
            .filter_map(|(s, d)| d.map(|d| (s, d)))
            .collect())
    }

    fn decode_block(state: &State, s: &SegmentState, plain: &[u8]) -> Result<Decoded> {
        let dim = state.config.dimension;
        let len = s.len as usize;
        let mut block: SegmentBlock = decode(plain, "segment block")?;
        block.ids.validate(len)?;
        if block.vectors.len() != len * dim * 4 {
            return Err(Error::Corrupted(
                "segment block does not match the index state".into(),
            ));
        }
        let ids = std::mem::take(&mut block.ids);
        Ok(Decoded {
            ids: Arc::new(ids),
            block: Block::from_le_bytes(dim, len, &block.vectors),
        })
    }

    /// A segment without a block record: ids from its codes record, vectors from its slots.
    fn decode_from_slots(
        &self,
        state: &State,
        s: &SegmentState,
        seg: &SegmentKeys,
    ) -> Result<Decoded> {
        let dim = state.config.dimension;
        let len = s.len as usize;
        let ck = self.record_storage_key(seg, KIND_CODES, 0);
        let mut keys = vec![ck];
        keys.extend((0..s.len).map(|slot| self.record_storage_key(seg, KIND_VECTOR, slot)));
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let mut values = self.store.get_many(&refs)?.into_iter();
        let mut codes: SegmentCodes = decode(
            &open_record(seg, &keys[0], values.next().flatten())?,
            "segment codes",
        )?;
        codes.validate(len, dim)?;
        let mut rows = Vec::with_capacity(len);
        for (k, v) in keys[1..].iter().zip(values) {
            let v = Zeroizing::new(decode_vector(&open_record(seg, k, v)?, dim)?);
            rows.push(Zeroizing::new(state.config.metric.prepare(&v)));
        }
        Ok(Decoded {
            ids: Arc::new(std::mem::take(&mut codes.ids)),
            block: Block::from_rows(dim, len, rows.iter().map(|r| r.as_slice())),
        })
    }

    /// Turns a query's final hits into results, reading the vector and document records
    /// only when `include` asks for them.
    fn materialize(
        &self,
        state: &State,
        plan: &Plan,
        table: &[(u32, &SegmentState, Arc<SegmentIds>)],
        hits: &[Hit],
    ) -> Result<Vec<QueryResult>> {
        let metric = state.config.metric;
        let dim = state.config.dimension;
        let want_vec = plan.include.vector;
        let want_doc = plan.include.any_doc();
        let mut records: Vec<(Option<Vec<f32>>, Option<DocRecord>)> = Vec::new();
        if want_vec || want_doc {
            let segs: Vec<SegmentKeys> = hits
                .iter()
                .map(|h| {
                    let (list, s, _) = &table[h.seg as usize];
                    self.segment_keys(state.generation, *list, s.counter, &s.salt)
                })
                .collect();
            let mut keys = Vec::new();
            for (h, seg) in hits.iter().zip(&segs) {
                if want_vec {
                    keys.push(self.record_storage_key(seg, KIND_VECTOR, h.slot));
                }
                if want_doc {
                    keys.push(self.record_storage_key(seg, KIND_DOC, h.slot));
                }
            }
            let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            let mut values = self.store.get_many(&refs)?.into_iter();
            let mut key_iter = keys.iter();
            for seg in &segs {
                let vector = if want_vec {
                    let k = key_iter.next().map_or(&[][..], Vec::as_slice);
                    Some(decode_vector(
                        &open_record(seg, k, values.next().flatten())?,
                        dim,
                    )?)
                } else {
                    None
                };
                let doc = if want_doc {
                    let k = key_iter.next().map_or(&[][..], Vec::as_slice);
                    Some(decode(
                        &open_record(seg, k, values.next().flatten())?,
                        "document",
                    )?)
                } else {
                    None
                };
                records.push((vector, doc));
            }
        } else {
            records.resize_with(hits.len(), || (None, None));
        }
        hits.iter()
            .zip(records)
            .map(|(h, (vector, doc))| {
                let (contents, metadata) = requested_fields(doc, plan.include)?;
                Ok(QueryResult {
                    id: table[h.seg as usize].2.id(h.slot as usize)?,
                    distance: metric.finish(h.rank),
                    vector,
                    contents,
                    metadata,
                })
            })
            .collect()
    }
}
