//! Fan-out to the nodes (docs/RELIABILITY.md "Fan-out"): each request is one
//! [`Collector`] — the sans-IO collect-verify-combine loop the simulator drives too — run
//! here over gRPC calls with a per-node timeout. A request goes to every node whose circuit
//! breaker is closed (or, with [`Fanout::Hedged`], to `t + extra` of them, with one more
//! each time the hedge delay passes while answers are missing); a node that fails is replaced at once by the
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

use tkms_crypto::{
    collect::{Breakers, Collector, Liveness, Outcome},
    delegation::DelegationRequest,
    pre::ReencryptedCapsule,
    suite::Encoded,
    NodeIndex, PublicKeySet, SecretScalar, SharedSecret,
};
use tkms_proto::{
    node::v1::{self as pb, node_client::NodeClient},
    ClusterSuite as S,
};
use tokio::sync::{oneshot, Semaphore};
use tonic::transport::Channel;

mod collect;
mod requests;

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
    /// one fails (timeout, refusal, bad partial), and one more each time `hedge` passes while
    /// answers are still missing. Less node work (on a machine that hosts all nodes,
    /// `n / (t + extra)` times less); a failure costs the failed call's time.
    Hedged {
        /// Nodes asked beyond `t` from the start.
        extra: u16,
        /// When one more node is asked.
        hedge: Hedge,
    },
}

/// How long a hedged fan-out waits for answers before it asks one more node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hedge {
    /// From the nodes' answer times: about when the `t` quickest usually have answered (their
    /// smoothed answer time plus four variations, as TCP times a retransmission), so a node
    /// that is late for this network is covered without hedging every request on a slow
    /// network ([`tkms_crypto::collect::Breakers::hedge_delay`]). [`INITIAL_HEDGE`] until
    /// `t` nodes have answered.
    #[default]
    Auto,
    /// A fixed delay.
    After(Duration),
}

/// The hedge delay of [`Hedge::Auto`] before the nodes have answered.
pub const INITIAL_HEDGE: Duration = Duration::from_millis(100);

impl std::str::FromStr for Hedge {
    type Err = String;

    /// `auto`, or a delay in milliseconds.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            ms => ms
                .parse::<u64>()
                .map(|ms| Self::After(Duration::from_millis(ms)))
                .map_err(|_| format!("hedge delay {s:?}: expected auto or milliseconds")),
        }
    }
}

impl std::fmt::Display for Hedge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::After(d) => write!(f, "{}", d.as_millis()),
        }
    }
}

impl std::str::FromStr for Fanout {
    type Err = String;

    /// `all`, `t`, or `t+K` (K extra nodes), with the [`Hedge::Auto`] delay.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("fan-out {s:?}: expected all, t, or t+K");
        match s.trim() {
            "all" => Ok(Self::All),
            "t" => Ok(Self::Hedged {
                extra: 0,
                hedge: Hedge::Auto,
            }),
            other => {
                let extra = other
                    .strip_prefix("t+")
                    .ok_or_else(bad)?
                    .parse::<u16>()
                    .map_err(|_| bad())?;
                Ok(Self::Hedged {
                    extra,
                    hedge: Hedge::Auto,
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
        self.core.health.record(node, liveness, None);
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
