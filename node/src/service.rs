//! The node's gRPC service (DESIGN.md §4.2): partial delegations and re-encryptions with
//! proofs, status, and public share, for the manager.
//!
//! Every partial request must carry a signature by a manager key this node accepts (pinned in
//! its configuration; later, read from the registry), over the request's canonical digest
//! ([`tkms_proto::SignedRequest`]). Request fields are validated into `tkms-crypto` types
//! before any secret is touched; a bad request gets `INVALID_ARGUMENT` or `UNAUTHENTICATED`
//! and changes nothing.

use std::sync::Arc;

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
}

/// The gRPC node service.
#[derive(Clone)]
pub struct NodeService {
    active: Arc<RwLock<Option<ActiveShare>>>,
    managers: Arc<Vec<Encoded<ClusterSuite>>>,
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
        }
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
        let response = match active.as_ref() {
            Some(a) => pb::StatusResponse {
                index: u32::from(a.share.index().get()),
                epoch: a.epoch,
                threshold: u32::from(a.keys.threshold()),
                committee_size: u32::try_from(a.keys.committee_size()).unwrap_or(u32::MAX),
                public_key: a.keys.public_key_encoded().bytes().to_vec(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                ceremony: String::new(),
            },
            None => pb::StatusResponse {
                version: env!("CARGO_PKG_VERSION").to_string(),
                ..Default::default()
            },
        };
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
        self.authenticate(request.get_ref())?;
        // The libp2p ceremony driver is the next step of the cluster work; say so plainly.
        Err(Status::unimplemented(
            "ceremonies over libp2p are not implemented in this build of tkms-node",
        ))
    }
}
