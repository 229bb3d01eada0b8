//! The properties checked at the end of a run. Each returns `Err(description)` on violation,
//! so tests can assert both that they hold and that a broken variant makes them fail.

use tkms_crypto::{
    ecies, shamir::lagrange_coefficients, KeyShare, NodeIndex, PublicKeySet, SharedSecret, Suite,
};

use crate::scenario::{CeremonyRun, DelegationRun, ReshareRun};
use tkms_crypto::ClusterSuite as S;

/// A violated invariant.
pub type Violation = String;

/// `Σ λ_i·share_i` over the given shares (interpolation at 0), as a point `x·G`.
fn interpolate(shares: &[&KeyShare<S>]) -> Result<<S as Suite>::Point, Violation> {
    let indices: Vec<NodeIndex> = shares.iter().map(|s| s.index()).collect();
    let lambdas = lagrange_coefficients::<S>(&indices).map_err(|e| e.to_string())?;
    let secret = lambdas
        .into_iter()
        .zip(shares)
        .fold(<S as Suite>::Scalar::from(0u64), |acc, (l, s)| {
            acc + l * s.value().expose()
        });
    Ok(S::mul_by_generator(&secret))
}

/// Every share's public point matches the key set, and `t` of them interpolate to the key.
fn shares_consistent(public: &PublicKeySet<S>, shares: &[KeyShare<S>]) -> Result<(), Violation> {
    for s in shares {
        let expected = public.public_share(s.index()).map_err(|e| e.to_string())?;
        if s.public_share() != expected {
            return Err(format!(
                "node {}'s share does not match its public share",
                s.index()
            ));
        }
    }
    let t = usize::from(public.threshold());
    if shares.len() >= t {
        let refs: Vec<&KeyShare<S>> = shares.iter().take(t).collect();
        if interpolate(&refs)? != public.public_key() {
            return Err("t correct shares do not interpolate to the public key".into());
        }
    }
    Ok(())
}

/// **DKG agreement.** Every correct node (honest, up at the end) finished, and either all
/// succeeded with the same public key, public shares, QUAL and transcript hash, with shares
/// consistent with the key, or all failed.
pub fn dkg_agreement(run: &CeremonyRun) -> Result<(), Violation> {
    let correct: Vec<_> = run.nodes.iter().filter(|(_, o)| o.is_correct()).collect();
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for (i, o) in &correct {
        match &o.result {
            None => return Err(format!("correct node {i} never finished")),
            Some(Ok(out)) => ok.push((**i, out)),
            Some(Err(e)) => failed.push((**i, e.to_string())),
        }
    }
    if !ok.is_empty() && !failed.is_empty() {
        return Err(format!(
            "split outcome: {} succeeded, {} failed (e.g. node {}: {})",
            ok.len(),
            failed.len(),
            failed[0].0,
            failed[0].1
        ));
    }
    let Some((first_i, first)) = ok.first() else {
        return Ok(());
    };
    for (i, o) in &ok {
        if o.public() != first.public() {
            return Err(format!("nodes {first_i} and {i} disagree on the key set"));
        }
        if o.transcript_hash() != first.transcript_hash() || o.qualified() != first.qualified() {
            return Err(format!(
                "nodes {first_i} and {i} disagree on the transcript"
            ));
        }
    }
    let shares: Vec<KeyShare<S>> = ok.iter().filter_map(|(_, o)| o.share().cloned()).collect();
    if shares.len() != ok.len() {
        return Err("a successful recipient holds no share".into());
    }
    shares_consistent(first.public(), &shares)
}

/// **Secrecy threshold.** No set of `t-1` correct shares reconstructs the secret behind the
/// public key (checked over every window of `t-1` consecutive correct shares), while `t` do
/// (so the check is not vacuous). `t` is the threshold the cluster is meant to have
/// ([`CeremonyRun::intended_threshold`]), not what the key set claims.
pub fn secrecy_threshold(run: &CeremonyRun) -> Result<(), Violation> {
    let public = run.public().ok_or("the DKG produced no key")?;
    let shares = run.shares();
    let t = usize::from(run.intended_threshold);
    if shares.len() < t {
        return Err(format!("only {} correct shares, t = {t}", shares.len()));
    }
    let refs: Vec<&KeyShare<S>> = shares.iter().collect();
    if interpolate(&refs[..t])? != public.public_key() {
        return Err("t shares do not reconstruct the key".into());
    }
    if t < 2 {
        return Ok(());
    }
    for start in 0..refs.len() {
        let window: Vec<&KeyShare<S>> =
            (0..t - 1).map(|k| refs[(start + k) % refs.len()]).collect();
        if interpolate(&window)? == public.public_key() {
            let ids: Vec<u16> = window.iter().map(|s| s.index().get()).collect();
            return Err(format!("t-1 shares {ids:?} reconstruct the secret"));
        }
    }
    Ok(())
}

/// **Reshare keeps the key.** Every correct recipient of the reshare succeeded, with the public
/// key of the DKG, agreeing key sets, and new shares consistent with it.
pub fn reshare_keeps_key(run: &ReshareRun) -> Result<(), Violation> {
    let before = run.dkg.public().ok_or("the DKG produced no key")?;
    dkg_agreement(&run.reshare)?;
    let after = run.reshare.public().ok_or("the reshare failed")?;
    if after.public_key() != before.public_key() {
        return Err("the reshare changed the public key".into());
    }
    if after.threshold() != run.reshare.config.threshold() {
        return Err("the new key set has the wrong threshold".into());
    }
    let recipients = run.reshare.config.recipients().len();
    let shares = run.reshare.shares();
    let correct_recipients = run
        .reshare
        .nodes
        .iter()
        .filter(|(i, o)| o.is_correct() && run.reshare.config.recipients().contains_key(i))
        .count();
    if shares.len() != correct_recipients || correct_recipients > recipients {
        return Err("a correct recipient holds no new share".into());
    }
    shares_consistent(after, &shares)
}

/// **Liveness.** A request is served whenever at least `t` honest share holders are up and
/// reachable from its issue to its deadline (whatever happened before: crashes, restarts,
/// open circuit breakers); otherwise it still ends (fails fast) by its deadline.
pub fn liveness(run: &DelegationRun) -> Result<(), Violation> {
    let t = usize::from(run.keys.threshold());
    for (k, (_, r)) in run.requests.iter().enumerate() {
        let Some(finished) = r.finished else {
            return Err(format!("request {} never finished (hung)", r.id));
        };
        if finished > r.issued + run.deadline {
            return Err(format!("request {} ended after its deadline", r.id));
        }
        let available = run
            .available
            .get(k)
            .copied()
            .unwrap_or(run.reachable_honest);
        if available >= t && !r.served() {
            return Err(format!(
                "request {} failed with {available} honest nodes reachable (t = {t})",
                r.id
            ));
        }
    }
    Ok(())
}

/// **No request served with an unverified partial.** Every served request combined at least
/// `t` partials, each of which verifies against its node's public share, and the result opens
/// the client's ciphertext (checked independently of the manager).
pub fn only_verified_partials(run: &DelegationRun) -> Result<(), Violation> {
    let t = usize::from(run.keys.threshold());
    for (plan, r) in &run.requests {
        let Some(secret) = r.secret else { continue };
        if r.used.len() < t {
            return Err(format!(
                "request {} served from {} partials",
                r.id,
                r.used.len()
            ));
        }
        for p in &r.used {
            if p.clone().verify(&run.keys, &r.request).is_err() {
                return Err(format!(
                    "request {} served with an unverified partial from node {}",
                    r.id,
                    p.index()
                ));
            }
        }
        let opened = ecies::open_with_shared_secret::<S>(
            &SharedSecret::from_bytes(secret),
            &plan.ciphertext,
        );
        if opened.map(|m| m.to_vec()) != Ok(plan.plaintext.clone()) {
            return Err(format!("request {} returned a wrong shared secret", r.id));
        }
    }
    Ok(())
}
