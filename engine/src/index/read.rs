//! Reads without a query vector: ids, items by id, items by metadata.

use serde_json::Value;

use super::{list_u32, open_record, parse_metadata, Index};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::records::{decode, decode_vector, DocRecord, State, KIND_DOC, KIND_VECTOR};
use crate::types::Item;

impl Index {
    /// All live ids, sorted (as stored when the call began: see [`Index::query`]).
    pub fn list_ids(&self) -> Result<Vec<String>> {
        self.ensure_fresh()?;
        let mut ids: Vec<String> = self.read().state.ids.keys().cloned().collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Fetches items by id, in request order; unknown ids are skipped. Sees every write
    /// committed before the call began (see [`Index::query`]).
    pub fn get<S: AsRef<str>>(&self, ids: &[S]) -> Result<Vec<Item>> {
        self.read_fresh(|loaded| self.get_in(&loaded.state, ids))
    }

    fn get_in<S: AsRef<str>>(&self, state: &State, ids: &[S]) -> Result<Vec<Item>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(loc) = state.ids.get(id.as_ref()) else {
                continue;
            };
            let salt = state
                .lists
                .get(loc.list as usize)
                .and_then(|l| l.segments.iter().find(|s| s.counter == loc.counter))
                .map(|s| s.salt)
                .ok_or_else(|| Error::Corrupted("the id map names a missing segment".into()))?;
            let seg = self.segment_keys(state.generation, loc.list, loc.counter, &salt);
            let vk = self.record_storage_key(&seg, KIND_VECTOR, loc.slot);
            let dk = self.record_storage_key(&seg, KIND_DOC, loc.slot);
            let mut vals = self.store.get_many(&[&vk, &dk])?.into_iter();
            let vector = decode_vector(
                &open_record(&seg, &vk, vals.next().flatten())?,
                state.config.dimension,
            )?;
            let doc: DocRecord =
                decode(&open_record(&seg, &dk, vals.next().flatten())?, "document")?;
            out.push(Item {
                id: doc.id,
                vector,
                contents: doc.contents,
                metadata: parse_metadata(doc.metadata.as_deref())?,
            });
        }
        Ok(out)
    }

    /// Every live item whose metadata matches `filter` (all items when `None`), with its
    /// metadata, in storage order: a query by metadata alone, without a vector (CyborgDB's
    /// `query_metadata`). Sees every write committed before the call began.
    ///
    /// There is no metadata index: the codes and metadata records of every segment of every
    /// list are read and decrypted, so the store sees a full scan (every token of the index),
    /// and the cost is linear in the index size.
    pub fn query_metadata(&self, filter: Option<&Value>) -> Result<Vec<(String, Option<Value>)>> {
        let filter = filter.map(Filter::parse).transpose()?;
        self.read_fresh(|loaded| {
            let state = &loaded.state;
            let mut out = Vec::new();
            for list in 0..state.lists.len() {
                let segs = self.list_segments(state, list_u32(list));
                for ((s, _), open) in segs.iter().zip(self.open_segments(state, true, &segs)?) {
                    let Some(meta) = &open.meta else {
                        continue;
                    };
                    for slot in 0..s.len {
                        if s.is_deleted(slot) {
                            continue;
                        }
                        let value = parse_metadata(meta.metadata[slot as usize].as_deref())?;
                        if filter.as_ref().is_none_or(|f| f.matches(value.as_ref())) {
                            out.push((open.codes.id(slot as usize)?, value));
                        }
                    }
                }
            }
            Ok(out)
        })
    }
}
