//! The embedded registry of a testnet or a single-operator deployment: who may call the
//! cluster, from a JSON file the operator edits. The file is re-read when it changes (checked
//! once a second), so revoking a gateway takes effect without a restart. The on-chain
//! registry implements the same [`Registry`] trait.
//!
//! ```json
//! { "gateways": { "31337": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8" } }
//! ```

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use alloy_primitives::Address;
use serde::{Deserialize, Serialize};

use crate::http::Registry;

/// The file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    /// The gateway authorized for `/v0/delegate`, per chain id (decimal string keys).
    #[serde(default)]
    pub gateways: BTreeMap<String, Address>,
}

impl RegistryFile {
    /// Parse and check.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let file: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        for chain in file.gateways.keys() {
            chain
                .parse::<u64>()
                .map_err(|_| format!("chain id {chain:?} is not a decimal u64"))?;
        }
        Ok(file)
    }

    /// Write atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, path)
    }
}

/// A [`Registry`] backed by a JSON file, reloaded when it changes.
#[derive(Debug, Clone)]
pub struct FileRegistry {
    path: PathBuf,
    current: Arc<RwLock<(Option<SystemTime>, RegistryFile)>>,
}

impl FileRegistry {
    /// Load `path` (it must exist and parse).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, String> {
        let path = path.into();
        let bytes =
            std::fs::read(&path).map_err(|e| format!("registry file {}: {e}", path.display()))?;
        let file = RegistryFile::parse(&bytes)
            .map_err(|e| format!("registry file {}: {e}", path.display()))?;
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        Ok(Self {
            path,
            current: Arc::new(RwLock::new((modified, file))),
        })
    }

    /// Re-read the file if it changed; a file that no longer parses is ignored (logged) and
    /// the last good contents stay in force.
    pub fn reload(&self) {
        let Ok(modified) = std::fs::metadata(&self.path).and_then(|m| m.modified()) else {
            return;
        };
        let known = self.read().0;
        if known == Some(modified) {
            return;
        }
        match std::fs::read(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|b| RegistryFile::parse(&b))
        {
            Ok(file) => {
                tracing::info!(path = %self.path.display(), "registry file reloaded");
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = (Some(modified), file);
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "registry file is invalid; keeping the previous contents");
                self.current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0 = Some(modified);
            }
        }
    }

    /// Reload every `period` until the returned task is dropped or aborted.
    pub fn watch(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                this.reload();
            }
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (Option<SystemTime>, RegistryFile)> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Registry for FileRegistry {
    fn gateway(&self, chain_id: u64) -> Option<Address> {
        self.read().1.gateways.get(&chain_id.to_string()).copied()
    }
}
