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
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tkms_crypto::{
    collect::Liveness,
    handover::{self, Candidate, EpochId, Held, Known, Report},
    shamir::Commitment,
    suite::Encoded,
    NodeIndex, PublicKeySet, SecretScalar, Suite,
};
use tkms_proto::{
    node::v1::{self as pb, node_client::NodeClient},
    tls::ManagerTls,
    SignedRequest,
};
use tkms_registry::{
    access::{public_shares_hash, Published, Registry},
    Bytes, EpochPublication, RegistryClient, WriteReceipt, B256,
};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::cluster::{Batching, Cluster, ClusterError, Fanout, NodeEndpoint, S};

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

/// One served node of an epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct EpochNode {
    /// Its index.
    pub index: u16,
    /// Its gRPC URL.
    pub url: String,
    /// Its node key (compressed, hex), which the manager pins its TLS connections to. Empty in
    /// state files written before pinning; such a node is reached unpinned.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_key: String,
}

impl EpochNode {
    /// The pinned node key, if recorded.
    fn key(&self) -> Result<Option<Encoded<S>>, AdminError> {
        if self.node_key.is_empty() {
            return Ok(None);
        }
        node_key(&self.node_key)
            .map(Some)
            .map_err(|e| AdminError::State(format!("node {}: {e}", self.index)))
    }
}

/// A node key from its hex form.
fn node_key(hex_key: &str) -> Result<Encoded<S>, String> {
    let bytes = hex::decode(hex_key).map_err(|e| format!("node key hex: {e}"))?;
    Encoded::from_bytes(&bytes).map_err(|e| format!("node key: {e}"))
}

/// A key epoch as the manager serves it (all public).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct EpochRecord {
    /// The epoch.
    pub epoch: u64,
    /// Threshold.
    pub threshold: u16,
    /// The Feldman commitment, hex (first point: the public key).
    pub commitment: String,
    /// The agreed transcript hash, hex.
    pub transcript_hash: String,
    /// The nodes holding shares.
    pub nodes: Vec<EpochNode>,
    /// Every index the ceremony dealt a share to (empty in state files written before it was
    /// recorded: the holders then).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub committee: Vec<u16>,
    /// Members of the committee that hold no share, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<DroppedMember>,
}

/// A committee member without a share of the epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DroppedMember {
    /// Its index.
    pub index: u16,
    /// Its gRPC URL, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Why it holds no share.
    pub reason: String,
}

impl EpochRecord {
    /// The committee's indices: recorded, or else the holders'.
    pub fn committee_indices(&self) -> Vec<u16> {
        if self.committee.is_empty() {
            self.nodes.iter().map(|n| n.index).collect()
        } else {
            self.committee.clone()
        }
    }

    /// The key set of the epoch.
    pub fn keys(&self) -> Result<PublicKeySet<S>, AdminError> {
        let bytes = hex::decode(&self.commitment)
            .map_err(|e| AdminError::State(format!("commitment hex: {e}")))?;
        let commitment = Commitment::<S>::from_bytes(&bytes)
            .map_err(|e| AdminError::State(format!("commitment: {e}")))?;
        let committee = self
            .committee_indices()
            .into_iter()
            .map(|i| NodeIndex::new(i).ok_or_else(|| AdminError::State("index 0".into())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PublicKeySet::new(commitment, committee))
    }

    /// The compressed public key, hex.
    pub fn public_key_hex(&self) -> Result<String, AdminError> {
        Ok(hex::encode(self.keys()?.public_key_encoded().bytes()))
    }

    /// What the manager publishes on chain for this epoch (`publishEpoch`), for the key set
    /// of its committee (every index the ceremony dealt a share to, which may include members
    /// that did not finish). The public-shares hash is [`public_shares_hash`], the one a node
    /// recomputes before serving.
    pub fn publication(&self) -> Result<EpochPublication, AdminError> {
        let indices = self.committee_indices();
        let bytes = hex::decode(&self.commitment)
            .map_err(|e| AdminError::State(format!("commitment hex: {e}")))?;
        let commitment = Commitment::<S>::from_bytes(&bytes)
            .map_err(|e| AdminError::State(format!("commitment: {e}")))?;
        let members = indices
            .iter()
            .map(|&i| NodeIndex::new(i).ok_or_else(|| AdminError::State("index 0".into())))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = PublicKeySet::new(commitment, members);
        let shares: Vec<(u16, Vec<u8>)> = keys
            .public_shares()
            .map(|(i, p)| (i.get(), S::encode_point(p).to_vec()))
            .collect();
        let transcript: [u8; 32] = hex::decode(&self.transcript_hash)
            .ok()
            .and_then(|t| t.try_into().ok())
            .ok_or_else(|| {
                AdminError::State(format!(
                    "epoch {}: the transcript hash is not 32 bytes of hex",
                    self.epoch
                ))
            })?;
        Ok(EpochPublication {
            epoch: self.epoch,
            t: self.threshold,
            n: u16::try_from(shares.len())
                .map_err(|_| AdminError::State("committee too large".into()))?,
            public_key: Bytes::from(keys.public_key_encoded().bytes().to_vec()),
            public_shares_hash: public_shares_hash(shares.iter().map(|(i, p)| (*i, p.as_slice()))),
            transcript_hash: B256::from(transcript),
        })
    }
}

/// What the manager keeps across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ManagerState {
    /// Committed epochs in the order they were committed; the last is served.
    pub epochs: Vec<EpochRecord>,
}

impl ManagerState {
    /// Load `path`, or an empty state if it does not exist.
    pub fn load(path: &Path) -> Result<Self, AdminError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| AdminError::State(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(AdminError::State(format!("{}: {e}", path.display()))),
        }
    }

    /// Write atomically and durably (the commit of an epoch is recorded here).
    pub fn save(&self, path: &Path) -> Result<(), AdminError> {
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_vec_pretty(self).map_err(|e| AdminError::State(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&json)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| AdminError::State(format!("{}: {e}", path.display())))
    }
}

/// One epoch a node holds, as `/admin/nodes` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HeldView {
    /// The epoch.
    pub epoch: u64,
    /// The node's index in it.
    pub index: u16,
    /// Its threshold.
    pub threshold: u16,
    /// Whether the node was told it is committed.
    pub committed: bool,
    /// Its transcript hash, hex.
    pub transcript_hash: String,
    #[serde(skip)]
    commitment: Vec<u8>,
    #[serde(skip)]
    committee: Vec<u16>,
}

/// A node's self-description, from its `Status`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    /// Its URL.
    pub url: String,
    /// Whether it answered.
    pub reachable: bool,
    /// Its index in its newest epoch (0 before any).
    pub index: u32,
    /// Its newest epoch (0 before any).
    pub epoch: u64,
    /// Every epoch it holds, oldest first.
    pub held: Vec<HeldView>,
    /// The newest epoch it was told is committed.
    pub committed_epoch: u64,
    /// Whether it holds no share of the committed epoch (and serves nothing).
    pub retired: bool,
    /// The newest epoch a ceremony was started for at it.
    pub last_ceremony_epoch: u64,
    /// Node key, hex.
    pub node_key: String,
    /// libp2p address.
    pub p2p_addr: String,
    /// Ceremony in progress.
    pub ceremony: String,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl NodeView {
    fn unreachable(url: String, error: String) -> Self {
        Self {
            url,
            reachable: false,
            index: 0,
            epoch: 0,
            held: Vec::new(),
            committed_epoch: 0,
            retired: false,
            last_ceremony_epoch: 0,
            node_key: String::new(),
            p2p_addr: String::new(),
            ceremony: String::new(),
            error: Some(error),
        }
    }

    fn from_status(url: String, s: pb::StatusResponse) -> Self {
        Self {
            url,
            reachable: true,
            index: s.index,
            epoch: s.epoch,
            held: s
                .held
                .into_iter()
                .map(|h| HeldView {
                    epoch: h.epoch,
                    index: u16::try_from(h.index).unwrap_or(0),
                    threshold: u16::try_from(h.threshold).unwrap_or(0),
                    committed: h.committed,
                    transcript_hash: hex::encode(&h.transcript_hash),
                    commitment: h.commitment,
                    committee: h
                        .committee
                        .into_iter()
                        .filter_map(|i| u16::try_from(i).ok())
                        .collect(),
                })
                .collect(),
            committed_epoch: s.committed_epoch,
            retired: s.retired,
            last_ceremony_epoch: s.last_ceremony_epoch,
            node_key: hex::encode(&s.node_key),
            p2p_addr: s.p2p_addr,
            ceremony: s.ceremony,
            error: None,
        }
    }

    /// What the handover decision needs from this node.
    fn report(&self) -> Report<String> {
        Report {
            node: self.url.clone(),
            held: self
                .held
                .iter()
                .map(|h| Held {
                    id: EpochId {
                        epoch: h.epoch,
                        commitment: h.commitment.clone(),
                        transcript_hash: hex::decode(&h.transcript_hash).unwrap_or_default(),
                    },
                    index: h.index,
                    threshold: h.threshold,
                    committee: h.committee.clone(),
                })
                .collect(),
            committed: self.committed_epoch,
            in_ceremony: !self.ceremony.is_empty(),
        }
    }

    /// Whether it holds the share of `record`'s epoch (same transcript).
    fn holds(&self, record: &EpochRecord) -> bool {
        self.held
            .iter()
            .any(|h| h.epoch == record.epoch && h.transcript_hash == record.transcript_hash)
    }

    /// The newest epoch number it has seen in any way.
    fn newest_seen(&self) -> u64 {
        self.held
            .iter()
            .map(|h| h.epoch)
            .chain([self.epoch, self.committed_epoch, self.last_ceremony_epoch])
            .max()
            .unwrap_or(0)
    }
}

/// The epoch being served, swapped atomically when an epoch is committed.
pub struct Served {
    current: RwLock<Option<(Arc<Cluster>, EpochRecord)>>,
}

impl Served {
    /// Serving `initial`.
    pub fn new(initial: Option<(Cluster, EpochRecord)>) -> Self {
        Self {
            current: RwLock::new(initial.map(|(c, r)| (Arc::new(c), r))),
        }
    }

    /// The cluster of the current epoch, if there is one.
    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.read().as_ref().map(|(c, _)| Arc::clone(c))
    }

    /// The current epoch's record.
    pub fn record(&self) -> Option<EpochRecord> {
        self.read().as_ref().map(|(_, r)| r.clone())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<(Arc<Cluster>, EpochRecord)>> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serve `cluster` from now on; the cluster it replaces, whose requests may still be in
    /// flight.
    fn set(&self, cluster: Cluster, record: EpochRecord) -> Option<Arc<Cluster>> {
        self.current
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .replace((Arc::new(cluster), record))
            .map(|(c, _)| c)
    }
}

/// Whether the manager can serve, as the last reconciliation saw it (`/health`).
#[derive(Debug, Clone, Serialize)]
pub struct ClusterHealth {
    /// Nodes that answered.
    pub reachable: usize,
    /// Reachable nodes holding the served epoch's share.
    pub holders: usize,
    /// Whether at least `t` of them are reachable.
    pub servable: bool,
    #[serde(skip)]
    at: Option<Instant>,
}

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

/// The members of a finished ceremony holding a share, per (commitment, transcript hash).
type Agreed = BTreeMap<(Vec<u8>, Vec<u8>), Vec<EpochNode>>;

/// A participant's answer to a start request: its index, URL and node key, and the answer
/// (unless it timed out).
type CeremonyAnswer = (
    u16,
    String,
    String,
    Result<
        Result<tonic::Response<pb::StartCeremonyResponse>, tonic::Status>,
        tokio::time::error::Elapsed,
    >,
);

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

    /// A client that accepts only the node holding `key`.
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

    /// Ask every node in `urls` for its status, concurrently.
    pub async fn survey(&self, urls: &[String]) -> Vec<NodeView> {
        let mut calls = JoinSet::new();
        for (k, url) in urls.iter().enumerate() {
            let client = self.client(url);
            let (url, timeout) = (url.clone(), self.timeout);
            calls.spawn(async move {
                let answer = match client {
                    Err(e) => Err(e.to_string()),
                    Ok(mut c) => {
                        match tokio::time::timeout(timeout, c.status(pb::StatusRequest {})).await {
                            Err(_) => Err("timed out".to_string()),
                            Ok(Err(s)) => Err(s.message().to_string()),
                            Ok(Ok(r)) => Ok(r.into_inner()),
                        }
                    }
                };
                (k, url, answer)
            });
        }
        let mut views: Vec<(usize, NodeView)> = Vec::new();
        while let Some(Ok((k, url, answer))) = calls.join_next().await {
            let view = match answer {
                Ok(s) => NodeView::from_status(url, s),
                Err(e) => NodeView::unreachable(url, e),
            };
            views.push((k, view));
        }
        views.sort_by_key(|(k, _)| *k);
        views.into_iter().map(|(_, v)| v).collect()
    }

    /// Every node URL the manager knows: configured, serving, or recorded in an epoch.
    pub fn known_urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = self.nodes.clone();
        let mut add = |url: &str| {
            if !urls.iter().any(|u| u == url) {
                urls.push(url.to_string());
            }
        };
        if let Some(record) = self.served.record() {
            for n in &record.nodes {
                add(&n.url);
            }
        }
        if let Ok(epochs) = self.epochs() {
            for r in &epochs {
                for n in &r.nodes {
                    add(&n.url);
                }
            }
        }
        urls
    }

    /// Serve the last committed epoch of the state file at once (the nodes may not answer
    /// yet), then reconcile with what the nodes hold. `Ok(None)` before any DKG.
    pub async fn recover(&self) -> Result<Option<EpochRecord>, AdminError> {
        if let Some(path) = &self.state_file {
            if let Some(record) = ManagerState::load(path)?.epochs.pop() {
                self.serve(record)?;
            }
        }
        if let Err(e) = self.reconcile().await {
            tracing::warn!(error = %e, "could not reconcile with the nodes yet; retrying");
        }
        Ok(self.served.record())
    }

    /// Reconcile every [`RECONCILE_INTERVAL`] until the task is dropped.
    pub async fn reconcile_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e, "reconciling the epochs with the nodes");
            }
        }
    }

    /// The published epoch of the chain, when one is configured (`Err` while it cannot be
    /// read: nothing is decided then).
    fn published(&self) -> Result<Option<u64>, AdminError> {
        let Some(chain) = &self.chain else {
            return Ok(None);
        };
        match chain.published_epoch() {
            Published::NotTracked => Ok(None),
            Published::Nothing => Ok(Some(0)),
            Published::Epoch(p) => Ok(Some(p.epoch)),
            Published::Unknown => Err(AdminError::Node(
                "the registry's published epoch cannot be read".into(),
            )),
        }
    }

    /// Bring the served epoch in line with the nodes ([`handover::decide`]): serve the newest
    /// committed epoch enough nodes hold, commit a finished ceremony nobody committed, roll
    /// back one too few finished, and tell the nodes that still hold superseded shares (once
    /// the requests on the old epoch have drained). Skipped while a ceremony runs.
    pub async fn reconcile(&self) -> Result<(), AdminError> {
        let Ok(_settling) = self.settling.try_lock() else {
            return Ok(());
        };
        let views = self.survey(&self.known_urls()).await;
        self.observe(&views);
        let reports: Vec<Report<String>> = views
            .iter()
            .filter(|v| v.reachable)
            .map(NodeView::report)
            .collect();
        let known = Known {
            recorded: self.epochs()?.last().map_or(0, |r| r.epoch),
            published: self.published()?,
            ceremony_running: false,
        };
        let decision = handover::decide(known, &reports);
        if let Some(commit) = &decision.commit {
            let record = record_of(commit, &views);
            tracing::warn!(
                epoch = record.epoch,
                holders = record.nodes.len(),
                "a finished ceremony was never committed (the manager stopped): committing it"
            );
            self.commit(record).await?;
            self.update_health(&views);
            return Ok(());
        }
        if let Some(serve) = &decision.serve {
            let record = record_of(serve, &views);
            let current = self.served.record();
            let servable = |r: &EpochRecord| {
                views.iter().filter(|v| v.holds(r)).count() >= usize::from(r.threshold)
            };
            let same = |c: &EpochRecord| {
                (c.epoch, &c.transcript_hash) == (record.epoch, &record.transcript_hash)
            };
            let switch = match &current {
                None => true,
                Some(c) => !same(c) && (record.epoch > c.epoch || !servable(c)),
            };
            // Holders that were down when the epoch was committed are added when they answer.
            let grown = current.as_ref().filter(|c| same(c)).and_then(|c| {
                let missing: Vec<&EpochNode> = record
                    .nodes
                    .iter()
                    .filter(|n| !c.nodes.iter().any(|m| m.index == n.index))
                    .collect();
                (!missing.is_empty()).then(|| {
                    let mut merged = c.clone();
                    merged.nodes.extend(missing.into_iter().cloned());
                    merged.nodes.sort_by_key(|n| n.index);
                    merged
                        .dropped
                        .retain(|d| !merged.nodes.iter().any(|n| n.index == d.index));
                    merged
                })
            });
            if let Some(merged) = grown {
                tracing::info!(
                    epoch = merged.epoch,
                    holders = merged.nodes.len(),
                    "a holder of the served epoch answers again: asking it too"
                );
                self.persist(&merged)?;
                self.serve(merged)?;
            } else if switch {
                tracing::warn!(
                    epoch = record.epoch,
                    was = current.as_ref().map(|c| c.epoch),
                    "the nodes hold a newer committed epoch than the one served: serving it"
                );
                self.persist(&record)?;
                self.serve(record)?;
            }
        }
        for (url, epoch) in &decision.abort {
            self.abort_at(url, *epoch).await;
        }
        if !decision.settle.is_empty() && self.drained() {
            if let Some(record) = self.served.record() {
                for url in &decision.settle {
                    self.commit_at(url, &record, &views).await;
                }
            }
        }
        self.update_health(&views);
        Ok(())
    }

    /// Tell the served cluster's breakers what the survey showed.
    fn observe(&self, views: &[NodeView]) {
        let (Some(cluster), Some(record)) = (self.served.cluster(), self.served.record()) else {
            return;
        };
        for n in &record.nodes {
            let Some(index) = NodeIndex::new(n.index) else {
                continue;
            };
            if let Some(v) = views.iter().find(|v| v.url == n.url) {
                let liveness = if v.reachable && v.holds(&record) {
                    Liveness::Answered
                } else {
                    Liveness::Down
                };
                cluster.observe(index, liveness);
            }
        }
    }

    fn update_health(&self, views: &[NodeView]) {
        let record = self.served.record();
        let holders = record
            .as_ref()
            .map_or(0, |r| views.iter().filter(|v| v.holds(r)).count());
        let health = ClusterHealth {
            reachable: views.iter().filter(|v| v.reachable).count(),
            holders,
            servable: record
                .as_ref()
                .is_some_and(|r| holders >= usize::from(r.threshold)),
            at: Some(Instant::now()),
        };
        *lock(&self.health) = Some(health);
    }

    /// Whether the manager can serve, as seen within the last seconds (surveyed now if not).
    pub async fn health(&self) -> ClusterHealth {
        let fresh = lock(&self.health)
            .clone()
            .filter(|h| h.at.is_some_and(|at| at.elapsed() < RECONCILE_INTERVAL * 2));
        if let Some(health) = fresh {
            return health;
        }
        let urls: Vec<String> = self
            .served
            .record()
            .map(|r| r.nodes.into_iter().map(|n| n.url).collect())
            .unwrap_or_default();
        let views = self.survey(&urls).await;
        self.update_health(&views);
        lock(&self.health).clone().unwrap_or(ClusterHealth {
            reachable: 0,
            holders: 0,
            servable: false,
            at: None,
        })
    }

    /// Whether the clusters replaced by commits have no request left at their nodes (or have
    /// had every chance to finish).
    fn drained(&self) -> bool {
        let limit = self.timeout * 3 + Duration::from_secs(1);
        let mut retiring = lock(&self.retiring);
        retiring.retain(|(cluster, since)| cluster.in_use() && since.elapsed() < limit);
        retiring.is_empty()
    }

    /// Commit `record`: publish it (with a chain: the commit point), record it durably, and
    /// serve it. The nodes are told (and erase the superseded shares) by the next
    /// reconciliation, once the old epoch's requests have drained.
    async fn commit(&self, record: EpochRecord) -> Result<(), AdminError> {
        let keys = record.keys()?;
        if let Some(previous) = self.served.record() {
            if previous.keys()?.public_key_encoded() != keys.public_key_encoded() {
                return Err(AdminError::Ceremony(
                    "the new epoch has another public key than the served one; it is not committed"
                        .into(),
                ));
            }
        }
        self.publish(&record).await?;
        self.persist(&record)?;
        self.serve(record.clone())?;
        tracing::info!(
            epoch = record.epoch,
            holders = record.nodes.len(),
            dropped = record.dropped.len(),
            public_key = %hex::encode(S::encode_point(&keys.public_key())),
            "epoch committed"
        );
        Ok(())
    }

    /// Tell the node at `url` that `record` is committed.
    async fn commit_at(&self, url: &str, record: &EpochRecord, views: &[NodeView]) {
        let mut request = pb::CommitEpochRequest {
            epoch: record.epoch,
            transcript_hash: hex::decode(&record.transcript_hash).unwrap_or_default(),
            manager: None,
        };
        request.sign(&self.manager_key);
        let Some(mut client) = self.client_for(url, views) else {
            return;
        };
        match tokio::time::timeout(self.timeout, client.commit_epoch(request)).await {
            Ok(Ok(answer)) => {
                let answer = answer.into_inner();
                tracing::info!(
                    url,
                    epoch = record.epoch,
                    erased = ?answer.erased,
                    retired = !answer.holds_share,
                    "node told of the committed epoch"
                );
            }
            Ok(Err(status)) => {
                tracing::warn!(url, epoch = record.epoch, error = %status.message(), "a node refused the commit; retried later");
            }
            Err(_) => tracing::warn!(url, "commit: no answer; retried later"),
        }
    }

    /// Tell the node at `url` to drop its uncommitted share of `epoch`.
    async fn abort_at(&self, url: &str, epoch: u64) {
        let mut request = pb::AbortEpochRequest {
            epoch,
            manager: None,
        };
        request.sign(&self.manager_key);
        let Ok(mut client) = self.client(url) else {
            return;
        };
        match tokio::time::timeout(self.timeout, client.abort_epoch(request)).await {
            Ok(Ok(_)) => tracing::warn!(url, epoch, "uncommitted epoch rolled back at the node"),
            Ok(Err(status)) => {
                tracing::warn!(url, epoch, error = %status.message(), "roll-back refused");
            }
            Err(_) => tracing::warn!(url, epoch, "roll-back: no answer"),
        }
    }

    /// A client pinned to the node key `views` report for `url` (unpinned if unknown).
    fn client_for(&self, url: &str, views: &[NodeView]) -> Option<NodeClient<Channel>> {
        let key = views
            .iter()
            .find(|v| v.url == url)
            .and_then(|v| node_key(&v.node_key).ok());
        match key {
            Some(key) => self.pinned_client(url, &key).ok(),
            None => self.client(url).ok(),
        }
    }

    fn serve(&self, record: EpochRecord) -> Result<(), AdminError> {
        let keys = record.keys()?;
        let mut endpoints = Vec::with_capacity(record.nodes.len());
        for n in &record.nodes {
            let index = NodeIndex::new(n.index)
                .ok_or_else(|| AdminError::State("a served node has index 0".into()))?;
            endpoints.push(NodeEndpoint {
                index,
                url: n.url.clone(),
                key: n.key()?,
            });
        }
        let cluster = Cluster::new(
            &endpoints,
            keys,
            record.epoch,
            &self.manager_key,
            self.timeout,
        )
        .map_err(|e: ClusterError| AdminError::State(e.to_string()))?
        .with_fanout(self.fanout)
        .with_batching(self.batching);
        tracing::info!(
            epoch = record.epoch,
            threshold = record.threshold,
            n = record.nodes.len(),
            "serving epoch"
        );
        if let Some(old) = self.served.set(cluster, record) {
            lock(&self.retiring).push((old, Instant::now()));
        }
        Ok(())
    }

    fn persist(&self, record: &EpochRecord) -> Result<(), AdminError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let mut state = ManagerState::load(path)?;
        state.epochs.retain(|e| e.epoch != record.epoch);
        state.epochs.push(record.clone());
        state.epochs.sort_by_key(|e| e.epoch);
        state.save(path)
    }

    /// Every epoch committed so far, oldest first.
    pub fn epochs(&self) -> Result<Vec<EpochRecord>, AdminError> {
        match &self.state_file {
            Some(path) => Ok(ManagerState::load(path)?.epochs),
            None => Ok(self.served.record().into_iter().collect()),
        }
    }

    /// The committed epoch `epoch`'s record, if the manager recorded it.
    pub fn epoch(&self, epoch: u64) -> Result<Option<EpochRecord>, AdminError> {
        if let Some(record) = self.served.record().filter(|r| r.epoch == epoch) {
            return Ok(Some(record));
        }
        Ok(self.epochs()?.into_iter().find(|r| r.epoch == epoch))
    }

    /// Run a DKG among `urls` (default: every configured node) with threshold `t`. Node `k`
    /// of the list gets index `k + 1`.
    pub async fn dkg(
        &self,
        urls: Option<Vec<String>>,
        threshold: u16,
    ) -> Result<EpochRecord, AdminError> {
        let Ok(_busy) = self.busy.try_lock() else {
            return Err(AdminError::Busy);
        };
        let _settling = self.settling.lock().await;
        if let Some(current) = self.served.record() {
            return Err(AdminError::Invalid(format!(
                "the cluster already has a key (epoch {}); a new DKG would make every existing \
                 ciphertext unreadable. Reshare instead",
                current.epoch
            )));
        }
        let urls = urls.unwrap_or_else(|| self.nodes.clone());
        let views = self.reachable(&urls).await?;
        let epoch = self.next_epoch(&views);
        let members: Vec<(u16, &NodeView)> = views
            .iter()
            .enumerate()
            .map(|(k, v)| (u16::try_from(k + 1).unwrap_or(u16::MAX), v))
            .collect();
        let recipients = committee(&members)?;
        let request = pb::StartCeremonyRequest {
            kind: pb::CeremonyKind::Dkg.into(),
            epoch,
            threshold: u32::from(threshold),
            dealers: Vec::new(),
            recipients,
            round_timeout_ms: u64::try_from(self.round_timeout.as_millis()).unwrap_or(u64::MAX),
            ..Default::default()
        };
        self.ceremony(request, &members, threshold).await
    }

    /// Reshare the served key to `urls` with threshold `t`: nodes that hold a share of the
    /// current epoch keep their index and deal; a node that held an index before keeps it;
    /// new nodes get the next free indices.
    pub async fn reshare(
        &self,
        urls: Vec<String>,
        threshold: u16,
    ) -> Result<EpochRecord, AdminError> {
        let Ok(_busy) = self.busy.try_lock() else {
            return Err(AdminError::Busy);
        };
        let _settling = self.settling.lock().await;
        let current = self
            .served
            .record()
            .ok_or_else(|| AdminError::Invalid("no epoch to reshare: run a DKG first".into()))?;
        let views = self.reachable(&urls).await?;
        // Old holders that are reachable and hold the share deal; they need not all be in the
        // new committee.
        let old_urls: Vec<String> = current.nodes.iter().map(|n| n.url.clone()).collect();
        let old_views = self.survey(&old_urls).await;
        let dealers: Vec<(u16, &NodeView)> = current
            .nodes
            .iter()
            .zip(&old_views)
            .filter(|(_, v)| v.reachable && v.holds(&current))
            .map(|(n, v)| (n.index, v))
            .collect();
        if dealers.len() < usize::from(current.threshold) {
            return Err(AdminError::Node(format!(
                "only {} of the {} old share holders needed to reshare are reachable",
                dealers.len(),
                current.threshold
            )));
        }
        let mut taken: BTreeSet<u16> = current.committee_indices().into_iter().collect();
        taken.extend(current.dropped.iter().map(|d| d.index));
        let mut next_free = taken.iter().max().copied().unwrap_or(0);
        let mut members: Vec<(u16, &NodeView)> = Vec::new();
        for v in &views {
            let known = current
                .nodes
                .iter()
                .map(|n| (n.index, &n.url))
                .chain(current.dropped.iter().map(|d| (d.index, &d.url)))
                .find(|(_, url)| **url == v.url)
                .map(|(i, _)| i);
            let index = if let Some(i) = known {
                i
            } else {
                next_free = next_free
                    .checked_add(1)
                    .ok_or_else(|| AdminError::Invalid("too many nodes".into()))?;
                next_free
            };
            if members.iter().any(|(i, _)| *i == index) {
                return Err(AdminError::Invalid(format!("{} is listed twice", v.url)));
            }
            members.push((index, v));
        }
        let request = pb::StartCeremonyRequest {
            kind: pb::CeremonyKind::Reshare.into(),
            epoch: self.next_epoch(&views).max(self.next_epoch(&old_views)),
            threshold: u32::from(threshold),
            dealers: committee(&dealers)?,
            recipients: committee(&members)?,
            previous_commitment: hex::decode(&current.commitment)
                .map_err(|e| AdminError::State(e.to_string()))?,
            previous_epoch: current.epoch,
            round_timeout_ms: u64::try_from(self.round_timeout.as_millis()).unwrap_or(u64::MAX),
            manager: None,
        };
        // Every participant (dealer or recipient) runs the ceremony.
        let mut everyone = members.clone();
        for d in &dealers {
            if !everyone.iter().any(|(i, _)| *i == d.0) {
                everyone.push(*d);
            }
        }
        self.ceremony(request, &everyone, threshold).await
    }

    async fn reachable(&self, urls: &[String]) -> Result<Vec<NodeView>, AdminError> {
        if urls.is_empty() {
            return Err(AdminError::Invalid("no nodes given".into()));
        }
        let views = self.survey(urls).await;
        let down: Vec<String> = views
            .iter()
            .filter(|v| !v.reachable || v.node_key.is_empty() || v.p2p_addr.is_empty())
            .map(|v| {
                format!(
                    "{} ({})",
                    v.url,
                    v.error
                        .clone()
                        .unwrap_or_else(|| "no ceremony channel".into())
                )
            })
            .collect();
        if !down.is_empty() {
            return Err(AdminError::Node(format!(
                "every committee member must be up to join a ceremony; not ready: {}",
                down.join(", ")
            )));
        }
        Ok(views)
    }

    /// An epoch number no node has seen (numbers are never reused, even after a roll-back).
    fn next_epoch(&self, views: &[NodeView]) -> u64 {
        let seen = views.iter().map(NodeView::newest_seen).max().unwrap_or(0);
        let recorded = self
            .epochs()
            .ok()
            .and_then(|e| e.last().map(|r| r.epoch))
            .unwrap_or(0);
        let served = self.served.record().map_or(0, |r| r.epoch);
        seen.max(served).max(recorded) + 1
    }

    /// Send the signed start request to every participant, wait for all, check agreement,
    /// and commit the result: the members that hold a share, and every member that does not
    /// with the reason, are in the answer. With fewer than `t` holders the ceremony is rolled
    /// back at the nodes that finished it.
    async fn ceremony(
        &self,
        mut request: pb::StartCeremonyRequest,
        participants: &[(u16, &NodeView)],
        threshold: u16,
    ) -> Result<EpochRecord, AdminError> {
        request.sign(&self.manager_key);
        let wait = self.round_timeout * 16 + Duration::from_secs(10);
        let mut calls = JoinSet::new();
        for (index, view) in participants {
            // Pinned to the key the node reported: the ceremony runs only with the node that
            // holds it, and the epoch records it for the cluster's connections.
            let key = node_key(&view.node_key)
                .map_err(|e| AdminError::Node(format!("{}: {e}", view.url)))?;
            let mut client = self.pinned_client(&view.url, &key)?;
            let (request, index, url) = (request.clone(), *index, view.url.clone());
            let node_key = view.node_key.clone();
            calls.spawn(async move {
                let answer = tokio::time::timeout(wait, client.start_ceremony(request)).await;
                (index, url, node_key, answer)
            });
        }
        let recipients: BTreeMap<u16, String> = request
            .recipients
            .iter()
            .filter_map(|m| {
                let index = u16::try_from(m.index).ok()?;
                let url = participants
                    .iter()
                    .find(|(i, _)| *i == index)
                    .map(|(_, v)| v.url.clone())?;
                Some((index, url))
            })
            .collect();
        let (agreed, failures) = Self::answers(calls, wait).await;
        if !failures.is_empty() {
            tracing::warn!(?failures, "ceremony members that did not finish");
        }
        let describe = |failures: &BTreeMap<u16, String>| {
            failures
                .iter()
                .map(|(i, f)| format!("node {i}: {f}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if agreed.len() > 1 {
            self.roll_back(request.epoch, &agreed).await;
            return Err(AdminError::Ceremony(format!(
                "nodes finished with {} different transcripts; the epoch is not committed",
                agreed.len()
            )));
        }
        let Some(((commitment, transcript), mut nodes)) = agreed.clone().into_iter().next() else {
            return Err(AdminError::Ceremony(format!(
                "no node finished the ceremony: {}",
                describe(&failures)
            )));
        };
        if nodes.len() < usize::from(threshold) {
            self.roll_back(request.epoch, &agreed).await;
            return Err(AdminError::Ceremony(format!(
                "only {} nodes hold a share of the new epoch, fewer than t = {threshold}; it is \
                 rolled back and the previous epoch is still served: {}",
                nodes.len(),
                describe(&failures)
            )));
        }
        nodes.sort_by_key(|n| n.index);
        let dropped = recipients
            .iter()
            .filter(|(i, _)| !nodes.iter().any(|n| n.index == **i))
            .map(|(i, url)| DroppedMember {
                index: *i,
                url: url.clone(),
                reason: failures
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| "finished without a share".into()),
            })
            .collect();
        let record = EpochRecord {
            epoch: request.epoch,
            threshold,
            commitment: hex::encode(commitment),
            transcript_hash: hex::encode(transcript),
            nodes,
            committee: recipients.keys().copied().collect(),
            dropped,
        };
        // Not committed on an error (a failed publication, a changed key): the nodes keep
        // serving the previous epoch, and the reconciliation retries a publication.
        self.commit(record.clone()).await?;
        Ok(record)
    }

    /// The participants' answers: the members holding a share per (commitment, transcript),
    /// and why the others did not finish.
    async fn answers(
        mut calls: JoinSet<CeremonyAnswer>,
        wait: Duration,
    ) -> (Agreed, BTreeMap<u16, String>) {
        let mut agreed: Agreed = BTreeMap::new();
        let mut failures: BTreeMap<u16, String> = BTreeMap::new();
        while let Some(Ok((index, url, node_key, answer))) = calls.join_next().await {
            match answer {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    let entry = agreed.entry((r.commitment, r.transcript_hash)).or_default();
                    if r.holds_share {
                        entry.push(EpochNode {
                            index,
                            url,
                            node_key,
                        });
                    }
                }
                Ok(Err(status)) => {
                    failures.insert(index, status.message().to_string());
                }
                Err(_) => {
                    failures.insert(index, format!("no answer within {wait:?}"));
                }
            }
        }
        (agreed, failures)
    }

    /// Drop an uncommitted epoch at the nodes that finished it.
    async fn roll_back(&self, epoch: u64, agreed: &Agreed) {
        for node in agreed.values().flatten() {
            self.abort_at(&node.url, epoch).await;
        }
    }
}

/// The record of a candidate epoch, with the URLs and node keys the survey found.
fn record_of(candidate: &Candidate<String>, views: &[NodeView]) -> EpochRecord {
    let nodes: Vec<EpochNode> = candidate
        .holders
        .iter()
        .map(|(index, url)| EpochNode {
            index: *index,
            url: url.clone(),
            node_key: views
                .iter()
                .find(|v| v.url == *url)
                .map(|v| v.node_key.clone())
                .unwrap_or_default(),
        })
        .collect();
    let dropped = candidate
        .committee
        .iter()
        .filter(|i| !nodes.iter().any(|n| n.index == **i))
        .map(|i| DroppedMember {
            index: *i,
            url: String::new(),
            reason: "no reachable node reports a share of this epoch".into(),
        })
        .collect();
    EpochRecord {
        epoch: candidate.id.epoch,
        threshold: candidate.threshold,
        commitment: hex::encode(&candidate.id.commitment),
        transcript_hash: hex::encode(&candidate.id.transcript_hash),
        nodes,
        committee: candidate.committee.clone(),
        dropped,
    }
}

/// Committee members for a start request.
fn committee(members: &[(u16, &NodeView)]) -> Result<Vec<pb::CommitteeMember>, AdminError> {
    members
        .iter()
        .map(|(index, v)| {
            Ok(pb::CommitteeMember {
                index: u32::from(*index),
                node_key: hex::decode(&v.node_key)
                    .map_err(|e| AdminError::Node(format!("{}: node key: {e}", v.url)))?,
                p2p_addr: v.p2p_addr.clone(),
            })
        })
        .collect()
}
