//! What every participant agrees on before a ceremony starts (docs/PROTOCOL.md §7 "DKG",
//! §8 "Resharing"): epoch, attempt, threshold, dealers and recipients with their node keys,
//! fresh or reshare; its digest is bound into every message of every round.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::{frame, Digest32};
use crate::{dst, error::Error, shamir::NodeIndex, shamir::PublicKeySet, suite::Suite};

/// Fresh key generation, or resharing of an existing key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CeremonyKind<S: Suite> {
    /// A new key.
    Fresh,
    /// Reshare the key described by `previous` (its commitment and old committee's public
    /// shares); dealers must be members of the old committee.
    Reshare {
        /// The current key set.
        previous: PublicKeySet<S>,
    },
}

/// Everything all participants must agree on before a ceremony starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CeremonyConfig<S: Suite> {
    pub(super) epoch: u64,
    pub(super) attempt: u32,
    pub(super) threshold: u16,
    pub(super) dealers: BTreeMap<NodeIndex, S::Point>,
    pub(super) recipients: BTreeMap<NodeIndex, S::Point>,
    pub(super) kind: CeremonyKind<S>,
    pub(super) digest: Digest32,
}

impl<S: Suite> CeremonyConfig<S> {
    /// A fresh DKG among `committee` (index → registered node public key) with threshold `t`.
    pub fn dkg(
        epoch: u64,
        threshold: u16,
        committee: BTreeMap<NodeIndex, S::Point>,
    ) -> Result<Self, Error> {
        Self::build(
            epoch,
            0,
            threshold,
            committee.clone(),
            committee,
            CeremonyKind::Fresh,
        )
    }

    /// Reshare `previous` from `dealers` (old members, at least the old threshold) to
    /// `recipients` with a new threshold.
    pub fn reshare(
        epoch: u64,
        threshold: u16,
        previous: PublicKeySet<S>,
        dealers: BTreeMap<NodeIndex, S::Point>,
        recipients: BTreeMap<NodeIndex, S::Point>,
    ) -> Result<Self, Error> {
        if let Some(i) = dealers.keys().find(|i| previous.public_share(**i).is_err()) {
            return Err(Error::UnknownNode(*i));
        }
        if dealers.len() < usize::from(previous.threshold()) {
            return Err(Error::NotEnoughDealers {
                qualified: dealers.len(),
                required: usize::from(previous.threshold()),
                disqualified: Vec::new(),
            });
        }
        Self::build(
            epoch,
            0,
            threshold,
            dealers,
            recipients,
            CeremonyKind::Reshare { previous },
        )
    }

    fn build(
        epoch: u64,
        attempt: u32,
        threshold: u16,
        dealers: BTreeMap<NodeIndex, S::Point>,
        recipients: BTreeMap<NodeIndex, S::Point>,
        kind: CeremonyKind<S>,
    ) -> Result<Self, Error> {
        if threshold == 0 || usize::from(threshold) > recipients.len() {
            return Err(Error::InvalidThreshold {
                threshold,
                n: recipients.len(),
            });
        }
        let mut config = Self {
            epoch,
            attempt,
            threshold,
            dealers,
            recipients,
            kind,
            digest: [0; 32],
        };
        config.digest = config.compute_digest();
        Ok(config)
    }

    /// The same ceremony, next attempt, without `excluded` dealers (after a transcript mismatch
    /// or proven equivocation). Messages of earlier attempts no longer verify.
    pub fn restart(&self, excluded: &[NodeIndex]) -> Result<Self, Error> {
        let dealers = self
            .dealers
            .iter()
            .filter(|(i, _)| !excluded.contains(i))
            .map(|(i, k)| (*i, *k))
            .collect();
        let config = Self::build(
            self.epoch,
            self.attempt.saturating_add(1),
            self.threshold,
            dealers,
            self.recipients.clone(),
            self.kind.clone(),
        )?;
        if config.dealers.len() < config.required_dealers() {
            return Err(Error::NotEnoughDealers {
                qualified: config.dealers.len(),
                required: config.required_dealers(),
                disqualified: excluded.to_vec(),
            });
        }
        Ok(config)
    }

    /// The key epoch being created.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The attempt number (0 for the first run).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The new threshold.
    pub fn threshold(&self) -> u16 {
        self.threshold
    }

    /// Dealers by index (node public keys).
    pub fn dealers(&self) -> &BTreeMap<NodeIndex, S::Point> {
        &self.dealers
    }

    /// Recipients by index (node public keys).
    pub fn recipients(&self) -> &BTreeMap<NodeIndex, S::Point> {
        &self.recipients
    }

    /// Fresh or reshare.
    pub fn kind(&self) -> &CeremonyKind<S> {
        &self.kind
    }

    /// Digest of the whole configuration; bound into every message.
    pub fn digest(&self) -> &Digest32 {
        &self.digest
    }

    /// Qualified dealers needed: `t` for a fresh key (so at least one honest dealer when fewer
    /// than `t` are corrupt), the old threshold for a reshare (to interpolate `share_i`).
    pub fn required_dealers(&self) -> usize {
        match &self.kind {
            CeremonyKind::Fresh => usize::from(self.threshold),
            CeremonyKind::Reshare { previous } => usize::from(previous.threshold()),
        }
    }

    fn compute_digest(&self) -> Digest32 {
        let mut h = Sha256::new();
        h.update(dst::DKG_TRANSCRIPT);
        h.update(b"/config");
        frame(&mut h, S::NAME.as_bytes());
        h.update(self.epoch.to_be_bytes());
        h.update(self.attempt.to_be_bytes());
        h.update(self.threshold.to_be_bytes());
        for (role, members) in [(b'd', &self.dealers), (b'r', &self.recipients)] {
            h.update([role]);
            h.update(
                u32::try_from(members.len())
                    .unwrap_or(u32::MAX)
                    .to_be_bytes(),
            );
            for (i, key) in members {
                h.update(i.to_bytes());
                h.update(S::encode_point(key));
            }
        }
        match &self.kind {
            CeremonyKind::Fresh => h.update([0u8]),
            CeremonyKind::Reshare { previous } => {
                h.update([1u8]);
                frame(&mut h, &previous.commitment().to_bytes());
            }
        }
        h.finalize().into()
    }

    pub(super) fn dealer_key(&self, i: NodeIndex) -> Result<&S::Point, Error> {
        self.dealers.get(&i).ok_or(Error::NotAParticipant(i))
    }

    pub(super) fn recipient_key(&self, j: NodeIndex) -> Result<&S::Point, Error> {
        self.recipients.get(&j).ok_or(Error::NotAParticipant(j))
    }

    pub(super) fn pok_context(&self, dealer: NodeIndex) -> Vec<u8> {
        let mut ctx = self.digest.to_vec();
        ctx.extend_from_slice(&dealer.to_bytes());
        ctx
    }

    pub(super) fn reveal_context(&self, dealer: NodeIndex, recipient: NodeIndex) -> Vec<u8> {
        let mut ctx = self.pok_context(dealer);
        ctx.extend_from_slice(&recipient.to_bytes());
        ctx
    }
}
