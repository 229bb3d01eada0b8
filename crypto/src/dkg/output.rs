//! What a ceremony leaves a node with: the result of round 3 ([`super::finalize`]), which
//! round 4 ([`super::confirm`]) checks the others agree on, and the misbehaviour it found.

use crate::{
    shamir::{KeyShare, NodeIndex, PublicKeySet},
    suite::Suite,
};

use super::Digest32;

/// Misbehaviour found while finalizing, for the operator's log and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Fault {
    /// A dealer signed two different dealings.
    Equivocation,
    /// A dealer's share was shown (by a verified reveal) not to match its commitments.
    BadShare,
    /// A recipient accused a dealer whose share was in fact correct.
    FalseComplaint,
    /// A recipient's accusation carried an invalid reveal proof.
    InvalidComplaint,
}

/// The result of a ceremony for one node.
#[derive(Debug)]
pub struct CeremonyOutput<S: Suite> {
    pub(super) epoch: u64,
    pub(super) share: Option<KeyShare<S>>,
    pub(super) public: PublicKeySet<S>,
    pub(super) qualified: Vec<NodeIndex>,
    pub(super) faults: Vec<(NodeIndex, Fault)>,
    pub(super) transcript_hash: Digest32,
}

impl<S: Suite> CeremonyOutput<S> {
    /// The epoch created.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    /// This node's new share (`None` for a dealer that is not a recipient).
    pub fn share(&self) -> Option<&KeyShare<S>> {
        self.share.as_ref()
    }
    /// Take the share out.
    pub fn into_share(self) -> Option<KeyShare<S>> {
        self.share
    }
    /// The new public key set (same public key after a reshare).
    pub fn public(&self) -> &PublicKeySet<S> {
        &self.public
    }
    /// QUAL: the dealers whose dealings make up the key.
    pub fn qualified(&self) -> &[NodeIndex] {
        &self.qualified
    }
    /// Misbehaviour detected, by node.
    pub fn faults(&self) -> &[(NodeIndex, Fault)] {
        &self.faults
    }
    /// The transcript hash all honest nodes sign.
    pub fn transcript_hash(&self) -> &Digest32 {
        &self.transcript_hash
    }
}
