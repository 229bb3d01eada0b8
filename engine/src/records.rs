//! Serialized record types and the storage key layout (docs/PROTOCOL.md §13).
//!
//! ```text
//! c/<index name>                      IndexHeader (postcard): version, uid, DEK wrapped under KEK
//! k/<index name>                      KMS envelope (KMSBlob FlatBuffer): the KEK as wrapped by a KMS
//! x/<uid:16>/s                        index state, AES-256-GCM under the DEK-derived state key
//! x/<uid:16>/v                        state version: SHA-256 of the current state ciphertext
//!                                     (public: anyone holding the ciphertext can compute it)
//! x/<uid:16>/u/<key id:16>            UserRecord: scope, DEK wrapped under the user's key
//! x/<uid:16>/d/<record key:32>        segment records, AES-256-GCM under the segment key:
//!     kind 0 (slot 0)  SegmentCodes: ids, SQ8 quantizer, codes
//!     kind 1 (slot 0)  SegmentMeta: metadata (JSON) per slot, for filtering
//!     kind 2 (slot i)  exact vector of slot i (f32 little-endian)
//!     kind 3 (slot i)  DocRecord: id, contents, metadata of slot i
//!     kind 4 (slot 0)  SegmentBlock: ids and all prepared vectors (exact batched scans)
//! ```
//!
//! Record keys are `SHA3(RECORD ‖ lookup ‖ kind ‖ slot)` where `lookup` is the segment's
//! forward-private lookup token; a record's AAD is its full storage key. The index name and
//! the random uid are the only plaintext in keys; ids, vectors and metadata appear only
//! inside ciphertexts (the id → location map lives in the encrypted state).

use std::collections::HashMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use zeroize::Zeroize;

use crate::error::{Error, Result};
use crate::keys::SEGMENT_SALT_LEN;
use crate::quantize::Sq8;
use crate::types::IndexConfig;

pub(crate) const HEADER_VERSION: u16 = 1;
pub(crate) const UID_LEN: usize = 16;

pub(crate) const KIND_CODES: u8 = 0;
pub(crate) const KIND_META: u8 = 1;
pub(crate) const KIND_VECTOR: u8 = 2;
pub(crate) const KIND_DOC: u8 = 3;
pub(crate) const KIND_BLOCK: u8 = 4;

pub(crate) const CATALOG_PREFIX: &[u8] = b"c/";

pub(crate) fn catalog_key(name: &str) -> Vec<u8> {
    [CATALOG_PREFIX, name.as_bytes()].concat()
}

/// Key of the KMS envelope (a `KMSBlob` FlatBuffer) of an index, beside its catalog entry.
pub(crate) fn kms_key(name: &str) -> Vec<u8> {
    [b"k/".as_slice(), name.as_bytes()].concat()
}

pub(crate) fn index_prefix(uid: &[u8; UID_LEN]) -> Vec<u8> {
    [b"x/".as_slice(), uid, b"/"].concat()
}

pub(crate) fn state_key(uid: &[u8; UID_LEN]) -> Vec<u8> {
    [index_prefix(uid).as_slice(), b"s"].concat()
}

/// Key of the state version record, written in every batch that writes the state; a read
/// fetches it to learn cheaply whether its handle's state is still the stored one.
pub(crate) fn version_key(uid: &[u8; UID_LEN]) -> Vec<u8> {
    [index_prefix(uid).as_slice(), b"v"].concat()
}

pub(crate) fn user_key(uid: &[u8; UID_LEN], key_id: &[u8]) -> Vec<u8> {
    [index_prefix(uid).as_slice(), b"u/", key_id].concat()
}

pub(crate) fn data_prefix(uid: &[u8; UID_LEN]) -> Vec<u8> {
    [index_prefix(uid).as_slice(), b"d/"].concat()
}

pub(crate) fn data_key(uid: &[u8; UID_LEN], record_key: &[u8; 32]) -> Vec<u8> {
    [data_prefix(uid).as_slice(), record_key].concat()
}

/// Plaintext catalog entry of an index.
#[derive(Serialize, Deserialize)]
pub(crate) struct IndexHeader {
    pub version: u16,
    pub uid: [u8; UID_LEN],
    pub wrapped_dek: Vec<u8>,
}

/// A minted user key's record.
#[derive(Serialize, Deserialize)]
pub(crate) struct UserRecord {
    pub scope: u8,
    pub wrapped_dek: Vec<u8>,
}

/// Where an item lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Location {
    pub list: u32,
    pub counter: u64,
    pub slot: u32,
}

/// One immutable (cluster, counter) segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SegmentState {
    pub counter: u64,
    /// Random per-segment salt of the node key (rollback safety of tokens, see `keys`).
    pub salt: [u8; SEGMENT_SALT_LEN],
    pub len: u32,
    /// Deleted slots, sorted.
    pub deleted: Vec<u32>,
}

impl SegmentState {
    pub(crate) fn live(&self) -> usize {
        (self.len as usize).saturating_sub(self.deleted.len())
    }

    pub(crate) fn is_deleted(&self, slot: u32) -> bool {
        self.deleted.binary_search(&slot).is_ok()
    }
}

/// Per-list counter and live segments.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ListState {
    pub next_counter: u64,
    pub segments: Vec<SegmentState>,
}

/// Records that are no longer referenced but not yet removed from storage. They are removed
/// by a *later* write batch than the one that made them garbage (forward privacy: the batch
/// that writes a merged or replacing segment never deletes the tokens the old one was read
/// under).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Garbage {
    pub generation: u32,
    pub list: u32,
    pub counter: u64,
    pub salt: [u8; SEGMENT_SALT_LEN],
    /// Slots whose vector and document records are garbage.
    pub slots: Vec<u32>,
    /// `Some(len)`: the whole segment (codes, metadata and slots `0..len`) is garbage.
    pub segment_len: Option<u32>,
}

/// The encrypted index state. No `Debug`: it holds every id.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct State {
    pub config: IndexConfig,
    /// Bumped by every training; part of the cluster seed input.
    pub generation: u32,
    /// `n_lists · dim` centroids (of prepared vectors), or `None` before training.
    pub centroids: Option<Vec<f32>>,
    pub lists: Vec<ListState>,
    pub ids: HashMap<String, Location>,
    /// Deferred deletions, swept by a later write batch.
    pub garbage: Vec<Garbage>,
}

/// The ids of a segment's slots: one byte buffer plus end offsets, so decoding does not
/// allocate per item. Wiped on drop.
#[derive(Default, Serialize, Deserialize)]
pub(crate) struct SegmentIds {
    #[serde(with = "serde_bytes")]
    id_bytes: Vec<u8>,
    id_ends: Vec<u32>,
}

impl Drop for SegmentIds {
    fn drop(&mut self) {
        self.id_bytes.zeroize();
    }
}

impl SegmentIds {
    pub(crate) fn new<'a>(ids: impl Iterator<Item = &'a str>) -> Self {
        let mut id_bytes = Vec::new();
        let mut id_ends = Vec::new();
        for id in ids {
            id_bytes.extend_from_slice(id.as_bytes());
            id_ends.push(u32::try_from(id_bytes.len()).expect("segment id bytes fit in u32"));
        }
        Self { id_bytes, id_ends }
    }

    /// Checks that there are `len` well-formed ids, so that later slicing cannot fail.
    pub(crate) fn validate(&self, len: usize) -> Result<()> {
        let ends_ok = self.id_ends.windows(2).all(|w| w[0] <= w[1])
            && self.id_ends.last().map_or(0, |e| *e as usize) == self.id_bytes.len();
        if self.id_ends.len() != len || !ends_ok {
            return Err(Error::Corrupted(
                "segment ids do not match the index state".into(),
            ));
        }
        Ok(())
    }

    /// Plaintext bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.id_bytes.len() + 4 * self.id_ends.len()
    }

    /// Raw id bytes of `slot` (after [`SegmentIds::validate`]).
    pub(crate) fn id_bytes(&self, slot: usize) -> &[u8] {
        let start = if slot == 0 {
            0
        } else {
            self.id_ends[slot - 1] as usize
        };
        &self.id_bytes[start..self.id_ends[slot] as usize]
    }

    /// The id of `slot` (after [`SegmentIds::validate`]).
    pub(crate) fn id(&self, slot: usize) -> Result<String> {
        std::str::from_utf8(self.id_bytes(slot))
            .map(str::to_owned)
            .map_err(|_| Error::Corrupted("stored id is not UTF-8".into()))
    }
}

/// First-stage data of a segment: ids, the segment's SQ8 quantizer and the codes (ids and
/// codes wiped on drop).
#[derive(Serialize, Deserialize)]
pub(crate) struct SegmentCodes {
    pub ids: SegmentIds,
    pub quantizer: Sq8,
    #[serde(with = "serde_bytes")]
    pub codes: Vec<u8>,
}

impl Drop for SegmentCodes {
    fn drop(&mut self) {
        self.codes.zeroize();
    }
}

impl SegmentCodes {
    pub(crate) fn new<'a>(
        ids: impl Iterator<Item = &'a str>,
        quantizer: Sq8,
        codes: Vec<u8>,
    ) -> Self {
        Self {
            ids: SegmentIds::new(ids),
            quantizer,
            codes,
        }
    }

    /// Checks the shape against the index state, so that later slicing cannot fail.
    pub(crate) fn validate(&self, len: usize, dim: usize) -> Result<()> {
        self.ids.validate(len)?;
        if self.codes.len() != len * dim || self.quantizer.dim() != dim {
            return Err(Error::Corrupted(
                "segment codes do not match the index state".into(),
            ));
        }
        Ok(())
    }

    /// Raw id bytes of `slot` (after [`SegmentCodes::validate`]).
    pub(crate) fn id_bytes(&self, slot: usize) -> &[u8] {
        self.ids.id_bytes(slot)
    }

    /// The id of `slot` (after [`SegmentCodes::validate`]).
    pub(crate) fn id(&self, slot: usize) -> Result<String> {
        self.ids.id(slot)
    }
}

/// All of a segment's prepared vectors (f32 little-endian, row-major) with its ids: what
/// an exact scan of the segment needs, in one AES-GCM record (kind 4). Wiped on drop.
#[derive(Serialize, Deserialize)]
pub(crate) struct SegmentBlock {
    pub ids: SegmentIds,
    #[serde(with = "serde_bytes")]
    pub vectors: Vec<u8>,
}

impl Drop for SegmentBlock {
    fn drop(&mut self) {
        self.vectors.zeroize();
    }
}

/// Metadata of a segment's slots, JSON-encoded, for filtering.
#[derive(Serialize, Deserialize)]
pub(crate) struct SegmentMeta {
    pub metadata: Vec<Option<String>>,
}

/// Id, contents and metadata of one item.
#[derive(Serialize, Deserialize)]
pub(crate) struct DocRecord {
    pub id: String,
    pub contents: Option<Vec<u8>>,
    pub metadata: Option<String>,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("postcard serialization of engine records cannot fail")
}

/// Decodes a whole record; trailing bytes are refused.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    let (value, rest) = postcard::take_from_bytes(bytes)
        .map_err(|e| Error::Corrupted(format!("cannot decode {what}: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::Corrupted(format!(
            "cannot decode {what}: {} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
}

pub(crate) fn encode_vector(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn decode_vector(bytes: &[u8], dim: usize) -> Result<Vec<f32>> {
    if bytes.len() != dim * 4 {
        return Err(Error::Corrupted(format!(
            "vector record has {} bytes, expected {}",
            bytes.len(),
            dim * 4
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_refuses_trailing_bytes() {
        let mut bytes = encode(&UserRecord {
            scope: 1,
            wrapped_dek: vec![1, 2, 3],
        });
        let ok: UserRecord = decode(&bytes, "user record").unwrap();
        assert_eq!(ok.wrapped_dek, vec![1, 2, 3]);
        bytes.push(0);
        assert!(matches!(
            decode::<UserRecord>(&bytes, "user record"),
            Err(Error::Corrupted(_))
        ));
    }
}
