//! Round 4, agreement (docs/PROTOCOL.md §7 step 5): the epoch is final when `t` recipients
//! signed the same transcript hash; a signed different hash is a
//! [`Error::TranscriptMismatch`] and the driver restarts with [`CeremonyConfig::restart`].

use std::collections::BTreeSet;

use rand_core::CryptoRngCore;

use super::{signed_message, CeremonyConfig, CeremonyOutput, Digest32};
use crate::{
    dst,
    error::Error,
    schnorr::{Signature, SIGNATURE_LEN},
    secret::SecretScalar,
    shamir::NodeIndex,
    suite::Suite,
};

/// A recipient's signature on the transcript hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confirmation<S: Suite> {
    node: NodeIndex,
    transcript_hash: Digest32,
    signature: Signature<S>,
}

/// Encoded confirmation length.
pub const CONFIRMATION_LEN: usize = 2 + 32 + SIGNATURE_LEN;

impl<S: Suite> Confirmation<S> {
    pub(super) fn sign(
        config: &CeremonyConfig<S>,
        node: NodeIndex,
        node_key: &SecretScalar<S>,
        transcript_hash: Digest32,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, Error> {
        if config.recipient_key(node)? != &node_key.public_point() {
            return Err(Error::NotAParticipant(node));
        }
        let msg = Self::message(config, node, &transcript_hash);
        Ok(Self {
            node,
            transcript_hash,
            signature: Signature::sign(dst::SIGNATURE, node_key, &msg, rng),
        })
    }

    fn message(config: &CeremonyConfig<S>, node: NodeIndex, hash: &Digest32) -> Vec<u8> {
        let mut body = node.to_bytes().to_vec();
        body.extend_from_slice(hash);
        signed_message(dst::message::CONFIRMATION, &config.digest, &body)
    }

    /// The node that signed.
    pub fn node(&self) -> NodeIndex {
        self.node
    }

    /// The signed transcript hash.
    pub fn transcript_hash(&self) -> &Digest32 {
        &self.transcript_hash
    }

    /// Wire encoding.
    pub fn to_bytes(&self) -> [u8; CONFIRMATION_LEN] {
        crate::codec::concat(&[
            &self.node.to_bytes(),
            &self.transcript_hash,
            &self.signature.to_bytes(),
        ])
    }

    /// Strict decoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let bytes = crate::codec::exact::<CONFIRMATION_LEN>(bytes)?;
        Ok(Self {
            node: NodeIndex::from_bytes(&bytes[..2])?,
            transcript_hash: *crate::codec::exact::<32>(&bytes[2..34])?,
            signature: Signature::from_bytes(&bytes[34..])?,
        })
    }
}

/// Round 4: the epoch is final when at least `t` distinct recipients signed our transcript
/// hash. Any validly signed different hash means the views diverged: restart.
pub fn confirm<S: Suite>(
    config: &CeremonyConfig<S>,
    output: &CeremonyOutput<S>,
    confirmations: &[Confirmation<S>],
) -> Result<(), Error> {
    let mut agreeing = BTreeSet::new();
    let mut disagreeing = BTreeSet::new();
    for c in confirmations {
        let Ok(key) = config.recipient_key(c.node) else {
            continue;
        };
        if !c.signature.verify(
            dst::SIGNATURE,
            key,
            &Confirmation::message(config, c.node, &c.transcript_hash),
        ) {
            continue;
        }
        if c.transcript_hash == output.transcript_hash {
            agreeing.insert(c.node);
        } else {
            disagreeing.insert(c.node);
        }
    }
    if !disagreeing.is_empty() {
        return Err(Error::TranscriptMismatch {
            disagreeing: disagreeing.into_iter().collect(),
        });
    }
    if agreeing.len() < usize::from(config.threshold) {
        return Err(Error::NotEnoughConfirmations {
            got: agreeing.len(),
            required: usize::from(config.threshold),
        });
    }
    Ok(())
}
