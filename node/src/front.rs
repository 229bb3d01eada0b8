//! A node's front door (docs/ARCHITECTURE.md §4.6): the bounds of its gRPC listener, its
//! replay journal, and its own audit log of the partials it serves.
//!
//! The audit log (`<data-dir>/audit.jsonl`, the format of [`tkms_daemon::audit`]) has one
//! entry per partial asked for (per batch item and per capsule): the manager key of the
//! connection, the epoch, the request id, the requester's authorization (chain, the digest it
//! signed and its signature, from which `tkms audit show` recovers the requester) and the
//! result. The node writes it itself, so a compromised manager cannot use the key without
//! leaving a trace on every node it asked. Nothing secret is logged: the partials, the share
//! and the requester's RSA key are not, only digests and signatures.
//!
//! If the log cannot be written the partial is not returned (`UNAVAILABLE`), unless the node
//! runs with `--audit-fail open`.

use std::{path::Path, sync::Arc, time::Duration};

use serde_json::Value;
use tkms_daemon::{
    audit::{AuditFail, AuditLog, Fields},
    conn::ConnectionLimits,
    journal::SyncPolicy,
};
use tkms_proto::{
    node::v1 as pb,
    tls::{ListenerLimits, TlsPeer},
};
use tonic::{Request, Response, Status};

/// The front-door settings of `tkms node run`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeFrontArgs {
    /// Most gRPC connections open at once; more are closed as soon as they are accepted.
    #[arg(long, default_value_t = tkms_proto::tls::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Most gRPC connections open at once from one address.
    #[arg(long, default_value_t = tkms_proto::tls::DEFAULT_MAX_PER_ADDRESS)]
    pub max_connections_per_address: usize,
    /// Longest TLS handshake, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// How long a connection whose key is not an accepted manager's may sit with nothing
    /// read, in milliseconds (managers' connections stay open).
    #[arg(long, default_value_t = 30_000)]
    pub untrusted_idle_timeout_ms: u64,
    /// When the audit log (`<data-dir>/audit.jsonl`) cannot be written: `closed` refuses to
    /// return partials, `open` returns them anyway.
    #[arg(long, value_enum, default_value_t = AuditFail::Closed)]
    pub audit_fail: AuditFail,
    /// Serve partials without recording them (to measure what the audit log costs; never
    /// in production: a compromised manager could then use the key without a trace here).
    #[arg(long)]
    pub no_audit_log: bool,
}

impl NodeFrontArgs {
    /// The listener bounds, trusting `managers` (compressed keys).
    pub fn listener(&self, managers: Vec<[u8; 33]>) -> Result<ListenerLimits, String> {
        if self.handshake_timeout_ms == 0 || self.untrusted_idle_timeout_ms == 0 {
            return Err(
                "--handshake-timeout-ms and --untrusted-idle-timeout-ms must be at least 1".into(),
            );
        }
        Ok(ListenerLimits {
            connections: ConnectionLimits {
                max_connections: self.max_connections,
                max_per_address: self.max_connections_per_address,
            },
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            untrusted_idle_timeout: Duration::from_millis(self.untrusted_idle_timeout_ms),
            trusted: managers,
        })
    }
}

/// Longest time between an entry's write and its `fdatasync` (each entry is in the kernel
/// before the partial is returned).
pub const AUDIT_SYNC_EVERY: Duration = Duration::from_millis(50);

/// The node's audit log.
#[derive(Debug)]
pub struct NodeAudit {
    log: AuditLog,
    fail_open: bool,
}

impl NodeAudit {
    /// Open `<dir>/audit.jsonl`.
    pub fn open(dir: &Path, fail: AuditFail) -> std::io::Result<Self> {
        Ok(Self {
            log: AuditLog::open(
                &dir.join("audit.jsonl"),
                SyncPolicy::Every(AUDIT_SYNC_EVERY),
            )?,
            fail_open: fail == AuditFail::Open,
        })
    }

    /// The log itself.
    pub fn log(&self) -> &AuditLog {
        &self.log
    }

    fn write(&self, entries: Vec<Fields>) -> Result<(), Status> {
        let written = self.log.append_all(entries).and_then(|_| {
            if self.log.ready() {
                Ok(())
            } else {
                Err(std::io::Error::other(
                    "an fdatasync of the audit log failed",
                ))
            }
        });
        match written {
            Ok(()) => Ok(()),
            Err(_) if self.fail_open => Ok(()),
            Err(e) => Err(Status::unavailable(format!(
                "this node's audit log cannot be written ({e}); it returns no partial until it can"
            ))),
        }
    }
}

fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// The audit fields of a requester authorization: chain, what was signed and the signature.
fn authorization(fields: &mut Fields, authorization: Option<&pb::RequesterAuthorization>) {
    use pb::requester_authorization::Scheme;
    match authorization.and_then(|a| a.scheme.as_ref()) {
        Some(Scheme::Eip712Delegate(a)) => {
            let signed = tkms_sdk::nox::authorization_signing_hash(
                a.chain_id,
                &a.ephemeral_pub_key,
                &a.target_pub_key,
            );
            fields.insert("api".into(), "v0".into());
            fields.insert("chain_id".into(), a.chain_id.into());
            fields.insert("signed".into(), hex0x(signed.as_slice()).into());
            fields.insert("signature".into(), hex0x(&a.signature).into());
        }
        Some(Scheme::Eip712Request(a)) => {
            fields.insert("api".into(), "v1".into());
            fields.insert("chain_id".into(), a.chain_id.into());
            fields.insert("signed".into(), hex0x(&a.request_digest).into());
            fields.insert("signature".into(), hex0x(&a.signature).into());
        }
        None => {}
    }
}

fn result_fields(fields: &mut Fields, outcome: Result<(), &Status>) {
    match outcome {
        Ok(()) => {
            fields.insert("result".into(), "ok".into());
        }
        Err(status) => {
            fields.insert("result".into(), format!("{:?}", status.code()).into());
            let reason: String = status.message().chars().take(200).collect();
            fields.insert("reason".into(), reason.into());
        }
    }
}

fn base(op: &str, peer: Option<&TlsPeer>, epoch: u64) -> Fields {
    let mut fields = Fields::new();
    fields.insert("op".into(), op.into());
    if let Some(peer) = peer {
        fields.insert("manager".into(), hex0x(&peer.key).into());
        if let Some(addr) = peer.remote_addr {
            fields.insert("client".into(), addr.ip().to_string().into());
        }
    }
    fields.insert("epoch".into(), epoch.into());
    fields
}

fn delegation_fields(
    peer: Option<&TlsPeer>,
    request: &pb::PartialDelegationRequest,
    item: Option<(usize, usize)>,
) -> Fields {
    let mut fields = base("partial_delegation", peer, request.epoch);
    fields.insert("request".into(), hex0x(&request.request_id).into());
    if let Some((k, n)) = item {
        fields.insert("item".into(), k.into());
        fields.insert("items".into(), n.into());
    }
    authorization(&mut fields, request.authorization.as_ref());
    fields
}

/// One partial call being served: what it asked for, and its audit entries once answered.
pub struct Record {
    audit: Option<Arc<NodeAudit>>,
    entries: Vec<Fields>,
}

impl Record {
    /// A `PartialDelegation` call.
    pub fn delegation(
        audit: Option<&Arc<NodeAudit>>,
        request: &Request<pb::PartialDelegationRequest>,
    ) -> Self {
        let Some(audit) = audit else {
            return Self::off();
        };
        let peer = request.extensions().get::<TlsPeer>();
        Self {
            audit: Some(Arc::clone(audit)),
            entries: vec![delegation_fields(peer, request.get_ref(), None)],
        }
    }

    /// A `PartialDelegationBatch` call: one entry per item.
    pub fn delegation_batch(
        audit: Option<&Arc<NodeAudit>>,
        request: &Request<pb::PartialDelegationBatchRequest>,
    ) -> Self {
        let Some(audit) = audit else {
            return Self::off();
        };
        let peer = request.extensions().get::<TlsPeer>();
        let items = &request.get_ref().requests;
        Self {
            audit: Some(Arc::clone(audit)),
            entries: items
                .iter()
                .enumerate()
                .map(|(k, item)| delegation_fields(peer, item, Some((k, items.len()))))
                .collect(),
        }
    }

    /// A `PartialReencryption` call: one entry per capsule.
    pub fn reencryption(
        audit: Option<&Arc<NodeAudit>>,
        request: &Request<pb::PartialReencryptionRequest>,
    ) -> Self {
        let Some(audit) = audit else {
            return Self::off();
        };
        let peer = request.extensions().get::<TlsPeer>();
        let r = request.get_ref();
        let n = r.capsules.len();
        let entries = r
            .capsules
            .iter()
            .enumerate()
            .map(|(k, capsule)| {
                let mut fields = base("partial_reencryption", peer, r.epoch);
                fields.insert("request".into(), hex0x(&capsule.request_id).into());
                fields.insert("item".into(), k.into());
                fields.insert("items".into(), n.into());
                authorization(&mut fields, r.authorization.as_ref());
                fields
            })
            .collect();
        Self {
            audit: Some(Arc::clone(audit)),
            entries,
        }
    }

    fn off() -> Self {
        Self {
            audit: None,
            entries: Vec::new(),
        }
    }

    /// Record the answer of a single call; a partial that could not be recorded is not
    /// returned.
    pub fn finish<T>(mut self, result: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
        let Some(audit) = self.audit.take() else {
            return result;
        };
        let outcome = result.as_ref().map(|_| ());
        for fields in &mut self.entries {
            result_fields(fields, outcome);
        }
        audit.write(self.entries)?;
        result
    }

    /// Record the answer of a delegation batch, item by item.
    pub fn finish_batch(
        mut self,
        result: Result<Response<pb::PartialDelegationBatchResponse>, Status>,
    ) -> Result<Response<pb::PartialDelegationBatchResponse>, Status> {
        let Some(audit) = self.audit.take() else {
            return result;
        };
        match &result {
            Ok(response) => {
                for (fields, item) in self.entries.iter_mut().zip(&response.get_ref().results) {
                    match &item.outcome {
                        Some(pb::partial_delegation_result::Outcome::Partial(_)) => {
                            result_fields(fields, Ok(()));
                        }
                        // D_i under the batch's one aggregated proof (docs/PROTOCOL.md §5.1).
                        Some(pb::partial_delegation_result::Outcome::Delegation(_)) => {
                            result_fields(fields, Ok(()));
                            fields.insert("proof".into(), Value::from("aggregate"));
                        }
                        Some(pb::partial_delegation_result::Outcome::Error(e)) => {
                            result_fields(fields, Err(&e.to_status()));
                        }
                        None => {
                            fields.insert("result".into(), Value::from("empty"));
                        }
                    }
                }
            }
            Err(status) => {
                for fields in &mut self.entries {
                    result_fields(fields, Err(status));
                }
            }
        }
        audit.write(self.entries)?;
        result
    }
}

/// The node service with its audit log: every partial call is recorded before its answer
/// leaves; the other calls pass through.
#[derive(Clone)]
pub struct AuditedNode {
    inner: crate::service::NodeService,
    audit: Option<Arc<NodeAudit>>,
}

impl AuditedNode {
    /// `inner`, recording its partials in `audit` (none: nothing recorded, as in tests).
    pub fn new(inner: crate::service::NodeService, audit: Option<Arc<NodeAudit>>) -> Self {
        Self { inner, audit }
    }
}

// Every RPC of the node service: the partial ones recorded, the others forwarded as they are.
#[tonic::async_trait]
impl pb::node_server::Node for AuditedNode {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.inner.status(request).await
    }

    async fn public_share(
        &self,
        request: Request<pb::PublicShareRequest>,
    ) -> Result<Response<pb::PublicShareResponse>, Status> {
        self.inner.public_share(request).await
    }

    async fn partial_delegation(
        &self,
        request: Request<pb::PartialDelegationRequest>,
    ) -> Result<Response<pb::PartialDelegationResponse>, Status> {
        let record = Record::delegation(self.audit.as_ref(), &request);
        record.finish(self.inner.partial_delegation(request).await)
    }

    async fn partial_delegation_batch(
        &self,
        request: Request<pb::PartialDelegationBatchRequest>,
    ) -> Result<Response<pb::PartialDelegationBatchResponse>, Status> {
        let record = Record::delegation_batch(self.audit.as_ref(), &request);
        record.finish_batch(self.inner.partial_delegation_batch(request).await)
    }

    async fn partial_reencryption(
        &self,
        request: Request<pb::PartialReencryptionRequest>,
    ) -> Result<Response<pb::PartialReencryptionResponse>, Status> {
        let record = Record::reencryption(self.audit.as_ref(), &request);
        record.finish(self.inner.partial_reencryption(request).await)
    }

    async fn start_ceremony(
        &self,
        request: Request<pb::StartCeremonyRequest>,
    ) -> Result<Response<pb::StartCeremonyResponse>, Status> {
        let peer = request.extensions().get::<TlsPeer>().cloned();
        let (epoch, kind) = (request.get_ref().epoch, request.get_ref().kind);
        let result = self.inner.start_ceremony(request).await;
        if let Some(audit) = &self.audit {
            let mut fields = base("ceremony", peer.as_ref(), epoch);
            fields.insert(
                "kind".into(),
                pb::CeremonyKind::try_from(kind)
                    .map_or("unknown", |k| k.as_str_name())
                    .into(),
            );
            result_fields(&mut fields, result.as_ref().map(|_| ()));
            // A ceremony already ran; its record is best effort.
            let _ = audit.log.append(fields);
        }
        result
    }

    async fn commit_epoch(
        &self,
        request: Request<pb::CommitEpochRequest>,
    ) -> Result<Response<pb::CommitEpochResponse>, Status> {
        let peer = request.extensions().get::<TlsPeer>().cloned();
        let epoch = request.get_ref().epoch;
        let result = self.inner.commit_epoch(request).await;
        self.record_admin(
            "commit_epoch",
            peer.as_ref(),
            epoch,
            result.as_ref().map(|_| ()),
        );
        result
    }

    async fn abort_epoch(
        &self,
        request: Request<pb::AbortEpochRequest>,
    ) -> Result<Response<pb::AbortEpochResponse>, Status> {
        let peer = request.extensions().get::<TlsPeer>().cloned();
        let epoch = request.get_ref().epoch;
        let result = self.inner.abort_epoch(request).await;
        self.record_admin(
            "abort_epoch",
            peer.as_ref(),
            epoch,
            result.as_ref().map(|_| ()),
        );
        result
    }
}

impl AuditedNode {
    /// Record an epoch action of the manager (commit, abort). The action already happened;
    /// its record is best effort, as for a ceremony.
    fn record_admin(
        &self,
        op: &str,
        peer: Option<&TlsPeer>,
        epoch: u64,
        outcome: Result<(), &Status>,
    ) {
        if let Some(audit) = &self.audit {
            let mut fields = base(op, peer, epoch);
            result_fields(&mut fields, outcome);
            let _ = audit.log.append(fields);
        }
    }
}

/// The replay cache, the audit log (if kept) and the listener bounds of a node.
pub type Opened = (
    Arc<tkms_sdk::v1::NonceCache>,
    Option<Arc<NodeAudit>>,
    ListenerLimits,
);

/// What a node opens before it serves: its replay journal (`<dir>/nonces.journal`), its
/// audit log (`<dir>/audit.jsonl`, unless `--no-audit-log`) and its listener bounds
/// (trusting `managers`).
pub fn open(
    args: &NodeFrontArgs,
    dir: &Path,
    managers: &[tkms_crypto::suite::Encoded<tkms_proto::ClusterSuite>],
) -> Result<Opened, String> {
    let journal = dir.join("nonces.journal");
    let nonces = tkms_daemon::nonces::NonceJournal::open_cache(&journal, tkms_sdk::v1::now_secs())
        .map_err(|e| format!("replay journal {}: {e}", journal.display()))?;
    let audit = if args.no_audit_log {
        tracing::warn!("--no-audit-log: partials are served without being recorded");
        None
    } else {
        let audit = NodeAudit::open(dir, args.audit_fail)
            .map_err(|e| format!("audit log {}: {e}", dir.join("audit.jsonl").display()))?;
        Some(Arc::new(audit))
    };
    let trusted = managers
        .iter()
        .filter_map(|k| <[u8; 33]>::try_from(k.bytes().as_slice()).ok())
        .collect();
    let limits = args.listener(trusted)?;
    Ok((Arc::new(nonces), audit, limits))
}
