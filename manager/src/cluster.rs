//! Fan-out to the nodes (docs/RELIABILITY.md "Fan-out"): each request is one
//! [`Collector`] — the sans-IO collect-verify-combine loop the simulator drives too — run
//! here over gRPC calls with a per-node timeout. A request goes to every node whose circuit
//! breaker is closed (or, with [`Fanout::Hedged`], to `t + extra` of them, with one more
//! after each hedge delay without an answer); a node that fails is replaced at once by the
//! next in order; each partial is verified by its proof; the first `t` verified partials are
//! combined and the rest abandoned. A breaker only orders the nodes: a request that falls
//! short asks every node left, open breaker or not, before it fails, and fails as soon as
//! fewer than `t` nodes can still answer. A node that times out, refuses, or returns a partial
//! whose proof fails is named in the result (for logs and metrics) and never changes the
//! answer.
//!
//! Concurrent `/v0` delegations are coalesced: while a batch is at the nodes, new requests
//! queue and then leave together in one `PartialDelegationBatch` call per node; each keeps its
//! own answer, failures and node checks ([`DELEGATION_BATCHES_IN_FLIGHT`]).

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use rand_core::OsRng;
use tkms_crypto::{
    aggregate::{self, AggregateProof, BatchPartials},
    collect::{BreakerChange, Breakers, Collector, Liveness, Outcome, Plan},
    delegation::{self, DelegationRequest, PartialDelegation},
    pre::{self, PartialReencryption, ReencryptedCapsule, ReencryptionRequest},
    suite::Encoded,
    NodeIndex, PublicKeySet, SecretScalar, SharedSecret,
};
use tkms_proto::{
    node::v1::{self as pb, node_client::NodeClient},
    tls::ManagerTls,
    ClusterSuite as S,
};
use tokio::{
    sync::{oneshot, Semaphore},
    task::JoinSet,
};
use tonic::transport::Channel;

/// Why one node did not contribute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeFailure {
    /// No answer within the per-node timeout.
    #[error("timed out")]
    Timeout,
    /// The node could not be reached (connection refused or lost).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The node answered with an error status.
    #[error("refused: {0}")]
    Refused(String),
    /// The node refused the end requester (`PERMISSION_DENIED`): by its own view of the
    /// registry, the signer may not ask for this (for example, revoked a moment ago).
    #[error("requester refused: {0}")]
    Denied(String),
    /// The node's answer does not decode or carries the wrong index.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// The node's partial failed its proof: the node is faulty or malicious.
    #[error("invalid proof")]
    InvalidProof,
}

/// A request that could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// Fewer than `t` nodes produced a verified partial.
    #[error("only {verified} of the {threshold} required nodes answered with a valid partial")]
    Unavailable {
        /// Partials required.
        threshold: u16,
        /// Verified partials obtained.
        verified: usize,
        /// Every node that did not contribute, and why.
        failures: Vec<(NodeIndex, NodeFailure)>,
    },
    /// The request itself is invalid (reported before any node is asked).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl ClusterError {
    /// Unavailable because every node that answered refused the requester itself (no node
    /// was down or faulty): the cluster's answer is then "not authorized", not "try later".
    /// This happens when the nodes see a revocation before the manager does.
    pub fn requester_denied(&self) -> bool {
        matches!(self, Self::Unavailable { failures, .. }
            if !failures.is_empty()
                && failures.iter().all(|(_, f)| matches!(f, NodeFailure::Denied(_))))
    }
}

/// A combined result and the nodes that failed on the way.
#[derive(Debug)]
pub struct Served<T> {
    /// The result.
    pub value: T,
    /// Nodes that timed out, refused or sent a bad partial before `t` valid ones arrived.
    pub failures: Vec<(NodeIndex, NodeFailure)>,
}

/// Combined re-encryptions and the verified node partials they were combined from.
#[derive(Debug)]
pub struct Reencrypted {
    /// `(K, R, C)` per capsule, in request order.
    pub capsules: Vec<ReencryptedCapsule<S>>,
    /// The `t` nodes' partial bytes, per node, in capsule order.
    pub partials: BTreeMap<u16, Vec<Vec<u8>>>,
}

/// How long to keep collecting encrypted partials once `t` nodes answered, so that a client
/// that finds a bad one among them still has others to use.
pub const STRAGGLER_GRACE: Duration = Duration::from_millis(20);

/// Which nodes a request is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Fanout {
    /// Every node at once: the lowest latency and no extra round trip when a node is slow or
    /// lies, at the price of every node's work on every request.
    #[default]
    All,
    /// `t + extra` nodes, taken in turn so the load spreads; another node is asked as soon as
    /// one fails (timeout, refusal, bad partial), and one more every `hedge` while answers are
    /// still missing. Less node work (on a machine that hosts all nodes, `n / (t + extra)`
    /// times less); a failure costs the failed call's time.
    Hedged {
        /// Nodes asked beyond `t` from the start.
        extra: u16,
        /// Wait without an answer after which one more node is asked.
        hedge: Duration,
    },
}

/// Default hedge delay of [`Fanout::Hedged`] when none is given.
pub const DEFAULT_HEDGE: Duration = Duration::from_millis(100);

impl std::str::FromStr for Fanout {
    type Err = String;

    /// `all`, `t`, or `t+K` (K extra nodes), with [`DEFAULT_HEDGE`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("fan-out {s:?}: expected all, t, or t+K");
        match s.trim() {
            "all" => Ok(Self::All),
            "t" => Ok(Self::Hedged {
                extra: 0,
                hedge: DEFAULT_HEDGE,
            }),
            other => {
                let extra = other
                    .strip_prefix("t+")
                    .ok_or_else(bad)?
                    .parse::<u16>()
                    .map_err(|_| bad())?;
                Ok(Self::Hedged {
                    extra,
                    hedge: DEFAULT_HEDGE,
                })
            }
        }
    }
}

impl std::fmt::Display for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Hedged { extra: 0, .. } => f.write_str("t"),
            Self::Hedged { extra, .. } => write!(f, "t+{extra}"),
        }
    }
}

/// Where a node listens.
#[derive(Debug, Clone)]
pub struct NodeEndpoint {
    /// Its index in the committee.
    pub index: NodeIndex,
    /// Its gRPC URL (`http://127.0.0.1:7001`).
    pub url: String,
    /// Its node key, when known: the manager then accepts only a TLS peer holding it.
    pub key: Option<Encoded<S>>,
}

/// Most delegations sent to the nodes in one batch call, by default.
pub const DELEGATION_BATCH: usize = 64;

/// Delegation batches in flight at once, by default. While one is, new requests wait in the queue and
/// leave together in the next batch: under load, one call per node carries many requests (less
/// TLS, HTTP/2 and scheduling work per request, and their proofs are checked in one batch);
/// alone, a request leaves at once, as a batch of one. Nodes spread a batch over their cores.
/// One slot measured the least CPU per request (docs/BENCHMARKS.md: server CPU per request,
/// relative to the load generator's, 1.39–1.51 with one slot, 1.59–1.64 with two, 1.92–1.96
/// with every request on its own).
pub const DELEGATION_BATCHES_IN_FLIGHT: usize = 1;

/// How concurrent `/v0` delegations are coalesced: at most `max` per batch call, and
/// `in_flight` batches at once (the operator's `--delegation-batch` and
/// `--delegation-batches-in-flight`; defaults [`DELEGATION_BATCH`] and
/// [`DELEGATION_BATCHES_IN_FLIGHT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    max: usize,
    in_flight: usize,
    proofs: DelegationProofs,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max: DELEGATION_BATCH,
            in_flight: DELEGATION_BATCHES_IN_FLIGHT,
            proofs: DelegationProofs::Aggregate,
        }
    }
}

/// What the manager asks the nodes to prove a batch of `/v0` delegations with (the
/// operator's `--delegation-proofs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DelegationProofs {
    /// One aggregated proof per node per batch (docs/PROTOCOL.md §5.1); nodes of an earlier
    /// version answer per item anyway.
    #[default]
    Aggregate,
    /// One proof per partial, as before aggregated proofs (for comparison, or to rule the
    /// aggregate out).
    PerItem,
}

impl Batching {
    /// Most batches in flight that can be asked for.
    pub const MAX_IN_FLIGHT: usize = 1024;

    /// `max` delegations per batch (1..=[`tkms_proto::MAX_BATCH`], what a node accepts in
    /// one call), `in_flight` batches at once (1..=[`Batching::MAX_IN_FLIGHT`]).
    pub fn new(max: usize, in_flight: usize) -> Result<Self, String> {
        if !(1..=tkms_proto::MAX_BATCH).contains(&max) {
            return Err(format!(
                "a delegation batch holds 1..={} requests, got {max}",
                tkms_proto::MAX_BATCH
            ));
        }
        if !(1..=Self::MAX_IN_FLIGHT).contains(&in_flight) {
            return Err(format!(
                "delegation batches in flight must be 1..={}, got {in_flight}",
                Self::MAX_IN_FLIGHT
            ));
        }
        Ok(Self {
            max,
            in_flight,
            proofs: DelegationProofs::Aggregate,
        })
    }

    /// Ask for `proofs` (default [`DelegationProofs::Aggregate`]).
    #[must_use]
    pub fn with_proofs(mut self, proofs: DelegationProofs) -> Self {
        self.proofs = proofs;
        self
    }

    /// Most delegations per batch call.
    pub fn max(self) -> usize {
        self.max
    }

    /// Batches in flight at once.
    pub fn in_flight(self) -> usize {
        self.in_flight
    }
}

/// A `/v0` delegation waiting for a batch.
struct Queued {
    ephemeral: Encoded<S>,
    request_id: Vec<u8>,
    authorization: Option<pb::RequesterAuthorization>,
    reply: oneshot::Sender<Result<Served<SharedSecret>, ClusterError>>,
}

/// The queue of delegations, and the batch slots.
struct Coalescer {
    queue: Mutex<VecDeque<Queued>>,
    /// Most delegations per batch.
    max: usize,
    /// Ask for one aggregated proof per node answer.
    aggregate: bool,
    slots: Arc<Semaphore>,
    /// Batches sent, and the delegations they carried.
    batches: AtomicU64,
    batched: AtomicU64,
}

impl Coalescer {
    fn new(batching: Batching) -> Self {
        Self {
            queue: Mutex::default(),
            max: batching.max,
            aggregate: batching.proofs == DelegationProofs::Aggregate,
            slots: Arc::new(Semaphore::new(batching.in_flight)),
            batches: AtomicU64::new(0),
            batched: AtomicU64::new(0),
        }
    }
}

/// A delegation of a batch in progress: its domain, and where its answer goes.
struct Open {
    domain: DelegationRequest<S>,
    reply: Option<oneshot::Sender<Result<Served<SharedSecret>, ClusterError>>>,
}

/// The manager's view of the cluster for one epoch.
pub struct Cluster {
    core: Arc<Core>,
    coalescer: Coalescer,
    fanout: Fanout,
}

impl Cluster {
    /// Connect (lazily: a down node does not delay start-up) to `endpoints`, over TLS as
    /// `manager_key` ([`tkms_proto::tls`]).
    pub fn new(
        endpoints: &[NodeEndpoint],
        keys: PublicKeySet<S>,
        epoch: u64,
        manager_key: &SecretScalar<S>,
        timeout: Duration,
    ) -> Result<Self, ClusterError> {
        Ok(Self {
            core: Arc::new(Core::new(endpoints, keys, epoch, manager_key, timeout)?),
            coalescer: Coalescer::new(Batching::default()),
            fanout: Fanout::All,
        })
    }

    /// Send requests as `fanout` says (default [`Fanout::All`]).
    #[must_use]
    pub fn with_fanout(mut self, fanout: Fanout) -> Self {
        self.fanout = fanout;
        self
    }

    /// Coalesce `/v0` delegations as `batching` says (default [`Batching::default`]).
    #[must_use]
    pub fn with_batching(mut self, batching: Batching) -> Self {
        self.coalescer = Coalescer::new(batching);
        self
    }

    /// The fan-out policy.
    pub fn fanout(&self) -> Fanout {
        self.fanout
    }

    /// The key set served.
    pub fn keys(&self) -> &PublicKeySet<S> {
        &self.core.keys
    }

    /// The key epoch served.
    pub fn epoch(&self) -> u64 {
        self.core.epoch
    }

    /// Whether requests of this cluster are still at the nodes (a batch, a caller holding
    /// it): `self` must be the caller's only handle besides the one it checks with.
    pub fn in_use(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) > 1 || Arc::strong_count(&self.core) > 1
    }

    /// Tell the breakers what an out-of-band check (a status probe) showed about `node`, so
    /// that a node that comes back is asked first again at once.
    pub fn observe(&self, node: NodeIndex, liveness: Liveness) {
        self.core.health.record(node, liveness);
    }

    /// Obtain `x(S)` for the ephemeral key `K`: `t` verified partial delegations, combined.
    /// Concurrent calls are coalesced into batches ([`Batching`]); each still gets its own
    /// answer and its own failures.
    pub async fn delegate(
        &self,
        ephemeral: Encoded<S>,
        request_id: Vec<u8>,
        authorization: Option<pb::RequesterAuthorization>,
    ) -> Result<Served<SharedSecret>, ClusterError> {
        let (reply, mut answer) = oneshot::channel();
        self.queue().push_back(Queued {
            ephemeral,
            request_id,
            authorization,
            reply,
        });
        let lost = || ClusterError::Unavailable {
            threshold: self.core.keys.threshold(),
            verified: 0,
            failures: Vec::new(),
        };
        // Until answered: whenever a batch slot is free, send what is queued (this request,
        // or, if another caller took it, the next ones).
        loop {
            let slot = tokio::select! {
                biased;
                answer = &mut answer => return answer.unwrap_or_else(|_| Err(lost())),
                slot = Arc::clone(&self.coalescer.slots).acquire_owned() => slot,
            };
            let Ok(slot) = slot else {
                return Err(lost());
            };
            let batch: Vec<Queued> = {
                let mut queue = self.queue();
                let take = queue.len().min(self.coalescer.max);
                queue.drain(..take).collect()
            };
            if batch.is_empty() {
                // Another caller took this request; its batch answers it.
                drop(slot);
                return answer.await.unwrap_or_else(|_| Err(lost()));
            }
            self.coalescer.batches.fetch_add(1, Ordering::Relaxed);
            self.coalescer
                .batched
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            // Its own task, so that the batch completes even if this caller goes away.
            let (core, fanout) = (Arc::clone(&self.core), self.fanout);
            let aggregate = self.coalescer.aggregate;
            tokio::spawn(async move {
                core.delegate_batch(fanout, batch, aggregate).await;
                drop(slot);
            });
        }
    }

    /// Delegation batches sent so far, and the delegations they carried.
    pub fn delegation_batches(&self) -> (u64, u64) {
        (
            self.coalescer.batches.load(Ordering::Relaxed),
            self.coalescer.batched.load(Ordering::Relaxed),
        )
    }

    /// How the delegation partials verified so far were proved: node answers under one
    /// aggregate proof each (docs/PROTOCOL.md §5.1), and partials with their own proof (nodes
    /// of an earlier version).
    pub fn delegation_proofs(&self) -> (u64, u64) {
        (
            self.core.proofs.aggregated.load(Ordering::Relaxed),
            self.core.proofs.per_item.load(Ordering::Relaxed),
        )
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        self.coalescer
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `/v1/delegate`: every node encrypts its partial to the requester's RSA key, so they
    /// cannot be verified here; the client does. Answers from all nodes are collected until
    /// every node asked has answered, or `t` have and [`STRAGGLER_GRACE`] has passed since.
    pub async fn delegate_encrypted(
        &self,
        ephemeral: Encoded<S>,
        request_id: Vec<u8>,
        target_rsa_spki: Vec<u8>,
        authorization: pb::RequesterAuthorization,
    ) -> Result<Served<Vec<(u16, Vec<u8>)>>, ClusterError> {
        self.core
            .delegate_encrypted(
                self.fanout,
                ephemeral,
                request_id,
                target_rsa_spki,
                authorization,
            )
            .await
    }

    /// Re-encrypt capsules `K_j` to `target`: per capsule, `t` verified partials combined into
    /// `(K, R, C)`. One node request carries the whole batch.
    pub async fn reencrypt(
        &self,
        target: Encoded<S>,
        capsules: Vec<(Vec<u8>, Encoded<S>)>,
        authorization: Option<pb::RequesterAuthorization>,
    ) -> Result<Served<Reencrypted>, ClusterError> {
        self.core
            .reencrypt(self.fanout, target, capsules, authorization)
            .await
    }
}

/// The per-node circuit breakers ([`Breakers`]) on the manager's monotonic clock.
struct Health {
    breakers: Mutex<Breakers>,
    clock: Instant,
}

impl Health {
    fn new(nodes: impl IntoIterator<Item = NodeIndex>) -> Self {
        Self {
            breakers: Mutex::new(Breakers::new(nodes)),
            clock: Instant::now(),
        }
    }

    fn breakers(&self) -> std::sync::MutexGuard<'_, Breakers> {
        self.breakers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whom a request asks, and its hedge delay.
    fn plan(&self, fanout: Fanout, threshold: usize, nodes: usize) -> (Plan, Option<Duration>) {
        let now = self.clock.elapsed();
        match fanout {
            Fanout::All => (self.breakers().plan(now, nodes, false), None),
            Fanout::Hedged { extra, hedge } => (
                self.breakers()
                    .plan(now, threshold + usize::from(extra), true),
                Some(hedge),
            ),
        }
    }

    fn record(&self, node: NodeIndex, liveness: Liveness) {
        let now = self.clock.elapsed();
        match self.breakers().record(node, now, liveness) {
            Some(BreakerChange::Opened { cooldown }) => tracing::warn!(
                %node,
                cooldown_ms = u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX),
                "node keeps failing: asked last until its cool-down passes"
            ),
            Some(BreakerChange::Closed) => tracing::info!(%node, "node answers again"),
            None => {}
        }
    }
}

/// What a node's call returned, as the collector sees it.
fn liveness<T>(answer: &Result<T, NodeFailure>) -> Liveness {
    match answer {
        Err(NodeFailure::Timeout | NodeFailure::Unreachable(_)) => Liveness::Down,
        _ => Liveness::Answered,
    }
}

/// How a fan-out treats answers: the driver-specific half of [`Core::collect`].
trait Gather {
    /// A node's answer.
    type Response: Send + 'static;

    /// Take `node`'s answer into `collector` (and keep what will be combined); an error fails
    /// the node as a whole.
    fn answer(
        &mut self,
        collector: &mut Collector<NodeFailure>,
        node: NodeIndex,
        response: Self::Response,
    ) -> Result<(), NodeFailure>;

    /// Verify the unverified partials of `items`, telling `collector` which passed (nothing
    /// to do for answers accepted on arrival).
    fn verify(&mut self, _collector: &mut Collector<NodeFailure>, _items: Vec<usize>) {}

    /// `item` is decided.
    fn decided(&mut self, collector: &Collector<NodeFailure>, item: usize, outcome: Outcome);

    /// How long to keep taking answers once every item is decided (stragglers).
    fn linger(&self) -> Option<Duration> {
        None
    }
}

/// The manager's view of the cluster for one epoch: node connections, breakers, key set.
struct Core {
    nodes: BTreeMap<NodeIndex, NodeClient<Channel>>,
    health: Health,
    keys: PublicKeySet<S>,
    epoch: u64,
    timeout: Duration,
    proofs: ProofCounts,
}

/// How the nodes' delegation partials were proved, counted as they verify.
#[derive(Debug, Default)]
struct ProofCounts {
    /// Node answers whose partials verified under one aggregate proof (docs/PROTOCOL.md §5.1).
    aggregated: AtomicU64,
    /// Partials verified with their own proof (a node of an earlier version, or one call per
    /// request).
    per_item: AtomicU64,
}

impl Core {
    fn new(
        endpoints: &[NodeEndpoint],
        keys: PublicKeySet<S>,
        epoch: u64,
        manager_key: &SecretScalar<S>,
        timeout: Duration,
    ) -> Result<Self, ClusterError> {
        let mut nodes = BTreeMap::new();
        let tls = ManagerTls::new(manager_key)
            .map_err(|e| ClusterError::Invalid(format!("TLS identity: {e}")))?;
        for e in endpoints {
            keys.public_share(e.index).map_err(|_| {
                ClusterError::Invalid(format!("node {} is not in the key set", e.index))
            })?;
            let pinned;
            let tls = match &e.key {
                Some(key) => {
                    pinned = ManagerTls::pinned(manager_key, key).map_err(|err| {
                        ClusterError::Invalid(format!("node {} key: {err}", e.index))
                    })?;
                    &pinned
                }
                None => &tls,
            };
            let endpoint = tls
                .endpoint(&e.url)
                .map_err(|err| ClusterError::Invalid(format!("node {}: {err}", e.index)))?
                .connect_timeout(timeout)
                .timeout(timeout);
            let channel = tls.channel(&endpoint);
            nodes.insert(e.index, NodeClient::new(channel));
        }
        Ok(Self {
            health: Health::new(nodes.keys().copied()),
            nodes,
            keys,
            epoch,
            timeout,
            proofs: ProofCounts::default(),
        })
    }

    /// Run one fan-out of `items` items to its end: ask the nodes the [`Collector`] names
    /// (calling `call` with each node's client and `request`), hand every answer to `gather`,
    /// verify when the collector says so, and report each item once it is decided.
    async fn collect<Req, Resp, F, Fut, G>(
        &self,
        fanout: Fanout,
        items: usize,
        request: Req,
        call: F,
        gather: &mut G,
    ) where
        Req: Clone + Send + 'static,
        Resp: Send + 'static,
        F: Fn(NodeClient<Channel>, Req) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>
            + Send
            + 'static,
        G: Gather<Response = Resp>,
    {
        let threshold = usize::from(self.keys.threshold());
        let (plan, hedge) = self.health.plan(fanout, threshold, self.nodes.len());
        let mut collector: Collector<NodeFailure> =
            Collector::new(plan, self.keys.threshold(), items);
        let mut calls: JoinSet<(NodeIndex, Result<Resp, NodeFailure>)> = JoinSet::new();
        let launch = |calls: &mut JoinSet<_>, nodes: Vec<NodeIndex>| {
            for node in nodes {
                let Some(client) = self.nodes.get(&node) else {
                    continue;
                };
                let pending = call(client.clone(), request.clone());
                let timeout = self.timeout;
                calls.spawn(async move {
                    let answer = match tokio::time::timeout(timeout, pending).await {
                        Err(_) => Err(NodeFailure::Timeout),
                        Ok(Err(status)) => Err(failure_of(&status)),
                        Ok(Ok(response)) => Ok(response.into_inner()),
                    };
                    (node, answer)
                });
            }
        };
        launch(&mut calls, collector.start());
        let mut linger_until: Option<tokio::time::Instant> = None;
        loop {
            let ready = collector.to_verify();
            if !ready.is_empty() {
                gather.verify(&mut collector, ready);
            }
            for (item, outcome) in collector.settle() {
                gather.decided(&collector, item, outcome);
            }
            if collector.is_done() && linger_until.is_none() {
                match gather.linger() {
                    Some(grace) if !calls.is_empty() => {
                        linger_until = Some(tokio::time::Instant::now() + grace);
                    }
                    _ => break,
                }
            }
            launch(&mut calls, collector.more());
            let joined = if let Some(until) = linger_until {
                match tokio::time::timeout_at(until, calls.join_next()).await {
                    Ok(Some(joined)) => joined,
                    Ok(None) | Err(_) => break,
                }
            } else if let Some(delay) = hedge.filter(|_| collector.waiting() > 0) {
                match tokio::time::timeout(delay, calls.join_next()).await {
                    Ok(Some(joined)) => joined,
                    Ok(None) => break,
                    Err(_) => {
                        if let Some(node) = collector.hedge() {
                            launch(&mut calls, vec![node]);
                        }
                        continue;
                    }
                }
            } else {
                match calls.join_next().await {
                    Some(joined) => joined,
                    None => break,
                }
            };
            // A call task only ends early when aborted.
            let Ok((node, answer)) = joined else { continue };
            self.health.record(node, liveness(&answer));
            match answer {
                Ok(response) => {
                    collector.answered(node);
                    if let Err(failure) = gather.answer(&mut collector, node, response) {
                        collector.node_failed(node, &failure);
                    }
                }
                Err(failure) => collector.node_failed(node, &failure),
            }
        }
        calls.abort_all();
    }

    /// Serve `batch`'s delegations with one call per node: per request, `t` verified
    /// partials combined. Every request gets its own answer; a node that fails the whole call
    /// is named in every request still open, one that refuses a single item only in that one.
    async fn delegate_batch(&self, fanout: Fanout, batch: Vec<Queued>, aggregate: bool) {
        let request = Arc::new(pb::PartialDelegationBatchRequest {
            requests: batch
                .iter()
                .map(|q| pb::PartialDelegationRequest {
                    epoch: self.epoch,
                    request_id: q.request_id.clone(),
                    ephemeral: q.ephemeral.bytes().to_vec(),
                    authorization: q.authorization.clone(),
                    target_rsa_spki: Vec::new(),
                })
                .collect(),
            aggregate_proof: aggregate,
        });
        let items = batch.len();
        let mut gather = DelegationBatch {
            keys: &self.keys,
            proofs: &self.proofs,
            open: batch
                .into_iter()
                .map(|q| Open {
                    domain: DelegationRequest::with_encoded(self.epoch, q.request_id, q.ephemeral),
                    reply: Some(q.reply),
                })
                .collect(),
            pending: vec![BTreeMap::new(); items],
            aggregates: BTreeMap::new(),
            verified: vec![Vec::new(); items],
        };
        // Shared by the calls; each copies it once into its message.
        self.collect(
            fanout,
            items,
            request,
            |mut client, request| async move {
                match client.partial_delegation_batch((*request).clone()).await {
                    Err(status) if status.code() == tonic::Code::Unimplemented => {
                        one_by_one(client, request).await
                    }
                    answer => answer,
                }
            },
            &mut gather,
        )
        .await;
    }

    async fn delegate_encrypted(
        &self,
        fanout: Fanout,
        ephemeral: Encoded<S>,
        request_id: Vec<u8>,
        target_rsa_spki: Vec<u8>,
        authorization: pb::RequesterAuthorization,
    ) -> Result<Served<Vec<(u16, Vec<u8>)>>, ClusterError> {
        let request = pb::PartialDelegationRequest {
            epoch: self.epoch,
            request_id,
            ephemeral: ephemeral.bytes().to_vec(),
            authorization: Some(authorization),
            target_rsa_spki,
        };
        let mut gather = EncryptedPartials::default();
        self.collect(
            fanout,
            1,
            request,
            |mut client, request| async move { client.partial_delegation(request).await },
            &mut gather,
        )
        .await;
        for (node, failure) in &gather.failures {
            tracing::warn!(node = %node, %failure, "node did not contribute an encrypted partial delegation");
        }
        let threshold = self.keys.threshold();
        if gather.partials.len() < usize::from(threshold) {
            return Err(ClusterError::Unavailable {
                threshold,
                verified: gather.partials.len(),
                failures: gather.failures,
            });
        }
        Ok(Served {
            value: gather
                .partials
                .into_iter()
                .map(|(node, bytes)| (node.get(), bytes))
                .collect(),
            failures: gather.failures,
        })
    }

    async fn reencrypt(
        &self,
        fanout: Fanout,
        target: Encoded<S>,
        capsules: Vec<(Vec<u8>, Encoded<S>)>,
        authorization: Option<pb::RequesterAuthorization>,
    ) -> Result<Served<Reencrypted>, ClusterError> {
        if capsules.is_empty() {
            return Err(ClusterError::Invalid("no capsules".into()));
        }
        let request = pb::PartialReencryptionRequest {
            epoch: self.epoch,
            target: target.bytes().to_vec(),
            capsules: capsules
                .iter()
                .map(|(id, k)| pb::Capsule {
                    request_id: id.clone(),
                    ephemeral: k.bytes().to_vec(),
                })
                .collect(),
            authorization,
        };
        let domains: Vec<ReencryptionRequest<S>> = capsules
            .into_iter()
            .map(|(id, k)| ReencryptionRequest::with_encoded(self.epoch, id, k, target))
            .collect();
        let mut gather = Reencryptions {
            keys: &self.keys,
            domains: &domains,
            verified: BTreeMap::new(),
            raw: BTreeMap::new(),
            failures: Vec::new(),
        };
        self.collect(
            fanout,
            1,
            request,
            |mut client, request| async move { client.partial_reencryption(request).await },
            &mut gather,
        )
        .await;
        let threshold = self.keys.threshold();
        if gather.verified.len() < usize::from(threshold) {
            return Err(ClusterError::Unavailable {
                threshold,
                verified: gather.verified.len(),
                failures: gather.failures,
            });
        }
        // The first t verified nodes, by index.
        let chosen: Vec<NodeIndex> = gather
            .verified
            .keys()
            .copied()
            .take(usize::from(threshold))
            .collect();
        let mut value = Vec::with_capacity(domains.len());
        for k in 0..domains.len() {
            let column: Vec<_> = chosen
                .iter()
                .filter_map(|n| gather.verified.get(n).and_then(|v| v.get(k)).cloned())
                .collect();
            value.push(
                pre::combine(&column, &self.keys)
                    .map_err(|e| ClusterError::Invalid(e.to_string()))?,
            );
        }
        let partials = chosen
            .iter()
            .filter_map(|n| Some((n.get(), gather.raw.remove(n)?)))
            .collect();
        Ok(Served {
            value: Reencrypted {
                capsules: value,
                partials,
            },
            failures: gather.failures,
        })
    }
}

/// A batch of `/v0` delegations: partials kept per item until verified in one batch, each
/// item answered as soon as it is decided. A node's answer comes with one aggregated proof
/// for all its partials (docs/PROTOCOL.md §5.1), or, from a node of an earlier version, with
/// one proof per partial; both kinds are verified together.
struct DelegationBatch<'a> {
    keys: &'a PublicKeySet<S>,
    proofs: &'a ProofCounts,
    open: Vec<Open>,
    /// Partials with their own proof, per item.
    pending: Vec<BTreeMap<NodeIndex, PartialDelegation<S>>>,
    /// Partials under one aggregate proof, per node: the items they answer, in order.
    aggregates: BTreeMap<NodeIndex, (Vec<usize>, BatchPartials<S>)>,
    verified: Vec<Vec<delegation::VerifiedPartialDelegation<S>>>,
}

/// One item of a node's batch answer, decoded.
enum Answered {
    /// A partial with its own proof (boxed: the enum stays small for the aggregated kind).
    Proved(Box<PartialDelegation<S>>),
    /// `D_i` alone, under the answer's aggregate proof.
    Aggregated(Encoded<S>),
    /// The node refused the item, or its partial does not decode.
    Failed(NodeFailure),
}

impl Gather for DelegationBatch<'_> {
    type Response = pb::PartialDelegationBatchResponse;

    fn answer(
        &mut self,
        collector: &mut Collector<NodeFailure>,
        node: NodeIndex,
        response: Self::Response,
    ) -> Result<(), NodeFailure> {
        if response.results.len() != self.open.len() {
            return Err(NodeFailure::Malformed(format!(
                "{} results for {} requests",
                response.results.len(),
                self.open.len()
            )));
        }
        // The whole answer is decoded before anything is taken from it: a malformed
        // aggregate fails the node as a whole.
        let answered: Vec<Answered> = response
            .results
            .into_iter()
            .map(|result| decode_item(node, result))
            .collect();
        let aggregated: Vec<(usize, Encoded<S>)> = answered
            .iter()
            .enumerate()
            .filter_map(|(item, a)| match a {
                Answered::Aggregated(d) => Some((item, *d)),
                _ => None,
            })
            .collect();
        if aggregated.is_empty() {
            if !response.aggregate_proof.is_empty() {
                return Err(NodeFailure::Malformed(
                    "an aggregate proof of nothing".into(),
                ));
            }
        } else {
            let proof = AggregateProof::<S>::from_bytes(&response.aggregate_proof)
                .map_err(|e| NodeFailure::Malformed(format!("aggregate proof: {e}")))?;
            if proof.index() != node {
                return Err(NodeFailure::Malformed(format!(
                    "answered as node {}",
                    proof.index()
                )));
            }
            let (items, partials) = aggregated.into_iter().unzip();
            self.aggregates
                .insert(node, (items, BatchPartials::new(proof, partials)));
        }
        for (item, answered) in answered.into_iter().enumerate() {
            if collector.is_decided(item) {
                continue;
            }
            match answered {
                Answered::Proved(partial) => {
                    self.pending[item].insert(node, *partial);
                    collector.candidate(item, node);
                }
                Answered::Aggregated(_) => collector.candidate(item, node),
                Answered::Failed(failure) => collector.item_failed(item, node, failure),
            }
        }
        Ok(())
    }

    fn verify(&mut self, collector: &mut Collector<NodeFailure>, items: Vec<usize>) {
        // Every node that is a candidate of these items with an aggregate proof: its whole
        // batch is checked at once (all of them in one multi-scalar multiplication).
        let nodes: Vec<NodeIndex> = self
            .aggregates
            .keys()
            .copied()
            .filter(|node| {
                items
                    .iter()
                    .any(|&i| collector.candidates(i).any(|c| c == *node))
            })
            .collect();
        if !nodes.is_empty() {
            let (answered, batches): (Vec<Vec<usize>>, Vec<BatchPartials<S>>) = nodes
                .iter()
                .filter_map(|node| self.aggregates.remove(node))
                .unzip();
            let domains: Vec<Vec<&DelegationRequest<S>>> = answered
                .iter()
                .map(|items| items.iter().map(|&i| &self.open[i].domain).collect())
                .collect();
            let batches = batches
                .into_iter()
                .zip(&domains)
                .map(|(batch, domains)| (batch, domains.as_slice()))
                .collect();
            let results = aggregate::verify_batches(batches, self.keys, &mut OsRng);
            for ((answered, &node), result) in answered.iter().zip(&nodes).zip(results) {
                match result {
                    Ok(verified) => {
                        self.proofs.aggregated.fetch_add(1, Ordering::Relaxed);
                        for (&item, v) in answered.iter().zip(verified) {
                            collector.verified(item, node);
                            self.verified[item].push(v);
                        }
                    }
                    // A failed aggregate names the node in every item it answered: an honest
                    // node's aggregate always holds, so the node is faulty, and the collector
                    // asks another node for each of them.
                    Err(e) => {
                        let failure = match e {
                            tkms_crypto::Error::InvalidProof { .. } => NodeFailure::InvalidProof,
                            other => NodeFailure::Malformed(other.to_string()),
                        };
                        for &item in answered {
                            collector.rejected(item, node, failure.clone());
                        }
                    }
                }
            }
        }
        let items: Vec<usize> = items
            .into_iter()
            .filter(|&item| !self.pending[item].is_empty())
            .collect();
        let (open, pending) = (&self.open, &mut self.pending);
        let requests: Vec<_> = items
            .iter()
            .map(|&item| {
                let partials = std::mem::take(&mut pending[item]).into_values().collect();
                (item, (&open[item].domain, partials))
            })
            .collect();
        if requests.is_empty() {
            return;
        }
        let (items, requests): (Vec<usize>, Vec<_>) = requests.into_iter().unzip();
        let results = delegation::verify_requests(requests, self.keys, &mut OsRng);
        for (item, (ok, bad)) in items.into_iter().zip(results) {
            self.proofs
                .per_item
                .fetch_add(ok.len() as u64, Ordering::Relaxed);
            for v in ok {
                collector.verified(item, v.index());
                self.verified[item].push(v);
            }
            for e in bad {
                match e {
                    tkms_crypto::Error::InvalidProof { culprit } => {
                        collector.rejected(item, culprit, NodeFailure::InvalidProof);
                    }
                    tkms_crypto::Error::UnknownNode(node) => collector.rejected(
                        item,
                        node,
                        NodeFailure::Malformed("not in the key set".into()),
                    ),
                    other => tracing::error!(error = %other, "verifying a batch"),
                }
            }
        }
    }

    fn decided(&mut self, collector: &Collector<NodeFailure>, item: usize, outcome: Outcome) {
        let Some(reply) = self.open[item].reply.take() else {
            return;
        };
        let failures = collector.failures(item).to_vec();
        for (node, failure) in &failures {
            tracing::warn!(node = %node, %failure, "node did not contribute a valid partial delegation");
        }
        let threshold = self.keys.threshold();
        let verified = std::mem::take(&mut self.verified[item]);
        let answer = match outcome {
            Outcome::Served => delegation::combine(&verified, self.keys)
                .map(|value| Served { value, failures })
                .map_err(|e| ClusterError::Invalid(e.to_string())),
            Outcome::Unavailable => Err(ClusterError::Unavailable {
                threshold,
                verified: verified.len(),
                failures,
            }),
        };
        // The caller may have gone (its connection closed); nothing is left to do then.
        let _ = reply.send(answer);
    }
}

/// `/v1/delegate`'s encrypted partials: taken as they come (only the client can check them),
/// with [`STRAGGLER_GRACE`] for more once `t` are in.
#[derive(Default)]
struct EncryptedPartials {
    partials: BTreeMap<NodeIndex, Vec<u8>>,
    failures: Vec<(NodeIndex, NodeFailure)>,
}

impl Gather for EncryptedPartials {
    type Response = pb::PartialDelegationResponse;

    fn answer(
        &mut self,
        collector: &mut Collector<NodeFailure>,
        node: NodeIndex,
        response: Self::Response,
    ) -> Result<(), NodeFailure> {
        if response.encrypted_partial.is_empty() {
            return Err(NodeFailure::Malformed("no encrypted partial".into()));
        }
        self.partials.insert(node, response.encrypted_partial);
        collector.accepted(0, node);
        Ok(())
    }

    fn decided(&mut self, collector: &Collector<NodeFailure>, _item: usize, _outcome: Outcome) {
        self.failures = collector.failures(0).to_vec();
    }

    fn linger(&self) -> Option<Duration> {
        Some(STRAGGLER_GRACE)
    }
}

/// `/v1/reencrypt`: a node's partials for every capsule, verified when they arrive (a node
/// counts only if all of its partials pass).
struct Reencryptions<'a> {
    keys: &'a PublicKeySet<S>,
    domains: &'a [ReencryptionRequest<S>],
    verified: BTreeMap<NodeIndex, Vec<pre::VerifiedPartialReencryption<S>>>,
    raw: BTreeMap<NodeIndex, Vec<Vec<u8>>>,
    failures: Vec<(NodeIndex, NodeFailure)>,
}

impl Gather for Reencryptions<'_> {
    type Response = pb::PartialReencryptionResponse;

    fn answer(
        &mut self,
        collector: &mut Collector<NodeFailure>,
        node: NodeIndex,
        response: Self::Response,
    ) -> Result<(), NodeFailure> {
        if collector.is_decided(0) {
            return Ok(());
        }
        let verified = check_reencryption(node, &response.partials, self.keys, self.domains)?;
        self.verified.insert(node, verified);
        self.raw.insert(node, response.partials);
        collector.accepted(0, node);
        Ok(())
    }

    fn decided(&mut self, collector: &Collector<NodeFailure>, _item: usize, _outcome: Outcome) {
        self.failures = collector.failures(0).to_vec();
        for (node, failure) in &self.failures {
            tracing::warn!(node = %node, %failure, "node did not contribute valid partial re-encryptions");
        }
    }
}

/// A node without `PartialDelegationBatch` (an older version, during a rolling upgrade): the
/// batch's delegations as concurrent single calls, answered in the batch's shape. A transport
/// failure fails the whole node, as for a batch call.
async fn one_by_one(
    client: NodeClient<Channel>,
    batch: Arc<pb::PartialDelegationBatchRequest>,
) -> Result<tonic::Response<pb::PartialDelegationBatchResponse>, tonic::Status> {
    let calls = batch.requests.iter().map(|request| {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.partial_delegation(request).await }
    });
    let mut results = Vec::new();
    for answer in futures::future::join_all(calls).await {
        let outcome = match answer {
            Ok(response) => {
                pb::partial_delegation_result::Outcome::Partial(response.into_inner().partial)
            }
            Err(status) if status.code() == tonic::Code::Unavailable => return Err(status),
            Err(status) => {
                pb::partial_delegation_result::Outcome::Error(pb::ItemError::from_status(&status))
            }
        };
        results.push(pb::PartialDelegationResult {
            outcome: Some(outcome),
        });
    }
    Ok(tonic::Response::new(pb::PartialDelegationBatchResponse {
        results,
        aggregate_proof: Vec::new(),
    }))
}

/// `UNAVAILABLE` is what the transport reports for a node it cannot reach; nodes themselves
/// answer with other codes.
fn failure_of(status: &tonic::Status) -> NodeFailure {
    match status.code() {
        tonic::Code::Unavailable => NodeFailure::Unreachable(status.message().to_string()),
        tonic::Code::PermissionDenied => NodeFailure::Denied(status.message().to_string()),
        _ => NodeFailure::Refused(status.message().to_string()),
    }
}

/// One item of a node's batch answer: its partial (decoded, index checked), its `D_i` under
/// the answer's aggregate proof, or its refusal.
fn decode_item(index: NodeIndex, result: pb::PartialDelegationResult) -> Answered {
    use pb::partial_delegation_result::Outcome as Item;
    match result.outcome {
        Some(Item::Partial(bytes)) => match decode_delegation(index, &bytes) {
            Ok(partial) => Answered::Proved(Box::new(partial)),
            Err(failure) => Answered::Failed(failure),
        },
        // On the curve by its equation: no square root.
        Some(Item::Delegation(bytes)) => match Encoded::from_uncompressed(&bytes) {
            Ok(partial) => Answered::Aggregated(partial),
            Err(e) => Answered::Failed(NodeFailure::Malformed(e.to_string())),
        },
        Some(Item::Error(e)) => Answered::Failed(failure_of(&e.to_status())),
        None => Answered::Failed(NodeFailure::Malformed("an empty result".into())),
    }
}

/// Decode a node's answer and check it claims the right index (its proof is checked with the
/// rest of the batch).
fn decode_delegation(index: NodeIndex, bytes: &[u8]) -> Result<PartialDelegation<S>, NodeFailure> {
    let partial = PartialDelegation::<S>::from_bytes(bytes)
        .map_err(|e| NodeFailure::Malformed(e.to_string()))?;
    if partial.index() != index {
        return Err(NodeFailure::Malformed(format!(
            "answered as node {}",
            partial.index()
        )));
    }
    Ok(partial)
}

fn check_reencryption(
    index: NodeIndex,
    partials: &[Vec<u8>],
    keys: &PublicKeySet<S>,
    requests: &[ReencryptionRequest<S>],
) -> Result<Vec<pre::VerifiedPartialReencryption<S>>, NodeFailure> {
    if partials.len() != requests.len() {
        return Err(NodeFailure::Malformed(format!(
            "{} partials for {} capsules",
            partials.len(),
            requests.len()
        )));
    }
    partials
        .iter()
        .zip(requests)
        .map(|(bytes, request)| {
            let partial = PartialReencryption::<S>::from_bytes(bytes)
                .map_err(|e| NodeFailure::Malformed(e.to_string()))?;
            if partial.index() != index {
                return Err(NodeFailure::Malformed(format!(
                    "answered as node {}",
                    partial.index()
                )));
            }
            partial
                .verify(keys, request, &mut OsRng)
                .map_err(|_| NodeFailure::InvalidProof)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_whose_nodes_all_refuse_the_requester_denies_it() {
        let node = |i: u16| NodeIndex::new(i).unwrap();
        let denied = || failure_of(&tonic::Status::permission_denied("0xab is not a gateway"));
        assert!(matches!(denied(), NodeFailure::Denied(_)));
        let unavailable = |failures| ClusterError::Unavailable {
            threshold: 3,
            verified: 0,
            failures,
        };
        assert!(unavailable(vec![(node(1), denied()), (node(2), denied())]).requester_denied());
        // One node down or failing otherwise: the cluster is unavailable, not refusing.
        assert!(
            !unavailable(vec![(node(1), denied()), (node(2), NodeFailure::Timeout)])
                .requester_denied()
        );
        assert!(!unavailable(Vec::new()).requester_denied());
        // A refused manager connection is not a refused requester.
        let unauthenticated = failure_of(&tonic::Status::unauthenticated("not a manager"));
        assert!(!unavailable(vec![(node(1), unauthenticated)]).requester_denied());
    }
}
