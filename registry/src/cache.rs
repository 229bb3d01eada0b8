//! [`RegistryCache`]: the registry in memory, kept current from the contract's events.
//!
//! Start: one consistent snapshot ([`RegistryClient::state_at`], every call pinned to one
//! block). Then every poll interval: the new head, the registry's logs of the blocks since
//! (`eth_getLogs`, at most [`CacheConfig::max_log_range`] blocks per round), folded in with
//! [`RegistryState::apply`]. A reorg (the block the state is as of no longer has the same
//! hash) triggers a fresh snapshot. Readers never touch the chain: [`RegistryCache::state`]
//! is a clone of an `Arc`.
//!
//! With a poll interval shorter than the chain's block time, a change (a revoked gateway) is
//! visible before the next block is mined. If the endpoint stops answering, the cache keeps
//! its last state and [`RegistryCache::age`] grows: callers that must fail closed check it.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use alloy::{
    providers::Provider,
    rpc::types::{Filter, Log},
    sol_types::SolEventInterface,
};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    bindings::TkmsRegistry::TkmsRegistryEvents,
    client::RegistryClient,
    error::{RegistryError, Result},
    state::RegistryState,
};

/// How the cache follows the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Time between two polls. Keep it below the chain's block time (anvil `--block-time 1`:
    /// 250 ms; Arbitrum, 250 ms blocks: 100 ms; Ethereum, 12 s blocks: 2 s).
    pub poll_interval: Duration,
    /// Most blocks asked for in one `eth_getLogs` (public endpoints cap the range).
    pub max_log_range: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(250),
            max_log_range: 2_000,
        }
    }
}

#[derive(Debug, Clone)]
struct Synced {
    state: Arc<RegistryState>,
    /// When the head was last seen (a successful poll).
    at: Instant,
}

/// The registry's state, in memory, following the chain. Dropping the cache stops the
/// background poller.
#[derive(Debug)]
pub struct RegistryCache {
    rx: watch::Receiver<Synced>,
    chain_id: u64,
    address: alloy::primitives::Address,
    task: JoinHandle<()>,
}

impl Drop for RegistryCache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RegistryCache {
    /// Take a snapshot at the latest block and follow the chain from there, on the current
    /// tokio runtime. Fails if the endpoint does not answer or no registry is deployed at the
    /// client's address.
    pub async fn start(client: RegistryClient, config: CacheConfig) -> Result<Self> {
        if config.poll_interval.is_zero() || config.max_log_range == 0 {
            return Err(RegistryError::InvalidArgument(
                "the cache's poll interval and log range must be non-zero".into(),
            ));
        }
        client.check_deployed().await?;
        let chain_id = client.chain_id().await?;
        let state = client.state().await?;
        tracing::info!(
            registry = %client.address(),
            chain_id,
            block = state.block,
            gateways = state.gateways.len(),
            nodes = state.nodes.len(),
            "registry cache started"
        );
        let (tx, rx) = watch::channel(Synced {
            state: Arc::new(state),
            at: Instant::now(),
        });
        let address = client.address();
        let task = tokio::spawn(follow(client, config, tx));
        Ok(Self {
            rx,
            chain_id,
            address,
            task,
        })
    }

    /// The registry as of the last poll. Cheap: no chain access.
    pub fn state(&self) -> Arc<RegistryState> {
        self.rx.borrow().state.clone()
    }

    /// Time since the chain was last reached successfully.
    pub fn age(&self) -> Duration {
        self.rx.borrow().at.elapsed()
    }

    /// The chain id of the registry's chain.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The registry's address.
    pub fn address(&self) -> alloy::primitives::Address {
        self.address
    }

    /// Wait until the cache is as of `block` or later; `false` on timeout.
    pub async fn wait_for_block(&self, block: u64, timeout: Duration) -> bool {
        let mut rx = self.rx.clone();
        tokio::time::timeout(timeout, rx.wait_for(|s| s.state.block >= block))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The poller: runs until the cache is dropped.
async fn follow(client: RegistryClient, config: CacheConfig, tx: watch::Sender<Synced>) {
    let mut ticker = tokio::time::interval(config.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        let current = tx.borrow().state.clone();
        match poll(&client, &config, &current).await {
            Ok(next) => {
                if failing {
                    tracing::info!(registry = %client.address(), "registry cache: chain reachable again");
                    failing = false;
                }
                tx.send_replace(Synced {
                    state: next.map_or(current, Arc::new),
                    at: Instant::now(),
                });
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(registry = %client.address(), error = %e, "registry cache: poll failed; keeping the last state");
                    failing = true;
                }
            }
        }
    }
}

/// One round: `Ok(None)` if nothing changed, `Ok(Some(state))` for the new state.
async fn poll(
    client: &RegistryClient,
    config: &CacheConfig,
    current: &RegistryState,
) -> Result<Option<RegistryState>> {
    let provider = client.provider();
    let head = provider.get_block_number().await?;
    // A reorg replaced the block we are as of (or the chain is shorter): start over.
    let ours = provider.get_block_by_number(current.block.into()).await?;
    if head < current.block || ours.is_none_or(|b| b.header.hash != current.block_hash) {
        tracing::warn!(
            registry = %client.address(),
            block = current.block,
            head,
            "registry cache: reorg detected; taking a fresh snapshot"
        );
        return client.state_at(head).await.map(Some);
    }
    if head == current.block {
        return Ok(None);
    }
    let to = head.min(current.block + config.max_log_range);
    let to_hash = block_hash(client, to).await?;
    let filter = Filter::new()
        .address(client.address())
        .from_block(current.block + 1)
        .to_block(to);
    let logs = provider.get_logs(&filter).await?;
    // The logs must come from the chain whose block `to` we saw: if it moved in between, the
    // next round starts over from a state we know is consistent.
    if logs
        .iter()
        .any(|l| l.block_number == Some(to) && l.block_hash != Some(to_hash))
        || block_hash(client, to).await? != to_hash
    {
        return Ok(None);
    }
    let mut next = current.clone();
    let mut timestamps = std::collections::BTreeMap::new();
    for log in logs {
        let block = log.block_number.unwrap_or(to);
        let Some(event) = decode(&log) else { continue };
        let timestamp = match (log.block_timestamp, timestamps.get(&block)) {
            (Some(t), _) | (None, Some(&t)) => t,
            (None, None) => {
                let t = block_timestamp(client, block).await?;
                timestamps.insert(block, t);
                t
            }
        };
        next.apply(event, timestamp);
    }
    next.block = to;
    next.block_hash = to_hash;
    Ok(Some(next))
}

fn decode(log: &Log) -> Option<TkmsRegistryEvents> {
    match TkmsRegistryEvents::decode_log(&log.inner) {
        Ok(event) => Some(event.data),
        Err(e) => {
            // Only the registry's own events are asked for; anything else is a contract
            // this crate does not know (skipped, loudly).
            tracing::warn!(error = %e, tx = ?log.transaction_hash, "registry cache: undecodable log skipped");
            None
        }
    }
}

async fn block_hash(client: &RegistryClient, block: u64) -> Result<alloy::primitives::B256> {
    Ok(header(client, block).await?.hash)
}

async fn block_timestamp(client: &RegistryClient, block: u64) -> Result<u64> {
    Ok(header(client, block).await?.inner.timestamp)
}

async fn header(client: &RegistryClient, block: u64) -> Result<alloy::rpc::types::Header> {
    client
        .provider()
        .get_block_by_number(block.into())
        .await?
        .map(|b| b.header)
        .ok_or_else(|| RegistryError::Malformed(format!("block {block} is unknown")))
}
