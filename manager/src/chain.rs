//! The on-chain [`Registry`]: who may call the cluster, read from the `TkmsRegistry` contract
//! (DESIGN.md §4.3) through [`tkms_registry::RegistryCache`].
//!
//! The cache holds the registry in memory and follows the contract's events, so a request is
//! authorized without any chain access; a gateway the owner revokes is refused as soon as the
//! cache has seen the block that revoked it (one poll interval, below the block time).
//!
//! Fail closed: if the chain has not been reached for longer than the configured staleness
//! bound, every gateway check fails (a revocation the manager cannot see must not leave a
//! gateway authorized indefinitely), and recovers by itself when the endpoint answers again.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use alloy_primitives::Address;
use tkms_registry::{CacheConfig, RegistryCache, RegistryClient, RegistryError, RegistryState};

use crate::http::Registry;

/// How long the manager keeps trusting a cache that cannot reach the chain.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(60);

/// A [`Registry`] backed by the on-chain registry of one chain.
///
/// `/v0/delegate` requests for that chain (its `chain_id`) are checked against the contract's
/// gateway role; requests for any other chain are for a chain this manager does not serve.
#[derive(Debug)]
pub struct ChainRegistry {
    cache: RegistryCache,
    max_staleness: Duration,
    stale_logged: AtomicBool,
}

impl ChainRegistry {
    /// Follow the registry at `address` through `rpc_url` (one snapshot now, then events).
    pub async fn connect(
        rpc_url: &str,
        address: Address,
        config: CacheConfig,
        max_staleness: Duration,
    ) -> Result<Self, RegistryError> {
        let client = RegistryClient::connect(rpc_url, address, None)?;
        let cache = RegistryCache::start(client, config).await?;
        Ok(Self::new(cache, max_staleness))
    }

    /// Use a running cache.
    pub fn new(cache: RegistryCache, max_staleness: Duration) -> Self {
        Self {
            cache,
            max_staleness,
            stale_logged: AtomicBool::new(false),
        }
    }

    /// The cache behind this registry.
    pub fn cache(&self) -> &RegistryCache {
        &self.cache
    }

    /// Whether `account` holds the runner role on `chain_id`.
    pub fn is_runner(&self, chain_id: u64, account: Address) -> bool {
        self.current(chain_id).is_some_and(|s| s.is_runner(account))
    }

    /// The registry's state if it serves `chain_id` and is fresh enough to act on.
    fn current(&self, chain_id: u64) -> Option<Arc<RegistryState>> {
        if chain_id != self.cache.chain_id() {
            return None;
        }
        let age = self.cache.age();
        if age > self.max_staleness {
            if !self.stale_logged.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    registry = %self.cache.address(),
                    age_secs = age.as_secs(),
                    "the on-chain registry has not been reached for too long: refusing every gateway until it is"
                );
            }
            return None;
        }
        self.stale_logged.store(false, Ordering::Relaxed);
        Some(self.cache.state())
    }
}

impl Registry for ChainRegistry {
    /// The primary gateway (`gateway()` on the contract), as Nox services read it.
    fn gateway(&self, chain_id: u64) -> Option<Address> {
        self.current(chain_id)?.primary_gateway
    }

    fn is_gateway(&self, chain_id: u64, account: Address) -> bool {
        self.current(chain_id)
            .is_some_and(|s| s.is_gateway(account))
    }
}
