//! The replay journal (docs/ARCHITECTURE.md §4.6: "a `/v1` nonce is refused forever after its first
//! use (persisted until its expiry) at the manager and at every node").
//!
//! [`NonceJournal`] is the [`NonceStore`] of a [`NonceCache`]: each first use of a
//! `(signer, nonce)` is appended to a file before the request is accepted, as a 64-byte
//! record `signer (20) || nonce (32) || expires_at (u64 BE) || SHA-256(first 60 bytes)[..4]`.
//! At start the journal is read back, records that expired (or are damaged, or torn by a
//! crash) are dropped, and the live ones are written to a fresh file (the compaction). While
//! running, the file is rotated every [`ROTATE_EVERY`]: the current file becomes
//! `<path>.prev` (replacing the one before, whose records have all expired, since a request
//! is valid for at most [`MAX_TTL_SECS`] + [`CLOCK_SKEW_SECS`] seconds), so the journal holds
//! at most two rotation periods of records and needs no second copy of the set in memory.
//!
//! Each record is in the kernel before the request is accepted (a killed process forgets
//! nothing); it is made durable on disk by a background `fdatasync` within
//! [`SYNC_EVERY`].

use std::{
    fs::{self, File},
    io::{self, Read, Write as _},
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use alloy_primitives::{Address, B256};
use sha2::{Digest, Sha256};
use tkms_sdk::v1::{NonceCache, NonceStore, CLOCK_SKEW_SECS, MAX_TTL_SECS};

use crate::journal::{Journal, SyncPolicy};

/// A remembered use: `(signer, nonce, expires_at)`.
pub type Remembered = (Address, B256, u64);

/// Bytes per record.
pub const RECORD_LEN: usize = 64;
/// How often the journal file is rotated. Longer than any request's validity, so every
/// record in the file rotated out has expired.
pub const ROTATE_EVERY: Duration = Duration::from_secs(2 * (MAX_TTL_SECS + CLOCK_SKEW_SECS));
/// Longest time between a record's write and its `fdatasync`.
pub const SYNC_EVERY: Duration = Duration::from_millis(50);

fn record(signer: Address, nonce: B256, expires_at: u64) -> [u8; RECORD_LEN] {
    let mut out = [0u8; RECORD_LEN];
    out[..20].copy_from_slice(signer.as_slice());
    out[20..52].copy_from_slice(nonce.as_slice());
    out[52..60].copy_from_slice(&expires_at.to_be_bytes());
    let check = Sha256::digest(&out[..60]);
    out[60..].copy_from_slice(&check[..4]);
    out
}

fn parse(bytes: &[u8]) -> Option<Remembered> {
    let bytes: &[u8; RECORD_LEN] = bytes.try_into().ok()?;
    if Sha256::digest(&bytes[..60])[..4] != bytes[60..] {
        return None;
    }
    let mut expires = [0u8; 8];
    expires.copy_from_slice(&bytes[52..60]);
    Some((
        Address::from_slice(&bytes[..20]),
        B256::from_slice(&bytes[20..52]),
        u64::from_be_bytes(expires),
    ))
}

/// The records of `path` that have not expired at `now`; damaged records are skipped and
/// counted.
fn read_live(path: &Path, now: u64, damaged: &mut usize) -> io::Result<Vec<Remembered>> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let mut live = Vec::new();
    for chunk in bytes.chunks(RECORD_LEN) {
        match parse(chunk) {
            Some(r) if r.2 >= now => live.push(r),
            Some(_) => {}
            None => *damaged += 1,
        }
    }
    Ok(live)
}

struct Current {
    journal: Journal,
    since: Instant,
}

/// The file-backed [`NonceStore`].
pub struct NonceJournal {
    path: PathBuf,
    current: Mutex<Current>,
}

impl std::fmt::Debug for NonceJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceJournal")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn prev_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".prev");
    PathBuf::from(name)
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

impl NonceJournal {
    /// Open the journal at `path` (and `<path>.prev`), keep the records still live at `now`
    /// (Unix seconds) in a fresh file, and return a [`NonceCache`] that remembers them and
    /// records every new first use here.
    pub fn open_cache(path: &Path, now: u64) -> io::Result<NonceCache> {
        let (journal, live) = Self::open(path, now)?;
        Ok(NonceCache::with_store(Box::new(journal), live))
    }

    /// Open the journal and return it with the live records.
    pub fn open(path: &Path, now: u64) -> io::Result<(Self, Vec<Remembered>)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let prev = prev_path(path);
        let mut damaged = 0;
        let mut live = read_live(&prev, now, &mut damaged)?;
        live.extend(read_live(path, now, &mut damaged)?);
        if damaged > 0 {
            tracing::warn!(path = %path.display(), damaged, "skipped damaged replay-journal records (a torn write, or the file was changed)");
        }
        // Compaction: the live records, in a fresh file that replaces both generations.
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        {
            let mut f = File::create(&tmp)?;
            let mut bytes = Vec::with_capacity(live.len() * RECORD_LEN);
            for (signer, nonce, expires) in &live {
                bytes.extend_from_slice(&record(*signer, *nonce, *expires));
            }
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        match fs::remove_file(&prev) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        sync_dir(path);
        tracing::info!(path = %path.display(), live = live.len(), "replay journal open");
        let journal = Journal::open(path, None, SyncPolicy::Every(SYNC_EVERY))?;
        Ok((
            Self {
                path: path.to_path_buf(),
                current: Mutex::new(Current {
                    journal,
                    since: Instant::now(),
                }),
            },
            live,
        ))
    }

    /// Rotate if the current file is older than [`ROTATE_EVERY`].
    fn rotate(&self, current: &mut Current) -> io::Result<()> {
        if current.since.elapsed() < ROTATE_EVERY {
            return Ok(());
        }
        current.journal.sync_now()?;
        fs::rename(&self.path, prev_path(&self.path))?;
        sync_dir(&self.path);
        current.journal = Journal::open(&self.path, None, SyncPolicy::Every(SYNC_EVERY))?;
        current.since = Instant::now();
        Ok(())
    }

    /// Make every record durable now (at shutdown).
    pub fn sync_now(&self) -> io::Result<()> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .journal
            .sync_now()
    }
}

impl NonceStore for NonceJournal {
    fn record(&self, signer: Address, nonce: B256, expires_at: u64) -> Result<(), String> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = self.rotate(&mut current) {
            tracing::error!(path = %self.path.display(), error = %e, "replay journal rotation failed");
        }
        current
            .journal
            .append(&record(signer, nonce, expires_at))
            .map(|_| ())
            .map_err(|e| {
                tracing::error!(path = %self.path.display(), error = %e, "the replay journal cannot be written; refusing /v1 requests");
                format!("{}: {e}", self.path.display())
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tkms_sdk::v1::{Freshness, V1Error};

    #[test]
    fn a_used_nonce_is_refused_after_reopening_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nonces");
        let signer = Address::repeat_byte(7);
        let fresh = |n: u8, expires_at| Freshness {
            nonce: B256::repeat_byte(n),
            expires_at,
        };
        let now = 1_000_000;
        {
            let cache = NonceJournal::open_cache(&path, now).unwrap();
            cache.use_once(signer, &fresh(1, now + 100), now).unwrap();
            cache.use_once(signer, &fresh(2, now + 5), now).unwrap();
        }
        // A torn record at the end is skipped.
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[9u8; 10]).unwrap();
        drop(f);
        let cache = NonceJournal::open_cache(&path, now + 1).unwrap();
        assert!(matches!(
            cache.use_once(signer, &fresh(1, now + 100), now + 1),
            Err(V1Error::Replayed { .. })
        ));
        assert!(matches!(
            cache.use_once(signer, &fresh(2, now + 5), now + 1),
            Err(V1Error::Replayed { .. })
        ));
        cache
            .use_once(signer, &fresh(3, now + 50), now + 1)
            .unwrap();
        drop(cache);
        // Compaction at start drops what expired.
        let (_, live) = NonceJournal::open(&path, now + 10).unwrap();
        let nonces: Vec<u8> = live.iter().map(|r| r.1[0]).collect();
        assert_eq!(nonces, vec![1, 3]);
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 * RECORD_LEN as u64);
    }

    #[test]
    fn records_are_checked() {
        let r = record(Address::repeat_byte(1), B256::repeat_byte(2), 42);
        assert_eq!(
            parse(&r),
            Some((Address::repeat_byte(1), B256::repeat_byte(2), 42))
        );
        let mut bad = r;
        bad[30] ^= 1;
        assert_eq!(parse(&bad), None);
    }
}
