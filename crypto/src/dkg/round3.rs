//! Round 3, finalize (docs/PROTOCOL.md §7 step 4): from the dealings and responses every node
//! computes the same QUAL, the joint commitment, its own share and the transcript hash, which
//! it signs in a [`Confirmation`].

use std::collections::{BTreeMap, BTreeSet};

use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

use super::{
    frame, round2::open_share, round2::valid_dealings, signed_message, CeremonyConfig,
    CeremonyKind, CeremonyOutput, Confirmation, Dealing, Digest32, Fault, ReceivedShares, Response,
};
use crate::{
    dleq::Statement,
    dst,
    error::Error,
    schnorr::SIGNATURE_LEN,
    secret::SecretScalar,
    shamir::{lagrange_coefficients, Commitment, KeyShare, NodeIndex, PublicKeySet},
    suite::{Encoded, Suite},
};

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
