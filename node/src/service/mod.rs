//! The node's gRPC service (docs/ARCHITECTURE.md §4.2): partial delegations and re-encryptions with
//! proofs, status, public share, and the epoch commands of the manager.
//!
//! Every call must come over a TLS connection authenticated as a manager key this node
//! accepts; ceremony and epoch commands also carry the manager's signature
//! ([`tkms_proto::SignedRequest`]). A partial is computed from the share of the epoch the
//! request names, if this node holds it ([`Epochs`]: the committed epoch, and a newer one
//! while its commit is pending). Cheap checks come first (the epoch), then the request fields
//! are validated into `tkms-crypto` types and the requester re-checked, before any secret is
//! touched; a bad request gets `INVALID_ARGUMENT`, `UNAUTHENTICATED`, `PERMISSION_DENIED` or
//! `FAILED_PRECONDITION` and changes nothing.

use std::{sync::Arc, time::Duration};

use rand_core::OsRng;
use tkms_crypto::{
    pre::{PartialReencryption, ReencryptionRequest},
    suite::Encoded,
    Suite,
};
use tkms_proto::{
    node::v1::{self as pb, node_server::Node},
    tls::TlsPeer,
    SignedRequest,
};
use tkms_registry::access::Registry;
use tkms_sdk::{nox, v1::NonceCache};

use crate::ceremony::{self, Ceremonies, CeremonyError, Spec};
use crate::epochs::ActiveShare;
use crate::epochs::{EpochError, Epochs};
use tkms_crypto::handover::Refusal;
use tonic::{Request, Response, Status};

use tkms_proto::ClusterSuite;

mod delegation;
mod registry;
mod requester;

use self::{
    delegation::{aggregated_batch, cores, in_parts},
    requester::Operation,
};

/// Largest number of capsules in one re-encryption request, or of delegations in one batch.
pub use tkms_proto::MAX_BATCH;
/// Largest request id, in bytes.
pub const MAX_REQUEST_ID: usize = 64;

/// The gRPC node service.
#[derive(Clone)]
pub struct NodeService {
    epochs: Arc<Epochs>,
    managers: Arc<Vec<Encoded<ClusterSuite>>>,
    ceremonies: Option<Arc<Ceremonies>>,
    node_key: Option<Encoded<ClusterSuite>>,
    registry: Option<Arc<dyn Registry>>,
    nonces: Arc<NonceCache>,
}

fn denied(message: impl std::fmt::Display) -> Status {
    tracing::warn!(reason = %message, "refused a partial request: requester not authorized");
    Status::permission_denied(message.to_string())
}

fn unauthenticated(message: impl std::fmt::Display) -> Status {
    tracing::warn!(reason = %message, "refused a partial request: bad requester authorization");
    Status::unauthenticated(message.to_string())
}

impl NodeService {
    /// A service answering with the shares of `epochs` (none until a DKG), accepting
    /// connections and signed commands from any of `managers` (33-byte compressed keys).
    pub fn new(epochs: Arc<Epochs>, managers: Vec<Encoded<ClusterSuite>>) -> Self {
        Self {
            epochs,
            managers: Arc::new(managers),
            ceremonies: None,
            node_key: None,
            registry: None,
            nonces: Arc::new(NonceCache::default()),
        }
    }

    /// Remember used `/v1` nonces in `nonces` (the node's persistent replay journal,
    /// [`crate::front`]) instead of in memory only.
    #[must_use]
    pub fn with_nonces(mut self, nonces: Arc<NonceCache>) -> Self {
        self.nonces = nonces;
        self
    }

    /// Re-check every requester's authorization against `registry` (the node's own view of
    /// the gateways and runners), and serve only the epoch the registry publishes (when it
    /// publishes one). Without a registry the node trusts the manager's check.
    #[must_use]
    pub fn with_registry(mut self, registry: Arc<dyn Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The share of `epoch`, if this node serves it: it holds it and, with a registry that
    /// publishes epochs, the registry allows it ([`Self::check_published`]).
    fn share_for(&self, epoch: u64) -> Result<Arc<ActiveShare>, Status> {
        let share = self.epochs.get(epoch).map_err(|r| refusal(r.into()))?;
        self.check_published(&share)?;
        Ok(share)
    }

    /// Run DKG and reshare ceremonies with `ceremonies`, as the node whose key is `node_key`.
    #[must_use]
    pub fn with_ceremonies(
        mut self,
        ceremonies: Arc<Ceremonies>,
        node_key: Encoded<ClusterSuite>,
    ) -> Self {
        self.ceremonies = Some(ceremonies);
        self.node_key = Some(node_key);
        self
    }

    /// Check that the request came over a TLS connection whose client proved one of the
    /// accepted manager keys (the channel authenticates every request on it, so partial
    /// requests carry no signature of their own).
    fn authenticate_peer<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let peer = request
            .extensions()
            .get::<TlsPeer>()
            .ok_or_else(|| Status::unauthenticated("not an authenticated TLS connection"))?;
        if self
            .managers
            .iter()
            .any(|k| k.bytes().as_slice() == peer.key.as_slice())
        {
            Ok(())
        } else {
            tracing::warn!(peer = %hex::encode(peer.key), addr = ?peer.remote_addr, "request from a key that is not an accepted manager");
            Err(Status::unauthenticated(
                "the connection's key is not an accepted manager",
            ))
        }
    }

    /// Check the manager's signature over a ceremony request, which a node keeps as the
    /// manager's signed instruction (on top of the connection's authentication).
    fn authenticate<R: SignedRequest>(&self, request: &R) -> Result<(), Status> {
        request
            .verify_manager(&self.managers)
            .map_err(|e| Status::unauthenticated(e.to_string()))
    }
}

fn point(bytes: &[u8], what: &str) -> Result<Encoded<ClusterSuite>, Status> {
    Encoded::from_bytes(bytes).map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
}

fn request_id(bytes: &[u8]) -> Result<Vec<u8>, Status> {
    if bytes.is_empty() || bytes.len() > MAX_REQUEST_ID {
        return Err(Status::invalid_argument(format!(
            "request id must be 1..={MAX_REQUEST_ID} bytes, got {}",
            bytes.len()
        )));
    }
    Ok(bytes.to_vec())
}

/// Longest round timeout a request may ask for.
const MAX_ROUND_TIMEOUT: Duration = Duration::from_secs(300);
/// Round timeout when the request names none.
const DEFAULT_ROUND_TIMEOUT: Duration = Duration::from_secs(10);

fn ceremony_spec(request: &pb::StartCeremonyRequest) -> Result<Spec, CeremonyError> {
    let threshold = u16::try_from(request.threshold).map_err(|_| {
        CeremonyError::Invalid(format!("threshold {} too large", request.threshold))
    })?;
    let recipients = ceremony::members(&request.recipients, "recipients")?;
    let round_timeout = match request.round_timeout_ms {
        0 => DEFAULT_ROUND_TIMEOUT,
        ms => Duration::from_millis(ms).min(MAX_ROUND_TIMEOUT),
    };
    let (previous, dealers) = match pb::CeremonyKind::try_from(request.kind) {
        Ok(pb::CeremonyKind::Dkg) => {
            if !request.dealers.is_empty() && request.dealers != request.recipients {
                return Err(CeremonyError::Invalid(
                    "in a DKG the dealers are the recipients; leave dealers empty".into(),
                ));
            }
            (None, recipients.clone())
        }
        Ok(pb::CeremonyKind::Reshare) => {
            let dealers = ceremony::members(&request.dealers, "dealers")?;
            if request.previous_epoch == 0 || request.previous_epoch >= request.epoch {
                return Err(CeremonyError::Invalid(format!(
                    "previous epoch {} must be non-zero and below the new epoch {}",
                    request.previous_epoch, request.epoch
                )));
            }
            let keys = ceremony::key_set(&request.previous_commitment, &dealers)?;
            (Some((request.previous_epoch, keys)), dealers)
        }
        _ => return Err(CeremonyError::Invalid("unknown ceremony kind".into())),
    };
    if request.epoch == 0 {
        return Err(CeremonyError::Invalid("epochs start at 1".into()));
    }
    Ok(Spec {
        previous,
        epoch: request.epoch,
        threshold,
        dealers,
        recipients,
        round_timeout,
    })
}

/// Why a share is not served, as a status.
fn refusal(e: EpochError) -> Status {
    match e {
        EpochError::Vault(e) => Status::internal(e.to_string()),
        EpochError::Refused(r) => Status::failed_precondition(r.to_string()),
    }
}

/// One held epoch, as `Status` reports it.
fn held_epoch(share: &ActiveShare, committed: u64) -> pb::HeldEpoch {
    pb::HeldEpoch {
        epoch: share.epoch,
        index: u32::from(share.share.index().get()),
        threshold: u32::from(share.keys.threshold()),
        commitment: share.keys.commitment().to_bytes(),
        committee: share
            .keys
            .public_shares()
            .map(|(i, _)| u32::from(i.get()))
            .collect(),
        transcript_hash: share.transcript_hash.to_vec(),
        committed: share.epoch <= committed,
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let snapshot = self.epochs.snapshot();
        let mut response = match snapshot.held.last() {
            Some(a) => pb::StatusResponse {
                index: u32::from(a.share.index().get()),
                epoch: a.epoch,
                threshold: u32::from(a.keys.threshold()),
                committee_size: u32::try_from(a.keys.committee_size()).unwrap_or(u32::MAX),
                public_key: a.keys.public_key_encoded().bytes().to_vec(),
                commitment: a.keys.commitment().to_bytes(),
                committee: a
                    .keys
                    .public_shares()
                    .map(|(i, _)| u32::from(i.get()))
                    .collect(),
                transcript_hash: a.transcript_hash.to_vec(),
                ..Default::default()
            },
            None => pb::StatusResponse::default(),
        };
        response.held = snapshot
            .held
            .iter()
            .map(|s| held_epoch(s, snapshot.committed))
            .collect();
        response.committed_epoch = snapshot.committed;
        response.retired = snapshot.retired;
        response.last_ceremony_epoch = snapshot.last_ceremony;
        response.version = env!("CARGO_PKG_VERSION").to_string();
        if let Some(key) = &self.node_key {
            response.node_key = key.bytes().to_vec();
        }
        if let Some(c) = &self.ceremonies {
            response.p2p_addr = c.p2p_address().to_string();
            response.ceremony = c.in_progress().unwrap_or_default().to_string();
        }
        Ok(Response::new(response))
    }

    async fn public_share(
        &self,
        request: Request<pb::PublicShareRequest>,
    ) -> Result<Response<pb::PublicShareResponse>, Status> {
        let share = self
            .epochs
            .get(request.get_ref().epoch)
            .map_err(|r| refusal(r.into()))?;
        Ok(Response::new(pb::PublicShareResponse {
            index: u32::from(share.share.index().get()),
            epoch: share.epoch,
            public_share: ClusterSuite::encode_point(&share.share.public_share()).to_vec(),
        }))
    }

    async fn partial_delegation(
        &self,
        request: Request<pb::PartialDelegationRequest>,
    ) -> Result<Response<pb::PartialDelegationResponse>, Status> {
        self.authenticate_peer(&request)?;
        let request = request.into_inner();
        let share = self.share_for(request.epoch)?;
        let partial = self.delegation_item(&share, &request)?;
        if request.target_rsa_spki.is_empty() {
            return Ok(Response::new(pb::PartialDelegationResponse {
                partial: partial.to_bytes().to_vec(),
                encrypted_partial: Vec::new(),
            }));
        }
        let encrypted_partial =
            nox::rsa_oaep_encrypt(&request.target_rsa_spki, &partial.to_bytes())
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::PartialDelegationResponse {
            partial: Vec::new(),
            encrypted_partial,
        }))
    }

    async fn partial_delegation_batch(
        &self,
        request: Request<pb::PartialDelegationBatchRequest>,
    ) -> Result<Response<pb::PartialDelegationBatchResponse>, Status> {
        self.authenticate_peer(&request)?;
        let pb::PartialDelegationBatchRequest {
            requests,
            aggregate_proof,
        } = request.into_inner();
        if requests.is_empty() || requests.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "a batch holds 1..={MAX_BATCH} delegations, got {}",
                requests.len()
            )));
        }
        // Every item names the same epoch (the manager's); one that does not is refused on
        // its own.
        let share = self.share_for(requests[0].epoch)?;
        if aggregate_proof {
            return aggregated_batch(self, share, requests)
                .await
                .map(Response::new);
        }
        if requests.len() == 1 {
            let results = self.delegation_results(&share, &requests);
            return Ok(Response::new(pb::PartialDelegationBatchResponse {
                results,
                aggregate_proof: Vec::new(),
            }));
        }
        // More than one: split over the blocking pool, one part per core, so a batch keeps
        // every core busy and no runtime worker is held.
        let service = self.clone();
        let results = in_parts(
            cores(),
            requests,
            move |part| service.delegation_results(&share, part),
            |results| results,
        )
        .await?;
        Ok(Response::new(pb::PartialDelegationBatchResponse {
            results,
            aggregate_proof: Vec::new(),
        }))
    }

    async fn partial_reencryption(
        &self,
        request: Request<pb::PartialReencryptionRequest>,
    ) -> Result<Response<pb::PartialReencryptionResponse>, Status> {
        self.authenticate_peer(&request)?;
        let request = request.into_inner();
        if request.capsules.is_empty() || request.capsules.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "a batch holds 1..={MAX_BATCH} capsules, got {}",
                request.capsules.len()
            )));
        }
        let share = self.share_for(request.epoch)?;
        let target = point(&request.target, "target key")?;
        let capsules = request
            .capsules
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let ephemeral = point(&c.ephemeral, &format!("capsule {k} ephemeral key"))?;
                Ok((request_id(&c.request_id)?, ephemeral))
            })
            .collect::<Result<Vec<_>, Status>>()?;
        self.check_requester(
            request.authorization.as_ref(),
            &Operation::Reencrypt {
                target: &target,
                capsules: &capsules,
            },
        )?;
        let epoch = share.epoch;
        let create = move || -> Vec<Vec<u8>> {
            capsules
                .into_iter()
                .map(|(id, ephemeral)| {
                    let pre = ReencryptionRequest::with_encoded(epoch, id, ephemeral, target);
                    PartialReencryption::create(&share.share, &pre, &mut OsRng)
                        .to_bytes()
                        .to_vec()
                })
                .collect()
        };
        // One capsule (~0.25 ms) is computed in place; a batch (up to MAX_BATCH of them, tens
        // of milliseconds) goes to the blocking pool so it does not hold a runtime worker that
        // other requests' partials and the connection's I/O need.
        let partials = if request.capsules.len() == 1 {
            create()
        } else {
            tokio::task::spawn_blocking(create)
                .await
                .map_err(|e| Status::internal(format!("re-encryption partials task: {e}")))?
        };
        Ok(Response::new(pb::PartialReencryptionResponse { partials }))
    }

    async fn start_ceremony(
        &self,
        request: Request<pb::StartCeremonyRequest>,
    ) -> Result<Response<pb::StartCeremonyResponse>, Status> {
        self.authenticate_peer(&request)?;
        let request = request.into_inner();
        self.authenticate(&request)?;
        self.check_members(&request)?;
        let Some(ceremonies) = self.ceremonies.clone() else {
            return Err(Status::unimplemented(
                "this node was started without a ceremony channel",
            ));
        };
        let spec = ceremony_spec(&request).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // The ceremony runs to its end even if the manager stops waiting.
        let outcome = tokio::spawn(async move { ceremonies.run(spec).await })
            .await
            .map_err(|e| Status::internal(format!("ceremony task: {e}")))?
            .map_err(|e| match e {
                CeremonyError::Invalid(_) => Status::invalid_argument(e.to_string()),
                CeremonyError::Precondition(_) => Status::failed_precondition(e.to_string()),
                CeremonyError::Failed(_) => Status::aborted(e.to_string()),
                CeremonyError::Vault(_) => Status::internal(e.to_string()),
            })?;
        Ok(Response::new(pb::StartCeremonyResponse {
            epoch: outcome.epoch,
            commitment: outcome.keys.commitment().to_bytes(),
            transcript_hash: outcome.transcript_hash.to_vec(),
            qualified: outcome
                .qualified
                .iter()
                .map(|i| u32::from(i.get()))
                .collect(),
            holds_share: outcome.holds_share,
        }))
    }

    async fn commit_epoch(
        &self,
        request: Request<pb::CommitEpochRequest>,
    ) -> Result<Response<pb::CommitEpochResponse>, Status> {
        self.authenticate_peer(&request)?;
        let request = request.into_inner();
        self.authenticate(&request)?;
        if request.epoch == 0 {
            return Err(Status::invalid_argument("epochs start at 1"));
        }
        self.check_commit_published(request.epoch)?;
        let committed = self
            .epochs
            .commit(request.epoch, &request.transcript_hash)
            .map_err(|e| match e {
                EpochError::Refused(Refusal::TranscriptMismatch(_)) => {
                    Status::invalid_argument(e.to_string())
                }
                other => refusal(other),
            })?;
        Ok(Response::new(pb::CommitEpochResponse {
            holds_share: committed.holds_share,
            erased: committed.erased,
        }))
    }

    async fn abort_epoch(
        &self,
        request: Request<pb::AbortEpochRequest>,
    ) -> Result<Response<pb::AbortEpochResponse>, Status> {
        self.authenticate_peer(&request)?;
        let request = request.into_inner();
        self.authenticate(&request)?;
        if self
            .ceremonies
            .as_ref()
            .and_then(|c| c.in_progress())
            .is_some()
        {
            return Err(Status::failed_precondition(
                "a ceremony is in progress on this node; abort its epoch once it ends",
            ));
        }
        let erased = self.epochs.abort(request.epoch).map_err(refusal)?;
        Ok(Response::new(pb::AbortEpochResponse { erased }))
    }
}
