//! Round 2, acknowledgements and complaints (docs/PROTOCOL.md §7 step 3): each recipient `j`
//! checks every dealing, decrypts `s_{i→j}` and checks `s_{i→j}·G = Σ_k j^k·A_{i,k}`; it
//! broadcasts a signed [`Response`] that acknowledges the dealings it holds and accuses each
//! bad dealer with a DLEQ-proven reveal of the ECIES shared point. Its decrypted shares stay
//! behind in [`ReceivedShares`], which never travels.

use std::collections::{BTreeMap, BTreeSet};

use rand_core::CryptoRngCore;

use super::{signed_message, CeremonyConfig, Dealing, Digest32};
use crate::{
    codec::{Reader, Writer},
    dleq::{DleqProof, Statement, PROOF_LEN as DLEQ_LEN},
    dst,
    ecies::{self, Ciphertext},
    error::{EncodingError, Error},
    schnorr::{Signature, SIGNATURE_LEN},
    secret::SecretScalar,
    shamir::NodeIndex,
    suite::{Encoded, Suite, POINT_LEN},
};

/// "I hold dealer `i`'s dealing with this digest", with the dealer's own signature on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack<S: Suite> {
    pub(super) dealer: NodeIndex,
    pub(super) digest: Digest32,
    pub(super) dealer_signature: Signature<S>,
}

/// An accusation: the recipient's ECIES shared point for the dealer's ciphertext, with a DLEQ
/// proof that it is `sk_j·K_{ij}`, so anyone can decrypt that one share and judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Complaint<S: Suite> {
    pub(super) dealer: NodeIndex,
    pub(super) revealed: S::Point,
    pub(super) proof: DleqProof<S>,
}

impl<S: Suite> Complaint<S> {
    /// Accuse `dealer`: reveal the ECIES shared point `sk_j·K` of its ciphertext to `me`, with
    /// a DLEQ proof against `me`'s node key, so anyone can decrypt that share and judge.
    pub(super) fn accuse(
        config: &CeremonyConfig<S>,
        dealer: NodeIndex,
        me: NodeIndex,
        node_key: &SecretScalar<S>,
        ciphertext: &Ciphertext<S>,
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        let revealed = *ciphertext.ephemeral() * node_key.expose();
        let context = config.reveal_context(dealer, me);
        let statement = Statement {
            context: &context,
            base: &Encoded::new(*ciphertext.ephemeral()),
            public: &Encoded::new(node_key.public_point()),
            image: &Encoded::new(revealed),
        };
        Self {
            dealer,
            revealed,
            proof: DleqProof::prove(node_key, &statement, rng),
        }
    }
}

/// A recipient's signed round-2 broadcast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response<S: Suite> {
    pub(super) recipient: NodeIndex,
    pub(super) acks: Vec<Ack<S>>,
    pub(super) complaints: Vec<Complaint<S>>,
    pub(super) signature: Signature<S>,
}

/// This recipient's decrypted shares, kept for [`finalize`]. Secret: must not be sent to other
/// participants; consumed by value.
pub struct ReceivedShares<S: Suite> {
    pub(super) recipient: Option<NodeIndex>,
    pub(super) shares: BTreeMap<NodeIndex, SecretScalar<S>>,
}

impl<S: Suite> ReceivedShares<S> {
    /// State for a node that only deals (an old member leaving at a reshare).
    pub fn observer() -> Self {
        Self {
            recipient: None,
            shares: BTreeMap::new(),
        }
    }

    /// Take in a dealing that arrived after [`respond`] (relayed by a peer after
    /// [`finalize`] reported [`Error::MissingDealing`]): validate it, decrypt this node's
    /// share and check it against the commitments. Nothing is broadcast: this node's response
    /// is already out, so a bad share can no longer be accused — it is refused here, and
    /// `finalize` keeps reporting the dealing missing (this node then needs a reshare).
    /// Returns `Ok(true)` if a share was added, `Ok(false)` if one from this dealer was
    /// already held.
    pub fn absorb(
        &mut self,
        config: &CeremonyConfig<S>,
        node_key: &SecretScalar<S>,
        dealing: &Dealing<S>,
    ) -> Result<bool, Error> {
        let me = self
            .recipient
            .ok_or(Error::NotAParticipant(dealing.dealer))?;
        if self.shares.contains_key(&dealing.dealer) {
            return Ok(false);
        }
        dealing.validate(config)?;
        let ciphertext = dealing
            .share_for(config, me)
            .ok_or(Error::NotAParticipant(me))?;
        let revealed = *ciphertext.ephemeral() * node_key.expose();
        let value = open_share(config, dealing, me, &revealed).ok_or(Error::InvalidMessage {
            culprit: dealing.dealer,
            reason: "share does not match the dealer's commitments",
        })?;
        self.shares.insert(dealing.dealer, value);
        Ok(true)
    }
}

impl<S: Suite> core::fmt::Debug for ReceivedShares<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "ReceivedShares {{ recipient: {:?}, dealers: {:?} }}",
            self.recipient,
            self.shares.keys()
        )
    }
}

/// Round 2, for recipient `me`: check each dealing, decrypt and check its share, acknowledge
/// the valid ones, accuse the bad ones. Dealings that fail public validation are neither
/// acknowledged nor accused (everyone can see they are invalid). Two valid dealings from one
/// dealer with different contents are equivocation: neither is acknowledged.
pub fn respond<S: Suite>(
    config: &CeremonyConfig<S>,
    me: NodeIndex,
    node_key: &SecretScalar<S>,
    dealings: &[Dealing<S>],
    rng: &mut impl CryptoRngCore,
) -> Result<(Response<S>, ReceivedShares<S>), Error> {
    if config.recipient_key(me)? != &node_key.public_point() {
        return Err(Error::NotAParticipant(me));
    }
    let valid = valid_dealings(config, dealings);
    let mut acks = Vec::new();
    let mut complaints = Vec::new();
    let mut shares = BTreeMap::new();
    for (dealer, (digest, dealing)) in &valid {
        acks.push(Ack {
            dealer: *dealer,
            digest: *digest,
            dealer_signature: dealing.signature,
        });
        let Some(ciphertext) = dealing.share_for(config, me) else {
            continue;
        };
        let revealed = *ciphertext.ephemeral() * node_key.expose();
        if let Some(value) = open_share(config, dealing, me, &revealed) {
            shares.insert(*dealer, value);
        } else {
            complaints.push(Complaint::accuse(
                config, *dealer, me, node_key, ciphertext, rng,
            ));
        }
    }
    let body = response_body(me, &acks, &complaints);
    let signature = Signature::sign(
        dst::SIGNATURE,
        node_key,
        &signed_message(dst::message::COMPLAINTS, &config.digest, &body),
        rng,
    );
    Ok((
        Response {
            recipient: me,
            acks,
            complaints,
            signature,
        },
        ReceivedShares {
            recipient: Some(me),
            shares,
        },
    ))
}

fn response_body<S: Suite>(
    recipient: NodeIndex,
    acks: &[Ack<S>],
    complaints: &[Complaint<S>],
) -> Vec<u8> {
    let mut w = Writer::new();
    w.put(&recipient.to_bytes())
        .put_u16(u16::try_from(acks.len()).unwrap_or(u16::MAX));
    for a in acks {
        w.put(&a.dealer.to_bytes())
            .put(&a.digest)
            .put(&a.dealer_signature.to_bytes());
    }
    w.put_u16(u16::try_from(complaints.len()).unwrap_or(u16::MAX));
    for c in complaints {
        w.put(&c.dealer.to_bytes())
            .put(&S::encode_point(&c.revealed))
            .put(&c.proof.to_bytes());
    }
    w.finish()
}

/// Dealings that pass public validation, by dealer; a dealer with two different valid
/// dealings is dropped.
pub(super) fn valid_dealings<'a, S: Suite>(
    config: &CeremonyConfig<S>,
    dealings: &'a [Dealing<S>],
) -> BTreeMap<NodeIndex, (Digest32, &'a Dealing<S>)> {
    let mut valid: BTreeMap<NodeIndex, (Digest32, &Dealing<S>)> = BTreeMap::new();
    let mut equivocators = BTreeSet::new();
    for dealing in dealings {
        let Ok(digest) = dealing.validate(config) else {
            continue;
        };
        match valid.get(&dealing.dealer) {
            Some((existing, _)) if *existing != digest => {
                equivocators.insert(dealing.dealer);
            }
            _ => {
                valid.insert(dealing.dealer, (digest, dealing));
            }
        }
    }
    valid.retain(|i, _| !equivocators.contains(i));
    valid
}

/// Decrypt recipient `j`'s share of `dealing` with the ECIES shared point, and check it
/// against the dealer's commitments. `None` if it does not decrypt or does not match.
pub(super) fn open_share<S: Suite>(
    config: &CeremonyConfig<S>,
    dealing: &Dealing<S>,
    recipient: NodeIndex,
    shared_point: &S::Point,
) -> Option<SecretScalar<S>> {
    let ciphertext = dealing.share_for(config, recipient)?;
    let shared = ecies::shared_secret::<S>(shared_point).ok()?;
    let plaintext = ecies::open_with_shared_secret(&shared, ciphertext).ok()?;
    let value = SecretScalar::<S>::from_bytes(&plaintext).ok()?;
    (value.public_point() == dealing.commitment.evaluate(recipient)).then_some(value)
}

impl<S: Suite> Response<S> {
    /// The recipient that sent it.
    pub fn recipient(&self) -> NodeIndex {
        self.recipient
    }

    /// Dealers this response accuses.
    pub fn accused(&self) -> impl Iterator<Item = NodeIndex> + '_ {
        self.complaints.iter().map(|c| c.dealer)
    }

    pub(super) fn body(&self) -> Vec<u8> {
        response_body(self.recipient, &self.acks, &self.complaints)
    }

    pub(super) fn verify_signature(&self, config: &CeremonyConfig<S>) -> bool {
        config.recipient_key(self.recipient).is_ok_and(|key| {
            self.signature.verify(
                dst::SIGNATURE,
                key,
                &signed_message(dst::message::COMPLAINTS, &config.digest, &self.body()),
            )
        })
    }

    /// Wire encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.body();
        out.extend_from_slice(&self.signature.to_bytes());
        out
    }

    /// Strict decoding (the signature is checked in [`finalize`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let recipient = NodeIndex::from_bytes(r.take(2)?)?;
        let acks = (0..r.u16()?)
            .map(|_| {
                Ok(Ack {
                    dealer: NodeIndex::from_bytes(r.take(2)?)?,
                    digest: r.take(32)?.try_into().map_err(|_| EncodingError::Length {
                        expected: 32,
                        actual: 0,
                    })?,
                    dealer_signature: Signature::from_bytes(r.take(SIGNATURE_LEN)?)?,
                })
            })
            .collect::<Result<Vec<_>, EncodingError>>()?;
        let complaints = (0..r.u16()?)
            .map(|_| {
                Ok(Complaint {
                    dealer: NodeIndex::from_bytes(r.take(2)?)?,
                    revealed: S::decode_point(r.take(POINT_LEN)?)?,
                    proof: DleqProof::from_bytes(r.take(DLEQ_LEN)?)?,
                })
            })
            .collect::<Result<Vec<_>, EncodingError>>()?;
        let signature = Signature::from_bytes(r.take(SIGNATURE_LEN)?)?;
        r.end()?;
        Ok(Self {
            recipient,
            acks,
            complaints,
            signature,
        })
    }
}
