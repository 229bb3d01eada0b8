//! A private tokio runtime for the KMS providers, whose clients are async while the engine's
//! API is synchronous: requests run on its one worker thread and the caller waits on a
//! channel, so a provider can be used (and dropped) from inside another tokio runtime.

use std::future::Future;

use crate::error::{Error, Result};

/// A tokio runtime that may be dropped from inside another runtime's async context (a plain
/// `Runtime` panics there).
pub(super) struct PrivateRuntime(Option<tokio::runtime::Runtime>);

impl Drop for PrivateRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl PrivateRuntime {
    /// A one-worker runtime whose thread is called `thread_name`.
    pub(super) fn new(thread_name: &str) -> Result<Self> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(thread_name)
            .enable_all()
            .build()
            .map(|rt| Self(Some(rt)))
            .map_err(|e| Error::Kms(format!("cannot start the KMS client runtime: {e}")))
    }

    /// Runs `fut` on the runtime and waits for it on this thread.
    pub(super) fn run<F>(&self, fut: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let rt = self
            .0
            .as_ref()
            .ok_or_else(|| Error::Kms("the KMS client runtime is shut down".into()))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| Error::Kms("the KMS request was cancelled".into()))
    }
}
