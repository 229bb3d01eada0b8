//! The node's gRPC service (DESIGN.md §4.2): partial delegations and re-encryptions with
//! proofs, status, and public share, for the manager.
//!
//! Every partial request must carry a signature by a manager key this node accepts (pinned in
//! its configuration; later, read from the registry), over the request's canonical digest
//! ([`tkms_proto::SignedRequest`]). Request fields are validated into `tkms-crypto` types
//! before any secret is touched; a bad request gets `INVALID_ARGUMENT` or `UNAUTHENTICATED`
//! and changes nothing.

use std::{sync::Arc, time::Duration};

use rand_core::OsRng;
use tkms_crypto::{
    delegation::{DelegationRequest, PartialDelegation},
    pre::{PartialReencryption, ReencryptionRequest},
    suite::Encoded,
    KeyShare, PublicKeySet, Secp256k1, Suite,
};
use tkms_proto::{
    node::v1::{self as pb, node_server::Node},
    SignedRequest,
};
use tokio::sync::RwLock;

use crate::ceremony::{self, Ceremonies, CeremonyError, Spec};
use tonic::{Request, Response, Status};

/// The suite the cluster runs (secp256k1, Nox-compatible).
pub type ClusterSuite = Secp256k1;

/// Largest number of capsules in one re-encryption request.
pub const MAX_BATCH: usize = 256;
/// Largest request id, in bytes.
pub const MAX_REQUEST_ID: usize = 64;

/// The share a node serves: its epoch, the share, and the epoch's public key set.
#[derive(Debug)]
pub struct ActiveShare {
    /// Key epoch.
    pub epoch: u64,
    /// This node's share.
    pub share: KeyShare<ClusterSuite>,
    /// The epoch's public key set (threshold, commitment, public shares).
    pub keys: PublicKeySet<ClusterSuite>,
    /// The transcript hash the epoch was agreed on.
    pub transcript_hash: [u8; 32],
}

/// The gRPC node service.
#[derive(Clone)]
pub struct NodeService {
    active: Arc<RwLock<Option<ActiveShare>>>,
    managers: Arc<Vec<Encoded<ClusterSuite>>>,
    ceremonies: Option<Arc<Ceremonies>>,
    node_key: Option<Encoded<ClusterSuite>>,
}

impl NodeService {
    /// A service answering for `active` (absent until a DKG or a restore), accepting requests
    /// signed by any of `managers` (33-byte compressed keys).
    pub fn new(
        active: Arc<RwLock<Option<ActiveShare>>>,
        managers: Vec<Encoded<ClusterSuite>>,
    ) -> Self {
        Self {
            active,
            managers: Arc::new(managers),
            ceremonies: None,
            node_key: None,
        }
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

    /// Check the manager's signature over the request.
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

fn epoch_matches(active: &ActiveShare, requested: u64) -> Result<(), Status> {
    if requested == active.epoch {
        Ok(())
    } else {
        Err(Status::failed_precondition(format!(
            "this node serves epoch {}, not {requested}",
            active.epoch
        )))
    }
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

fn no_share() -> Status {
    Status::failed_precondition("this node holds no key share yet (no DKG has completed)")
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let active = self.active.read().await;
        let mut response = match active.as_ref() {
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
        let active = self.active.read().await;
        let active = active.as_ref().ok_or_else(no_share)?;
        epoch_matches(active, request.get_ref().epoch)?;
        Ok(Response::new(pb::PublicShareResponse {
            index: u32::from(active.share.index().get()),
            epoch: active.epoch,
            public_share: ClusterSuite::encode_point(&active.share.public_share()).to_vec(),
        }))
    }

    async fn partial_delegation(
        &self,
        request: Request<pb::PartialDelegationRequest>,
    ) -> Result<Response<pb::PartialDelegationResponse>, Status> {
        let request = request.into_inner();
        self.authenticate(&request)?;
        let ephemeral = point(&request.ephemeral, "ephemeral key")?;
        let id = request_id(&request.request_id)?;
        let active = self.active.read().await;
        let active = active.as_ref().ok_or_else(no_share)?;
        epoch_matches(active, request.epoch)?;
        let delegation = DelegationRequest::with_encoded(request.epoch, id, ephemeral);
        let partial = PartialDelegation::create(&active.share, &delegation, &mut OsRng);
        Ok(Response::new(pb::PartialDelegationResponse {
            partial: partial.to_bytes().to_vec(),
        }))
    }

    async fn partial_reencryption(
        &self,
        request: Request<pb::PartialReencryptionRequest>,
    ) -> Result<Response<pb::PartialReencryptionResponse>, Status> {
        let request = request.into_inner();
        self.authenticate(&request)?;
        if request.capsules.is_empty() || request.capsules.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "a batch holds 1..={MAX_BATCH} capsules, got {}",
                request.capsules.len()
            )));
        }
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
        let active = self.active.read().await;
        let active = active.as_ref().ok_or_else(no_share)?;
        epoch_matches(active, request.epoch)?;
        let partials = capsules
            .into_iter()
            .map(|(id, ephemeral)| {
                let pre = ReencryptionRequest::with_encoded(request.epoch, id, ephemeral, target);
                PartialReencryption::create(&active.share, &pre, &mut OsRng)
                    .to_bytes()
                    .to_vec()
            })
            .collect();
        Ok(Response::new(pb::PartialReencryptionResponse { partials }))
    }

    async fn start_ceremony(
        &self,
        request: Request<pb::StartCeremonyRequest>,
    ) -> Result<Response<pb::StartCeremonyResponse>, Status> {
        let request = request.into_inner();
        self.authenticate(&request)?;
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
}
