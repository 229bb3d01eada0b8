//! Fault injection for tests and simulations (feature `byzantine`): messages an attacker
//! holding a node key could produce. Never enabled in the node or the manager.

use rand_core::CryptoRngCore;

use super::{
    respond, round1::sign_dealing, signed_message, CeremonyConfig, CeremonyKind, Complaint,
    Dealing, Response,
};
use crate::{
    dst, schnorr::Signature, shamir::SecretPolynomial, Error, KeyShare, NodeIndex, SecretScalar,
    Suite,
};

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
        &signed_message(dst::message::DEALING, &config.digest, &digest),
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
        &signed_message(dst::message::COMPLAINTS, &config.digest, &body),
        rng,
    );
    Ok(response)
}
