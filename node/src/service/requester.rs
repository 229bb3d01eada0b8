//! The end requester's authorization, re-checked by the node itself
//! ([`tkms_proto::requester`], the manager's check), so that a compromised manager cannot
//! obtain partials for a request nobody authorized.

use tkms_crypto::suite::Encoded;
use tkms_proto::{
    node::v1 as pb,
    requester::{Action, AuthorizationError, RequesterAuthorization},
};
use tkms_registry::access::Registry;
use tkms_sdk::{
    nox,
    v1::{self, V1Error},
};

use tonic::Status;

use tkms_proto::ClusterSuite;

use super::{denied, unauthenticated, NodeService};

/// What a partial request asks the node to compute, for the requester check.
pub(super) enum Operation<'a> {
    /// A delegation of `K` under `request_id`, encrypted to `target_rsa_spki` if non-empty.
    Delegate {
        ephemeral: &'a Encoded<ClusterSuite>,
        request_id: &'a [u8],
        target_rsa_spki: &'a [u8],
    },
    /// Re-encryptions of the capsules `(request id, K)` to `target`.
    Reencrypt {
        target: &'a Encoded<ClusterSuite>,
        capsules: &'a [(Vec<u8>, Encoded<ClusterSuite>)],
    },
}

impl NodeService {
    /// The end requester's authorization, checked by this node itself: the signature covers
    /// exactly what the node is asked to compute, and its signer holds the needed role
    /// ([`V1Authorization::admit`], the manager's check). The digests are compared before the
    /// signature is recovered.
    pub(super) fn check_requester(
        &self,
        authorization: Option<&pb::RequesterAuthorization>,
        operation: &Operation<'_>,
    ) -> Result<(), Status> {
        let Some(registry) = &self.registry else {
            return Ok(());
        };
        let authorization = authorization
            .ok_or(AuthorizationError::Missing)
            .and_then(RequesterAuthorization::try_from)
            .map_err(|e| match e {
                AuthorizationError::Nox(e) => unauthenticated(e),
                AuthorizationError::Nonce(_) => Status::invalid_argument(e.to_string()),
                e => denied(e),
            })?;
        let a = match (authorization, operation) {
            (
                RequesterAuthorization::Nox(request),
                Operation::Delegate {
                    ephemeral,
                    request_id,
                    target_rsa_spki,
                },
            ) => {
                return check_v0(
                    registry.as_ref(),
                    &request,
                    ephemeral,
                    request_id,
                    target_rsa_spki,
                )
            }
            (RequesterAuthorization::Nox(_), Operation::Reencrypt { .. }) => {
                return Err(denied(
                    "a delegation authorization does not authorize a re-encryption",
                ))
            }
            (RequesterAuthorization::V1(a), _) => a,
        };
        let (digest, action) = match operation {
            Operation::Delegate {
                ephemeral,
                request_id,
                target_rsa_spki,
            } => {
                let request = v1::DelegateV1::from_parts(
                    a.chain_id,
                    **ephemeral,
                    target_rsa_spki.to_vec(),
                    a.freshness,
                    a.signature.clone(),
                )
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let digest = request.digest();
                if digest.as_slice() != *request_id {
                    return Err(denied("the request id is not the request's digest"));
                }
                (digest, Action::Delegate)
            }
            Operation::Reencrypt { target, capsules } => {
                let request = v1::ReencryptV1::from_parts(
                    a.chain_id,
                    **target,
                    capsules.iter().map(|(_, k)| *k).collect(),
                    a.freshness,
                    a.signature.clone(),
                )
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let digest = request.digest();
                let ids_match = capsules
                    .iter()
                    .enumerate()
                    .all(|(k, (id, _))| *id == v1::ReencryptV1::request_id(&digest, k));
                if !ids_match {
                    return Err(denied("the capsule ids do not derive from the request"));
                }
                (digest, Action::Reencrypt)
            }
        };
        if digest != a.request_digest {
            return Err(denied("the request digest differs from the node's"));
        }
        let signer = a.signer().map_err(unauthenticated)?;
        a.admit(
            signer,
            action,
            registry.as_ref(),
            &self.nonces,
            v1::now_secs(),
            |_| Ok(()),
        )
        .map_err(|e| match e {
            V1Error::Forbidden {
                signer, chain_id, ..
            } => denied(format!("{signer} may not ask for this on chain {chain_id}")),
            e => unauthenticated(e),
        })?;
        Ok(())
    }
}

/// `/v0/delegate`: the gateway's Nox `DelegateAuthorization` must be for this `K` and request
/// id, and its signer a gateway.
fn check_v0(
    registry: &dyn Registry,
    request: &nox::DelegateRequest,
    ephemeral: &Encoded<ClusterSuite>,
    request_id: &[u8],
    target_rsa_spki: &[u8],
) -> Result<(), Status> {
    if !target_rsa_spki.is_empty() {
        return Err(denied("a /v1 delegation needs a /v1 authorization"));
    }
    if request.ephemeral() != ephemeral.point() {
        return Err(denied("the authorization is for another ephemeral key"));
    }
    if request.request_id() != *request_id {
        return Err(denied(
            "the request id does not derive from the authorization",
        ));
    }
    let signer = request.signer().map_err(unauthenticated)?;
    let chain_id = request.chain_id();
    if Action::Delegate.role(registry, chain_id, signer).is_none() {
        return Err(denied(format!(
            "{signer} is not a gateway on chain {chain_id}"
        )));
    }
    Ok(())
}
