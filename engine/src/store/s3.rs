//! S3 [`Store`] over `object_store`'s `AmazonS3` client (docs/ARCHITECTURE.md §4.4, §9).
//!
//! Every key becomes one object `<prefix>/<hex(key)>` (hex keeps byte order and prefixes, so
//! a key prefix is an object-name prefix and S3 lists in key order).
//!
//! S3 has no multi-object transactions, so [`Store::apply`] is **not** atomic across keys. It
//! applies a batch in a crash-safe order, with the write of the guarded key (the key named by
//! a precondition, i.e. the index state or the catalog entry) as the commit point:
//!
//! 1. preconditions are read: `Absent(k)` needs `k` missing; `Digest(k, d)` reads `k`, compares
//!    the SHA-256, and remembers the object's ETag;
//! 2. puts of unguarded keys (new records under fresh random tokens) are written;
//! 3. puts of guarded keys are written with a *conditional* put — `If-None-Match: *`
//!    (`PutMode::Create`) for `Absent`, `If-Match: <etag>` (`PutMode::Update`) for `Digest` —
//!    so a concurrent writer that changed the key since step 1 makes this put fail; the
//!    records of step 2 are then deleted again and the batch reports
//!    [`Applied::PreconditionFailed`];
//! 4. deletes (guarded keys first, then the others, then prefix deletes) run last.
//!
//! A crash between 2 and 3 leaves unreferenced ciphertexts (never a half-updated index); a
//! crash during 4 leaves garbage. A precondition on a key the batch does not *put* (used by
//! `mint_user_key` and `delete_index`) is only a read-compare in step 1, racing with writers
//! between the read and the writes. S3 has no conditional delete.
//!
//! The `Store` trait is synchronous; the async calls run on a private multi-thread tokio
//! runtime owned by the store, and the calling thread waits on a channel, so a store may be
//! used (and dropped) from inside another tokio runtime without panicking (it does block that
//! thread).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::{value_digest, Applied, Precondition, Store, WriteBatch, WriteOp};
use crate::error::{Error, Result};

/// Concurrent requests per batch of reads or writes.
const PARALLELISM: usize = 16;

/// Connection settings of an S3 (or S3-compatible) bucket.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Bucket name (must exist).
    pub bucket: String,
    /// Object-name prefix under which this store keeps its objects ("" for the bucket root).
    pub prefix: String,
    /// Custom endpoint (e.g. `http://127.0.0.1:9000` for an S3-compatible server); `None` for
    /// AWS.
    pub endpoint: Option<String>,
    /// Region, e.g. `us-east-1`.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Allow plain `http://` endpoints (tests and local servers only).
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("s3: {e}"))
}

/// Hex encoding of a key (order- and prefix-preserving).
fn hex(key: &[u8]) -> String {
    use std::fmt::Write;
    key.iter()
        .fold(String::with_capacity(key.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A [`Store`] in an S3 bucket (see the module documentation for what is atomic).
pub struct S3Store {
    s3: Arc<AmazonS3>,
    root: Path,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("store", &self.s3.to_string())
            .field("root", &self.root.as_ref())
            .finish_non_exhaustive()
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // Dropping a runtime inside another runtime's async context panics; this does not.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// What a precondition read found, for the conditional put.
enum Guard {
    Absent,
    Version(UpdateVersion),
}

impl S3Store {
    /// Connects to the bucket described by `config` (no request is made until first use).
    pub fn open(config: &S3Config) -> Result<Self> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(&config.secret_access_key)
            .with_allow_http(config.allow_http);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let s3 = Arc::new(builder.build().map_err(storage)?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tkms-engine-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::Storage(format!("cannot start the S3 runtime: {e}")))?;
        let prefix = config.prefix.trim_matches('/');
        let root = Path::parse(prefix)
            .map_err(|e| Error::Storage(format!("invalid S3 prefix `{prefix}`: {e}")))?;
        Ok(Self {
            s3,
            root,
            runtime: Some(runtime),
        })
    }

    fn object(&self, key: &[u8]) -> Path {
        self.root.clone().join(hex(key))
    }

    /// Runs `fut` on the private runtime and waits for it from this (non-async) thread.
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let rt = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::Storage("s3: runtime is shut down".into()))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| Error::Storage("s3: request task failed".into()))?
    }
}

async fn get_object(s3: &AmazonS3, path: &Path) -> Result<Option<(Vec<u8>, UpdateVersion)>> {
    match s3.get(path).await {
        Ok(r) => {
            let version = UpdateVersion {
                e_tag: r.meta.e_tag.clone(),
                version: r.meta.version.clone(),
            };
            Ok(Some((r.bytes().await.map_err(storage)?.to_vec(), version)))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(storage(e)),
    }
}

async fn get_value(s3: Arc<AmazonS3>, path: Path) -> Result<Option<Vec<u8>>> {
    Ok(get_object(&s3, &path).await?.map(|(v, _)| v))
}

async fn delete_all(s3: &Arc<AmazonS3>, paths: Vec<Path>) -> Result<()> {
    stream::iter(paths)
        .map(|p| {
            let s3 = Arc::clone(s3);
            async move {
                match s3.delete(&p).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(storage(e)),
                }
            }
        })
        .buffer_unordered(PARALLELISM)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Every object whose key starts with `prefix` (hex), in key order, via `start-after`.
async fn list_prefix(s3: &AmazonS3, root: &Path, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Path)>> {
    let hp = hex(prefix);
    let root_opt = (!root.as_ref().is_empty()).then_some(root);
    let mut out = Vec::new();
    // `start-after` is exclusive, so the key equal to the prefix is looked up separately.
    if !hp.is_empty() {
        let exact = root.clone().join(hp.as_str());
        match s3.head(&exact).await {
            Ok(_) => out.push((prefix.to_vec(), exact)),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(storage(e)),
        }
    }
    let mut listing = if hp.is_empty() {
        s3.list(root_opt)
    } else {
        s3.list_with_offset(root_opt, &root.clone().join(hp.as_str()))
    };
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(storage)?;
        let Some(name) = meta.location.filename() else {
            continue;
        };
        if name.starts_with(&hp) {
            if let Some(key) = unhex(name) {
                out.push((key, meta.location.clone()));
            }
        } else if name > hp.as_str() {
            // S3 lists in key order: nothing further can match.
            break;
        }
    }
    out.sort();
    Ok(out)
}

impl Store for S3Store {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.run(get_value(Arc::clone(&self.s3), self.object(key)))
    }

    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let paths: Vec<Path> = keys.iter().map(|k| self.object(k)).collect();
        let s3 = Arc::clone(&self.s3);
        self.run(async move {
            stream::iter(paths)
                .map(|p| get_value(Arc::clone(&s3), p))
                .buffered(PARALLELISM)
                .try_collect()
                .await
        })
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let s3 = Arc::clone(&self.s3);
        let root = self.root.clone();
        let prefix = prefix.to_vec();
        self.run(async move {
            let found = list_prefix(&s3, &root, &prefix).await?;
            let paths: Vec<Path> = found.iter().map(|(_, p)| p.clone()).collect();
            let values: Vec<Option<Vec<u8>>> = stream::iter(paths)
                .map(|p| get_value(Arc::clone(&s3), p))
                .buffered(PARALLELISM)
                .try_collect()
                .await?;
            // An object deleted between list and get is skipped.
            Ok(found
                .into_iter()
                .zip(values)
                .filter_map(|((k, _), v)| v.map(|v| (k, v)))
                .collect())
        })
    }

    fn apply(&self, batch: WriteBatch) -> Result<Applied> {
        let WriteBatch { ops, preconditions } = batch;
        // Net effect of the point operations, in batch order; a prefix delete drops earlier
        // point operations under it and spares later puts.
        let mut net: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        let mut prefixes: Vec<Vec<u8>> = Vec::new();
        for op in ops {
            match op {
                WriteOp::Put(k, v) => {
                    net.insert(k, Some(v));
                }
                WriteOp::Delete(k) => {
                    net.insert(k, None);
                }
                WriteOp::DeletePrefix(p) => {
                    net.retain(|k, _| !k.starts_with(&p));
                    prefixes.push(p);
                }
            }
        }
        let s3 = Arc::clone(&self.s3);
        let root = self.root.clone();
        let object_root = self.root.clone();
        let object = move |k: &[u8]| object_root.clone().join(hex(k));
        self.run(async move {
            // 1. Preconditions (read-compare; remember the version for the conditional put).
            let mut guards: BTreeMap<Vec<u8>, Guard> = BTreeMap::new();
            for p in &preconditions {
                match p {
                    Precondition::Absent(k) => match s3.head(&object(k)).await {
                        Ok(_) => return Ok(Applied::PreconditionFailed),
                        Err(object_store::Error::NotFound { .. }) => {
                            guards.insert(k.clone(), Guard::Absent);
                        }
                        Err(e) => return Err(storage(e)),
                    },
                    Precondition::Digest(k, d) => match get_object(&s3, &object(k)).await? {
                        Some((v, version)) if value_digest(&v) == *d => {
                            guards.insert(k.clone(), Guard::Version(version));
                        }
                        _ => return Ok(Applied::PreconditionFailed),
                    },
                }
            }
            let guarded: BTreeSet<&Vec<u8>> = guards.keys().collect();
            let (mut commit_puts, mut fresh_puts, mut commit_deletes, mut deletes) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (k, v) in &net {
                match (v, guarded.contains(k)) {
                    (Some(v), true) => commit_puts.push((k.clone(), v.clone())),
                    (Some(v), false) => fresh_puts.push((object(k), v.clone())),
                    (None, true) => commit_deletes.push(object(k)),
                    (None, false) => deletes.push(object(k)),
                }
            }

            // 2. New records.
            let written: Vec<Path> = fresh_puts.iter().map(|(p, _)| p.clone()).collect();
            stream::iter(fresh_puts)
                .map(|(p, v)| {
                    let s3 = Arc::clone(&s3);
                    async move { s3.put(&p, PutPayload::from(v)).await.map_err(storage) }
                })
                .buffer_unordered(PARALLELISM)
                .try_collect::<Vec<_>>()
                .await?;

            // 3. Commit point: conditional puts of the guarded keys.
            for (k, v) in commit_puts {
                let mode = match guards.remove(&k) {
                    Some(Guard::Version(version)) => PutMode::Update(version),
                    _ => PutMode::Create,
                };
                let opts = PutOptions {
                    mode,
                    ..PutOptions::default()
                };
                match s3.put_opts(&object(&k), PutPayload::from(v), opts).await {
                    Ok(_) => {}
                    Err(
                        object_store::Error::Precondition { .. }
                        | object_store::Error::AlreadyExists { .. },
                    ) => {
                        // Lost the race: remove the records this batch added.
                        delete_all(&s3, written).await?;
                        return Ok(Applied::PreconditionFailed);
                    }
                    Err(e) => return Err(storage(e)),
                }
            }

            // 4. Deletes.
            delete_all(&s3, commit_deletes).await?;
            delete_all(&s3, deletes).await?;
            for p in prefixes {
                let doomed: Vec<Path> = list_prefix(&s3, &root, &p)
                    .await?
                    .into_iter()
                    .filter(|(k, _)| !net.contains_key(k))
                    .map(|(_, path)| path)
                    .collect();
                delete_all(&s3, doomed).await?;
            }
            Ok(Applied::Committed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_keeps_order() {
        let keys: [&[u8]; 4] = [b"", b"\x00", b"c/x", b"\xff\x01"];
        for k in keys {
            assert_eq!(unhex(&hex(k)).unwrap(), k);
        }
        assert!(hex(b"c/").as_str() < hex(b"c/a").as_str());
        assert!(hex(b"c/\xff").as_str() < hex(b"x/").as_str());
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
    }

    #[test]
    fn debug_redacts_the_secret() {
        let c = S3Config {
            bucket: "b".into(),
            prefix: String::new(),
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: "AKID".into(),
            secret_access_key: "very-secret".into(),
            allow_http: false,
        };
        assert!(!format!("{c:?}").contains("very-secret"));
    }
}
