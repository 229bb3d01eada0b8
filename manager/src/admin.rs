//! Key epochs and ceremonies (DESIGN.md §3 "DKG", "Resharing", §4.1 "Admin"): the manager
//! learns what each node is (its node key, libp2p address, and the epoch it serves), starts a
//! DKG or a reshare at every committee member with one signed request, checks that the members
//! that finished agree on the new key set and transcript, and then serves the new epoch.
//!
//! The manager's view of the epoch (public only: epoch, commitment, transcript hash, which
//! node serves which index) is kept in a JSON state file so a restarted manager serves again
//! at once; without the file it is recovered from the nodes' own status.
//!
//! With an on-chain registry (DESIGN.md §4.3) the manager also publishes every epoch it adopts
//! (`publishEpoch`, signed by its wallet, which holds the registry's manager role): the nodes
//! serve only the published epoch. A failed publication is an error of the admin call, and a
//! restarted manager publishes the served epoch if the registry lags behind it
//! ([`Admin::publish_served`]).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tkms_crypto::{
    shamir::Commitment, suite::Encoded, NodeIndex, PublicKeySet, SecretScalar, Suite,
};
use tkms_proto::{
    node::v1::{self as pb, node_client::NodeClient},
    tls::ManagerTls,
    SignedRequest,
};
use tkms_registry::{
    access::public_shares_hash, Bytes, EpochPublication, RegistryClient, WriteReceipt, B256,
};
use tokio::task::JoinSet;

use crate::cluster::{Batching, Cluster, ClusterError, Fanout, NodeEndpoint, S};

/// What a node reports serving: (epoch, commitment, transcript hash).
type Reported = (u64, Vec<u8>, Vec<u8>);

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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
}

impl EpochRecord {
    /// The key set of the epoch.
    pub fn keys(&self) -> Result<PublicKeySet<S>, AdminError> {
        let bytes = hex::decode(&self.commitment)
            .map_err(|e| AdminError::State(format!("commitment hex: {e}")))?;
        let commitment = Commitment::<S>::from_bytes(&bytes)
            .map_err(|e| AdminError::State(format!("commitment: {e}")))?;
        let committee = self
            .nodes
            .iter()
            .map(|n| NodeIndex::new(n.index).ok_or_else(|| AdminError::State("index 0".into())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PublicKeySet::new(commitment, committee))
    }

    /// The compressed public key, hex.
    pub fn public_key_hex(&self) -> Result<String, AdminError> {
        Ok(hex::encode(self.keys()?.public_key_encoded().bytes()))
    }

    /// What the manager publishes on chain for this epoch (`publishEpoch`), for the key set
    /// of `committee` (every index the ceremony dealt a share to, which may include members
    /// that did not finish; default: the nodes of the record). The public-shares hash is
    /// [`public_shares_hash`], the one a node recomputes before serving.
    pub fn publication(&self, committee: Option<&[u16]>) -> Result<EpochPublication, AdminError> {
        let indices: Vec<u16> = match committee {
            Some(c) => c.to_vec(),
            None => self.nodes.iter().map(|n| n.index).collect(),
        };
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
    /// Epochs in the order they were produced; the last is served.
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

    /// Write atomically.
    pub fn save(&self, path: &Path) -> Result<(), AdminError> {
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_vec_pretty(self).map_err(|e| AdminError::State(e.to_string()))?;
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| AdminError::State(format!("{}: {e}", path.display())))
    }
}

/// A node's self-description, from its `Status`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// Its URL.
    pub url: String,
    /// Whether it answered.
    pub reachable: bool,
    /// Its index in its latest epoch (0 before any).
    pub index: u32,
    /// Its latest epoch (0 before any).
    pub epoch: u64,
    /// Node key, hex.
    pub node_key: String,
    /// libp2p address.
    pub p2p_addr: String,
    /// Ceremony in progress.
    pub ceremony: String,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    commitment: Vec<u8>,
    #[serde(skip)]
    transcript_hash: Vec<u8>,
    #[serde(skip)]
    threshold: u32,
}

/// The epoch being served, swapped atomically after a ceremony.
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

    /// Serving `cluster`, whose nodes are at `nodes`.
    pub fn serving(cluster: Cluster, nodes: Vec<EpochNode>) -> Self {
        let keys = cluster.keys();
        let record = EpochRecord {
            epoch: cluster.epoch(),
            threshold: keys.threshold(),
            commitment: hex::encode(keys.commitment().to_bytes()),
            transcript_hash: String::new(),
            nodes,
        };
        Self::new(Some((cluster, record)))
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
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, cluster: Cluster, record: EpochRecord) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Arc::new(cluster), record));
    }
}

/// Runs ceremonies and keeps the served epoch.
pub struct Admin {
    manager_key: SecretScalar<S>,
    nodes: Vec<String>,
    timeout: Duration,
    round_timeout: Duration,
    state_file: Option<PathBuf>,
    served: Arc<Served>,
    busy: tokio::sync::Mutex<()>,
    publisher: Option<RegistryClient>,
    fanout: Fanout,
    batching: Batching,
    tls: ManagerTls,
}

/// Longest wait for an epoch's publication to be mined.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(120);

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
            publisher: None,
            fanout: Fanout::All,
            batching: Batching::default(),
            tls,
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

    /// Publish every adopted epoch on the on-chain registry through `publisher`, a client
    /// that signs as the registry's manager.
    #[must_use]
    pub fn with_publisher(mut self, publisher: RegistryClient) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// Publish `record` (key set of `committee`, see [`EpochRecord::publication`]); `Ok(None)`
    /// without a publisher. A failure is logged and returned, saying what to do.
    async fn publish(
        &self,
        record: &EpochRecord,
        committee: Option<&[u16]>,
    ) -> Result<Option<WriteReceipt>, AdminError> {
        let Some(publisher) = &self.publisher else {
            return Ok(None);
        };
        let publication = record.publication(committee)?;
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
                    "epoch {} is adopted (its nodes hold their shares and the manager serves it), \
                     but publishing it on the registry {} failed: {e}. The nodes serve only the \
                     published epoch: make sure the manager wallet {} holds the registry's \
                     manager role and ether, then restart the manager, which publishes the \
                     served epoch when the registry lags behind it",
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
        self.publish(&record, None).await
    }

    /// The served epoch.
    pub fn served(&self) -> &Arc<Served> {
        &self.served
    }

    /// The configured node URLs.
    pub fn node_urls(&self) -> &[String] {
        &self.nodes
    }

    fn client(&self, url: &str) -> Result<NodeClient<tonic::transport::Channel>, AdminError> {
        Self::client_with(&self.tls, url, self.timeout)
    }

    /// A client that accepts only the node holding `key`.
    fn pinned_client(
        &self,
        url: &str,
        key: &Encoded<S>,
    ) -> Result<NodeClient<tonic::transport::Channel>, AdminError> {
        let tls = ManagerTls::pinned(&self.manager_key, key)
            .map_err(|e| AdminError::Node(format!("{url}: {e}")))?;
        Self::client_with(&tls, url, self.timeout)
    }

    fn client_with(
        tls: &ManagerTls,
        url: &str,
        timeout: Duration,
    ) -> Result<NodeClient<tonic::transport::Channel>, AdminError> {
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
                Ok(s) => NodeView {
                    url,
                    reachable: true,
                    index: s.index,
                    epoch: s.epoch,
                    node_key: hex::encode(&s.node_key),
                    p2p_addr: s.p2p_addr,
                    ceremony: s.ceremony,
                    error: None,
                    commitment: s.commitment,
                    transcript_hash: s.transcript_hash,
                    threshold: s.threshold,
                },
                Err(e) => NodeView {
                    url,
                    reachable: false,
                    index: 0,
                    epoch: 0,
                    node_key: String::new(),
                    p2p_addr: String::new(),
                    ceremony: String::new(),
                    error: Some(e),
                    commitment: Vec::new(),
                    transcript_hash: Vec::new(),
                    threshold: 0,
                },
            };
            views.push((k, view));
        }
        views.sort_by_key(|(k, _)| *k);
        views.into_iter().map(|(_, v)| v).collect()
    }

    /// Serve the last epoch of the state file, or else the latest epoch that at least its
    /// threshold of reachable nodes report identically. `Ok(None)` before any DKG.
    pub async fn recover(&self) -> Result<Option<EpochRecord>, AdminError> {
        if let Some(path) = &self.state_file {
            if let Some(record) = ManagerState::load(path)?.epochs.pop() {
                self.serve(record.clone())?;
                return Ok(Some(record));
            }
        }
        let views = self.survey(&self.nodes).await;
        let mut groups: BTreeMap<Reported, Vec<&NodeView>> = BTreeMap::new();
        for v in views.iter().filter(|v| v.reachable && v.epoch > 0) {
            groups
                .entry((v.epoch, v.commitment.clone(), v.transcript_hash.clone()))
                .or_default()
                .push(v);
        }
        let best = groups.into_iter().rev().find(|(_, members)| {
            members.first().is_some_and(|m| {
                members.len() >= usize::try_from(m.threshold).unwrap_or(usize::MAX)
            })
        });
        let Some(((epoch, commitment, transcript), members)) = best else {
            return Ok(None);
        };
        let record = EpochRecord {
            epoch,
            threshold: members
                .first()
                .and_then(|m| u16::try_from(m.threshold).ok())
                .unwrap_or_default(),
            commitment: hex::encode(commitment),
            transcript_hash: hex::encode(transcript),
            nodes: members
                .iter()
                .filter_map(|m| {
                    Some(EpochNode {
                        index: u16::try_from(m.index).ok()?,
                        url: m.url.clone(),
                        node_key: m.node_key.clone(),
                    })
                })
                .collect(),
        };
        self.serve(record.clone())?;
        self.persist(&record)?;
        Ok(Some(record))
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
        self.served.set(cluster, record);
        Ok(())
    }

    fn persist(&self, record: &EpochRecord) -> Result<(), AdminError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let mut state = ManagerState::load(path)?;
        state.epochs.retain(|e| e.epoch != record.epoch);
        state.epochs.push(record.clone());
        state.save(path)
    }

    /// Every epoch recorded so far.
    pub fn epochs(&self) -> Result<Vec<EpochRecord>, AdminError> {
        match &self.state_file {
            Some(path) => Ok(ManagerState::load(path)?.epochs),
            None => Ok(self.served.record().into_iter().collect()),
        }
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
    /// current epoch keep their index and deal; new nodes get the next free indices.
    pub async fn reshare(
        &self,
        urls: Vec<String>,
        threshold: u16,
    ) -> Result<EpochRecord, AdminError> {
        let Ok(_busy) = self.busy.try_lock() else {
            return Err(AdminError::Busy);
        };
        let current = self
            .served
            .record()
            .ok_or_else(|| AdminError::Invalid("no epoch to reshare: run a DKG first".into()))?;
        let views = self.reachable(&urls).await?;
        // Old holders that are reachable deal; they need not all be in the new committee.
        let old_urls: Vec<String> = current.nodes.iter().map(|n| n.url.clone()).collect();
        let old_views = self.survey(&old_urls).await;
        let dealers: Vec<(u16, &NodeView)> = current
            .nodes
            .iter()
            .zip(&old_views)
            .filter(|(_, v)| v.reachable && v.epoch == current.epoch)
            .map(|(n, v)| (n.index, v))
            .collect();
        if dealers.len() < usize::from(current.threshold) {
            return Err(AdminError::Node(format!(
                "only {} of the {} old share holders needed to reshare are reachable",
                dealers.len(),
                current.threshold
            )));
        }
        let mut next_free = current.nodes.iter().map(|n| n.index).max().unwrap_or(0);
        let mut members: Vec<(u16, &NodeView)> = Vec::new();
        for v in &views {
            let index = if let Some(n) = current.nodes.iter().find(|n| n.url == v.url) {
                n.index
            } else {
                next_free = next_free
                    .checked_add(1)
                    .ok_or_else(|| AdminError::Invalid("too many nodes".into()))?;
                next_free
            };
            members.push((index, v));
        }
        let request = pb::StartCeremonyRequest {
            kind: pb::CeremonyKind::Reshare.into(),
            epoch: self.next_epoch(&views).max(current.epoch + 1),
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

    fn next_epoch(&self, views: &[NodeView]) -> u64 {
        let seen = views.iter().map(|v| v.epoch).max().unwrap_or(0);
        let served = self.served.record().map_or(0, |r| r.epoch);
        seen.max(served) + 1
    }

    /// Send the signed start request to every participant, wait for all, check agreement,
    /// and serve the result.
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
        let mut agreed: BTreeMap<(Vec<u8>, Vec<u8>), Vec<EpochNode>> = BTreeMap::new();
        let mut failures = Vec::new();
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
                Ok(Err(status)) => failures.push(format!("node {index}: {}", status.message())),
                Err(_) => failures.push(format!("node {index}: no answer within {wait:?}")),
            }
        }
        if !failures.is_empty() {
            tracing::warn!(?failures, "ceremony members that did not finish");
        }
        if agreed.len() > 1 {
            return Err(AdminError::Ceremony(format!(
                "nodes finished with {} different transcripts; the epoch is not adopted",
                agreed.len()
            )));
        }
        let Some(((commitment, transcript), mut nodes)) = agreed.into_iter().next() else {
            return Err(AdminError::Ceremony(format!(
                "no node finished the ceremony: {}",
                failures.join("; ")
            )));
        };
        if nodes.len() < usize::from(threshold) {
            return Err(AdminError::Ceremony(format!(
                "only {} nodes hold a share of the new epoch, fewer than t = {threshold}: {}",
                nodes.len(),
                failures.join("; ")
            )));
        }
        nodes.sort_by_key(|n| n.index);
        let record = EpochRecord {
            epoch: request.epoch,
            threshold,
            commitment: hex::encode(commitment),
            transcript_hash: hex::encode(transcript),
            nodes,
        };
        let keys = record.keys()?;
        if let Some(previous) = self.served.record() {
            let old = previous.keys()?;
            if old.public_key_encoded() != keys.public_key_encoded() {
                return Err(AdminError::Ceremony(
                    "the reshare produced a different public key; the epoch is not adopted".into(),
                ));
            }
        }
        self.persist(&record)?;
        self.serve(record.clone())?;
        tracing::info!(
            epoch = record.epoch,
            public_key = %hex::encode(S::encode_point(&keys.public_key())),
            "new epoch adopted"
        );
        // The nodes' key set covers every recipient, including any that did not finish.
        let recipients: Vec<u16> = request
            .recipients
            .iter()
            .filter_map(|m| u16::try_from(m.index).ok())
            .collect();
        self.publish(&record, Some(&recipients)).await?;
        Ok(record)
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
