//! The end requester's authorization, one definition for the manager and the nodes
//! (docs/ARCHITECTURE.md §4.1-§4.3): who may ask for what, the checks a signed `/v1` request
//! passes, and the wire form ([`pb::RequesterAuthorization`]) in which the manager forwards a
//! requester's signature with every partial request, so that each node checks the requester
//! itself and a compromised manager cannot obtain partials for a request nobody authorized.
//!
//! Sans-IO: the registry is read through [`Registry`] (which answers from memory), the nonce
//! cache through [`NonceCache`], and the time is an argument; the manager's HTTP layer and the
//! node's gRPC service each turn the refusals into their own answers.

use tkms_registry::access::{Registry, RoleKind};
use tkms_sdk::{
    nox::{self, NoxError},
    v1::{self, Freshness, NonceCache, SignedV1, V1Error},
};

use crate::node::v1 as pb;
use alloy_primitives::{Address, B256};

/// What a requester asks for, which decides the role its signer needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A delegation (`/v0/delegate`, `/v1/delegate`): gateways only.
    Delegate,
    /// A re-encryption (`/v1/reencrypt`): gateways and runners.
    Reencrypt,
}

impl Action {
    /// The verb in refusals ("`signer` may not delegate on chain …").
    pub fn name(self) -> &'static str {
        match self {
            Self::Delegate => "delegate",
            Self::Reencrypt => "reencrypt",
        }
    }

    /// The role in which `signer` may ask for this on `chain_id` (the gateway role if it
    /// holds it, else for a re-encryption the runner role), or `None` if it may not.
    pub fn role(self, registry: &dyn Registry, chain_id: u64, signer: Address) -> Option<RoleKind> {
        if registry.is_gateway(chain_id, signer) {
            Some(RoleKind::Gateway)
        } else if self == Self::Reencrypt && registry.is_runner(chain_id, signer) {
            Some(RoleKind::Runner)
        } else {
            None
        }
    }
}

/// A requester's authorization, as the manager forwards it to the nodes.
#[derive(Debug, Clone)]
pub enum RequesterAuthorization {
    /// `/v0/delegate`: the gateway's Nox `DelegateAuthorization`, over the two body strings
    /// exactly as received.
    Nox(Box<nox::DelegateRequest>),
    /// A signed `/v1` request.
    V1(V1Authorization),
}

/// A signed `/v1` request's authorization: its EIP-712 digest, nonce, expiry and signature.
/// A node rebuilds the request from what it is asked to compute and checks that its digest
/// is [`Self::request_digest`] before it trusts anything else here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Authorization {
    /// Chain whose registry authorizes the signer.
    pub chain_id: u64,
    /// The EIP-712 signing hash (the request id), as the manager computed it.
    pub request_digest: B256,
    /// Nonce and expiry.
    pub freshness: Freshness,
    /// The requester's 65-byte signature.
    pub signature: Vec<u8>,
}

impl V1Authorization {
    /// The authorization of a parsed `/v1` request.
    pub fn of(request: &(impl SignedV1 + ?Sized)) -> Self {
        Self {
            chain_id: request.chain_id(),
            request_digest: request.digest(),
            freshness: *request.freshness(),
            signature: request.signature().to_vec(),
        }
    }

    /// The signer of [`Self::request_digest`]: a node asks only once that digest is its own.
    pub fn signer(&self) -> Result<Address, V1Error> {
        v1::recover(&self.signature, &self.request_digest)
    }

    /// The checks every signed `/v1` request passes once its `signer` is recovered, at the
    /// manager and again at every node: the signer holds a role that may ask for `action`,
    /// `quota` (the manager's, in that role) admits it, the request has not expired, and its
    /// nonce was not used before, in that order, so that a request refused for its role or
    /// its quota does not burn its nonce and may be sent again. The role it was admitted in.
    ///
    /// # Errors
    /// [`V1Error::Forbidden`], `quota`'s refusal, [`V1Error::Expired`], and the refusals of
    /// [`NonceCache::use_once`].
    pub fn admit<E: From<V1Error>>(
        &self,
        signer: Address,
        action: Action,
        registry: &dyn Registry,
        nonces: &NonceCache,
        now: u64,
        quota: impl FnOnce(RoleKind) -> Result<(), E>,
    ) -> Result<RoleKind, E> {
        let chain_id = self.chain_id;
        let role = action
            .role(registry, chain_id, signer)
            .ok_or(V1Error::Forbidden {
                signer,
                action: action.name(),
                chain_id,
            })?;
        quota(role)?;
        self.freshness.check(now)?;
        nonces.use_once(signer, &self.freshness, now)?;
        Ok(role)
    }
}

/// Why a [`pb::RequesterAuthorization`] is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorizationError {
    /// The request carries no authorization.
    #[error("the request carries no requester authorization")]
    Missing,
    /// The `/v0` authorization does not parse.
    #[error(transparent)]
    Nox(#[from] NoxError),
    /// The `/v1` nonce is not 32 bytes.
    #[error("nonce must be 32 bytes, got {0}")]
    Nonce(usize),
    /// The `/v1` request digest is not 32 bytes.
    #[error("the request digest must be 32 bytes, got {0}")]
    Digest(usize),
}

impl TryFrom<&pb::RequesterAuthorization> for RequesterAuthorization {
    type Error = AuthorizationError;

    fn try_from(wire: &pb::RequesterAuthorization) -> Result<Self, Self::Error> {
        use pb::requester_authorization::Scheme;
        match wire.scheme.as_ref().ok_or(AuthorizationError::Missing)? {
            Scheme::Eip712Delegate(a) => Ok(Self::Nox(Box::new(
                nox::DelegateRequest::from_authorization(
                    a.chain_id,
                    &a.ephemeral_pub_key,
                    &a.target_pub_key,
                    &a.signature,
                )?,
            ))),
            Scheme::Eip712Request(a) => Ok(Self::V1(V1Authorization {
                chain_id: a.chain_id,
                request_digest: B256::try_from(a.request_digest.as_slice())
                    .map_err(|_| AuthorizationError::Digest(a.request_digest.len()))?,
                freshness: Freshness {
                    nonce: B256::try_from(a.nonce.as_slice())
                        .map_err(|_| AuthorizationError::Nonce(a.nonce.len()))?,
                    expires_at: a.expires_at,
                },
                signature: a.signature.clone(),
            })),
        }
    }
}

impl From<&RequesterAuthorization> for pb::RequesterAuthorization {
    fn from(authorization: &RequesterAuthorization) -> Self {
        use pb::requester_authorization::Scheme;
        let scheme = match authorization {
            RequesterAuthorization::Nox(request) => Scheme::Eip712Delegate(pb::Eip712Delegate {
                chain_id: request.chain_id(),
                ephemeral_pub_key: request.ephemeral_pub_key().to_string(),
                target_pub_key: request.target_pub_key().to_string(),
                signature: request.signature().as_bytes().to_vec(),
            }),
            RequesterAuthorization::V1(a) => Scheme::Eip712Request(pb::Eip712Request {
                chain_id: a.chain_id,
                request_digest: a.request_digest.to_vec(),
                nonce: a.freshness.nonce.to_vec(),
                expires_at: a.freshness.expires_at,
                signature: a.signature.clone(),
            }),
        };
        Self {
            scheme: Some(scheme),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tkms_registry::access::StaticRegistry;

    fn v1() -> V1Authorization {
        V1Authorization {
            chain_id: 7,
            request_digest: B256::repeat_byte(1),
            freshness: Freshness {
                nonce: B256::repeat_byte(2),
                expires_at: 1_000,
            },
            signature: vec![3; 65],
        }
    }

    #[test]
    fn v1_wire_form_round_trips() {
        let a = RequesterAuthorization::V1(v1());
        let wire = pb::RequesterAuthorization::from(&a);
        match RequesterAuthorization::try_from(&wire).unwrap() {
            RequesterAuthorization::V1(back) => assert_eq!(back, v1()),
            RequesterAuthorization::Nox(_) => panic!("a /v1 authorization came back as /v0"),
        }
    }

    #[test]
    fn malformed_wire_forms_are_refused() {
        let missing = pb::RequesterAuthorization { scheme: None };
        assert_eq!(
            RequesterAuthorization::try_from(&missing).unwrap_err(),
            AuthorizationError::Missing
        );
        let mut wire = pb::RequesterAuthorization::from(&RequesterAuthorization::V1(v1()));
        if let Some(pb::requester_authorization::Scheme::Eip712Request(a)) = &mut wire.scheme {
            a.nonce.truncate(31);
        }
        assert_eq!(
            RequesterAuthorization::try_from(&wire).unwrap_err(),
            AuthorizationError::Nonce(31)
        );
    }

    #[test]
    fn admit_checks_role_then_quota_then_expiry_then_nonce() {
        let gateway = Address::repeat_byte(0xaa);
        let stranger = Address::repeat_byte(0xbb);
        let runner = Address::repeat_byte(0xcc);
        let registry = StaticRegistry::default()
            .with_gateway(7, gateway)
            .with_runner(7, runner);
        let nonces = NonceCache::default();
        let a = v1();
        let refuse = |_| Err(V1Error::Busy);
        let admit = |_| Ok::<(), V1Error>(());
        // Forbidden before the quota is asked.
        let e = a
            .admit(stranger, Action::Delegate, &registry, &nonces, 900, refuse)
            .unwrap_err();
        assert!(matches!(e, V1Error::Forbidden { .. }), "{e:?}");
        // The quota before the expiry, and neither burns the nonce.
        let e = a
            .admit(gateway, Action::Delegate, &registry, &nonces, 2_000, refuse)
            .unwrap_err();
        assert_eq!(e, V1Error::Busy);
        let e = a
            .admit(gateway, Action::Delegate, &registry, &nonces, 2_000, admit)
            .unwrap_err();
        assert!(matches!(e, V1Error::Expired(_)), "{e:?}");
        let role = a
            .admit(gateway, Action::Reencrypt, &registry, &nonces, 900, admit)
            .unwrap();
        assert_eq!(role, RoleKind::Gateway);
        assert_eq!(
            Action::Reencrypt.role(&registry, 7, runner),
            Some(RoleKind::Runner)
        );
        assert_eq!(Action::Delegate.role(&registry, 7, runner), None);
        let e = a
            .admit(gateway, Action::Delegate, &registry, &nonces, 900, admit)
            .unwrap_err();
        assert!(matches!(e, V1Error::Replayed { .. }), "{e:?}");
    }
}
