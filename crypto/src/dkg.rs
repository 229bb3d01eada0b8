//! Distributed key generation and resharing as pure round functions (docs/PROTOCOL.md §7
//! "DKG", §8 "Resharing"): Pedersen's joint-Feldman DKG (Pedersen, EUROCRYPT '91; Gennaro et al.,
//! J. Cryptology 2007) with Schnorr proofs of possession, ECIES-encrypted signed shares, a
//! complaint round with verifiable reveals, and agreement on a signed transcript hash.
//! Resharing (Desmedt–Jajodia; Wong–Wang–Wing) deals `g_i` with `g_i(0) = share_i` to a new
//! committee and threshold, keeping the public key.
//!
//! The rounds (the driver — node, simulator or test — moves messages and enforces timeouts):
//!
//! 1. [`deal`]: each dealer `i` draws `f_i` of degree `t-1` (reshare: `f_i(0) = share_i`),
//!    and broadcasts one signed [`Dealing`]: Feldman commitments `A_{i,k}`, a proof of
//!    possession of `f_i(0)` bound to `(epoch, i)`, and `s_{i→j} = f_i(j)` ECIES-encrypted to
//!    every recipient's registered node key. (The design's steps 1 and 2 travel together: the
//!    encrypted shares are broadcast anyway so that the transcript can be relayed and
//!    complaints checked by anyone, and one message less is one timeout less.)
//! 2. [`respond`]: each recipient `j` checks every dealing, decrypts `s_{i→j}` and checks
//!    `s_{i→j}·G = Σ_k j^k·A_{i,k}`; it broadcasts a signed [`Response`] that acknowledges the
//!    dealings it holds (digest + the dealer's signature, so two conflicting acknowledgements
//!    prove equivocation) and accuses each bad dealer with a DLEQ-proven reveal of the ECIES
//!    shared point, so anyone can decrypt that one share and judge the accusation.
//! 3. [`finalize`]: from the dealings and responses, every node computes the same QUAL
//!    (dealings acknowledged by at least `t` recipients, not convicted, not equivocating),
//!    the joint commitment, its own share, and the transcript hash, which it signs in a
//!    [`Confirmation`].
//! 4. [`confirm`]: the epoch is final when `t` recipients signed the same transcript hash; a
//!    signed different hash is a [`Error::TranscriptMismatch`] and the driver restarts with
//!    [`CeremonyConfig::restart`].
//!
//! Silent dealers simply do not reach QUAL; a DKG with up to `n - t` silent or faulty dealers
//! completes, and with more it fails with [`Error::NotEnoughDealers`].

use std::collections::{BTreeMap, BTreeSet};

use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

use crate::{
    codec::{Reader, Writer},
    dleq::{DleqProof, Statement, PROOF_LEN as DLEQ_LEN},
    dst,
    ecies::{self, Ciphertext},
    error::{EncodingError, Error},
    schnorr::{Signature, SIGNATURE_LEN},
    secret::SecretScalar,
    shamir::{
        lagrange_coefficients, Commitment, KeyShare, NodeIndex, PublicKeySet, SecretPolynomial,
    },
    suite::{Encoded, Suite, POINT_LEN},
};

/// A 32-byte digest (config, dealing, transcript).
pub type Digest32 = [u8; 32];

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
    epoch: u64,
    attempt: u32,
    threshold: u16,
    dealers: BTreeMap<NodeIndex, S::Point>,
    recipients: BTreeMap<NodeIndex, S::Point>,
    kind: CeremonyKind<S>,
    digest: Digest32,
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

    fn dealer_key(&self, i: NodeIndex) -> Result<&S::Point, Error> {
        self.dealers.get(&i).ok_or(Error::NotAParticipant(i))
    }

    fn recipient_key(&self, j: NodeIndex) -> Result<&S::Point, Error> {
        self.recipients.get(&j).ok_or(Error::NotAParticipant(j))
    }

    fn pok_context(&self, dealer: NodeIndex) -> Vec<u8> {
        let mut ctx = self.digest.to_vec();
        ctx.extend_from_slice(&dealer.to_bytes());
        ctx
    }

    fn reveal_context(&self, dealer: NodeIndex, recipient: NodeIndex) -> Vec<u8> {
        let mut ctx = self.pok_context(dealer);
        ctx.extend_from_slice(&recipient.to_bytes());
        ctx
    }
}

fn frame(h: &mut Sha256, bytes: &[u8]) {
    h.update(u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    h.update(bytes);
}

fn signed_message(kind: &[u8], config: &Digest32, body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(kind.len() + 32 + body.len());
    msg.extend_from_slice(kind);
    msg.extend_from_slice(config);
    msg.extend_from_slice(body);
    msg
}

// ---------------------------------------------------------------------------------------------
// Round 1: dealing.

/// A dealer's broadcast: commitments, proof of possession, one encrypted share per recipient
/// (in ascending recipient order), all signed with the dealer's node key. Public: may be
/// relayed by anyone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dealing<S: Suite> {
    dealer: NodeIndex,
    commitment: Commitment<S>,
    proof_of_possession: Signature<S>,
    encrypted_shares: Vec<Ciphertext<S>>,
    signature: Signature<S>,
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
fn sign_dealing<S: Suite, R: CryptoRngCore>(
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

    fn share_for(
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

// ---------------------------------------------------------------------------------------------
// Round 2: acknowledgements and complaints.

/// "I hold dealer `i`'s dealing with this digest", with the dealer's own signature on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack<S: Suite> {
    dealer: NodeIndex,
    digest: Digest32,
    dealer_signature: Signature<S>,
}

/// An accusation: the recipient's ECIES shared point for the dealer's ciphertext, with a DLEQ
/// proof that it is `sk_j·K_{ij}`, so anyone can decrypt that one share and judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Complaint<S: Suite> {
    dealer: NodeIndex,
    revealed: S::Point,
    proof: DleqProof<S>,
}

impl<S: Suite> Complaint<S> {
    /// Accuse `dealer`: reveal the ECIES shared point `sk_j·K` of its ciphertext to `me`, with
    /// a DLEQ proof against `me`'s node key, so anyone can decrypt that share and judge.
    fn accuse(
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
    recipient: NodeIndex,
    acks: Vec<Ack<S>>,
    complaints: Vec<Complaint<S>>,
    signature: Signature<S>,
}

/// This recipient's decrypted shares, kept for [`finalize`]. Secret: must not be sent to other
/// participants; consumed by value.
pub struct ReceivedShares<S: Suite> {
    recipient: Option<NodeIndex>,
    shares: BTreeMap<NodeIndex, SecretScalar<S>>,
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
fn valid_dealings<'a, S: Suite>(
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
fn open_share<S: Suite>(
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

    fn body(&self) -> Vec<u8> {
        response_body(self.recipient, &self.acks, &self.complaints)
    }

    fn verify_signature(&self, config: &CeremonyConfig<S>) -> bool {
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

// ---------------------------------------------------------------------------------------------
// Round 3: finalize.

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
    epoch: u64,
    share: Option<KeyShare<S>>,
    public: PublicKeySet<S>,
    qualified: Vec<NodeIndex>,
    faults: Vec<(NodeIndex, Fault)>,
    transcript_hash: Digest32,
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

/// Round 3: compute QUAL, the joint key, this node's share and the transcript hash, and (for a
/// recipient) sign a [`Confirmation`].
///
/// QUAL is every dealer whose valid dealing is acknowledged, with the same digest, by at least
/// `t` valid responses, that no valid acknowledgements show equivocating, and that no verified
/// complaint convicts. Nodes that saw the same responses compute the same QUAL.
pub fn finalize<S: Suite>(
    config: &CeremonyConfig<S>,
    node_key: &SecretScalar<S>,
    received: &ReceivedShares<S>,
    dealings: &[Dealing<S>],
    responses: &[Response<S>],
    rng: &mut impl CryptoRngCore,
) -> Result<(CeremonyOutput<S>, Option<Confirmation<S>>), Error> {
    let valid = valid_dealings(config, dealings);
    let responses = one_response_per_recipient(config, responses);
    let mut faults = BTreeSet::new();
    let mut qualified = acknowledged_dealers(config, &valid, &responses, &mut faults);
    judge_complaints(config, &valid, &responses, &qualified, &mut faults)?;
    qualified.retain(|i| !faults.contains(&(*i, Fault::BadShare)));
    let qualified: Vec<NodeIndex> = qualified.into_iter().collect();
    if qualified.len() < config.required_dealers() {
        let disqualified = config
            .dealers
            .keys()
            .filter(|i| !qualified.contains(i))
            .copied();
        return Err(Error::NotEnoughDealers {
            qualified: qualified.len(),
            required: config.required_dealers(),
            disqualified: disqualified.collect(),
        });
    }
    let qual_dealings = qualified
        .iter()
        .map(|i| valid.get(i).ok_or(Error::MissingDealing { dealer: *i }))
        .collect::<Result<Vec<_>, _>>()?;

    // The joint key. Fresh: Σ_{i∈QUAL}. Reshare: Σ_{i∈QUAL} λ_i^{QUAL}, so A'_0 = PK.
    let weights: Vec<S::Scalar> = match &config.kind {
        CeremonyKind::Fresh => vec![<S::Scalar as ff::Field>::ONE; qualified.len()],
        CeremonyKind::Reshare { .. } => lagrange_coefficients::<S>(&qualified)?,
    };
    let weighted: Vec<(S::Scalar, &Commitment<S>)> = weights
        .iter()
        .zip(&qual_dealings)
        .map(|(w, (_, d))| (*w, &d.commitment))
        .collect();
    let commitment = Commitment::weighted_sum(&weighted).ok_or(Error::NotEnoughDealers {
        qualified: 0,
        required: config.required_dealers(),
        disqualified: Vec::new(),
    })?;
    if let CeremonyKind::Reshare { previous } = &config.kind {
        if commitment.constant() != previous.public_key() {
            return Err(Error::InvalidMessage {
                culprit: qualified[0],
                reason: "reshare does not preserve the public key",
            });
        }
    }
    let public = PublicKeySet::new(commitment, config.recipients.keys().copied());
    let transcript_hash = {
        let mut h = Sha256::new();
        h.update(dst::DKG_TRANSCRIPT);
        h.update(b"/transcript");
        h.update(config.digest);
        for (i, (digest, _)) in qualified.iter().zip(&qual_dealings) {
            h.update(i.to_bytes());
            h.update(digest);
        }
        frame(&mut h, &public.commitment().to_bytes());
        h.finalize().into()
    };

    let (share, confirmation) = match received.recipient {
        Some(me) => {
            let share = combine_shares(me, &qualified, &weights, &received.shares, &public)?;
            let confirmation = Confirmation::sign(config, me, node_key, transcript_hash, rng)?;
            (Some(share), Some(confirmation))
        }
        None => (None, None),
    };
    let output = CeremonyOutput {
        epoch: config.epoch,
        share,
        public,
        qualified,
        faults: faults.into_iter().collect(),
        transcript_hash,
    };
    Ok((output, confirmation))
}

/// Responses with a valid signature, one per recipient (a recipient that signed two different
/// responses is ignored).
fn one_response_per_recipient<'a, S: Suite>(
    config: &CeremonyConfig<S>,
    responses: &'a [Response<S>],
) -> Vec<&'a Response<S>> {
    let mut by_recipient: BTreeMap<NodeIndex, Option<&Response<S>>> = BTreeMap::new();
    for r in responses.iter().filter(|r| r.verify_signature(config)) {
        by_recipient
            .entry(r.recipient)
            .and_modify(|e| {
                if e.is_some_and(|prev| prev != r) {
                    *e = None;
                }
            })
            .or_insert(Some(r));
    }
    by_recipient.into_values().flatten().collect()
}

/// Dealers acknowledged with one digest by at least `t` responses. Two validly signed digests
/// for one dealer (among the acknowledgements, or against our own copy) prove equivocation.
fn acknowledged_dealers<S: Suite>(
    config: &CeremonyConfig<S>,
    valid: &BTreeMap<NodeIndex, (Digest32, &Dealing<S>)>,
    responses: &[&Response<S>],
    faults: &mut BTreeSet<(NodeIndex, Fault)>,
) -> BTreeSet<NodeIndex> {
    let mut acked: BTreeMap<NodeIndex, BTreeMap<Digest32, usize>> = BTreeMap::new();
    // Honest acknowledgements repeat the dealer's one signature: check each distinct one once.
    let mut checked: BTreeMap<(NodeIndex, Digest32, [u8; SIGNATURE_LEN]), bool> = BTreeMap::new();
    for ack in responses.iter().flat_map(|r| &r.acks) {
        let Ok(key) = config.dealer_key(ack.dealer) else {
            continue;
        };
        let signature = ack.dealer_signature.to_bytes();
        let valid_signature = *checked
            .entry((ack.dealer, ack.digest, signature))
            .or_insert_with(|| {
                let msg = signed_message(dst::message::DEALING, &config.digest, &ack.digest);
                ack.dealer_signature.verify(dst::SIGNATURE, key, &msg)
            });
        if valid_signature {
            *acked
                .entry(ack.dealer)
                .or_default()
                .entry(ack.digest)
                .or_default() += 1;
        }
    }
    let threshold = usize::from(config.threshold);
    let mut qualified = BTreeSet::new();
    for (dealer, digests) in &acked {
        let own = valid.get(dealer).map(|(d, _)| d);
        if digests.len() > 1 || own.is_some_and(|d| !digests.contains_key(d)) {
            faults.insert((*dealer, Fault::Equivocation));
        } else if digests.values().any(|count| *count >= threshold) {
            qualified.insert(*dealer);
        }
    }
    qualified
}

/// Judge every complaint against a qualified dealer by checking the reveal proof and
/// decrypting the revealed share: convict the dealer or record a false accuser.
fn judge_complaints<S: Suite>(
    config: &CeremonyConfig<S>,
    valid: &BTreeMap<NodeIndex, (Digest32, &Dealing<S>)>,
    responses: &[&Response<S>],
    qualified: &BTreeSet<NodeIndex>,
    faults: &mut BTreeSet<(NodeIndex, Fault)>,
) -> Result<(), Error> {
    for response in responses {
        for complaint in response
            .complaints
            .iter()
            .filter(|c| qualified.contains(&c.dealer))
        {
            let (_, dealing) = valid.get(&complaint.dealer).ok_or(Error::MissingDealing {
                dealer: complaint.dealer,
            })?;
            let Some(ciphertext) = dealing.share_for(config, response.recipient) else {
                continue;
            };
            let context = config.reveal_context(complaint.dealer, response.recipient);
            let statement = Statement {
                context: &context,
                base: &Encoded::new(*ciphertext.ephemeral()),
                public: &Encoded::new(*config.recipient_key(response.recipient)?),
                image: &Encoded::new(complaint.revealed),
            };
            let fault = if !complaint.proof.verify(&statement) {
                (response.recipient, Fault::InvalidComplaint)
            } else if open_share(config, dealing, response.recipient, &complaint.revealed).is_some()
            {
                (response.recipient, Fault::FalseComplaint)
            } else {
                (complaint.dealer, Fault::BadShare)
            };
            faults.insert(fault);
        }
    }
    Ok(())
}

/// `share'_j = Σ_{i∈QUAL} w_i·s_{i→j}`, checked against the joint commitment.
fn combine_shares<S: Suite>(
    me: NodeIndex,
    qualified: &[NodeIndex],
    weights: &[S::Scalar],
    shares: &BTreeMap<NodeIndex, SecretScalar<S>>,
    public: &PublicKeySet<S>,
) -> Result<KeyShare<S>, Error> {
    let mut value = zeroize::Zeroizing::new(<S::Scalar as ff::Field>::ZERO);
    for (i, w) in qualified.iter().zip(weights) {
        let s = shares.get(i).ok_or(Error::MissingDealing { dealer: *i })?;
        *value += *w * s.expose();
    }
    let value = SecretScalar::new(*value).ok_or(Error::NotAParticipant(me))?;
    if value.public_point() != public.public_share(me)? {
        return Err(Error::InvalidMessage {
            culprit: me,
            reason: "own share does not match the joint commitment",
        });
    }
    Ok(KeyShare::new(me, value))
}

// ---------------------------------------------------------------------------------------------
// Round 4: agreement.

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
    fn sign(
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
        let mut out = [0u8; CONFIRMATION_LEN];
        out[..2].copy_from_slice(&self.node.to_bytes());
        out[2..34].copy_from_slice(&self.transcript_hash);
        out[34..].copy_from_slice(&self.signature.to_bytes());
        out
    }

    /// Strict decoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() != CONFIRMATION_LEN {
            return Err(EncodingError::Length {
                expected: CONFIRMATION_LEN,
                actual: bytes.len(),
            }
            .into());
        }
        let mut transcript_hash = [0u8; 32];
        transcript_hash.copy_from_slice(&bytes[2..34]);
        Ok(Self {
            node: NodeIndex::from_bytes(&bytes[..2])?,
            transcript_hash,
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

/// Fault injection for tests and simulations (feature `byzantine`): messages an attacker
/// holding a node key could produce. Never enabled in the node or the manager.
#[cfg(feature = "byzantine")]
pub mod byzantine {
    use super::{
        respond, sign_dealing, CeremonyConfig, CeremonyKind, Complaint, Dealing, Response,
        SecretPolynomial, Signature,
    };
    use crate::{dst, Error, KeyShare, NodeIndex, SecretScalar, Suite};
    use rand_core::CryptoRngCore;

    /// A dealing that is correctly signed but gives `victims` a share that does not match the
    /// commitments (a random scalar), or undecodable bytes if `garbage`.
    pub fn deal_bad_shares<S: Suite, R: CryptoRngCore>(
        config: &CeremonyConfig<S>,
        dealer: NodeIndex,
        node_key: &SecretScalar<S>,
        share: Option<&KeyShare<S>>,
        victims: &[NodeIndex],
        garbage: bool,
        rng: &mut R,
    ) -> Result<Dealing<S>, Error> {
        let polynomial = match (&config.kind, share) {
            (CeremonyKind::Reshare { .. }, Some(share)) => {
                SecretPolynomial::with_constant(share.value(), config.threshold, rng)
            }
            _ => SecretPolynomial::random(config.threshold, rng),
        };
        sign_dealing(
            config,
            dealer,
            node_key,
            &polynomial,
            rng,
            |j, rng: &mut R| {
                victims.contains(&j).then(|| {
                    if garbage {
                        vec![0xff; 7]
                    } else {
                        SecretScalar::<S>::random(rng).to_bytes().to_vec()
                    }
                })
            },
        )
    }

    /// A correctly signed dealing whose proof of possession is for another statement.
    pub fn deal_bad_proof_of_possession<S: Suite, R: CryptoRngCore>(
        config: &CeremonyConfig<S>,
        dealer: NodeIndex,
        node_key: &SecretScalar<S>,
        rng: &mut R,
    ) -> Result<Dealing<S>, Error> {
        let polynomial = SecretPolynomial::<S>::random(config.threshold, rng);
        let mut dealing = sign_dealing(config, dealer, node_key, &polynomial, rng, |_, _| None)?;
        dealing.proof_of_possession = Signature::sign(
            dst::POK,
            &SecretScalar::random(rng),
            b"not the context",
            rng,
        );
        let digest = dealing.digest(config);
        dealing.signature = Signature::sign(
            dst::SIGNATURE,
            node_key,
            &super::signed_message(dst::message::DEALING, &config.digest, &digest),
            rng,
        );
        Ok(dealing)
    }

    /// An honest response plus a (verifiably false) accusation of `accused`, whose real
    /// share is revealed with a valid proof.
    pub fn respond_with_false_complaint<S: Suite>(
        config: &CeremonyConfig<S>,
        me: NodeIndex,
        node_key: &SecretScalar<S>,
        dealings: &[Dealing<S>],
        accused: NodeIndex,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Response<S>, Error> {
        let (mut response, _) = respond(config, me, node_key, dealings, rng)?;
        if let Some(dealing) = dealings.iter().find(|d| d.dealer == accused) {
            if let Some(ciphertext) = dealing.share_for(config, me) {
                let complaint = Complaint::accuse(config, accused, me, node_key, ciphertext, rng);
                response.complaints.push(complaint);
            }
        }
        let body = response.body();
        response.signature = Signature::sign(
            dst::SIGNATURE,
            node_key,
            &super::signed_message(dst::message::COMPLAINTS, &config.digest, &body),
            rng,
        );
        Ok(response)
    }
}
