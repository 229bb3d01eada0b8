//! Vector queries: the validated [`Plan`] and the [`Strategy`] that searches it.
//!
//! Two strategies find the `top_k` nearest items among the probed lists (docs/ARCHITECTURE.md
//! §4.4, docs/PROTOCOL.md §13):
//!
//! * **two-stage** ([`two_stage`]): decrypt each probed segment's SQ8 codes (and metadata,
//!   with a filter), keep the best `rerank_mult · top_k` candidates, then decrypt only those
//!   candidates' exact vectors and re-rank them. It reads and decrypts the fewest bytes.
//! * **exact** ([`exact`]): decrypt each probed segment's block of prepared vectors once and
//!   rank every live item exactly, list-major over the queries that probe the list. Its
//!   results are exact, and a block, once decrypted, serves every later query from the
//!   segment cache or every query of a batch.
//!
//! [`Strategy::choose`] makes the choice, and only it: a filter needs the metadata records,
//! which only the two-stage search reads, so filtered queries are two-stage; an unfiltered
//! batch is exact (each block is read once for the whole batch); an unfiltered single query is
//! exact when the handle's segment cache is on (the blocks stay decrypted in memory, so later
//! queries read nothing but the records `include` asks for) and two-stage when it is off
//! (without a cache, a block read per query costs four times the bytes of the codes).

mod exact;
mod rank;
mod two_stage;

use rayon::prelude::*;
use serde_json::Value;

use super::validate::check_finite;
use super::{check_vector, parse_metadata, Index, Loaded};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::records::DocRecord;
use crate::types::{IndexConfig, QueryParams, QueryResult, AUTO, MAX_RERANK, MAX_TOP_K};

/// How the probed lists of a query are searched (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// Every live item of the probed segments' decrypted vector blocks is ranked exactly.
    Exact,
    /// SQ8 codes first (with the metadata filter), then an exact re-rank of
    /// `rerank_mult · top_k` candidates.
    TwoStage,
}

impl Strategy {
    /// The strategy for a query with or without a metadata filter, from a handle whose
    /// segment cache is on or off, alone or in a batch (the reasons are in the module docs).
    pub(crate) fn choose(filtered: bool, cache_enabled: bool, batch: bool) -> Self {
        if !filtered && (batch || cache_enabled) {
            Self::Exact
        } else {
            Self::TwoStage
        }
    }
}

/// Validated query parameters.
struct Plan {
    top_k: usize,
    n_probes: usize,
    rerank: usize,
    filter: Option<Filter>,
    include: crate::types::Include,
}

impl Plan {
    fn new(config: &IndexConfig, p: &QueryParams) -> Result<Self> {
        if p.top_k == 0 || p.top_k > MAX_TOP_K {
            return Err(Error::InvalidArgument(format!(
                "top_k must be 1..={MAX_TOP_K}, got {}",
                p.top_k
            )));
        }
        let n_probes = p.n_probes.unwrap_or(config.n_probes);
        if n_probes == 0 {
            return Err(Error::InvalidArgument("n_probes must be at least 1".into()));
        }
        let mult = p.rerank_mult.unwrap_or(config.rerank_mult);
        if mult == 0 || mult > 1000 {
            return Err(Error::InvalidArgument(format!(
                "rerank_mult must be 1..=1000, got {mult}"
            )));
        }
        let rerank = p.top_k.saturating_mul(mult);
        if rerank > MAX_RERANK {
            return Err(Error::InvalidArgument(format!(
                "top_k · rerank_mult must be at most {MAX_RERANK}, got {} · {mult}",
                p.top_k
            )));
        }
        Ok(Self {
            top_k: p.top_k,
            n_probes,
            rerank,
            filter: p.filter.as_ref().map(Filter::parse).transpose()?,
            include: p.include,
        })
    }
}

/// Queries of a batch that share their opened segments (bounds the plaintext codes held at
/// once to about `QUERY_CHUNK · n_probes` lists).
const QUERY_CHUNK: usize = 256;

impl Index {
    /// The `top_k` nearest items to `vector`.
    ///
    /// Searched by the [`Strategy`] that [`Strategy::choose`] picks: without a filter and
    /// with the segment cache enabled, the probed lists are scanned exactly from their
    /// decrypted vector blocks (cached); otherwise the SQ8 first stage and the exact re-rank
    /// of `rerank_mult · top_k` candidates read the fewest bytes.
    ///
    /// Sees every write committed to storage before the call began, through this or any other
    /// handle: the call first reads the index's 32-byte state version record and reloads the
    /// state if another handle changed it (so a deleted item is never returned, cache or
    /// not). [`Index::query_batch`] does this once per batch, [`Index::get`] per call.
    pub fn query(&self, vector: &[f32], params: &QueryParams) -> Result<Vec<QueryResult>> {
        let config = self.query_config()?;
        let plan = Plan::new(&config, params)?;
        if config.dimension == AUTO {
            check_finite(vector)?;
            return Ok(Vec::new());
        }
        check_vector(&config, vector, None)?;
        match self.strategy(&plan, false) {
            Strategy::Exact => {
                let one = std::slice::from_ref(&vector);
                self.read_fresh(|loaded| self.exact_search(loaded, &plan, one))
                    .map(|mut r| r.pop().unwrap_or_default())
            }
            Strategy::TwoStage => {
                self.read_fresh(|loaded| self.search(loaded, &plan, vector, None))
            }
        }
    }

    /// The strategy this handle searches `plan` with, alone or in a batch.
    fn strategy(&self, plan: &Plan, batch: bool) -> Strategy {
        Strategy::choose(plan.filter.is_some(), self.cache.enabled(), batch)
    }

    /// [`Index::query`] for several vectors, run in parallel. All vectors are validated
    /// before any search runs.
    ///
    /// Searched by the [`Strategy`] that [`Strategy::choose`] picks for a batch: without a
    /// filter the batch is searched list-major: each probed segment is decrypted
    /// (or taken from the segment cache) once for the whole batch and scanned exactly for
    /// every query that probes its list, then each query's best hits are merged. With a
    /// filter, chunks of queries share their opened SQ8 segments.
    pub fn query_batch(
        &self,
        vectors: &[Vec<f32>],
        params: &QueryParams,
    ) -> Result<Vec<Vec<QueryResult>>> {
        let config = self.query_config()?;
        let plan = Plan::new(&config, params)?;
        if config.dimension == AUTO {
            for v in vectors {
                check_finite(v)?;
            }
            return Ok(vec![Vec::new(); vectors.len()]);
        }
        for v in vectors {
            check_vector(&config, v, None)?;
        }
        if self.strategy(&plan, true) == Strategy::Exact {
            let refs: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
            return self.read_fresh(|loaded| self.exact_search(loaded, &plan, &refs));
        }
        self.read_fresh(|loaded| {
            let mut out = Vec::with_capacity(vectors.len());
            for chunk in vectors.chunks(QUERY_CHUNK) {
                let shared = self.open_for_batch(loaded, &plan, chunk)?;
                out.extend(
                    chunk
                        .par_iter()
                        .map(|v| self.search(loaded, &plan, v, Some(&shared)))
                        .collect::<Result<Vec<_>>>()?,
                );
            }
            Ok(out)
        })
    }

    /// The configuration a query is checked against. While the handle knows no dimension yet
    /// (nothing upserted when it last looked), the state is brought up to date first: another
    /// handle's first upsert may have fixed it.
    fn query_config(&self) -> Result<IndexConfig> {
        if self.read().state.config.dimension == AUTO {
            self.ensure_fresh()?;
        }
        Ok(self.config())
    }

    /// The lists `query` probes.
    fn probed_lists(loaded: &Loaded, plan: &Plan, pq: &[f32], scratch: &mut Vec<f32>) -> Vec<u32> {
        Self::probed_lists_many(loaded, plan, &[pq], scratch)
            .pop()
            .unwrap_or_default()
    }

    /// The lists each of `pqs` probes (an untrained index has the one list 0).
    fn probed_lists_many(
        loaded: &Loaded,
        plan: &Plan,
        pqs: &[&[f32]],
        scratch: &mut Vec<f32>,
    ) -> Vec<Vec<u32>> {
        match &loaded.probe {
            None => vec![vec![0]; pqs.len()],
            Some(p) => p.nearest_many(pqs, plan.n_probes, scratch),
        }
    }
}

/// The contents and metadata of a fetched document that the query asked for.
fn requested_fields(
    doc: Option<DocRecord>,
    include: crate::types::Include,
) -> Result<(Option<Vec<u8>>, Option<Value>)> {
    let Some(d) = doc else {
        return Ok((None, None));
    };
    let metadata = if include.metadata {
        parse_metadata(d.metadata.as_deref())?
    } else {
        None
    };
    Ok((d.contents.filter(|_| include.contents), metadata))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{Client, IndexKey, Item, StorageConfig};

    #[test]
    fn the_strategy_is_chosen_by_filter_cache_and_batch() {
        use Strategy::{Exact, TwoStage};
        for (filtered, cache, batch, want) in [
            (true, true, true, TwoStage),
            (true, true, false, TwoStage),
            (true, false, true, TwoStage),
            (true, false, false, TwoStage),
            (false, true, true, Exact),
            (false, false, true, Exact),
            (false, true, false, Exact),
            (false, false, false, TwoStage),
        ] {
            assert_eq!(
                Strategy::choose(filtered, cache, batch),
                want,
                "filtered {filtered}, cache {cache}, batch {batch}"
            );
        }
    }

    /// The exact scan is the only path that fills the segment cache, so the cache shows which
    /// strategy a query went through.
    #[test]
    fn an_unfiltered_query_with_a_cache_is_exact_and_a_filtered_one_two_stage() {
        let client = Client::new(StorageConfig::memory()).unwrap();
        let key = IndexKey::generate();
        let index = client
            .create_index("strategy", &key, IndexConfig::new(2).with_n_lists(2))
            .unwrap();
        index
            .upsert(vec![
                Item::new("a", vec![0.0, 0.0]).with_metadata(json!({"g": 1})),
                Item::new("b", vec![10.0, 10.0]).with_metadata(json!({"g": 2})),
            ])
            .unwrap();
        assert!(index.segment_cache_bytes() > 0);
        let filtered = QueryParams::new(1).filter(json!({"g": 2}));
        assert_eq!(index.query(&[1.0, 1.0], &filtered).unwrap()[0].id, "b");
        assert_eq!(
            index.segment_cache_used(),
            0,
            "a filtered query is two-stage"
        );
        assert_eq!(
            index.query(&[1.0, 1.0], &QueryParams::new(1)).unwrap()[0].id,
            "a"
        );
        assert!(
            index.segment_cache_used() > 0,
            "an unfiltered query with a cache is exact"
        );

        index.set_segment_cache_bytes(0);
        assert_eq!(
            index.query(&[1.0, 1.0], &QueryParams::new(1)).unwrap()[0].id,
            "a"
        );
        assert_eq!(
            index.segment_cache_used(),
            0,
            "without a cache it is two-stage"
        );
    }
}
