//! The manager's front door (docs/ARCHITECTURE.md §4.6): quotas, the audit log of every key
//! use and admin action, and the settings of the HTTP listener ([`tkms_daemon::http`]).
//!
//! It wraps the router of [`crate::http`] in one middleware ([`layer`]) that, for every
//! request:
//!
//! 1. takes a token from the client address's bucket (and, for `/admin/*`, from the admin
//!    buckets), answering `429` with `Retry-After` when there is none, before the request is
//!    even parsed;
//! 2. runs the handler with a request-scoped record of what it learned (signer, role, chain,
//!    request digest, batch items, epoch, nodes that answered, failures and culprits), which
//!    the handlers fill with the `note_*` functions (no-ops outside this middleware);
//! 3. appends one audit entry per key use (one per batch item) or admin action, with the
//!    answer's status and error code; if the entry cannot be written the answer is replaced
//!    by `503 audit_unavailable` (`--audit-fail closed`, the default). An entry is in the
//!    kernel before the answer leaves (a killed manager loses none) and synced about
//!    `--audit-sync` ms later (50 by default, as at the nodes); with `--audit-sync always` a
//!    served key use is answered only once its entry is on disk. After a failed sync, key uses
//!    are refused until a restart (fail closed).
//!
//! The per-requester quota is taken in the handlers by [`FrontDoor::admit_requester`], after
//! the signer's role is checked and before any node is asked.
//!
//! Never logged: the shared secret, partials, RSA keys or ciphertexts; only digests and
//! public identifiers.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use alloy_primitives::Address;
use axum::{
    body::{to_bytes, Body},
    extract::{ConnectInfo, Request, State},
    http::{Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Router,
};
use serde_json::{json, Map, Value};
use tkms_daemon::{
    audit::{sync_policy, AuditFail, AuditLog, Fields},
    conn::ConnectionStats,
    http::{HttpLimitArgs, HttpLimits},
    journal::SyncPolicy,
    nonces::NonceJournal,
};
use tkms_registry::access::{Registry, RoleGrant};
use tkms_sdk::v1::NonceCache;

use crate::{
    cluster::{ClusterError, NodeFailure, Served},
    http::ApiError,
    quota::{QuotaArgs, Quotas, Role},
};

/// Largest request body the manager reads (its largest, a full `/v1/reencrypt` batch, is
/// about 17 KiB).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The front-door settings of `tkms manager run`.
#[derive(Debug, Clone, clap::Args)]
pub struct FrontDoorArgs {
    /// Connection bounds and deadlines of the HTTP listener.
    #[command(flatten)]
    pub http: HttpLimitArgs,
    /// Request quotas.
    #[command(flatten)]
    pub quotas: QuotaArgs,
    /// The audit log: one hash-chained JSON line per key use (per batch item) and admin
    /// action (`tkms audit verify|show`). Absent: no audit log (warned at start).
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// When the audit log cannot be written: `closed` refuses key uses and admin actions
    /// (503), `open` serves them anyway.
    #[arg(long, value_enum, default_value_t = AuditFail::Closed)]
    pub audit_fail: AuditFail,
    /// When audit entries reach the disk: every N milliseconds (each entry is in the kernel
    /// before the answer, so a killed process loses none; a machine crash loses at most the
    /// last N ms), or `always` (a key use is answered once its entry is synced; concurrent
    /// requests share one fdatasync; costs about 10 % of /v0 throughput, docs/BENCHMARKS.md).
    #[arg(long, default_value = DEFAULT_AUDIT_SYNC)]
    pub audit_sync: String,
    /// Where used `/v1` nonces are kept until they expire, so a request is refused as a
    /// replay after a restart too. Absent: in memory only (warned at start).
    #[arg(long)]
    pub nonce_journal: Option<PathBuf>,
}

/// The default `--audit-sync`: entries on disk within 50 ms, as at the nodes.
const DEFAULT_AUDIT_SYNC: &str = "50";

impl Default for FrontDoorArgs {
    /// Default listener bounds; no quota, no audit log, no replay journal.
    fn default() -> Self {
        Self {
            http: HttpLimitArgs::default(),
            quotas: QuotaArgs::default(),
            audit_log: None,
            audit_fail: AuditFail::Closed,
            audit_sync: DEFAULT_AUDIT_SYNC.into(),
            nonce_journal: None,
        }
    }
}

tokio::task_local! {
    /// What the handler of the current request learned, for its audit entry.
    static FACTS: Arc<Mutex<Facts>>;
}

#[derive(Debug, Default)]
struct Facts {
    requester: Option<Address>,
    role: Option<&'static str>,
    chain_id: Option<u64>,
    digest: Option<String>,
    items: Vec<String>,
    epoch: Option<u64>,
    nodes: Option<Vec<u16>>,
    failed: Vec<(u16, &'static str)>,
    culprits: Vec<u16>,
}

fn note(f: impl FnOnce(&mut Facts)) {
    let _ = FACTS.try_with(|facts| f(&mut facts.lock().unwrap_or_else(PoisonError::into_inner)));
}

fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// The request's signer (recovered, not yet checked against any role) and chain.
pub fn note_signer(chain_id: u64, signer: Address) {
    note(|f| {
        f.chain_id = Some(chain_id);
        f.requester = Some(signer);
    });
}

/// The request's digest (its request id).
pub fn note_digest(digest: &[u8]) {
    note(|f| f.digest = Some(hex0x(digest)));
}

/// The ids of a batch's items, in order: one audit entry each.
pub fn note_items<'a>(ids: impl IntoIterator<Item = &'a [u8]>) {
    note(|f| f.items = ids.into_iter().map(hex0x).collect());
}

/// The name of a node failure's kind, in metrics and the audit log.
pub fn failure_kind(failure: &NodeFailure) -> &'static str {
    match failure {
        NodeFailure::Timeout => "timeout",
        NodeFailure::Unreachable(_) => "unreachable",
        NodeFailure::Refused(_) => "refused",
        NodeFailure::Denied(_) => "denied",
        NodeFailure::Malformed(_) => "malformed",
        NodeFailure::InvalidProof => "invalid_proof",
    }
}

/// What the cluster did for the request: the epoch, the nodes whose partials were used (when
/// the result says), and the nodes that failed, culprits (invalid proof or malformed
/// answer) among them.
pub fn note_cluster<T>(
    epoch: u64,
    result: &Result<Served<T>, ClusterError>,
    answered: impl FnOnce(&T) -> Option<Vec<u16>>,
) {
    let (nodes, failures) = match result {
        Ok(served) => (answered(&served.value), served.failures.as_slice()),
        Err(ClusterError::Unavailable { failures, .. }) => (None, failures.as_slice()),
        Err(_) => (None, &[][..]),
    };
    note(|f| {
        f.epoch = Some(epoch);
        f.nodes = nodes;
        for (node, failure) in failures {
            f.failed.push((node.get(), failure_kind(failure)));
            if matches!(
                failure,
                NodeFailure::InvalidProof | NodeFailure::Malformed(_)
            ) {
                f.culprits.push(node.get());
            }
        }
    });
}

/// Whether the nodes refused a failed `/v1` request as a replay (their journals remember a
/// nonce the manager's does not, e.g. after a manager-only restart without
/// `--nonce-journal`): the request is then answered `401 replayed`, not `503`.
pub fn replayed_at_nodes(e: &ClusterError) -> bool {
    matches!(e, ClusterError::Unavailable { failures, .. }
        if failures.iter().any(|(_, f)| matches!(f, NodeFailure::Refused(m) if tkms_sdk::v1::is_replay_refusal(m))))
}

/// The manager's quotas, audit log and listener counters.
#[derive(Debug, Default)]
pub struct FrontDoor {
    quotas: Quotas,
    audit: Option<AuditLog>,
    fail_open: bool,
    wait_durable: bool,
    connections: Arc<ConnectionStats>,
    refused: Mutex<BTreeMap<(&'static str, String, &'static str), u64>>,
    audit_failures: AtomicU64,
}

/// A front door as configured: itself, the `/v1` replay cache and the listener limits.
pub type Opened = (Arc<FrontDoor>, NonceCache, HttpLimits);

impl FrontDoor {
    /// Open the audit log and the nonce journal of `args`.
    pub fn open(args: &FrontDoorArgs) -> Result<Opened, String> {
        let limits = args.http.limits(MAX_BODY_BYTES)?;
        let quotas = Quotas::new(&args.quotas)?;
        let policy = sync_policy(&args.audit_sync).map_err(|e| format!("--audit-sync: {e}"))?;
        let audit = if let Some(path) = &args.audit_log {
            Some(
                AuditLog::open(path, policy)
                    .map_err(|e| format!("audit log {}: {e}", path.display()))?,
            )
        } else {
            tracing::warn!("no --audit-log: key uses and admin actions are not recorded");
            None
        };
        let nonces = if let Some(path) = &args.nonce_journal {
            NonceJournal::open_cache(path, tkms_sdk::v1::now_secs())
                .map_err(|e| format!("nonce journal {}: {e}", path.display()))?
        } else {
            tracing::warn!("no --nonce-journal: a /v1 request can be replayed after a restart of the manager (the nodes still refuse it)");
            NonceCache::default()
        };
        let front = Self {
            quotas,
            audit,
            fail_open: args.audit_fail == AuditFail::Open,
            wait_durable: policy == SyncPolicy::Immediately,
            ..Self::default()
        };
        Ok((Arc::new(front), nonces, limits))
    }

    /// The counters of the HTTP listener, for [`tkms_daemon::http::serve`].
    pub fn connection_stats(&self) -> Arc<ConnectionStats> {
        Arc::clone(&self.connections)
    }

    fn refused(&self, scope: &'static str, who: String, role: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((scope, who, role))
            .or_default() += 1;
    }

    /// After the signer's role is checked and before any node is asked: take a token from
    /// the requester's bucket in the `role` it asks in
    /// ([`tkms_proto::requester::Action::role`]), or answer 429.
    pub fn admit_requester(
        &self,
        role: Role,
        chain_id: u64,
        signer: Address,
    ) -> Result<(), ApiError> {
        note(|f| {
            f.chain_id = Some(chain_id);
            f.requester = Some(signer);
            f.role = Some(role.name());
        });
        self.quotas.requester(role, signer).map_err(|wait| {
            self.refused("requester", signer.to_string(), role.name());
            tracing::warn!(%signer, role = role.name(), "request over its quota refused");
            ApiError::rate_limited(wait, &format!("{signer} is over its {} quota", role.name()))
        })
    }

    /// Prometheus text for `/metrics`.
    pub fn render_metrics(&self) -> String {
        let mut out = String::from(
            "# HELP tkms_quota_refused_total Requests refused with 429, by quota (requester: by address and role).\n\
             # TYPE tkms_quota_refused_total counter\n",
        );
        if let Ok(map) = self.refused.lock() {
            for ((scope, who, role), count) in map.iter() {
                let _ = writeln!(
                    out,
                    "tkms_quota_refused_total{{scope=\"{scope}\",requester=\"{who}\",role=\"{role}\"}} {count}"
                );
            }
        }
        if let Some(audit) = &self.audit {
            let _ = writeln!(
                out,
                "# HELP tkms_audit_entries_total Entries in the audit log.\n\
                 # TYPE tkms_audit_entries_total counter\n\
                 tkms_audit_entries_total {}\n\
                 # HELP tkms_audit_failures_total Audit entries that could not be written.\n\
                 # TYPE tkms_audit_failures_total counter\n\
                 tkms_audit_failures_total {}",
                audit.head().0,
                self.audit_failures.load(Ordering::Relaxed)
            );
        }
        out.push_str(&self.connections.render("tkms_http"));
        out
    }

    /// Append `entries`; `Err` if they could not be written (or made durable, when `wait`).
    async fn record(&self, entries: Vec<Fields>, wait: bool) -> Result<(), ()> {
        let Some(audit) = &self.audit else {
            return Ok(());
        };
        let written = match audit.append_all(entries) {
            Ok(ticket) if wait && self.wait_durable => audit.durable(ticket).await,
            // Written, synced later: refused once a sync has failed (entries answered since
            // may never reach the disk).
            Ok(_) if !audit.ready() => Err(std::io::Error::other(
                "an fdatasync of the audit log failed",
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        written.map_err(|e| {
            self.audit_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "audit entry not written");
        })
    }

    /// Record a service event (start, stop, registry roles), best effort.
    pub async fn event(&self, op: &str, fields: Value) {
        let mut entry = Fields::new();
        entry.insert("op".into(), Value::from(op));
        if let Value::Object(more) = fields {
            entry.extend(more);
        }
        let _ = self.record(vec![entry], true).await;
        if op == "manager_stop" {
            if let Some(audit) = &self.audit {
                let _ = audit.sync_now();
                let (seq, hash) = audit.head();
                tracing::info!(seq, head = %hash, "audit log closed; record this head to check the log against later");
            }
        }
    }
}

/// Which routes are audited and limited how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// A key use.
    KeyUse(&'static str),
    /// An admin endpoint.
    Admin(&'static str),
    /// Anything else (health, metrics, public key).
    Other,
}

impl Route {
    fn of(method: &Method, path: &str) -> Self {
        match (method, path) {
            (&Method::POST, "/v0/delegate") => Self::KeyUse("v0/delegate"),
            (&Method::POST, "/v1/delegate") => Self::KeyUse("v1/delegate"),
            (&Method::POST, "/v1/reencrypt") => Self::KeyUse("v1/reencrypt"),
            (&Method::POST, "/admin/dkg") => Self::Admin("admin/dkg"),
            (&Method::POST, "/admin/reshare") => Self::Admin("admin/reshare"),
            (_, "/admin/nodes") => Self::Admin("admin/nodes"),
            (_, "/admin/epochs") => Self::Admin("admin/epochs"),
            (_, p) if p.starts_with("/admin") => Self::Admin("admin/other"),
            _ => Self::Other,
        }
    }

    fn op(self) -> Option<&'static str> {
        match self {
            Self::KeyUse(op) | Self::Admin(op) => Some(op),
            Self::Other => None,
        }
    }
}

/// Wrap `router` in the front door.
pub fn layer(router: Router, front: Arc<FrontDoor>) -> Router {
    router.layer(axum::middleware::from_fn_with_state(front, front_door))
}

async fn front_door(State(front): State<Arc<FrontDoor>>, request: Request, next: Next) -> Response {
    let route = Route::of(request.method(), request.uri().path());
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let audited = route.op().is_some() && front.audit.is_some();
    let facts = Arc::new(Mutex::new(Facts::default()));
    if let Some(ip) = client {
        let mut refusal = front.quotas.client(ip).map_err(|wait| {
            front.refused("client_address", String::new(), "");
            ApiError::rate_limited(wait, &format!("{ip} is over its quota")).into_response()
        });
        if refusal.is_ok() && matches!(route, Route::Admin(_)) {
            refusal = front.quotas.admin(ip).map_err(|wait| {
                front.refused("admin", String::new(), "");
                tracing::warn!(%ip, "admin request over its quota refused");
                ApiError::rate_limited(wait, "too many admin requests").into_response()
            });
        }
        if let Err(response) = refusal {
            if audited {
                let code = json!({ "code": "rate_limited" });
                let entries = entries(route, client, &response, Some(&code), &Facts::default());
                // A refusal is recorded, but does not wait for the disk.
                let _ = front.record(entries, false).await;
            }
            return response;
        }
    }
    let Some(op) = route.op() else {
        return next.run(request).await;
    };
    if audited && !front.fail_open && !front.audit.as_ref().is_some_and(AuditLog::ready) {
        return ApiError::audit_unavailable().into_response();
    }
    let response = FACTS.scope(Arc::clone(&facts), next.run(request)).await;
    if let (Route::Admin(_), Some(ip)) = (route, client) {
        if response.status() != StatusCode::UNAUTHORIZED {
            front.quotas.admin_authenticated(ip);
        }
    }
    if !audited {
        return response;
    }
    // The error code (and, for a ceremony, its epoch and nodes) from the answer's JSON.
    let (parts, body) = response.into_parts();
    let keep_body = !parts.status.is_success() || matches!(op, "admin/dkg" | "admin/reshare");
    let (body, json) = if keep_body {
        match to_bytes(body, MAX_BODY_BYTES).await {
            Ok(bytes) => {
                let json = serde_json::from_slice::<Value>(&bytes).ok();
                (Body::from(bytes), json)
            }
            Err(_) => (Body::empty(), None),
        }
    } else {
        (body, None)
    };
    let response = Response::from_parts(parts, body);
    let facts = std::mem::take(&mut *facts.lock().unwrap_or_else(PoisonError::into_inner));
    let entries = entries(route, client, &response, json.as_ref(), &facts);
    let served = response.status().is_success();
    match front.record(entries, served).await {
        Err(()) if !front.fail_open => ApiError::audit_unavailable().into_response(),
        _ => response,
    }
}

/// The audit entries of one answered request.
fn entries(
    route: Route,
    client: Option<IpAddr>,
    response: &Response,
    json: Option<&Value>,
    facts: &Facts,
) -> Vec<Fields> {
    let status = response.status();
    let result = if status.is_success() {
        "ok".to_string()
    } else {
        json.and_then(|j| j["code"].as_str())
            .unwrap_or(status.canonical_reason().unwrap_or("error"))
            .to_string()
    };
    let mut base = Fields::new();
    base.insert("op".into(), route.op().unwrap_or("other").into());
    if let Some(ip) = client {
        base.insert("client".into(), ip.to_string().into());
    }
    if let Some(requester) = facts.requester {
        base.insert("requester".into(), requester.to_string().into());
    }
    let role = match route {
        Route::Admin(_) => Some("operator"),
        _ => facts.role,
    };
    if let Some(role) = role {
        base.insert("role".into(), role.into());
    }
    if let Some(chain_id) = facts.chain_id {
        base.insert("chain_id".into(), chain_id.into());
    }
    let epoch = facts
        .epoch
        .or_else(|| json.and_then(|j| j["epoch"].as_u64()));
    if let Some(epoch) = epoch {
        base.insert("epoch".into(), epoch.into());
    }
    base.insert("status".into(), status.as_u16().into());
    base.insert("result".into(), result.into());
    let nodes = facts.nodes.clone().or_else(|| {
        json.and_then(|j| j["nodes"].as_array()).map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n["index"].as_u64().and_then(|i| u16::try_from(i).ok()))
                .collect()
        })
    });
    if let Some(nodes) = nodes {
        base.insert("nodes".into(), nodes.into());
    }
    if !facts.failed.is_empty() {
        let failed: Map<String, Value> = facts
            .failed
            .iter()
            .map(|(node, kind)| (node.to_string(), Value::from(*kind)))
            .collect();
        base.insert("failed".into(), Value::Object(failed));
    }
    if !facts.culprits.is_empty() {
        let culprits: BTreeSet<u16> = facts.culprits.iter().copied().collect();
        base.insert(
            "culprits".into(),
            culprits.into_iter().collect::<Vec<_>>().into(),
        );
    }
    if facts.items.is_empty() {
        if let Some(digest) = &facts.digest {
            base.insert("digest".into(), digest.clone().into());
        }
        return vec![base];
    }
    let n = facts.items.len();
    facts
        .items
        .iter()
        .enumerate()
        .map(|(k, id)| {
            let mut entry = base.clone();
            if let Some(digest) = &facts.digest {
                entry.insert("request".into(), digest.clone().into());
            }
            entry.insert("digest".into(), id.clone().into());
            entry.insert("item".into(), k.into());
            entry.insert("items".into(), n.into());
            entry
        })
        .collect()
}

/// Record every change of the registry's roles that this manager sees (grants and
/// revocations of gateways and runners), checking once a second.
pub fn watch_roles(
    front: Arc<FrontDoor>,
    registry: Arc<dyn Registry>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen: Option<BTreeSet<RoleGrant>> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(now) = registry.roles() else {
                continue;
            };
            match &seen {
                None => {
                    let list: Vec<Value> = now.iter().map(grant_json).collect();
                    front
                        .event("registry_roles", json!({ "roles": list }))
                        .await;
                }
                Some(before) => {
                    for grant in now.difference(before) {
                        front.event("role_granted", grant_json(grant)).await;
                    }
                    for grant in before.difference(&now) {
                        front.event("role_revoked", grant_json(grant)).await;
                    }
                }
            }
            seen = Some(now);
        }
    })
}

fn grant_json(grant: &RoleGrant) -> Value {
    json!({
        "chain_id": grant.chain_id,
        "requester": grant.account.to_string(),
        "role": grant.role.name(),
    })
}
