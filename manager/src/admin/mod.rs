//! Key epochs and ceremonies (docs/RELIABILITY.md "Epoch handover"): the manager learns what
//! each node is (its node key, libp2p address, and the epochs it holds), starts a DKG or a
//! reshare at every committee member with one signed request, and commits the result in two
//! phases: the members that finished hold the new epoch beside the old one (still serving the
//! old), then the manager commits it — durably, in its state file, and with an on-chain
//! registry by publishing it (`publishEpoch`, the commit point) — switches to it, and once the
//! requests still in flight on the old epoch have drained, tells every node, which erases the
//! superseded shares (a node without a share of the new epoch is retired).
//!
//! The truth about epochs lives with the nodes (and the chain), not in the state file: a
//! reconciliation ([`Admin::reconcile`], at start and then every second) asks every node what it
//! holds and applies [`tkms_crypto::handover::decide`] — serve the newest committed epoch that
//! enough nodes hold, finish a ceremony whose manager crashed before committing it, roll back
//! one too few finished, tell nodes that missed a commit. The state file (public data only)
//! lets a restarted manager serve at once, before the nodes answer.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use tkms_crypto::{suite::Encoded, SecretScalar};
use tkms_proto::{node::v1::node_client::NodeClient, tls::ManagerTls};
use tkms_registry::{access::Registry, RegistryClient, WriteReceipt};
use tonic::transport::Channel;

use crate::cluster::{Batching, Cluster, Fanout};
use tkms_proto::ClusterSuite as S;

/// How often the manager reconciles its view with the nodes' (and the breakers learn that a
/// node answers again).
pub const RECONCILE_INTERVAL: Duration = Duration::from_millis(500);

/// Why an admin action failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A node needed for the action is unreachable or refused.
    #[error("{0}")]
    Node(String),
    /// The ceremony did not produce a usable epoch.
    #[error("{0}")]
    Ceremony(String),
    /// Another ceremony is running.
    #[error("a ceremony is already in progress")]
    Busy,
    /// The state file could not be written.
    #[error("state file: {0}")]
    State(String),
}

mod ceremony;
mod reconcile;
mod record;
mod view;

pub use record::{DroppedMember, EpochNode, EpochRecord, ManagerState};
pub use view::{ClusterHealth, HeldView, NodeView, Served};

/// Runs ceremonies, commits epochs and keeps the served epoch in line with the nodes.
pub struct Admin {
    manager_key: SecretScalar<S>,
    nodes: Vec<String>,
    timeout: Duration,
    round_timeout: Duration,
    state_file: Option<PathBuf>,
    served: Arc<Served>,
    /// Held by a running ceremony: a second one is refused.
    busy: tokio::sync::Mutex<()>,
    /// Held by a reconciliation or a ceremony: they never interleave (a ceremony waits for a
    /// reconciliation to end; a reconciliation is skipped while a ceremony runs).
    settling: tokio::sync::Mutex<()>,
    publisher: Option<RegistryClient>,
    chain: Option<Arc<dyn Registry>>,
    fanout: Fanout,
    batching: Batching,
    tls: ManagerTls,
    /// Status channels per node URL, kept across reconciliations.
    clients: Mutex<HashMap<String, NodeClient<Channel>>>,

    /// Clusters replaced by a commit, until their requests drain.
    retiring: Mutex<Vec<(Arc<Cluster>, Instant)>>,
    health: Mutex<Option<ClusterHealth>>,
}

/// Longest wait for an epoch's publication to be mined.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(120);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Admin {
    /// Manage `nodes` (gRPC URLs) with `manager_key`; node calls time out after `timeout`;
    /// ceremonies wait up to `round_timeout` per round; epochs are recorded in `state_file`.
    pub fn new(
        manager_key: SecretScalar<S>,
        nodes: Vec<String>,
        timeout: Duration,
        round_timeout: Duration,
        state_file: Option<PathBuf>,
        served: Arc<Served>,
    ) -> Result<Self, AdminError> {
        let tls = ManagerTls::new(&manager_key)
            .map_err(|e| AdminError::Invalid(format!("TLS identity: {e}")))?;
        Ok(Self {
            manager_key,
            nodes,
            timeout,
            round_timeout,
            state_file,
            served,
            busy: tokio::sync::Mutex::new(()),
            settling: tokio::sync::Mutex::new(()),
            publisher: None,
            chain: None,
            fanout: Fanout::All,
            batching: Batching::default(),
            tls,
            clients: Mutex::new(HashMap::new()),
            retiring: Mutex::new(Vec::new()),
            health: Mutex::new(None),
        })
    }

    /// Serve every epoch with this coalescing of `/v0` delegations (default
    /// [`Batching::default`]).
    #[must_use]
    pub fn with_batching(mut self, batching: Batching) -> Self {
        self.batching = batching;
        self
    }

    /// Serve every epoch with this fan-out policy (default [`Fanout::All`]).
    #[must_use]
    pub fn with_fanout(mut self, fanout: Fanout) -> Self {
        self.fanout = fanout;
        self
    }

    /// Publish every committed epoch on the on-chain registry through `publisher`, a client
    /// that signs as the registry's manager; `chain` is the manager's view of that registry
    /// (its published epoch is the commit point).
    #[must_use]
    pub fn with_publisher(mut self, publisher: RegistryClient) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// Read the published epoch from `registry` (the manager's cached view of the chain).
    #[must_use]
    pub fn with_chain(mut self, registry: Arc<dyn Registry>) -> Self {
        self.chain = Some(registry);
        self
    }

    /// Publish `record` ([`EpochRecord::publication`]); `Ok(None)` without a publisher. A
    /// failure is logged and returned, saying what to do.
    async fn publish(&self, record: &EpochRecord) -> Result<Option<WriteReceipt>, AdminError> {
        let Some(publisher) = &self.publisher else {
            return Ok(None);
        };
        let publication = record.publication()?;
        let result = tokio::time::timeout(PUBLISH_TIMEOUT, publisher.publish_epoch(&publication))
            .await
            .unwrap_or_else(|_| {
                Err(tkms_registry::RegistryError::InvalidArgument(format!(
                    "not mined within {PUBLISH_TIMEOUT:?}"
                )))
            });
        match result {
            Ok(receipt) => {
                tracing::info!(
                    epoch = record.epoch,
                    registry = %publisher.address(),
                    tx = %receipt.tx_hash,
                    block = receipt.block,
                    gas = receipt.gas_used,
                    "epoch published on the registry"
                );
                Ok(Some(receipt))
            }
            Err(e) => {
                tracing::error!(
                    epoch = record.epoch,
                    registry = %publisher.address(),
                    error = %e,
                    "publishing the epoch on the registry failed"
                );
                Err(AdminError::Ceremony(format!(
                    "epoch {} is adopted (its nodes hold their shares), but publishing it on the \
                     registry {} failed: {e}. The published epoch is the commit point: the \
                     cluster keeps serving the previous epoch until it is published. Make sure \
                     the manager wallet {} holds the registry's manager role and ether; the \
                     manager retries on its own",
                    record.epoch,
                    publisher.address(),
                    publisher
                        .sender()
                        .map_or_else(|| "(none)".to_string(), |a| a.to_string()),
                )))
            }
        }
    }

    /// Publish the served epoch if the registry's current epoch is older (a publication that
    /// failed, or a registry deployed after the DKG). `Ok(None)` when there is nothing to do.
    pub async fn publish_served(&self) -> Result<Option<WriteReceipt>, AdminError> {
        let (Some(publisher), Some(record)) = (&self.publisher, self.served.record()) else {
            return Ok(None);
        };
        let current = publisher.current_epoch().await.map_err(|e| {
            AdminError::Ceremony(format!("reading the registry {}: {e}", publisher.address()))
        })?;
        if current >= record.epoch {
            return Ok(None);
        }
        tracing::info!(
            epoch = record.epoch,
            published = current,
            "the registry lags behind the served epoch: publishing it"
        );
        self.publish(&record).await
    }

    /// The served epoch.
    pub fn served(&self) -> &Arc<Served> {
        &self.served
    }

    /// The configured node URLs.
    pub fn node_urls(&self) -> &[String] {
        &self.nodes
    }

    /// A status client for `url`, reused across calls.
    fn client(&self, url: &str) -> Result<NodeClient<Channel>, AdminError> {
        if let Some(client) = lock(&self.clients).get(url) {
            return Ok(client.clone());
        }
        let client = Self::client_with(&self.tls, url, self.timeout)?;
        lock(&self.clients).insert(url.to_string(), client.clone());
        Ok(client)
    }

    /// A client that accepts only the node holding `key`. A new channel per call: one kept
    /// across calls was tried (two round trips less per ceremony across a WAN), but after a
    /// partition its connection attempt, begun while the node was cut off, sat in TCP's SYN
    /// backoff past the heal, and the commit that should have ended the node's stale
    /// ceremony timed out: the next reshare dropped the node.
    fn pinned_client(
        &self,
        url: &str,
        key: &Encoded<S>,
    ) -> Result<NodeClient<Channel>, AdminError> {
        let tls = ManagerTls::pinned(&self.manager_key, key)
            .map_err(|e| AdminError::Node(format!("{url}: {e}")))?;
        Self::client_with(&tls, url, self.timeout)
    }

    fn client_with(
        tls: &ManagerTls,
        url: &str,
        timeout: Duration,
    ) -> Result<NodeClient<Channel>, AdminError> {
        let endpoint = tls
            .endpoint(url)
            .map_err(|e| AdminError::Invalid(e.to_string()))?
            .connect_timeout(timeout);
        Ok(NodeClient::new(tls.channel(&endpoint)))
    }
}
