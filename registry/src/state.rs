//! Domain types of the registry and [`RegistryState`], the registry's content at one block.
//!
//! [`RegistryState::apply`] is the sans-IO half of the cache: it folds one contract event into
//! the state exactly as the contract changed its storage, so a snapshot read at block `b` plus
//! the events of blocks `b+1..=c` equals a snapshot read at block `c` (the cache tests check
//! this against a real chain).

use std::collections::{BTreeMap, BTreeSet};

use alloy::primitives::{Address, Bytes, B256};

use crate::bindings::TkmsRegistry::{self, TkmsRegistryEvents};

/// A registered KMS node (the contract's `Node`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Shamir x-coordinate of the node's share (non-zero).
    pub index: u16,
    /// Binary libp2p peer id (1..=64 bytes).
    pub peer_id: Bytes,
    /// Endpoints (gRPC URLs, multiaddrs): 1..=8 entries of 1..=256 bytes.
    pub endpoints: Vec<String>,
    /// Node public key, SEC1 compressed secp256k1 (33 bytes).
    pub public_key: Bytes,
    /// Digest of the node's TEE attestation (zero when not attested).
    pub attestation_digest: B256,
}

/// The contract's `Node` and the events that carry a whole node record have the same fields.
macro_rules! node_record_from {
    ($($source:ty),*) => {$(
        impl From<$source> for NodeRecord {
            fn from(n: $source) -> Self {
                Self {
                    index: n.index,
                    peer_id: n.peerId,
                    endpoints: n.endpoints,
                    public_key: n.publicKey,
                    attestation_digest: n.attestationDigest,
                }
            }
        }
    )*};
}

node_record_from!(
    TkmsRegistry::Node,
    TkmsRegistry::NodeRegistered,
    TkmsRegistry::NodeUpdated
);

/// What the manager publishes for a key epoch (the arguments of `publishEpoch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochPublication {
    /// Epoch number, greater than the current one (the first is >= 1).
    pub epoch: u64,
    /// Threshold, `1 <= t <= n`.
    pub t: u16,
    /// Committee size, at most the number of registered nodes.
    pub n: u16,
    /// Cluster public key, SEC1 compressed secp256k1 (33 bytes).
    pub public_key: Bytes,
    /// Hash of the epoch's public shares (non-zero).
    pub public_shares_hash: B256,
    /// Hash of the agreed DKG/reshare transcript (non-zero).
    pub transcript_hash: B256,
}

/// A published epoch (the contract's `Epoch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochRecord {
    /// What was published.
    pub publication: EpochPublication,
    /// Timestamp of the block that published it.
    pub published_at: u64,
}

impl From<TkmsRegistry::Epoch> for EpochRecord {
    fn from(e: TkmsRegistry::Epoch) -> Self {
        Self {
            publication: EpochPublication {
                epoch: e.epoch,
                t: e.t,
                n: e.n,
                public_key: e.publicKey,
                public_shares_hash: e.publicSharesHash,
                transcript_hash: e.transcriptHash,
            },
            published_at: e.publishedAt,
        }
    }
}

/// Everything the registry holds that the cluster acts on, as of one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryState {
    /// Block this state is as of.
    pub block: u64,
    /// Hash of that block (a different hash at the same height later means a reorg).
    pub block_hash: B256,
    /// Owner (governance).
    pub owner: Address,
    /// Account that may accept ownership, if a transfer is pending.
    pub pending_owner: Option<Address>,
    /// The only account that may publish epochs, if any.
    pub manager: Option<Address>,
    /// The gateway `gateway()` returns, if any gateway is registered.
    pub primary_gateway: Option<Address>,
    /// Every gateway.
    pub gateways: BTreeSet<Address>,
    /// Every runner.
    pub runners: BTreeSet<Address>,
    /// Registered nodes by index.
    pub nodes: BTreeMap<u16, NodeRecord>,
    /// The current (latest) epoch, if one was published.
    pub epoch: Option<EpochRecord>,
    /// keccak256 of the key the owner approved for the next key change, if any.
    pub approved_key_hash: Option<B256>,
}

fn nonzero(a: Address) -> Option<Address> {
    (!a.is_zero()).then_some(a)
}

impl RegistryState {
    /// The current cluster public key (`kmsPublicKey()`), if an epoch was published.
    pub fn kms_public_key(&self) -> Option<&Bytes> {
        self.epoch.as_ref().map(|e| &e.publication.public_key)
    }

    /// Whether `account` holds the gateway role.
    pub fn is_gateway(&self, account: Address) -> bool {
        self.gateways.contains(&account)
    }

    /// Whether `account` holds the runner role.
    pub fn is_runner(&self, account: Address) -> bool {
        self.runners.contains(&account)
    }

    /// Fold one event into the state, as the contract changed its storage when it emitted it.
    /// `block_timestamp` is the timestamp of the event's block (used for `EpochPublished`).
    pub fn apply(&mut self, event: TkmsRegistryEvents, block_timestamp: u64) {
        use TkmsRegistryEvents as E;
        match event {
            E::OwnershipTransferStarted(e) => self.pending_owner = nonzero(e.newOwner),
            E::OwnershipTransferred(e) => {
                self.owner = e.newOwner;
                self.pending_owner = None;
            }
            E::ManagerChanged(e) => self.manager = nonzero(e.newManager),
            E::GatewayAdded(e) => {
                self.gateways.insert(e.account);
            }
            E::GatewayRemoved(e) => {
                self.gateways.remove(&e.account);
            }
            E::PrimaryGatewayChanged(e) => self.primary_gateway = nonzero(e.newPrimary),
            E::RunnerAdded(e) => {
                self.runners.insert(e.account);
            }
            E::RunnerRemoved(e) => {
                self.runners.remove(&e.account);
            }
            E::NodeRegistered(e) => {
                self.nodes.insert(e.index, e.into());
            }
            E::NodeUpdated(e) => {
                self.nodes.insert(e.index, e.into());
            }
            E::NodeRemoved(e) => {
                self.nodes.remove(&e.index);
            }
            E::KeyChangeApproved(e) => self.approved_key_hash = Some(e.keyHash),
            E::KeyChangeCancelled(_) => self.approved_key_hash = None,
            E::EpochPublished(e) => {
                // A key change after genesis consumes the owner's approval (the contract
                // reverts it unless the approval was for exactly this key).
                if self
                    .kms_public_key()
                    .is_some_and(|current| *current != e.publicKey)
                {
                    self.approved_key_hash = None;
                }
                self.epoch = Some(EpochRecord {
                    publication: EpochPublication {
                        epoch: e.epoch,
                        t: e.t,
                        n: e.n,
                        public_key: e.publicKey,
                        public_shares_hash: e.publicSharesHash,
                        transcript_hash: e.transcriptHash,
                    },
                    published_at: block_timestamp,
                });
            }
            // The key itself arrives with the EpochPublished event that follows it.
            E::PublicKeyChanged(_) => {}
        }
    }
}
