//! The key epochs a node holds (docs/RELIABILITY.md "Epoch handover"): the sans-IO
//! [`Holder`] of `tkms-crypto` (the simulator drives the same type), persisted in the vault.
//! The node serves every epoch it holds — the committed one, and a newer one while its commit
//! is pending — so requests in flight across a switch succeed; the manager's commit erases every
//! older share from memory and disk, and a node without a share of the committed epoch is
//! *retired* (it serves nothing until a later ceremony gives it one). An uncommitted epoch is
//! dropped again when its ceremony is rolled back.
//!
//! Beside the (encrypted) shares, the vault keeps, authenticated, the newest committed epoch
//! and the newest epoch a ceremony was started for, so that a restarted node reports the same
//! state and never reuses an epoch number.

use std::sync::{Arc, PoisonError, RwLock};

use tkms_crypto::{
    handover::{HeldShare, Holder, Refusal},
    KeyShare, PublicKeySet,
};
use tkms_proto::ClusterSuite as S;

use crate::vault::{Marker, Vault, VaultError};

/// One epoch's share as the node serves it.
#[derive(Debug)]
pub struct ActiveShare {
    /// Key epoch.
    pub epoch: u64,
    /// This node's share.
    pub share: KeyShare<S>,
    /// The epoch's public key set (threshold, commitment, public shares).
    pub keys: PublicKeySet<S>,
    /// The transcript hash the epoch was agreed on.
    pub transcript_hash: [u8; 32],
}

impl HeldShare for ActiveShare {
    fn transcript_hash(&self) -> &[u8] {
        &self.transcript_hash
    }
}

/// Why an epoch is not served, or a change refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EpochError {
    /// Refused by the epoch rules.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Whether this node holds a share of the committed epoch.
    pub holds_share: bool,
    /// The older epochs erased.
    pub erased: Vec<u64>,
}

/// A status snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The shares held, oldest first.
    pub held: Vec<Arc<ActiveShare>>,
    /// The newest committed epoch (0: none).
    pub committed: u64,
    /// The newest epoch a ceremony was started for.
    pub last_ceremony: u64,
    /// Whether the node holds no share of the committed epoch (nor a newer one).
    pub retired: bool,
}

/// The epochs a node holds, persisted in its vault.
#[derive(Debug)]
pub struct Epochs {
    holder: RwLock<Holder<ActiveShare>>,
    vault: Option<Arc<Vault>>,
}

impl Epochs {
    /// The epochs stored in `vault`. A crash between a commit's marker and its erasures left
    /// older shares behind: they are erased now.
    pub fn load(vault: Arc<Vault>) -> Result<Self, EpochError> {
        let committed = vault.marker(Marker::CommittedEpoch)?;
        let last_ceremony = vault.marker(Marker::LastCeremonyEpoch)?;
        let mut shares = Vec::new();
        for epoch in vault.list_epochs()? {
            if let Some((share, keys, transcript_hash)) = vault.get_share::<S>(epoch)? {
                shares.push((
                    epoch,
                    ActiveShare {
                        epoch,
                        share,
                        keys,
                        transcript_hash,
                    },
                ));
            }
        }
        let epochs = Self {
            holder: RwLock::new(Holder::restore(shares, committed, last_ceremony)),
            vault: Some(vault),
        };
        if committed > 0 {
            let (_, dropped) = epochs.write().commit(committed);
            epochs.erase(&dropped)?;
        }
        Ok(epochs)
    }

    /// Epochs in memory only, holding `share` (committed) if given: for tests and tools.
    pub fn in_memory(share: Option<ActiveShare>) -> Self {
        let holder = match share {
            Some(share) => {
                let epoch = share.epoch;
                Holder::restore(vec![(epoch, share)], epoch, epoch)
            }
            None => Holder::default(),
        };
        Self {
            holder: RwLock::new(holder),
            vault: None,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Holder<ActiveShare>> {
        self.holder.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Holder<ActiveShare>> {
        self.holder.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The share of `epoch`, if this node serves it.
    pub fn get(&self, epoch: u64) -> Result<Arc<ActiveShare>, Refusal> {
        self.read().get(epoch)
    }

    /// Whether this node took part in the ceremony of `epoch` (it holds a share of it or of a
    /// later epoch, or a ceremony for it or a later one started here): a publication of an
    /// epoch it took no part in is not its committee's.
    pub fn took_part_in(&self, epoch: u64) -> bool {
        let holder = self.read();
        holder.last_ceremony() >= epoch || holder.held().any(|(held, _)| held >= epoch)
    }

    /// The newest committed epoch (0: none).
    pub fn committed(&self) -> u64 {
        self.read().committed()
    }

    /// Everything held, for a status answer.
    pub fn snapshot(&self) -> Snapshot {
        let holder = self.read();
        Snapshot {
            held: holder.held().map(|(_, s)| Arc::clone(s)).collect(),
            committed: holder.committed(),
            last_ceremony: holder.last_ceremony(),
            retired: holder.retired(),
        }
    }

    /// A ceremony for `epoch` starts here: it must be newer than every epoch held or started
    /// before (recorded durably, so the number is never reused, even after a roll-back).
    pub fn begin_ceremony(&self, epoch: u64) -> Result<(), EpochError> {
        let mut holder = self.write();
        holder.check_ceremony(epoch)?;
        if let Some(vault) = &self.vault {
            vault.set_marker(Marker::LastCeremonyEpoch, epoch)?;
        }
        holder.began(epoch);
        Ok(())
    }

    /// Hold the share a ceremony produced (stored before it is served). The previous epochs
    /// stay served until the manager commits.
    pub fn adopt(&self, share: ActiveShare) -> Result<(), EpochError> {
        if let Some(vault) = &self.vault {
            vault.put_share(
                share.epoch,
                &share.share,
                &share.keys,
                share.transcript_hash,
            )?;
        }
        self.write().adopt(share.epoch, share);
        Ok(())
    }

    /// The manager committed `epoch` (agreed on `transcript_hash`): record it durably, then
    /// erase every older share from the vault and from memory (a share still in use by a
    /// request in progress is wiped when that request ends).
    pub fn commit(&self, epoch: u64, transcript_hash: &[u8]) -> Result<Committed, EpochError> {
        let (holds_share, dropped) = {
            let mut holder = self.write();
            holder.check_commit(epoch, transcript_hash)?;
            if epoch > holder.committed() {
                if let Some(vault) = &self.vault {
                    vault.set_marker(Marker::CommittedEpoch, epoch)?;
                }
            }
            holder.commit(epoch)
        };
        let erased = self.erase(&dropped)?;
        if !holds_share {
            tracing::warn!(
                epoch,
                "this node holds no share of the committed epoch: retired, it serves nothing"
            );
        }
        Ok(Committed {
            holds_share,
            erased,
        })
    }

    /// Drop the uncommitted `epoch` (its ceremony was rolled back). Whether it was held.
    pub fn abort(&self, epoch: u64) -> Result<bool, EpochError> {
        let mut holder = self.write();
        holder.check_abort(epoch)?;
        if let Some(vault) = &self.vault {
            vault.delete_epoch(epoch)?;
        }
        let dropped = holder.abort(epoch);
        if dropped {
            tracing::warn!(epoch, "uncommitted epoch rolled back: its share is erased");
        }
        Ok(dropped)
    }

    /// Erase `dropped` epochs (and any other stored epoch below the committed one) from the
    /// vault; the epochs erased.
    fn erase(&self, dropped: &[u64]) -> Result<Vec<u64>, EpochError> {
        let mut erased = dropped.to_vec();
        if let Some(vault) = &self.vault {
            let committed = self.read().committed();
            for e in vault.list_epochs()? {
                if e < committed && vault.delete_epoch(e)? && !erased.contains(&e) {
                    erased.push(e);
                }
            }
        }
        erased.sort_unstable();
        if !erased.is_empty() {
            tracing::info!(?erased, "superseded shares erased");
        }
        Ok(erased)
    }
}
