//! Threshold delegation (docs/PROTOCOL.md §5).
//!
//! Node `i` answers a request for ephemeral key `K` with `D_i = share_i·K` and a DLEQ proof that
//! `log_G PK_i = log_K D_i`. A combiner verifies each partial (yielding a
//! [`VerifiedPartialDelegation`], the only kind [`combine`] accepts) and computes
//! `S = Σ λ_i·D_i = sk·K`, whose x-coordinate is the ECIES shared secret.

use rand_core::CryptoRngCore;

use crate::{
    dleq::{self, DleqProof, Statement, PROOF_LEN},
    ecies,
    error::Error,
    secret::SharedSecret,
    shamir::{KeyShare, NodeIndex, PublicKeySet, ZeroInterpolation},
    suite::{Encoded, Suite, POINT_LEN},
};

/// What a partial is bound to: the key epoch, a request id, and the ephemeral key `K`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelegationRequest<S: Suite> {
    epoch: u64,
    request_id: Vec<u8>,
    ephemeral: Encoded<S>,
}

impl<S: Suite> DelegationRequest<S> {
    /// A request for `K` under `epoch`; `request_id` is any caller-chosen identifier (the
    /// manager uses a hash of the authorized request), bound into every proof.
    pub fn new(epoch: u64, request_id: impl Into<Vec<u8>>, ephemeral: S::Point) -> Self {
        Self::with_encoded(epoch, request_id, Encoded::new(ephemeral))
    }

    /// Like [`DelegationRequest::new`] with `K` as decoded from the wire (keeps its bytes).
    pub fn with_encoded(epoch: u64, request_id: impl Into<Vec<u8>>, ephemeral: Encoded<S>) -> Self {
        Self {
            epoch,
            request_id: request_id.into(),
            ephemeral,
        }
    }

    /// The ephemeral key `K`.
    pub fn ephemeral(&self) -> &S::Point {
        self.ephemeral.point()
    }

    /// The ephemeral key `K` with its encoding.
    pub fn ephemeral_encoded(&self) -> &Encoded<S> {
        &self.ephemeral
    }

    /// The key epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The request id.
    pub fn request_id(&self) -> &[u8] {
        &self.request_id
    }

    /// The proof context for node `i`: `epoch(8) || i(2) || request_id`.
    fn context(&self, index: NodeIndex) -> Vec<u8> {
        proof_context(self.epoch, index, &self.request_id)
    }
}

/// `epoch(8, BE) || index(2, BE) || request_id`: binds a proof to epoch, node and request.
pub(crate) fn proof_context(epoch: u64, index: NodeIndex, request_id: &[u8]) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(10 + request_id.len());
    ctx.extend_from_slice(&epoch.to_be_bytes());
    ctx.extend_from_slice(&index.to_bytes());
    ctx.extend_from_slice(request_id);
    ctx
}

/// Encoded partial length: `index(2) || D_i(33) || proof(98)`.
pub const PARTIAL_LEN: usize = 2 + POINT_LEN + PROOF_LEN;

/// A node's partial delegation as received: not yet trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialDelegation<S: Suite> {
    index: NodeIndex,
    partial: Encoded<S>,
    proof: DleqProof<S>,
}

/// A partial whose proof has been checked against the node's public share; only
/// [`PartialDelegation::verify`], [`verify_all`], [`verify_requests`] and the aggregate
/// checks of [`crate::aggregate`] make one, and it is never deserialized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPartialDelegation<S: Suite> {
    index: NodeIndex,
    partial: S::Point,
    request: DelegationRequest<S>,
}

impl<S: Suite> VerifiedPartialDelegation<S> {
    /// A partial whose proof (its own, or its batch's aggregate proof) was checked.
    pub(crate) fn checked(
        index: NodeIndex,
        partial: S::Point,
        request: &DelegationRequest<S>,
    ) -> Self {
        Self {
            index,
            partial,
            request: request.clone(),
        }
    }

    /// The node that produced it.
    pub fn index(&self) -> NodeIndex {
        self.index
    }
}

impl<S: Suite> PartialDelegation<S> {
    /// Node side: compute `D_i = share_i·K` and its proof.
    pub fn create(
        share: &KeyShare<S>,
        request: &DelegationRequest<S>,
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        let partial = S::mul_secret(&request.ephemeral, share.value());
        let public = *share.public_share_encoded();
        let context = request.context(share.index());
        let statement = Statement {
            context: &context,
            base: &request.ephemeral,
            public: &public,
            image: &partial,
        };
        let proof = DleqProof::prove(share.value(), &statement, rng);
        Self {
            index: share.index(),
            partial,
            proof,
        }
    }

    /// The node that claims to have produced it.
    pub fn index(&self) -> NodeIndex {
        self.index
    }

    fn verified(self, request: &DelegationRequest<S>) -> VerifiedPartialDelegation<S> {
        VerifiedPartialDelegation::checked(self.index, *self.partial.point(), request)
    }

    /// Check the proof against the node's public share in `keys`.
    pub fn verify(
        self,
        keys: &PublicKeySet<S>,
        request: &DelegationRequest<S>,
    ) -> Result<VerifiedPartialDelegation<S>, Error> {
        let public = keys.public_share_encoded(self.index)?;
        let context = request.context(self.index);
        let statement = Statement {
            context: &context,
            base: &request.ephemeral,
            public,
            image: &self.partial,
        };
        if self.proof.verify(&statement) {
            Ok(self.verified(request))
        } else {
            Err(Error::InvalidProof {
                culprit: self.index,
            })
        }
    }

    /// `index || D_i || proof`.
    pub fn to_bytes(&self) -> [u8; PARTIAL_LEN] {
        crate::codec::concat(&[
            &self.index.to_bytes(),
            self.partial.bytes(),
            &self.proof.to_bytes(),
        ])
    }

    /// Strict decoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let bytes = crate::codec::exact::<PARTIAL_LEN>(bytes)?;
        Ok(Self {
            index: NodeIndex::from_bytes(&bytes[..2])?,
            partial: Encoded::from_bytes(&bytes[2..2 + POINT_LEN])?,
            proof: DleqProof::from_bytes(&bytes[2 + POINT_LEN..])?,
        })
    }
}

/// Verify many partials for one request. Checks all proofs in one batch; if the batch fails,
/// falls back to one-by-one checks so every bad partial is named. Returns the verified partials
/// and the errors (each naming its culprit), in input order.
pub fn verify_all<S: Suite>(
    partials: Vec<PartialDelegation<S>>,
    keys: &PublicKeySet<S>,
    request: &DelegationRequest<S>,
    rng: &mut impl CryptoRngCore,
) -> (Vec<VerifiedPartialDelegation<S>>, Vec<Error>) {
    verify_requests(vec![(request, partials)], keys, rng)
        .pop()
        .unwrap_or_default()
}

/// Verify the partials of many requests in one batch: one multi-scalar multiplication for all
/// of them, in which each node's public share appears once. If the batch fails, every request
/// is checked again on its own (and one partial at a time within a failing request), so every
/// bad partial is named. Returns, per request in input order, its verified partials and the
/// errors (each naming its culprit).
#[allow(clippy::type_complexity)] // (verified, errors) per request
pub fn verify_requests<S: Suite>(
    requests: Vec<(&DelegationRequest<S>, Vec<PartialDelegation<S>>)>,
    keys: &PublicKeySet<S>,
    rng: &mut impl CryptoRngCore,
) -> Vec<(Vec<VerifiedPartialDelegation<S>>, Vec<Error>)> {
    let mut errors: Vec<Vec<Error>> = Vec::with_capacity(requests.len());
    let mut known = Vec::with_capacity(requests.len());
    for (request, partials) in requests {
        let mut unknown = Vec::new();
        let mut checkable = Vec::with_capacity(partials.len());
        for p in partials {
            match keys.public_share_encoded(p.index) {
                Ok(public) => {
                    let context = request.context(p.index);
                    checkable.push((p, public, context));
                }
                Err(e) => unknown.push(e),
            }
        }
        errors.push(unknown);
        known.push((request, checkable));
    }
    let statements: Vec<_> = known
        .iter()
        .flat_map(|(request, checkable)| {
            checkable.iter().map(|(p, public, context)| {
                let statement = Statement {
                    context,
                    base: &request.ephemeral,
                    public: *public,
                    image: &p.partial,
                };
                (statement, &p.proof)
            })
        })
        .collect();
    let valid = dleq::verify_batch(&statements, rng);
    drop(statements);
    let several = known.len() > 1;
    known
        .into_iter()
        .zip(errors)
        .map(|((request, checkable), mut errors)| {
            let partials = checkable.into_iter().map(|(p, _, _)| p);
            if valid {
                return (partials.map(|p| p.verified(request)).collect(), errors);
            }
            if several {
                let (verified, bad) = verify_all(partials.collect(), keys, request, rng);
                errors.extend(bad);
                return (verified, errors);
            }
            let mut verified = Vec::new();
            for p in partials {
                match p.verify(keys, request) {
                    Ok(v) => verified.push(v),
                    Err(e) => errors.push(e),
                }
            }
            (verified, errors)
        })
        .collect()
}

/// Combine `t = keys.threshold()` verified partials into `S = Σ λ_i·D_i` and return `x(S)`.
/// Uses the first `t` distinct indices; all partials must be for the same request.
pub fn combine<S: Suite>(
    partials: &[VerifiedPartialDelegation<S>],
    keys: &PublicKeySet<S>,
) -> Result<SharedSecret, Error> {
    ecies::shared_secret::<S>(&combine_point(partials, keys)?)
}

/// Like [`combine`], but returns the shared point `S` itself.
pub fn combine_point<S: Suite>(
    partials: &[VerifiedPartialDelegation<S>],
    keys: &PublicKeySet<S>,
) -> Result<S::Point, Error> {
    let chosen = select(partials, keys.threshold(), |p| p.index)?;
    let request = &chosen[0].request;
    if chosen.iter().any(|p| p.request != *request) {
        return Err(Error::MixedRequests);
    }
    let indices: Vec<NodeIndex> = chosen.iter().map(|p| p.index).collect();
    // The partials and the Lagrange weights are public: variable-time arithmetic is safe.
    let points: Vec<S::Point> = chosen.iter().map(|p| p.partial).collect();
    ZeroInterpolation::<S>::new(&indices)?.apply(&points)
}

/// The first `threshold` items with distinct indices, or an error if there are fewer.
pub(crate) fn select<T>(
    items: &[T],
    threshold: u16,
    index: impl Fn(&T) -> NodeIndex,
) -> Result<Vec<&T>, Error> {
    let mut chosen: Vec<&T> = Vec::with_capacity(usize::from(threshold));
    for item in items {
        if chosen.len() == usize::from(threshold) {
            break;
        }
        if !chosen.iter().any(|c| index(c) == index(item)) {
            chosen.push(item);
        }
    }
    if threshold == 0 || chosen.len() < usize::from(threshold) {
        return Err(Error::NotEnoughPartials {
            got: chosen.len(),
            threshold,
        });
    }
    Ok(chosen)
}
