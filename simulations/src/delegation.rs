//! Threshold delegation over the simulated network: a manager (address 0) serves each request with
//! the real manager's collector ([`tkms_crypto::collect::Collector`]) and circuit breakers
//! ([`tkms_crypto::collect::Breakers`]): it asks the nodes in the breakers' order, times each call
//! out after the node timeout, asks the next node when one fails, verifies partials with
//! `tkms_crypto::delegation::verify_requests` and combines the first `t` verified ones; a request
//! fails as soon as fewer than `t` nodes can still answer (the HTTP 503 of docs/ARCHITECTURE.md
//! §8). Share holders may be crashed (see the crash schedule), silent, or byzantine (wrong
//! partials).

use std::{collections::BTreeMap, time::Duration};

use rand::Rng;
use rand_chacha::ChaCha20Rng;
use tkms_crypto::{
    collect::{Breakers, Collector, Liveness, Outcome, Plan},
    delegation::{self, DelegationRequest, PartialDelegation, VerifiedPartialDelegation},
    ecies::{self, Ciphertext},
    shamir::lagrange_coefficients,
    KeyShare, NodeIndex, PublicKeySet, SecretScalar, SharedSecret, Suite,
};

use crate::cpu::CpuModel;
use crate::sim::{Actor, Addr, Message, Outbox, Time};
use tkms_crypto::ClusterSuite as S;

/// The manager's address.
pub const MANAGER: Addr = 0;

/// How a share holder misbehaves when asked for a partial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeFault {
    /// Answers correctly.
    Honest,
    /// Never answers.
    Silent,
    /// Answers with a well-formed partial made with a random share (its proof cannot verify
    /// against the node's public share).
    WrongPartial,
    /// Answers with a correct partial whose proof bytes were flipped (re-decoded if it still
    /// decodes; otherwise the node sends a wrong partial instead).
    FlippedProof,
}

/// How the manager treats partials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagerMode {
    /// The real manager: the collector, the breakers, verified partials only.
    Verify,
    /// DELIBERATELY BROKEN: combine the first `t` partials received without verifying them.
    /// Exists only to show that the "only verified partials" invariant can fail.
    CombineUnverified,
    /// DELIBERATELY BROKEN: ask only the first `t` nodes, never the others (no fallback when
    /// one of them is down or lies). Exists only to show that the liveness invariant can fail.
    AskOnlyT,
    /// DELIBERATELY BROKEN: no node timeout and no deadline; a request waits for ever for missing
    /// partials (the hang docs/ARCHITECTURE.md §8 forbids). Exists only to show that the liveness
    /// invariant can fail.
    NoDeadline,
    /// DELIBERATELY BROKEN: nodes whose breaker is open are not asked at all (the manager
    /// before the collector: a node restarted a moment ago stayed unused for up to 30 s).
    /// Exists only to show that liveness under node churn can fail.
    SkipOpenBreakers,
}

/// A delegation message.
#[derive(Clone, Debug)]
pub enum DelMsg {
    /// Manager → node.
    Request {
        /// Request number.
        id: u32,
        /// What to compute.
        request: Box<DelegationRequest<S>>,
    },
    /// Node → manager.
    Partial {
        /// Request number.
        id: u32,
        /// The node's answer.
        partial: Box<PartialDelegation<S>>,
    },
}

impl Message for DelMsg {
    fn wire_size(&self) -> usize {
        match self {
            // id(4) + epoch(8) + request id (var) + K(33).
            Self::Request { request, .. } => 4 + 8 + 2 + request.request_id().len() + 33,
            Self::Partial { partial, .. } => 4 + partial.to_bytes().len(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Request { .. } => "delegate-request",
            Self::Partial { .. } => "partial",
        }
    }
}

/// One request the manager will issue: when, and the ciphertext whose `K` it asks about (so
/// the result can be checked by opening it).
#[derive(Clone, Debug)]
pub struct PlannedRequest {
    /// Issue time.
    pub at: Time,
    /// A ciphertext under the cluster key.
    pub ciphertext: Ciphertext<S>,
    /// Its plaintext (the oracle).
    pub plaintext: Vec<u8>,
}

/// What happened to one request.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// Request number.
    pub id: u32,
    /// The request as sent.
    pub request: DelegationRequest<S>,
    /// Issue time.
    pub issued: Time,
    /// Completion time (served or failed).
    pub finished: Option<Time>,
    /// The shared secret returned to the client, if served.
    pub secret: Option<[u8; 32]>,
    /// The partials combined into the result, as received.
    pub used: Vec<PartialDelegation<S>>,
    /// Nodes whose partials failed verification.
    pub rejected: Vec<NodeIndex>,
    /// Partials received in total.
    pub received: usize,
}

impl RequestRecord {
    /// Served with a result.
    pub fn served(&self) -> bool {
        self.secret.is_some()
    }
}

/// A request in progress: its fan-out, and the partials received.
struct Open {
    collector: Collector<&'static str>,
    pending: BTreeMap<NodeIndex, PartialDelegation<S>>,
    verified: Vec<VerifiedPartialDelegation<S>>,
    used: Vec<PartialDelegation<S>>,
    raw: Vec<PartialDelegation<S>>,
}

/// The manager.
pub struct Manager {
    keys: PublicKeySet<S>,
    epoch: u64,
    nodes: Vec<Addr>,
    mode: ManagerMode,
    deadline: Time,
    node_timeout: Time,
    plan: Vec<PlannedRequest>,
    open: BTreeMap<u32, Open>,
    records: BTreeMap<u32, RequestRecord>,
    cpu: CpuModel,
    breakers: Breakers,
}

fn index(a: Addr) -> Option<NodeIndex> {
    NodeIndex::new(a)
}

fn at(now: Time) -> Duration {
    Duration::from_micros(now)
}

impl Manager {
    /// A manager for `keys` (epoch `epoch`) asking `nodes`, failing a request after
    /// `deadline` µs at the latest (each node call times out after 90 % of it, unless
    /// [`Self::with_node_timeout`] says otherwise).
    pub fn new(
        keys: PublicKeySet<S>,
        epoch: u64,
        nodes: Vec<Addr>,
        mode: ManagerMode,
        deadline: Time,
        plan: Vec<PlannedRequest>,
    ) -> Self {
        Self {
            breakers: Breakers::new(nodes.iter().filter_map(|a| index(*a))),
            keys,
            epoch,
            nodes,
            mode,
            deadline,
            node_timeout: deadline - deadline / 10,
            plan,
            open: BTreeMap::new(),
            records: BTreeMap::new(),
            cpu: CpuModel::FREE,
        }
    }

    /// Charge CPU time from `cpu` for verifying and combining.
    #[must_use]
    pub fn with_cpu(mut self, cpu: CpuModel) -> Self {
        self.cpu = cpu;
        self
    }

    /// Time each node call out after `timeout` (default: 90 % of the deadline).
    #[must_use]
    pub fn with_node_timeout(mut self, timeout: Time) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// Every request's record.
    pub fn records(&self) -> &BTreeMap<u32, RequestRecord> {
        &self.records
    }

    /// The requests as planned (with their plaintexts).
    pub fn plan(&self) -> &[PlannedRequest] {
        &self.plan
    }

    /// The key set the manager verifies against.
    pub fn keys(&self) -> &PublicKeySet<S> {
        &self.keys
    }

    fn complete(&mut self, now: Time, id: u32, secret: Option<[u8; 32]>) {
        let open = self.open.remove(&id);
        if let Some(r) = self.records.get_mut(&id) {
            r.finished = Some(now);
            r.secret = secret;
            if let Some(open) = open {
                r.used = open.used;
            }
        }
    }

    /// Whom a new request asks, as the mode says.
    fn fan_out(&mut self, now: Time) -> Plan {
        let t = usize::from(self.keys.threshold());
        let plan = self.breakers.plan(at(now), self.nodes.len(), false);
        match self.mode {
            ManagerMode::AskOnlyT => {
                let order: Vec<NodeIndex> = plan.order.into_iter().take(t).collect();
                let first = order.len();
                Plan::new(order, first)
            }
            ManagerMode::SkipOpenBreakers => {
                let order: Vec<NodeIndex> = plan
                    .order
                    .into_iter()
                    .filter(|n| !self.breakers.is_open(*n, at(now)))
                    .collect();
                let first = order.len();
                Plan::new(order, first)
            }
            _ => plan,
        }
    }

    /// Send the calls the collector of request `id` asks for, each with its timeout.
    fn ask(&mut self, id: u32, nodes: Vec<NodeIndex>, out: &mut Outbox<DelMsg>) {
        let Some(request) = self.records.get(&id).map(|r| r.request.clone()) else {
            return;
        };
        for n in nodes {
            out.send(
                n.get(),
                DelMsg::Request {
                    id,
                    request: Box::new(request.clone()),
                },
            );
            if self.mode != ManagerMode::NoDeadline {
                out.timer(
                    self.node_timeout,
                    Timer::Call { id, node: n.get() }.encode(),
                );
            }
        }
    }

    /// Verify, decide and ask more for request `id` after an event; returns the CPU time.
    fn step(
        &mut self,
        now: Time,
        id: u32,
        rng: &mut ChaCha20Rng,
        out: &mut Outbox<DelMsg>,
    ) -> Time {
        let t = usize::from(self.keys.threshold());
        let (Some(open), Some(record)) = (self.open.get_mut(&id), self.records.get_mut(&id)) else {
            return 0;
        };
        let mut cost = 0;
        if self.mode == ManagerMode::CombineUnverified {
            if open.raw.len() >= t {
                let secret = combine_unverified(&open.raw[..t]).map(|s| *s.as_bytes());
                open.used = open.raw[..t].to_vec();
                let cost = self.cpu.combine(t);
                self.complete(now + cost, id, secret);
                return cost;
            }
        } else if !open.collector.to_verify().is_empty() {
            let candidates: Vec<NodeIndex> = open.collector.candidates(0).collect();
            let partials: Vec<PartialDelegation<S>> = candidates
                .iter()
                .filter_map(|n| open.pending.remove(n))
                .collect();
            cost += self.cpu.verify() * partials.len() as Time;
            let by_index: BTreeMap<NodeIndex, PartialDelegation<S>> =
                partials.iter().map(|p| (p.index(), p.clone())).collect();
            let mut results =
                delegation::verify_requests(vec![(&record.request, partials)], &self.keys, rng);
            let (ok, bad) = results.pop().unwrap_or_default();
            for v in ok {
                open.collector.verified(0, v.index());
                if let Some(p) = by_index.get(&v.index()) {
                    open.used.push(p.clone());
                }
                open.verified.push(v);
            }
            for e in bad {
                if let tkms_crypto::Error::InvalidProof { culprit } = e {
                    record.rejected.push(culprit);
                    open.collector.rejected(0, culprit, "invalid proof");
                }
            }
        }
        let decided = open.collector.settle();
        if let Some((_, outcome)) = decided.first() {
            let secret = match outcome {
                Outcome::Served => {
                    cost += self.cpu.combine(t);
                    delegation::combine(&open.verified, &self.keys)
                        .ok()
                        .map(|s| *s.as_bytes())
                }
                Outcome::Unavailable => None,
            };
            open.used.truncate(t);
            self.complete(now + cost, id, secret);
            return cost;
        }
        let more = open.collector.more();
        self.ask(id, more, out);
        cost
    }

    /// Take in a partial from `from`; returns the CPU time spent.
    fn on_partial(
        &mut self,
        now: Time,
        id: u32,
        from: Addr,
        partial: PartialDelegation<S>,
        rng: &mut ChaCha20Rng,
        out: &mut Outbox<DelMsg>,
    ) -> Time {
        let Some(node) = index(from) else { return 0 };
        self.breakers.record(node, at(now), Liveness::Answered);
        let (Some(open), Some(record)) = (self.open.get_mut(&id), self.records.get_mut(&id)) else {
            return 0;
        };
        if !open.collector.in_flight().contains(&node) || partial.index() != node {
            return 0;
        }
        record.received += 1;
        open.collector.answered(node);
        open.raw.push(partial.clone());
        open.pending.insert(node, partial);
        open.collector.candidate(0, node);
        self.step(now, id, rng, out)
    }

    /// A node call timed out.
    fn on_call_timeout(
        &mut self,
        now: Time,
        id: u32,
        from: Addr,
        rng: &mut ChaCha20Rng,
        out: &mut Outbox<DelMsg>,
    ) -> Time {
        let Some(node) = index(from) else { return 0 };
        let Some(open) = self.open.get_mut(&id) else {
            return 0;
        };
        if !open.collector.in_flight().contains(&node) {
            return 0;
        }
        self.breakers.record(node, at(now), Liveness::Down);
        open.collector.node_failed(node, &"timeout");
        self.step(now, id, rng, out)
    }
}

/// The manager's timers, typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    /// Issue planned request `id`.
    Issue(u32),
    /// Request `id`'s deadline.
    Deadline(u32),
    /// The call of request `id` to `node` times out.
    Call { id: u32, node: Addr },
}

impl Timer {
    const ISSUE: u64 = 1;
    const DEADLINE: u64 = 2;
    const CALL: u64 = 3;

    fn encode(self) -> u64 {
        match self {
            Self::Issue(id) => (Self::ISSUE << 56) | u64::from(id),
            Self::Deadline(id) => (Self::DEADLINE << 56) | u64::from(id),
            Self::Call { id, node } => (Self::CALL << 56) | (u64::from(node) << 32) | u64::from(id),
        }
    }

    fn decode(timer: u64) -> Option<Self> {
        let id = u32::try_from(timer & 0xffff_ffff).ok()?;
        let node = u16::try_from((timer >> 32) & 0xffff).ok()?;
        match timer >> 56 {
            Self::ISSUE => Some(Self::Issue(id)),
            Self::DEADLINE => Some(Self::Deadline(id)),
            Self::CALL => Some(Self::Call { id, node }),
            _ => None,
        }
    }
}

/// The broken manager's combination: Lagrange over the claimed `D_i` of unverified partials
/// (read from their encoding), through the crate's public Lagrange and ECIES helpers.
fn combine_unverified(partials: &[PartialDelegation<S>]) -> Option<SharedSecret> {
    let indices: Vec<NodeIndex> = partials.iter().map(PartialDelegation::index).collect();
    let lambdas = lagrange_coefficients::<S>(&indices).ok()?;
    let terms = partials
        .iter()
        .zip(lambdas)
        .map(|(p, l)| Some((S::decode_point(&p.to_bytes()[2..35]).ok()?, l)))
        .collect::<Option<Vec<_>>>()?;
    ecies::shared_secret::<S>(&S::lincomb(&terms)).ok()
}

/// A share holder.
pub struct ShareNode {
    share: KeyShare<S>,
    fault: NodeFault,
    cpu: CpuModel,
}

impl ShareNode {
    /// A node holding `share`, spending `cpu.partial()` per answer.
    pub fn new(share: KeyShare<S>, fault: NodeFault, cpu: CpuModel) -> Self {
        Self { share, fault, cpu }
    }

    fn answer(
        &self,
        request: &DelegationRequest<S>,
        rng: &mut ChaCha20Rng,
    ) -> Option<PartialDelegation<S>> {
        let wrong = |rng: &mut ChaCha20Rng| {
            let fake = KeyShare::new(self.share.index(), SecretScalar::random(rng));
            PartialDelegation::create(&fake, request, rng)
        };
        match self.fault {
            NodeFault::Honest => Some(PartialDelegation::create(&self.share, request, rng)),
            NodeFault::Silent => None,
            NodeFault::WrongPartial => Some(wrong(rng)),
            NodeFault::FlippedProof => {
                let mut bytes = PartialDelegation::create(&self.share, request, rng).to_bytes();
                let at = rng.gen_range(35..bytes.len());
                bytes[at] ^= 1 << rng.gen_range(0..8);
                Some(PartialDelegation::from_bytes(&bytes).unwrap_or_else(|_| wrong(rng)))
            }
        }
    }
}

/// The actors of a delegation run.
pub enum DelegationActor {
    /// The manager at address 0.
    Manager(Box<Manager>),
    /// A share holder at its node index.
    Node(Box<ShareNode>),
}

impl Actor for DelegationActor {
    type Msg = DelMsg;

    fn start(&mut self, now: Time, _rng: &mut ChaCha20Rng, out: &mut Outbox<DelMsg>) {
        if let Self::Manager(m) = self {
            for (id, p) in m.plan.iter().enumerate() {
                let id = u32::try_from(id).unwrap_or(u32::MAX);
                out.timer(p.at.saturating_sub(now), Timer::Issue(id).encode());
            }
        }
    }

    fn on_message(
        &mut self,
        now: Time,
        from: Addr,
        msg: DelMsg,
        rng: &mut ChaCha20Rng,
        out: &mut Outbox<DelMsg>,
    ) {
        match (self, msg) {
            (Self::Node(node), DelMsg::Request { id, request }) => {
                if let Some(partial) = node.answer(&request, rng) {
                    out.work(node.cpu.partial());
                    out.send(
                        from,
                        DelMsg::Partial {
                            id,
                            partial: Box::new(partial),
                        },
                    );
                }
            }
            (Self::Manager(m), DelMsg::Partial { id, partial }) => {
                let cost = m.on_partial(now, id, from, *partial, rng, out);
                out.work(cost);
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, now: Time, timer: u64, rng: &mut ChaCha20Rng, out: &mut Outbox<DelMsg>) {
        let Self::Manager(m) = self else {
            return;
        };
        match Timer::decode(timer) {
            Some(Timer::Issue(id)) => {
                let Some(plan) = m.plan.get(id as usize) else {
                    return;
                };
                let request = DelegationRequest::new(
                    m.epoch,
                    format!("req-{id}").into_bytes(),
                    *plan.ciphertext.ephemeral(),
                );
                m.records.insert(
                    id,
                    RequestRecord {
                        id,
                        request,
                        issued: now,
                        finished: None,
                        secret: None,
                        used: Vec::new(),
                        rejected: Vec::new(),
                        received: 0,
                    },
                );
                let fan_out = m.fan_out(now);
                let mut collector = Collector::new(fan_out, m.keys.threshold(), 1);
                let first = collector.start();
                m.open.insert(
                    id,
                    Open {
                        collector,
                        pending: BTreeMap::new(),
                        verified: Vec::new(),
                        used: Vec::new(),
                        raw: Vec::new(),
                    },
                );
                m.ask(id, first, out);
                if m.mode != ManagerMode::NoDeadline {
                    out.timer(m.deadline, Timer::Deadline(id).encode());
                }
                let cost = m.step(now, id, rng, out);
                out.work(cost);
            }
            Some(Timer::Deadline(id)) if m.open.contains_key(&id) => m.complete(now, id, None),
            Some(Timer::Call { id, node }) => {
                let cost = m.on_call_timeout(now, id, node, rng, out);
                out.work(cost);
            }
            _ => {}
        }
    }
}
