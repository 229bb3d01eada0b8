//! Disk [`Store`]: one redb file (single-file, copy-on-write B-tree, ACID;
//! docs/ARCHITECTURE.md §9). Every batch is one redb write transaction committed with immediate
//! durability, so a crash leaves either all of a batch or none of it.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{preconditions_hold, Applied, Store, WriteBatch, WriteOp, DISK_FILE_NAME};
use crate::error::{Error, Result};

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

/// A [`Store`] in one redb file.
pub struct DiskStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

impl DiskStore {
    /// Opens (or creates) `dir/tkms-engine.redb`, creating `dir` if needed.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(DISK_FILE_NAME);
        let db = Database::create(&path)
            .map_err(|e| Error::Storage(format!("cannot open {}: {e}", path.display())))?;
        // Make sure the table exists so readers never race its creation.
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(KV).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(Self { db, path })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Store for DiskStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(KV).map_err(storage)?;
        Ok(table.get(key).map_err(storage)?.map(|v| v.value().to_vec()))
    }

    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(KV).map_err(storage)?;
        keys.iter()
            .map(|k| Ok(table.get(*k).map_err(storage)?.map(|v| v.value().to_vec())))
            .collect()
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(KV).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn apply(&self, batch: WriteBatch) -> Result<Applied> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(KV).map_err(storage)?;
            let ok = preconditions_hold(batch.preconditions(), |k| {
                Ok(table.get(k).map_err(storage)?.map(|v| v.value().to_vec()))
            })?;
            if !ok {
                drop(table);
                txn.abort().map_err(storage)?;
                return Ok(Applied::PreconditionFailed);
            }
            for op in &batch.ops {
                match op {
                    WriteOp::Put(k, v) => {
                        table.insert(k.as_slice(), v.as_slice()).map_err(storage)?;
                    }
                    WriteOp::Delete(k) => {
                        table.remove(k.as_slice()).map_err(storage)?;
                    }
                    WriteOp::DeletePrefix(p) => {
                        let mut doomed = Vec::new();
                        for entry in table.range(p.as_slice()..).map_err(storage)? {
                            let (k, _) = entry.map_err(storage)?;
                            if !k.value().starts_with(p) {
                                break;
                            }
                            doomed.push(k.value().to_vec());
                        }
                        for k in doomed {
                            table.remove(k.as_slice()).map_err(storage)?;
                        }
                    }
                }
            }
        }
        txn.commit().map_err(storage)?;
        Ok(Applied::Committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{value_digest, Precondition};

    #[test]
    fn batches_are_atomic_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = DiskStore::open(dir.path()).unwrap();
            let mut b = WriteBatch::new();
            b.put(b"a/1".to_vec(), b"x".to_vec());
            b.put(b"a/2".to_vec(), b"y".to_vec());
            b.put(b"b".to_vec(), b"z".to_vec());
            assert_eq!(s.apply(b).unwrap(), Applied::Committed);

            let mut b = WriteBatch::new();
            b.delete_prefix(b"a/".to_vec());
            b.require(Precondition::Absent(b"b".to_vec()));
            assert_eq!(s.apply(b).unwrap(), Applied::PreconditionFailed);
            assert_eq!(s.scan_prefix(b"a/").unwrap().len(), 2);

            let mut b = WriteBatch::new();
            b.delete_prefix(b"a/".to_vec());
            b.put(b"a/3".to_vec(), b"w".to_vec());
            b.require(Precondition::Digest(b"b".to_vec(), value_digest(b"z")));
            assert_eq!(s.apply(b).unwrap(), Applied::Committed);
        }
        let s = DiskStore::open(dir.path()).unwrap();
        assert_eq!(s.path(), dir.path().join(DISK_FILE_NAME));
        assert_eq!(
            s.scan_prefix(b"").unwrap(),
            vec![
                (b"a/3".to_vec(), b"w".to_vec()),
                (b"b".to_vec(), b"z".to_vec())
            ]
        );
        assert_eq!(
            s.get_many(&[b"b", b"nope"]).unwrap(),
            vec![Some(b"z".to_vec()), None]
        );
    }
}
