//! Epoch handover under load (docs/RELIABILITY.md "Epoch handover"): a manager serves a steady
//! stream of delegations while it reshares the key to a new committee, and may crash at any
//! point of the reshare. It drives the real code: each node's epochs are a
//! [`tkms_crypto::handover::Holder`] (as in the node), each request a
//! [`tkms_crypto::collect::Collector`] with [`tkms_crypto::collect::Breakers`] (as in the
//! manager), and every reconciliation [`tkms_crypto::handover::decide`] on the nodes' reports
//! (as the manager at start and every half second). The ceremony itself is not re-run here (the
//! DKG scenarios do that): its result, the new committee's shares of the same key, is dealt in
//! advance and each member adopts its share when its part of the ceremony ends.
//!
//! The manager keeps across a crash only what the real one keeps on disk: the committed epoch.

use std::collections::{BTreeMap, BTreeSet};

use tkms_crypto::{
    collect::{Breakers, Collector},
    delegation::{DelegationRequest, PartialDelegation},
    ecies,
    handover::{EpochId, Held, HeldShare, Holder, Report},
    KeyShare, PublicKeySet,
};

use crate::sim::{Addr, Message, Time, MS};
use tkms_crypto::ClusterSuite as S;

mod actor;
mod manager;
mod run;

pub use run::{handover_invariant, run_handover, HandoverRun, HandoverScenario};

/// The manager's address.
pub const MANAGER: Addr = 0;

/// How often the manager reconciles with the nodes.
pub const RECONCILE: Time = 500 * MS;

/// A node's share of one epoch.
#[derive(Clone, Debug)]
pub struct SimShare {
    share: KeyShare<S>,
    keys: PublicKeySet<S>,
    transcript: [u8; 32],
}

impl HeldShare for SimShare {
    fn transcript_hash(&self) -> &[u8] {
        &self.transcript
    }
}

/// An epoch as the manager serves it.
#[derive(Clone, Debug)]
struct SimEpoch {
    epoch: u64,
    keys: PublicKeySet<S>,
    transcript: [u8; 32],
    holders: Vec<Addr>,
}

/// Messages.
#[derive(Clone, Debug)]
pub enum HMsg {
    /// Manager → node: a partial for request `id` of `epoch`.
    Partial {
        /// Request number.
        id: u32,
        /// What to compute.
        request: Box<DelegationRequest<S>>,
    },
    /// Node → manager: the partial, or a refusal.
    PartialReply {
        /// Request number.
        id: u32,
        /// `None`: refused (does not hold the epoch).
        partial: Option<Box<PartialDelegation<S>>>,
    },
    /// Manager → node: "what do you hold?"
    Status,
    /// Node → manager.
    StatusReply(Box<Report<Addr>>),
    /// Manager → node: take part in the reshare to `epoch`.
    Start {
        /// The new epoch.
        epoch: u64,
    },
    /// Node → manager: its part of the ceremony ended.
    Done {
        /// The epoch.
        epoch: u64,
        /// Whether it holds a share of it.
        holds: bool,
    },
    /// Manager → node: `epoch` is committed.
    Commit {
        /// The epoch.
        epoch: u64,
        /// Its transcript hash.
        transcript: [u8; 32],
    },
    /// Manager → node: drop the uncommitted `epoch`.
    Abort {
        /// The epoch.
        epoch: u64,
    },
}

impl Message for HMsg {
    fn wire_size(&self) -> usize {
        match self {
            Self::Partial { .. } => 100,
            Self::PartialReply { .. } => 140,
            Self::StatusReply(r) => 40 + 120 * r.held.len(),
            _ => 48,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Partial { .. } => "partial-request",
            Self::PartialReply { .. } => "partial",
            Self::Status => "status",
            Self::StatusReply(_) => "status-reply",
            Self::Start { .. } => "start",
            Self::Done { .. } => "done",
            Self::Commit { .. } => "commit",
            Self::Abort { .. } => "abort",
        }
    }
}

/// DELIBERATELY BROKEN variants, each there to show that the check meant to catch it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoverBroken {
    /// Nodes drop the previous epoch as soon as their part of the ceremony ends (before the
    /// manager switches): requests in flight, and those sent until the switch, fail.
    NodesSwitchOnFinish,
    /// The manager trusts its own file: it never asks the nodes what they hold, so a ceremony
    /// its crash interrupted is never committed nor rolled back, and leavers keep old shares.
    ManagerTrustsItsFile,
}

/// A node.
pub struct HNode {
    index: Addr,
    holder: Holder<SimShare>,
    next: Option<SimShare>,
    in_ceremony: Option<u64>,
    ceremony_time: Time,
    broken: Option<HandoverBroken>,
}

impl HNode {
    fn report(&self) -> Report<Addr> {
        Report {
            node: self.index,
            held: self
                .holder
                .held()
                .map(|(epoch, s)| Held {
                    id: epoch_id(epoch, &s.keys, &s.transcript),
                    index: s.share.index().get(),
                    threshold: s.keys.threshold(),
                    committee: s.keys.public_shares().map(|(i, _)| i.get()).collect(),
                })
                .collect(),
            committed: self.holder.committed(),
            in_ceremony: self.in_ceremony.is_some(),
        }
    }

    /// Its shares, for the final checks.
    pub fn held_epochs(&self) -> Vec<u64> {
        self.holder.held().map(|(e, _)| e).collect()
    }

    /// The epoch it was told is committed.
    pub fn committed(&self) -> u64 {
        self.holder.committed()
    }
}

fn epoch_id(epoch: u64, keys: &PublicKeySet<S>, transcript: &[u8; 32]) -> EpochId {
    EpochId {
        epoch,
        commitment: keys.commitment().to_bytes(),
        transcript_hash: transcript.to_vec(),
    }
}

/// What happened to one request.
#[derive(Clone, Debug, Default)]
pub struct HRecord {
    /// The epoch it was served from.
    pub epoch: u64,
    /// Issue time.
    pub issued: Time,
    /// Completion time.
    pub finished: Option<Time>,
    /// Whether it was served (and the secret opened the ciphertext).
    pub served: bool,
    /// Cut off by a manager crash (the client's connection broke; it retries).
    pub interrupted: bool,
}

struct HOpen {
    collector: Collector<&'static str>,
    request: DelegationRequest<S>,
    keys: PublicKeySet<S>,
    verified: Vec<tkms_crypto::delegation::VerifiedPartialDelegation<S>>,
}

struct CeremonyRun {
    epoch: u64,
    waiting: BTreeSet<Addr>,
    holders: Vec<Addr>,
}

/// The manager.
pub struct HManager {
    recorded: Option<SimEpoch>,
    serving: Option<SimEpoch>,
    next: SimEpoch,
    participants: Vec<Addr>,
    nodes: Vec<Addr>,
    breakers: Breakers,
    open: BTreeMap<u32, HOpen>,
    ceremony: Option<CeremonyRun>,
    statuses: BTreeMap<Addr, Report<Addr>>,
    records: Vec<HRecord>,
    ciphertext: ecies::Ciphertext<S>,
    plaintext: Vec<u8>,
    reshare_at: Time,
    interval: Time,
    stop_at: Time,
    node_timeout: Time,
    broken: Option<HandoverBroken>,
}

/// The manager's timers, typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HTimer {
    Issue,
    Call { id: u32, node: Addr },
    Reconcile,
    Decide,
    Reshare,
    CeremonyTimeout(u64),
    CeremonyEnd(u64),
}

/// The actors of a handover run.
pub enum HActor {
    /// The manager at address 0.
    Manager(Box<HManager>),
    /// A node at its index.
    Node(Box<HNode>),
}
