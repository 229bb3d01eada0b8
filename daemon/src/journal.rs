//! An append-only file with group commit: the file under the audit log and the replay
//! journal.
//!
//! [`Journal::append`] writes its bytes with one `write` on a file opened `O_APPEND`, under a
//! lock, before it returns: once it has returned, the bytes survive the process being killed
//! (they are in the kernel). A background thread makes them durable against a machine crash
//! with `fdatasync`: as soon as there is anything to sync ([`SyncPolicy::Immediately`]: one
//! `fdatasync` then covers every write that arrived while the previous one ran, so many
//! concurrent writers share one), or every interval ([`SyncPolicy::Every`]). A writer that
//! must not go on before its bytes are durable awaits [`Journal::durable`] with the
//! [`Ticket`] of its write.
//!
//! A write that fails (disk full, I/O error) is undone (the file is cut back to its length
//! before it), so a later write never follows half an entry.
//!
//! A failed `fdatasync` is remembered until the process ends ([`Journal::sync_failed`]): after
//! a writeback error Linux may drop the dirty pages and report a later sync as successful, so
//! no later success proves the earlier writes durable. Every [`Journal::durable`] fails from
//! then on, and a service that serves only while its journal is sound stops serving.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

use tokio::sync::watch;

/// When written bytes are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// As soon as there is anything unsynced (group commit).
    Immediately,
    /// At most this long after a write.
    Every(Duration),
}

/// How the sync thread makes the file durable (`File::sync_data`; a failing one in tests).
type Syncer = fn(&File) -> io::Result<()>;

/// The position of a write in a journal, to wait for its durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

struct Writer {
    file: File,
    len: u64,
    written: u64,
    stop: bool,
}

struct Shared {
    path: PathBuf,
    writer: Mutex<Writer>,
    wake: Condvar,
    /// `(writes made durable, an fdatasync has failed)`; the second is never cleared.
    synced: watch::Sender<(u64, bool)>,
}

/// Stops the sync thread (after a last sync) when the last handle is dropped.
struct Stopper {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.shared
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = thread.join();
        }
    }
}

/// An append-only file. Cheap to clone; the last clone dropped syncs and closes it.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
    _stopper: Arc<Stopper>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Open (or create) `path` for appending, first cutting it to `len` bytes if it is
    /// longer (a torn tail the caller found).
    pub fn open(path: &Path, keep_len: Option<u64>, policy: SyncPolicy) -> io::Result<Self> {
        Self::open_syncing(path, keep_len, policy, File::sync_data)
    }

    fn open_syncing(
        path: &Path,
        keep_len: Option<u64>,
        policy: SyncPolicy,
        sync: Syncer,
    ) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        let mut len = file.metadata()?.len();
        if let Some(keep) = keep_len {
            if keep < len {
                file.set_len(keep)?;
                file.sync_data()?;
                len = keep;
            }
        }
        let syncer = file.try_clone()?;
        let (synced, _) = watch::channel((0, false));
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            writer: Mutex::new(Writer {
                file,
                len,
                written: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            synced,
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("tkms-journal-sync".into())
                .spawn(move || sync_loop(&shared, &syncer, policy, sync))?
        };
        Ok(Self {
            _stopper: Arc::new(Stopper {
                shared: Arc::clone(&shared),
                thread: Mutex::new(Some(thread)),
            }),
            shared,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The file's length.
    pub fn len(&self) -> u64 {
        self.lock().len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.shared
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Append `bytes` in one write: in the kernel when this returns (or undone, on error).
    pub fn append(&self, bytes: &[u8]) -> io::Result<Ticket> {
        let mut writer = self.lock();
        append_locked(&mut writer, bytes)?;
        let ticket = Ticket(writer.written);
        drop(writer);
        self.shared.wake.notify_one();
        Ok(ticket)
    }

    /// Like [`Journal::append`], with the bytes made by `make` while the journal is locked
    /// (so a hash chain can be extended in the order of the file).
    pub fn append_with<T>(
        &self,
        make: impl FnOnce() -> (Vec<u8>, T),
        commit: impl FnOnce(T),
    ) -> io::Result<Ticket> {
        let mut writer = self.lock();
        let (bytes, state) = make();
        append_locked(&mut writer, &bytes)?;
        commit(state);
        let ticket = Ticket(writer.written);
        drop(writer);
        self.shared.wake.notify_one();
        Ok(ticket)
    }

    /// Wait until the write of `ticket` is durable (`fdatasync` returned); an error once any
    /// sync has failed.
    pub async fn durable(&self, ticket: Ticket) -> io::Result<()> {
        let mut rx = self.shared.synced.subscribe();
        let state = rx
            .wait_for(|(synced, failed)| *synced >= ticket.0 || *failed)
            .await
            .map_err(|_| io::Error::other("the journal is closed"))?;
        // Once a sync has failed nothing counts as durable (see the module docs).
        if state.1 {
            Err(io::Error::other(format!(
                "{}: fdatasync failed",
                self.shared.path.display()
            )))
        } else {
            Ok(())
        }
    }

    /// Make everything written so far durable, now, on this thread.
    pub fn sync_now(&self) -> io::Result<()> {
        let writer = self.lock();
        let written = writer.written;
        if let Err(e) = writer.file.sync_data() {
            self.shared.synced.send_modify(|s| s.1 = true);
            return Err(e);
        }
        drop(writer);
        self.shared.synced.send_modify(|(synced, _)| {
            *synced = (*synced).max(written);
        });
        Ok(())
    }

    /// Whether an `fdatasync` of this journal has failed since it was opened (then some
    /// acknowledged write may not be on disk, whatever later syncs report).
    pub fn sync_failed(&self) -> bool {
        self.shared.synced.borrow().1
    }
}

fn append_locked(writer: &mut Writer, bytes: &[u8]) -> io::Result<()> {
    if let Err(e) = writer.file.write_all(bytes) {
        // Undo a partial write, so the next entry does not follow half of this one.
        let _ = writer.file.set_len(writer.len);
        return Err(e);
    }
    writer.len += bytes.len() as u64;
    writer.written += 1;
    Ok(())
}

fn sync_loop(shared: &Shared, file: &File, policy: SyncPolicy, sync: Syncer) {
    let mut synced = 0u64;
    loop {
        let (target, stop) = {
            let mut writer = shared.writer.lock().unwrap_or_else(PoisonError::into_inner);
            match policy {
                SyncPolicy::Immediately => {
                    while writer.written == synced && !writer.stop {
                        writer = shared
                            .wake
                            .wait(writer)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                }
                SyncPolicy::Every(interval) => {
                    if !writer.stop {
                        writer = shared
                            .wake
                            .wait_timeout_while(writer, interval, |w| !w.stop)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                }
            }
            (writer.written, writer.stop)
        };
        if target > synced {
            match sync(file) {
                Ok(()) => {
                    synced = target;
                    shared.synced.send_modify(|s| s.0 = synced);
                }
                Err(e) => {
                    tracing::error!(path = %shared.path.display(), error = %e, "fdatasync failed");
                    shared.synced.send_modify(|s| s.1 = true);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_failed_sync_is_remembered_and_fails_every_later_wait() {
        static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        // The first sync fails, every later one succeeds (as Linux may report after it
        // dropped the pages of a failed writeback).
        fn flaky(file: &File) -> io::Result<()> {
            if CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                Err(io::Error::other("injected EIO"))
            } else {
                file.sync_data()
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let policy = SyncPolicy::Every(Duration::from_millis(5));
        let journal = Journal::open_syncing(&path, None, policy, flaky).unwrap();
        assert!(!journal.sync_failed());
        let first = journal.append(b"a").unwrap();
        assert!(journal.durable(first).await.is_err());
        assert!(journal.sync_failed());
        // Later syncs succeed; the failure stays, and no later write counts as durable.
        let second = journal.append(b"b").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(CALLS.load(std::sync::atomic::Ordering::SeqCst) >= 2);
        assert!(journal.sync_failed());
        assert!(journal.durable(second).await.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"ab");
    }

    #[tokio::test]
    async fn appends_in_order_and_waits_for_durability() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let journal = Journal::open(&path, None, SyncPolicy::Immediately).unwrap();
        let mut last = None;
        for k in 0..100u8 {
            last = Some(journal.append(&[k; 3]).unwrap());
        }
        journal.durable(last.unwrap()).await.unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 300);
        assert!((0..100u8).zip(bytes.chunks(3)).all(|(k, c)| c == [k; 3]));
        drop(journal);
        // Reopened and cut back to a whole number of entries.
        let journal = Journal::open(
            &path,
            Some(150),
            SyncPolicy::Every(Duration::from_millis(5)),
        )
        .unwrap();
        assert_eq!(journal.len(), 150);
        let t = journal.append(b"xyz").unwrap();
        journal.durable(t).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 153);
    }
}
