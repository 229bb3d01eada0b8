//! Round 1, dealing (docs/PROTOCOL.md §7 steps 1-2): each dealer `i` draws `f_i` of degree
//! `t-1` (reshare: `f_i(0) = share_i`) and broadcasts one signed [`Dealing`]: Feldman
//! commitments, a proof of possession of `f_i(0)` bound to `(epoch, i)`, and `s_{i→j} =
//! f_i(j)` ECIES-encrypted to every recipient's node key.

use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

use super::{frame, signed_message, CeremonyConfig, CeremonyKind, Digest32};
use crate::{
    codec::{Reader, Writer},
    dst,
    ecies::{self, Ciphertext},
    error::Error,
    schnorr::{Signature, SIGNATURE_LEN},
    secret::SecretScalar,
    shamir::{Commitment, KeyShare, NodeIndex, SecretPolynomial},
    suite::Suite,
};

/// A dealer's broadcast: commitments, proof of possession, one encrypted share per recipient
/// (in ascending recipient order), all signed with the dealer's node key. Public: may be
/// relayed by anyone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dealing<S: Suite> {
    pub(super) dealer: NodeIndex,
    pub(super) commitment: Commitment<S>,
    pub(super) proof_of_possession: Signature<S>,
    pub(super) encrypted_shares: Vec<Ciphertext<S>>,
    pub(super) signature: Signature<S>,
}

/// Round 1. `share` is this dealer's current share for a reshare (`None` for a fresh DKG).
pub fn deal<S: Suite>(
    config: &CeremonyConfig<S>,
    dealer: NodeIndex,
    node_key: &SecretScalar<S>,
    share: Option<&KeyShare<S>>,
    rng: &mut impl CryptoRngCore,
) -> Result<Dealing<S>, Error> {
    if config.dealer_key(dealer)? != &node_key.public_point() {
        return Err(Error::NotAParticipant(dealer));
    }
    let polynomial = match (&config.kind, share) {
        (CeremonyKind::Fresh, _) => SecretPolynomial::random(config.threshold, rng),
        (CeremonyKind::Reshare { .. }, Some(share)) if share.index() == dealer => {
            SecretPolynomial::with_constant(share.value(), config.threshold, rng)
        }
        (CeremonyKind::Reshare { .. }, _) => return Err(Error::NotAParticipant(dealer)),
    };
    sign_dealing(config, dealer, node_key, &polynomial, rng, |_, _| None)
}

/// Build and sign a dealing; `corrupt` may replace a recipient's plaintext share (fault
/// injection for the `byzantine` feature; `None` everywhere for an honest dealer).
pub(super) fn sign_dealing<S: Suite, R: CryptoRngCore>(
    config: &CeremonyConfig<S>,
    dealer: NodeIndex,
    node_key: &SecretScalar<S>,
    polynomial: &SecretPolynomial<S>,
    rng: &mut R,
    corrupt: impl Fn(NodeIndex, &mut R) -> Option<Vec<u8>>,
) -> Result<Dealing<S>, Error> {
    let constant = polynomial
        .constant()
        .ok_or(Error::NotAParticipant(dealer))?;
    let proof_of_possession =
        Signature::sign(dst::POK, &constant, &config.pok_context(dealer), rng);
    let mut encrypted_shares = Vec::with_capacity(config.recipients.len());
    for (j, key) in &config.recipients {
        let value = polynomial.evaluate(*j).ok_or(Error::NotAParticipant(*j))?;
        let plaintext = match corrupt(*j, rng) {
            Some(bad) => zeroize::Zeroizing::new(bad),
            None => zeroize::Zeroizing::new(value.to_bytes().to_vec()),
        };
        encrypted_shares.push(ecies::encrypt::<S>(key, &plaintext, rng)?);
    }
    let commitment = polynomial.commit();
    let digest = dealing_digest(
        config,
        dealer,
        &commitment,
        &proof_of_possession,
        &encrypted_shares,
    );
    let signature = Signature::sign(
        dst::SIGNATURE,
        node_key,
        &signed_message(dst::message::DEALING, &config.digest, &digest),
        rng,
    );
    Ok(Dealing {
        dealer,
        commitment,
        proof_of_possession,
        encrypted_shares,
        signature,
    })
}

fn dealing_digest<S: Suite>(
    config: &CeremonyConfig<S>,
    dealer: NodeIndex,
    commitment: &Commitment<S>,
    proof_of_possession: &Signature<S>,
    encrypted_shares: &[Ciphertext<S>],
) -> Digest32 {
    let mut h = Sha256::new();
    h.update(dst::DKG_TRANSCRIPT);
    h.update(b"/dealing");
    h.update(config.digest);
    h.update(dealer.to_bytes());
    frame(&mut h, &commitment.to_bytes());
    h.update(proof_of_possession.to_bytes());
    for c in encrypted_shares {
        frame(&mut h, &c.to_bytes());
    }
    h.finalize().into()
}

impl<S: Suite> Dealing<S> {
    /// The dealer.
    pub fn dealer(&self) -> NodeIndex {
        self.dealer
    }

    /// The dealer's Feldman commitments.
    pub fn commitment(&self) -> &Commitment<S> {
        &self.commitment
    }

    /// The digest the dealer signs (everything but the signature).
    pub fn digest(&self, config: &CeremonyConfig<S>) -> Digest32 {
        dealing_digest(
            config,
            self.dealer,
            &self.commitment,
            &self.proof_of_possession,
            &self.encrypted_shares,
        )
    }

    /// Check everything anyone can check: dealer signature, commitment length, proof of
    /// possession, one share per recipient, and (reshare) `A_{i,0} = PK_i`.
    pub fn validate(&self, config: &CeremonyConfig<S>) -> Result<Digest32, Error> {
        let culprit = self.dealer;
        let key = config.dealer_key(culprit)?;
        let digest = self.digest(config);
        if !self.signature.verify(
            dst::SIGNATURE,
            key,
            &signed_message(dst::message::DEALING, &config.digest, &digest),
        ) {
            return Err(Error::InvalidMessage {
                culprit,
                reason: "bad dealer signature",
            });
        }
        if self.commitment.threshold() != config.threshold {
            return Err(Error::InvalidMessage {
                culprit,
                reason: "commitment has the wrong degree",
            });
        }
        if self.encrypted_shares.len() != config.recipients.len() {
            return Err(Error::InvalidMessage {
                culprit,
                reason: "wrong number of encrypted shares",
            });
        }
        if !self.proof_of_possession.verify(
            dst::POK,
            &self.commitment.constant(),
            &config.pok_context(culprit),
        ) {
            return Err(Error::InvalidMessage {
                culprit,
                reason: "bad proof of possession",
            });
        }
        if let CeremonyKind::Reshare { previous } = &config.kind {
            if previous.public_share(culprit)? != self.commitment.constant() {
                return Err(Error::InvalidMessage {
                    culprit,
                    reason: "reshare constant is not the dealer's public share",
                });
            }
        }
        Ok(digest)
    }

    pub(super) fn share_for(
        &self,
        config: &CeremonyConfig<S>,
        recipient: NodeIndex,
    ) -> Option<&Ciphertext<S>> {
        let position = config.recipients.keys().position(|j| *j == recipient)?;
        self.encrypted_shares.get(position)
    }

    /// Wire encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.put(&self.dealer.to_bytes())
            .put_var(&self.commitment.to_bytes())
            .put(&self.proof_of_possession.to_bytes())
            .put_u16(u16::try_from(self.encrypted_shares.len()).unwrap_or(u16::MAX));
        for c in &self.encrypted_shares {
            w.put_var(&c.to_bytes());
        }
        w.put(&self.signature.to_bytes());
        w.finish()
    }

    /// Strict decoding (the content is checked by [`Dealing::validate`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let dealer = NodeIndex::from_bytes(r.take(2)?)?;
        let commitment = Commitment::from_bytes(r.var()?)?;
        let proof_of_possession = Signature::from_bytes(r.take(SIGNATURE_LEN)?)?;
        let count = r.u16()?;
        let encrypted_shares = (0..count)
            .map(|_| Ciphertext::from_bytes(r.var()?))
            .collect::<Result<Vec<_>, Error>>()?;
        let signature = Signature::from_bytes(r.take(SIGNATURE_LEN)?)?;
        r.end()?;
        Ok(Self {
            dealer,
            commitment,
            proof_of_possession,
            encrypted_shares,
            signature,
        })
    }
}
