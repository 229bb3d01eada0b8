//! A cluster of real node gRPC servers on loopback sockets, for the manager's tests.

#![allow(clippy::unwrap_used, dead_code)] // test harness; not every test uses every helper

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tkms_crypto::{
    ecies, shamir, suite::Encoded, KeyShare, PublicKeySet, Secp256k1, SecretScalar, Suite,
};
use tkms_manager::{
    admin::{EpochNode, EpochRecord, Served},
    cluster::{Cluster, NodeEndpoint},
};
use tkms_node::{
    epochs::{ActiveShare, Epochs},
    service::NodeService,
};
use tkms_proto::{
    node::v1::{
        self as pb,
        node_server::{Node, NodeServer},
    },
    tls,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tonic::{Request, Response, Status};

pub type S = Secp256k1;

pub struct TestCluster {
    pub sk: SecretScalar<S>,
    pub keys: PublicKeySet<S>,
    pub endpoints: Vec<NodeEndpoint>,
    pub servers: Vec<JoinHandle<()>>,
    pub manager: SecretScalar<S>,
    /// Batch delegation calls served by the nodes of another [`Version`].
    batch_calls: Arc<AtomicU64>,
}

/// Start `n` node servers holding a `t`-of-`n` sharing; `liars` serve a wrong share.
pub async fn start(t: u16, n: u16, liars: &[u16], seed: u64) -> TestCluster {
    start_with(t, n, liars, &[], seed).await
}

/// Like [`start`]; the nodes in `old` run a version without `PartialDelegationBatch`.
pub async fn start_with(t: u16, n: u16, liars: &[u16], old: &[u16], seed: u64) -> TestCluster {
    let versions: Vec<(u16, Version)> = old.iter().map(|i| (*i, Version::NoBatch)).collect();
    start_versions(t, n, liars, &versions, seed).await
}

/// What a node of the test cluster runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// Before `PartialDelegationBatch`: the manager asks it one delegation at a time.
    NoBatch,
    /// `PartialDelegationBatch` with one proof per item: the version before aggregated
    /// proofs, which ignores the request's `aggregate_proof` field.
    PerItemProofs,
    /// The current version, which changes the `delegation` result at this position of every
    /// batch answer to another point (`2·D`) and keeps its honest aggregate proof: one wrong
    /// partial in a batch.
    OneWrongPartial(usize),
    /// The current version, answering each batch this long after it arrives (a node across a
    /// WAN, as the manager sees it).
    Slow(Duration),
}

/// Like [`start`]; the nodes listed in `versions` run that version instead of the current one.
pub async fn start_versions(
    t: u16,
    n: u16,
    liars: &[u16],
    versions: &[(u16, Version)],
    seed: u64,
) -> TestCluster {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let sk = SecretScalar::<S>::random(&mut rng);
    let (shares, keys) = shamir::deal(&sk, t, n, &mut rng).unwrap();
    let manager = SecretScalar::<S>::random(&mut rng);
    let accepted = vec![Encoded::new(manager.public_point())];
    let mut endpoints = Vec::new();
    let mut servers = Vec::new();
    let batch_calls = Arc::new(AtomicU64::new(0));
    for share in shares {
        let share = if liars.contains(&share.index().get()) {
            KeyShare::new(share.index(), SecretScalar::random(&mut rng))
        } else {
            share
        };
        let index = share.index();
        let active = Arc::new(Epochs::in_memory(Some(ActiveShare {
            epoch: 1,
            share,
            keys: keys.clone(),
            transcript_hash: [0; 32],
        })));
        let service = NodeService::new(active, accepted.clone());
        let version = versions
            .iter()
            .find(|(i, _)| *i == index.get())
            .map(|(_, v)| *v);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // Each node serves TLS as its own node key, like the daemon.
        let node_key = SecretScalar::<S>::random(&mut rng);
        let tls = tls::node_server_config(&node_key).unwrap();
        let calls = Arc::clone(&batch_calls);
        servers.push(tokio::spawn(async move {
            let builder = tonic::transport::Server::builder();
            let router = match version {
                None => builder.clone().add_service(NodeServer::new(service)),
                Some(v) => builder
                    .clone()
                    .add_service(NodeServer::new(OldNode(service, v, calls))),
            };
            router
                .serve_with_incoming(tls::incoming(listener, tls))
                .await
                .unwrap();
        }));
        endpoints.push(NodeEndpoint {
            index,
            url,
            key: Some(Encoded::new(node_key.public_point())),
        });
    }
    TestCluster {
        sk,
        keys,
        endpoints,
        servers,
        manager,
        batch_calls,
    }
}

impl TestCluster {
    pub fn cluster(&self, timeout: Duration) -> Cluster {
        Cluster::new(
            &self.endpoints,
            self.keys.clone(),
            1,
            &self.manager,
            timeout,
        )
        .unwrap()
    }

    /// The served epoch for an `AppState`.
    pub fn served(&self, timeout: Duration) -> Arc<Served> {
        let nodes = self
            .endpoints
            .iter()
            .map(|e| EpochNode {
                index: e.index.get(),
                url: e.url.clone(),
                node_key: e
                    .key
                    .as_ref()
                    .map(|k| hex::encode(k.bytes()))
                    .unwrap_or_default(),
            })
            .collect();
        let cluster = self.cluster(timeout);
        let keys = cluster.keys();
        let record = EpochRecord {
            epoch: cluster.epoch(),
            threshold: keys.threshold(),
            commitment: hex::encode(keys.commitment().to_bytes()),
            // The nodes' shares carry this transcript hash (see `start_with`).
            transcript_hash: hex::encode([0u8; 32]),
            nodes,
            committee: Vec::new(),
            dropped: Vec::new(),
        };
        Arc::new(Served::new(Some((cluster, record))))
    }

    /// Batch delegation calls served so far by the nodes of another [`Version`].
    pub fn batch_calls(&self) -> u64 {
        self.batch_calls.load(Ordering::SeqCst)
    }

    pub fn kill(&self, index: u16) {
        self.servers[usize::from(index) - 1].abort();
    }
}

/// Encrypt to the cluster key, as a client would.
pub fn encrypt(keys: &PublicKeySet<S>, message: &[u8]) -> ecies::Ciphertext<S> {
    ecies::encrypt::<S>(&keys.public_key(), message, &mut rand::rngs::OsRng).unwrap()
}

/// A node of another [`Version`]: everything else as the node serves it.
struct OldNode(NodeService, Version, Arc<AtomicU64>);

#[tonic::async_trait]
impl Node for OldNode {
    async fn status(&self, r: Request<pb::StatusRequest>) -> Answer<pb::StatusResponse> {
        self.0.status(r).await
    }
    async fn public_share(
        &self,
        r: Request<pb::PublicShareRequest>,
    ) -> Answer<pb::PublicShareResponse> {
        self.0.public_share(r).await
    }
    async fn partial_delegation(
        &self,
        r: Request<pb::PartialDelegationRequest>,
    ) -> Answer<pb::PartialDelegationResponse> {
        self.0.partial_delegation(r).await
    }
    async fn partial_delegation_batch(
        &self,
        mut r: Request<pb::PartialDelegationBatchRequest>,
    ) -> Answer<pb::PartialDelegationBatchResponse> {
        self.2.fetch_add(1, Ordering::SeqCst);
        match self.1 {
            Version::NoBatch => Err(Status::unimplemented("PartialDelegationBatch")),
            Version::PerItemProofs => {
                r.get_mut().aggregate_proof = false;
                self.0.partial_delegation_batch(r).await
            }
            Version::OneWrongPartial(k) => {
                let mut answer = self.0.partial_delegation_batch(r).await?;
                if let Some(pb::PartialDelegationResult {
                    outcome: Some(pb::partial_delegation_result::Outcome::Delegation(bytes)),
                }) = answer.get_mut().results.get_mut(k)
                {
                    let d = S::decode_uncompressed(bytes).unwrap();
                    *bytes = S::encode_uncompressed(&(d + d)).to_vec();
                }
                Ok(answer)
            }
            Version::Slow(delay) => {
                tokio::time::sleep(delay).await;
                self.0.partial_delegation_batch(r).await
            }
        }
    }
    async fn partial_reencryption(
        &self,
        r: Request<pb::PartialReencryptionRequest>,
    ) -> Answer<pb::PartialReencryptionResponse> {
        self.0.partial_reencryption(r).await
    }
    async fn start_ceremony(
        &self,
        r: Request<pb::StartCeremonyRequest>,
    ) -> Answer<pb::StartCeremonyResponse> {
        self.0.start_ceremony(r).await
    }
    async fn commit_epoch(
        &self,
        r: Request<pb::CommitEpochRequest>,
    ) -> Answer<pb::CommitEpochResponse> {
        self.0.commit_epoch(r).await
    }
    async fn abort_epoch(
        &self,
        r: Request<pb::AbortEpochRequest>,
    ) -> Answer<pb::AbortEpochResponse> {
        self.0.abort_epoch(r).await
    }
}

type Answer<T> = Result<Response<T>, Status>;
