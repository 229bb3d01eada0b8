//! A local chain for tests and `tkms testnet up --chain`: the anvil binary from the npm
//! package `@foundry-rs/anvil-linux-amd64`, installed into `contracts/node_modules` by
//! `contracts/install-anvil.sh` (pinned by `contracts/package-lock.json`).

use std::path::{Path, PathBuf};

use alloy::{
    node_bindings::{Anvil, AnvilInstance},
    providers::{Provider, ProviderBuilder},
};

use crate::error::{RegistryError, Result};

/// Environment variable naming the anvil binary to use instead of the repository's.
pub const ANVIL_ENV: &str = "TKMS_ANVIL";

/// Where `contracts/install-anvil.sh` puts anvil, relative to the repository root.
pub const REPO_ANVIL_PATH: &str = "contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil";

/// The anvil binary: `$TKMS_ANVIL` if set (it must exist), else the repository's npm install
/// (`contracts/node_modules/...`, found from this crate's source directory, then from the
/// current directory). Fails with [`RegistryError::AnvilNotFound`], whose one-line message
/// says how to install it.
pub fn anvil_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(ANVIL_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(RegistryError::AnvilNotFound {
                tkms_anvil: Some(path),
            })
        };
    }
    let source_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let roots = [Some(source_root), std::env::current_dir().ok()];
    for root in roots.into_iter().flatten() {
        let candidate = root.join(REPO_ANVIL_PATH);
        if candidate.is_file() {
            return Ok(candidate.canonicalize().unwrap_or(candidate));
        }
    }
    Err(RegistryError::AnvilNotFound { tkms_anvil: None })
}

/// [`spawn`] for tests: without anvil the test fails with the error's one line, which names
/// the command that installs it, rather than `unwrap`'s debug dump.
///
/// # Panics
/// If anvil is missing or does not start.
#[must_use]
#[track_caller]
pub fn spawn_or_fail() -> AnvilInstance {
    spawn().unwrap_or_else(|e| panic!("{e}"))
}

/// Start anvil (see [`anvil_path`]) on a free loopback port, automining every transaction.
/// It stops when the returned instance is dropped.
pub fn spawn() -> Result<AnvilInstance> {
    spawn_with(|anvil| anvil)
}

/// Start anvil with extra settings, e.g. `spawn_with(|a| a.block_time(1))` for one block per
/// second instead of one block per transaction.
pub fn spawn_with(configure: impl FnOnce(Anvil) -> Anvil) -> Result<AnvilInstance> {
    let path = anvil_path()?;
    configure(Anvil::at(&path))
        .try_spawn()
        .map_err(|e| RegistryError::AnvilStart {
            path,
            reason: e.to_string(),
        })
}

/// Switch a running anvil from one block per transaction (its default) to one block every
/// `seconds`, as on a real chain (`evm_setIntervalMining`). Setting up with automining and
/// then switching keeps a test's setup fast and its timing realistic.
pub async fn set_block_time(anvil: &AnvilInstance, seconds: u64) -> Result<()> {
    let provider = ProviderBuilder::new().connect_http(anvil.endpoint_url());
    provider
        .raw_request::<_, ()>("evm_setIntervalMining".into(), (seconds,))
        .await?;
    Ok(())
}
