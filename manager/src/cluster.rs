//! Fan-out to the nodes (DESIGN.md §4.1, §7): a request goes to every node at once (or, with
//! [`Fanout::Hedged`], to `t + extra` of them, with more asked as soon as one fails and after
//! each hedge delay without an answer) with a per-node timeout; each partial is verified by its
//! proof as it arrives; the first `t` verified partials are combined and the rest abandoned. A node that times out, refuses, or
//! returns a partial whose proof fails is named in the result (for logs and metrics) and never
//! changes the answer. With fewer than `t` usable nodes the request fails as soon as that is
//! certain, never later than the per-node timeout.
//!
//! Concurrent `/v0` delegations are coalesced: while a batch is at the nodes, new requests
//! queue and then leave together in one `PartialDelegationBatch` call per node; each keeps its
//! own answer, failures and node checks ([`DELEGATION_BATCHES_IN_FLIGHT`]).

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use rand_core::OsRng;
use tkms_crypto::{
    delegation::{self, DelegationRequest, PartialDelegation, VerifiedPartialDelegation},
    pre::{self, PartialReencryption, ReencryptedCapsule, ReencryptionRequest},
    suite::Encoded,
    NodeIndex, PublicKeySet, Secp256k1, SecretScalar, SharedSecret,
};
use tkms_proto::{
    node::v1::{self as pb, node_client::NodeClient},
    tls::ManagerTls,
};
use tokio::{
    sync::{oneshot, Semaphore},
    task::JoinSet,
};
use tonic::transport::Channel;

/// The cluster suite.
pub type S = Secp256k1;

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

/// Consecutive liveness failures (timeouts, unreachable) after which a node is skipped.
pub const BREAKER_THRESHOLD: u32 = 3;
/// First cool-down of an open breaker; it doubles on each failed probe, up to
/// [`BREAKER_MAX_COOLDOWN`].
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// Longest cool-down.
pub const BREAKER_MAX_COOLDOWN: Duration = Duration::from_secs(30);

/// A per-node circuit breaker: after [`BREAKER_THRESHOLD`] consecutive timeouts or refused
/// connections the node is not asked until its cool-down passes; then the next request
/// probes it again (a failure re-opens it for twice as long, a success closes it). A node that
/// answers, even wrongly, stays in the fan-out: its bad partials are named, not hidden.
#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    cooldown: Duration,
    open_until: Option<Instant>,
}

impl Breaker {
    fn record(&mut self, node: NodeIndex, down: bool) {
        if !down {
            if self.failures >= BREAKER_THRESHOLD {
                tracing::info!(%node, "node answers again: circuit closed");
            }
            *self = Self::default();
            return;
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures >= BREAKER_THRESHOLD {
            self.cooldown = if self.cooldown.is_zero() {
                BREAKER_COOLDOWN
            } else {
                (self.cooldown * 2).min(BREAKER_MAX_COOLDOWN)
            };
            self.open_until = Some(Instant::now() + self.cooldown);
            tracing::warn!(%node, failures = self.failures, cooldown_ms = u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX), "node keeps failing: circuit open");
        }
    }
}

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

/// The calls of one request: those in flight, and the nodes not asked yet, in the order they
/// will be.
struct Calls<Req, Resp, F> {
    in_flight: JoinSet<(NodeIndex, Result<Resp, NodeFailure>)>,
    waiting: VecDeque<(NodeIndex, NodeClient<Channel>)>,
    request: Req,
    call: F,
    timeout: Duration,
    hedge: Option<Duration>,
    breakers: Arc<Mutex<BTreeMap<NodeIndex, Breaker>>>,
}

impl<Req, Resp, F, Fut> Calls<Req, Resp, F>
where
    Req: Clone + Send + 'static,
    Resp: Send + 'static,
    F: Fn(NodeClient<Channel>, Req) -> Fut,
    Fut:
        std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>> + Send + 'static,
{
    /// Ask the next waiting node; false if none is left.
    fn launch(&mut self) -> bool {
        let Some((index, client)) = self.waiting.pop_front() else {
            return false;
        };
        let timeout = self.timeout;
        let pending = (self.call)(client, self.request.clone());
        let breakers = Arc::clone(&self.breakers);
        self.in_flight.spawn(async move {
            let answer = match tokio::time::timeout(timeout, pending).await {
                Err(_) => Err(NodeFailure::Timeout),
                Ok(Err(status)) => Err(failure_of(&status)),
                Ok(Ok(response)) => Ok(response.into_inner()),
            };
            let down = matches!(
                answer,
                Err(NodeFailure::Timeout | NodeFailure::Unreachable(_))
            );
            breakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(index)
                .or_default()
                .record(index, down);
            (index, answer)
        });
        true
    }

    /// The next answer. While fewer than `wanted` calls are in flight, more nodes are asked;
    /// with a hedge delay, one more is asked each time it passes without an answer (only while
    /// answers are `wanted`). `None` when nothing is in flight and nobody is left to ask.
    async fn next(&mut self, wanted: usize) -> Option<(NodeIndex, Result<Resp, NodeFailure>)> {
        loop {
            while self.in_flight.len() < wanted && self.launch() {}
            let hedge = self
                .hedge
                .filter(|_| wanted > 0 && !self.waiting.is_empty());
            let joined = match hedge {
                None => self.in_flight.join_next().await?,
                Some(delay) => {
                    let Ok(joined) = tokio::time::timeout(delay, self.in_flight.join_next()).await
                    else {
                        self.launch();
                        continue;
                    };
                    joined?
                }
            };
            // A call task only ends early when aborted; skip it.
            if let Ok(answer) = joined {
                return Some(answer);
            }
        }
    }

    /// The next answer already in flight, or `None` at `deadline` (no node is added).
    async fn next_until(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Option<(NodeIndex, Result<Resp, NodeFailure>)> {
        loop {
            let joined = tokio::time::timeout_at(deadline, self.in_flight.join_next())
                .await
                .ok()??;
            if let Ok(answer) = joined {
                return Some(answer);
            }
        }
    }

    fn abort_all(&mut self) {
        self.in_flight.abort_all();
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
    pub key: Option<Encoded<Secp256k1>>,
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
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max: DELEGATION_BATCH,
            in_flight: DELEGATION_BATCHES_IN_FLIGHT,
        }
    }
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
        Ok(Self { max, in_flight })
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
            slots: Arc::new(Semaphore::new(batching.in_flight)),
            batches: AtomicU64::new(0),
            batched: AtomicU64::new(0),
        }
    }
}

/// A delegation of a batch in progress; `reply` is taken when it is answered.
struct Open {
    domain: DelegationRequest<S>,
    reply: Option<oneshot::Sender<Result<Served<SharedSecret>, ClusterError>>>,
    verified: Vec<VerifiedPartialDelegation<S>>,
    pending: Vec<PartialDelegation<S>>,
    failures: Vec<(NodeIndex, NodeFailure)>,
}

impl Open {
    /// Answer: the combined secret with `t` verified partials, else which nodes failed.
    fn finish(&mut self, keys: &PublicKeySet<S>) {
        let Some(reply) = self.reply.take() else {
            return;
        };
        let failures = std::mem::take(&mut self.failures);
        for (node, failure) in &failures {
            tracing::warn!(node = %node, %failure, "node did not contribute a valid partial delegation");
        }
        let threshold = keys.threshold();
        let answer = if self.verified.len() >= usize::from(threshold) {
            delegation::combine(&self.verified, keys)
                .map(|value| Served { value, failures })
                .map_err(|e| ClusterError::Invalid(e.to_string()))
        } else {
            Err(ClusterError::Unavailable {
                threshold,
                verified: self.verified.len(),
                failures,
            })
        };
        // The caller may have gone (its connection closed); nothing is left to do then.
        let _ = reply.send(answer);
    }
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
            tokio::spawn(async move {
                core.delegate_batch(fanout, batch).await;
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

/// The manager's view of the cluster for one epoch: node connections, breakers, key set.
struct Core {
    nodes: Vec<(NodeIndex, NodeClient<Channel>)>,
    breakers: Arc<Mutex<BTreeMap<NodeIndex, Breaker>>>,
    keys: PublicKeySet<S>,
    epoch: u64,
    timeout: Duration,
    /// Where the next hedged request starts in the node list, so the load rotates.
    turn: AtomicUsize,
}

impl Core {
    fn new(
        endpoints: &[NodeEndpoint],
        keys: PublicKeySet<S>,
        epoch: u64,
        manager_key: &SecretScalar<S>,
        timeout: Duration,
    ) -> Result<Self, ClusterError> {
        let mut nodes = Vec::with_capacity(endpoints.len());
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
            nodes.push((e.index, NodeClient::new(channel)));
        }
        Ok(Self {
            nodes,
            breakers: Arc::default(),
            keys,
            epoch,
            timeout,
            turn: AtomicUsize::new(0),
        })
    }

    /// Start `request`'s calls: to every node at once, or ([`Fanout::Hedged`]) to
    /// `t + extra` of them, the rest waiting their turn. Nodes whose circuit is open are not
    /// asked (with [`Fanout::All`]) or asked last (hedged), unless fewer than `t` would be left.
    fn fan_out<Req, Resp, F, Fut>(
        &self,
        fanout: Fanout,
        request: &Req,
        call: F,
    ) -> Calls<Req, Resp, F>
    where
        Req: Clone + Send + 'static,
        Resp: Send + 'static,
        F: Fn(NodeClient<Channel>, Req) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>
            + Send
            + 'static,
    {
        let now = Instant::now();
        let threshold = usize::from(self.keys.threshold());
        let (mut closed, open): (Vec<_>, Vec<_>) = {
            let breakers = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
            self.nodes.iter().cloned().partition(|(i, _)| {
                breakers
                    .get(i)
                    .and_then(|b| b.open_until)
                    .is_none_or(|t| t <= now)
            })
        };
        let (first, hedge) = match fanout {
            Fanout::All => (self.nodes.len(), None),
            Fanout::Hedged { extra, hedge } => {
                if !closed.is_empty() {
                    let turn = self.turn.fetch_add(1, Ordering::Relaxed) % closed.len();
                    closed.rotate_left(turn);
                }
                (threshold + usize::from(extra), Some(hedge))
            }
        };
        // Never skip so many nodes that fewer than t are asked.
        let skip_open = closed.len() >= threshold && hedge.is_none();
        let mut waiting: VecDeque<_> = closed.into();
        if !skip_open {
            waiting.extend(open);
        }
        let mut calls = Calls {
            in_flight: JoinSet::new(),
            waiting,
            request: request.clone(),
            call,
            timeout: self.timeout,
            hedge,
            breakers: Arc::clone(&self.breakers),
        };
        for _ in 0..first {
            calls.launch();
        }
        calls
    }

    /// Serve `batch`'s delegations with one call per node: per request, `t` verified
    /// partials combined. Every request gets its own answer; a node that fails the whole call
    /// is named in every request still open, one that refuses a single item only in that one.
    async fn delegate_batch(&self, fanout: Fanout, batch: Vec<Queued>) {
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
        });
        let mut open: Vec<Open> = batch
            .into_iter()
            .map(|q| Open {
                domain: DelegationRequest::with_encoded(self.epoch, q.request_id, q.ephemeral),
                reply: Some(q.reply),
                verified: Vec::new(),
                pending: Vec::new(),
                failures: Vec::new(),
            })
            .collect();
        // Shared by the calls; each copies it once into its message.
        let mut calls = self.fan_out(fanout, &request, |mut client, request| async move {
            match client.partial_delegation_batch((*request).clone()).await {
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    one_by_one(client, request).await
                }
                answer => answer,
            }
        });
        let threshold = usize::from(self.keys.threshold());
        let missing = |open: &[Open]| {
            open.iter()
                .filter(|o| o.reply.is_some())
                .map(|o| threshold.saturating_sub(o.verified.len() + o.pending.len()))
                .max()
                .unwrap_or(0)
        };
        while let Some((index, answer)) = calls.next(missing(&open)).await {
            let answer = answer.and_then(|response| {
                if response.results.len() == open.len() {
                    Ok(response.results)
                } else {
                    Err(NodeFailure::Malformed(format!(
                        "{} results for {} requests",
                        response.results.len(),
                        open.len()
                    )))
                }
            });
            match answer {
                Ok(results) => {
                    for (o, result) in open.iter_mut().zip(results) {
                        if o.reply.is_some() {
                            match decode_item(index, result) {
                                Ok(partial) => o.pending.push(partial),
                                Err(failure) => o.failures.push((index, failure)),
                            }
                        }
                    }
                }
                Err(failure) => {
                    for o in open.iter_mut().filter(|o| o.reply.is_some()) {
                        o.failures.push((index, failure.clone()));
                    }
                }
            }
            // Requests with enough candidates are checked together, in one batch.
            let ready: Vec<&mut Open> = open
                .iter_mut()
                .filter(|o| o.reply.is_some() && o.verified.len() + o.pending.len() >= threshold)
                .collect();
            self.verify(ready);
            for o in &mut open {
                if o.verified.len() >= threshold {
                    o.finish(&self.keys);
                }
            }
            if open.iter().all(|o| o.reply.is_none()) {
                calls.abort_all();
                return;
            }
        }
        // Not enough answers: still check what did arrive, so the errors count and name
        // exactly.
        let rest: Vec<&mut Open> = open.iter_mut().filter(|o| o.reply.is_some()).collect();
        self.verify(rest);
        for o in &mut open {
            o.finish(&self.keys);
        }
    }

    /// Check the pending partials of `open` requests, all in one batch.
    fn verify(&self, open: Vec<&mut Open>) {
        if open.is_empty() {
            return;
        }
        let mut open = open;
        let requests = open
            .iter_mut()
            .map(|o| (&o.domain, std::mem::take(&mut o.pending)))
            .collect();
        let results = delegation::verify_requests(requests, &self.keys, &mut OsRng);
        for (o, (ok, bad)) in open.into_iter().zip(results) {
            o.verified.extend(ok);
            record_invalid(bad, &mut o.failures);
        }
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
        let mut calls = self.fan_out(fanout, &request, |mut client, request| async move {
            client.partial_delegation(request).await
        });
        let threshold = usize::from(self.keys.threshold());
        let mut partials = Vec::new();
        let mut failures = Vec::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = match deadline {
                Some(d) => calls.next_until(d).await,
                None => calls.next(threshold.saturating_sub(partials.len())).await,
            };
            let Some((index, answer)) = next else { break };
            match answer {
                Ok(response) if !response.encrypted_partial.is_empty() => {
                    partials.push((index.get(), response.encrypted_partial));
                    if partials.len() >= threshold && deadline.is_none() {
                        deadline = Some(tokio::time::Instant::now() + STRAGGLER_GRACE);
                    }
                }
                Ok(_) => {
                    failures.push((index, NodeFailure::Malformed("no encrypted partial".into())));
                }
                Err(failure) => failures.push((index, failure)),
            }
        }
        calls.abort_all();
        for (node, failure) in &failures {
            tracing::warn!(node = %node, %failure, "node did not contribute an encrypted partial delegation");
        }
        if partials.len() < threshold {
            return Err(ClusterError::Unavailable {
                threshold: self.keys.threshold(),
                verified: partials.len(),
                failures,
            });
        }
        partials.sort_by_key(|(i, _)| *i);
        Ok(Served {
            value: partials,
            failures,
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
        let mut calls = self.fan_out(fanout, &request, |mut client, request| async move {
            client.partial_reencryption(request).await
        });
        let threshold = self.keys.threshold();
        let mut verified: BTreeMap<NodeIndex, Vec<pre::VerifiedPartialReencryption<S>>> =
            BTreeMap::new();
        let mut raw: BTreeMap<u16, Vec<Vec<u8>>> = BTreeMap::new();
        let mut failures = Vec::new();
        while let Some((index, answer)) = calls
            .next(usize::from(threshold).saturating_sub(verified.len()))
            .await
        {
            let outcome = answer.and_then(|response| {
                check_reencryption(index, &response.partials, &self.keys, &domains)
                    .map(|v| (v, response.partials))
            });
            match outcome {
                Ok((v, bytes)) => {
                    verified.insert(index, v);
                    raw.insert(index.get(), bytes);
                }
                Err(failure) => {
                    tracing::warn!(node = %index, %failure, "node did not contribute valid partial re-encryptions");
                    failures.push((index, failure));
                }
            }
            if verified.len() == usize::from(threshold) {
                calls.abort_all();
                let mut value = Vec::with_capacity(domains.len());
                for k in 0..domains.len() {
                    let column: Vec<_> = verified.values().map(|v| v[k].clone()).collect();
                    value.push(
                        pre::combine(&column, &self.keys)
                            .map_err(|e| ClusterError::Invalid(e.to_string()))?,
                    );
                }
                return Ok(Served {
                    value: Reencrypted {
                        capsules: value,
                        partials: raw,
                    },
                    failures,
                });
            }
        }
        Err(ClusterError::Unavailable {
            threshold,
            verified: verified.len(),
            failures,
        })
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

/// Name the nodes whose proofs failed in a batch.
fn record_invalid(errors: Vec<tkms_crypto::Error>, failures: &mut Vec<(NodeIndex, NodeFailure)>) {
    for e in errors {
        if let tkms_crypto::Error::InvalidProof { culprit } = e {
            failures.push((culprit, NodeFailure::InvalidProof));
        }
    }
}

/// One item of a node's batch answer: its partial (decoded, index checked), or its refusal.
fn decode_item(
    index: NodeIndex,
    result: pb::PartialDelegationResult,
) -> Result<PartialDelegation<S>, NodeFailure> {
    match result.outcome {
        Some(pb::partial_delegation_result::Outcome::Partial(bytes)) => {
            decode_delegation(index, &bytes)
        }
        Some(pb::partial_delegation_result::Outcome::Error(e)) => Err(failure_of(&e.to_status())),
        None => Err(NodeFailure::Malformed("an empty result".into())),
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

    #[test]
    fn breaker_opens_after_consecutive_failures_backs_off_and_closes_on_success() {
        let node = NodeIndex::new(1).unwrap_or_else(|| unreachable!());
        let mut b = Breaker::default();
        for _ in 1..BREAKER_THRESHOLD {
            b.record(node, true);
            assert!(b.open_until.is_none());
        }
        // An answer in between resets the count.
        b.record(node, false);
        for _ in 0..BREAKER_THRESHOLD {
            b.record(node, true);
        }
        assert_eq!(b.cooldown, BREAKER_COOLDOWN);
        assert!(b.open_until.is_some_and(|t| t > Instant::now()));
        // A failed probe doubles the cool-down, up to the cap.
        for _ in 0..10 {
            b.record(node, true);
        }
        assert_eq!(b.cooldown, BREAKER_MAX_COOLDOWN);
        b.record(node, false);
        assert!(b.open_until.is_none());
        assert_eq!(b.failures, 0);
    }
}
