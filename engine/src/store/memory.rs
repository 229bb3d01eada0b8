//! In-memory [`Store`]: a `BTreeMap` behind a read-write lock. Batches are applied under the
//! write lock, so they are atomic with respect to every reader.

use std::collections::BTreeMap;
use std::sync::RwLock;

use super::{preconditions_hold, Applied, Store, WriteBatch, WriteOp};
use crate::error::{Error, Result};

/// A [`Store`] kept in process memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn poisoned() -> Error {
    Error::Storage("memory store lock poisoned by a panicking thread".into())
}

impl Store for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.read().map_err(|_| poisoned())?.get(key).cloned())
    }

    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let map = self.map.read().map_err(|_| poisoned())?;
        Ok(keys.iter().map(|k| map.get(*k).cloned()).collect())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let map = self.map.read().map_err(|_| poisoned())?;
        Ok(map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn apply(&self, batch: WriteBatch) -> Result<Applied> {
        let mut map = self.map.write().map_err(|_| poisoned())?;
        if !preconditions_hold(batch.preconditions(), |k| Ok(map.get(k).cloned()))? {
            return Ok(Applied::PreconditionFailed);
        }
        for op in batch.ops {
            match op {
                WriteOp::Put(k, v) => {
                    map.insert(k, v);
                }
                WriteOp::Delete(k) => {
                    map.remove(&k);
                }
                WriteOp::DeletePrefix(p) => {
                    let doomed: Vec<Vec<u8>> = map
                        .range(p.clone()..)
                        .take_while(|(k, _)| k.starts_with(&p))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        map.remove(&k);
                    }
                }
            }
        }
        Ok(Applied::Committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{value_digest, Precondition};

    #[test]
    fn batch_is_all_or_nothing() {
        let s = MemoryStore::new();
        let mut b = WriteBatch::new();
        b.put(b"a/1".to_vec(), b"x".to_vec());
        b.put(b"a/2".to_vec(), b"y".to_vec());
        b.put(b"b/1".to_vec(), b"z".to_vec());
        assert_eq!(s.apply(b).unwrap(), Applied::Committed);
        assert_eq!(s.scan_prefix(b"a/").unwrap().len(), 2);

        let mut b = WriteBatch::new();
        b.delete_prefix(b"a/".to_vec());
        b.require(Precondition::Digest(
            b"b/1".to_vec(),
            value_digest(b"wrong"),
        ));
        assert_eq!(s.apply(b).unwrap(), Applied::PreconditionFailed);
        assert_eq!(s.scan_prefix(b"a/").unwrap().len(), 2);

        let mut b = WriteBatch::new();
        b.delete_prefix(b"a/".to_vec());
        b.require(Precondition::Digest(b"b/1".to_vec(), value_digest(b"z")));
        b.require(Precondition::Absent(b"c".to_vec()));
        assert_eq!(s.apply(b).unwrap(), Applied::Committed);
        assert!(s.scan_prefix(b"a/").unwrap().is_empty());
        assert_eq!(s.get(b"b/1").unwrap().unwrap(), b"z");
    }
}
