//! What the manager sees of the nodes (their `Status`), what it serves, and whether it can
//! serve (`/health`).

use std::{
    sync::{Arc, PoisonError, RwLock},
    time::Instant,
};

use serde::Serialize;
use tkms_crypto::handover::{EpochId, Held, Report};
use tkms_proto::node::v1 as pb;

use super::EpochRecord;
use crate::cluster::Cluster;

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
    pub(super) fn unreachable(url: String, error: String) -> Self {
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

    pub(super) fn from_status(url: String, s: pb::StatusResponse) -> Self {
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
    pub(super) fn report(&self) -> Report<String> {
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
    pub(super) fn holds(&self, record: &EpochRecord) -> bool {
        self.held
            .iter()
            .any(|h| h.epoch == record.epoch && h.transcript_hash == record.transcript_hash)
    }

    /// The newest epoch number it has seen in any way.
    pub(super) fn newest_seen(&self) -> u64 {
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
    pub(super) fn set(&self, cluster: Cluster, record: EpochRecord) -> Option<Arc<Cluster>> {
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
    pub(super) at: Option<Instant>,
}
