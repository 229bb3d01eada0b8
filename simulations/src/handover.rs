//! Epoch handover under load (docs/RELIABILITY.md "Epoch handover"): a manager serves a steady
//! stream of delegations while it reshares the key to a new committee, and may crash at any
//! point of the reshare. It drives the real code: each node's epochs are a
//! [`tkms_crypto::handover::Holder`] (as in the node), each request a
//! [`tkms_crypto::collect::Collector`] with [`tkms_crypto::collect::Breakers`] (as in the
//! manager), and every reconciliation [`tkms_crypto::handover::decide`] on the nodes' reports
//! (as the manager at start and every half second). The ceremony itself is not re-run here (the
//! DKG scenarios do that): its result, the new committee's shares of the same key, is dealt in
//! advance and each member adopts its share when its part of the ceremony ends.
//!
//! The manager keeps across a crash only what the real one keeps on disk: the committed epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tkms_crypto::{
    collect::{Breakers, Collector, Liveness, Outcome},
    delegation::{DelegationRequest, PartialDelegation},
    ecies,
    handover::{self, EpochId, Held, HeldShare, Holder, Known, Report},
    shamir, KeyShare, NodeIndex, PublicKeySet, SecretScalar,
};

use crate::sim::{Actor, Addr, Crash, Message, NetConfig, Outbox, Simulator, Time, MS, SECOND};
use tkms_crypto::ClusterSuite as S;

/// The manager's address.
pub const MANAGER: Addr = 0;

/// How often the manager reconciles with the nodes.
pub const RECONCILE: Time = 500 * MS;

/// A node's share of one epoch.
#[derive(Clone, Debug)]
pub struct SimShare {
    share: KeyShare<S>,
    keys: PublicKeySet<S>,
    transcript: [u8; 32],
}

impl HeldShare for SimShare {
    fn transcript_hash(&self) -> &[u8] {
        &self.transcript
    }
}

/// An epoch as the manager serves it.
#[derive(Clone, Debug)]
struct SimEpoch {
    epoch: u64,
    keys: PublicKeySet<S>,
    transcript: [u8; 32],
    holders: Vec<Addr>,
}

/// Messages.
#[derive(Clone, Debug)]
pub enum HMsg {
    /// Manager → node: a partial for request `id` of `epoch`.
    Partial {
        /// Request number.
        id: u32,
        /// What to compute.
        request: Box<DelegationRequest<S>>,
    },
    /// Node → manager: the partial, or a refusal.
    PartialReply {
        /// Request number.
        id: u32,
        /// `None`: refused (does not hold the epoch).
        partial: Option<Box<PartialDelegation<S>>>,
    },
    /// Manager → node: "what do you hold?"
    Status,
    /// Node → manager.
    StatusReply(Box<Report<Addr>>),
    /// Manager → node: take part in the reshare to `epoch`.
    Start {
        /// The new epoch.
        epoch: u64,
    },
    /// Node → manager: its part of the ceremony ended.
    Done {
        /// The epoch.
        epoch: u64,
        /// Whether it holds a share of it.
        holds: bool,
    },
    /// Manager → node: `epoch` is committed.
    Commit {
        /// The epoch.
        epoch: u64,
        /// Its transcript hash.
        transcript: [u8; 32],
    },
    /// Manager → node: drop the uncommitted `epoch`.
    Abort {
        /// The epoch.
        epoch: u64,
    },
}

impl Message for HMsg {
    fn wire_size(&self) -> usize {
        match self {
            Self::Partial { .. } => 100,
            Self::PartialReply { .. } => 140,
            Self::StatusReply(r) => 40 + 120 * r.held.len(),
            _ => 48,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Partial { .. } => "partial-request",
            Self::PartialReply { .. } => "partial",
            Self::Status => "status",
            Self::StatusReply(_) => "status-reply",
            Self::Start { .. } => "start",
            Self::Done { .. } => "done",
            Self::Commit { .. } => "commit",
            Self::Abort { .. } => "abort",
        }
    }
}

/// DELIBERATELY BROKEN variants, each there to show that the check meant to catch it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoverBroken {
    /// Nodes drop the previous epoch as soon as their part of the ceremony ends (before the
    /// manager switches): requests in flight, and those sent until the switch, fail.
    NodesSwitchOnFinish,
    /// The manager trusts its own file: it never asks the nodes what they hold, so a ceremony
    /// its crash interrupted is never committed nor rolled back, and leavers keep old shares.
    ManagerTrustsItsFile,
}

/// A node.
pub struct HNode {
    index: Addr,
    holder: Holder<SimShare>,
    next: Option<SimShare>,
    in_ceremony: Option<u64>,
    ceremony_time: Time,
    broken: Option<HandoverBroken>,
}

impl HNode {
    fn report(&self) -> Report<Addr> {
        Report {
            node: self.index,
            held: self
                .holder
                .held()
                .map(|(epoch, s)| Held {
                    id: epoch_id(epoch, &s.keys, &s.transcript),
                    index: s.share.index().get(),
                    threshold: s.keys.threshold(),
                    committee: s.keys.public_shares().map(|(i, _)| i.get()).collect(),
                })
                .collect(),
            committed: self.holder.committed(),
            in_ceremony: self.in_ceremony.is_some(),
        }
    }

    /// Its shares, for the final checks.
    pub fn held_epochs(&self) -> Vec<u64> {
        self.holder.held().map(|(e, _)| e).collect()
    }

    /// The epoch it was told is committed.
    pub fn committed(&self) -> u64 {
        self.holder.committed()
    }
}

fn epoch_id(epoch: u64, keys: &PublicKeySet<S>, transcript: &[u8; 32]) -> EpochId {
    EpochId {
        epoch,
        commitment: keys.commitment().to_bytes(),
        transcript_hash: transcript.to_vec(),
    }
}

/// What happened to one request.
#[derive(Clone, Debug, Default)]
pub struct HRecord {
    /// The epoch it was served from.
    pub epoch: u64,
    /// Issue time.
    pub issued: Time,
    /// Completion time.
    pub finished: Option<Time>,
    /// Whether it was served (and the secret opened the ciphertext).
    pub served: bool,
    /// Cut off by a manager crash (the client's connection broke; it retries).
    pub interrupted: bool,
}

struct HOpen {
    collector: Collector<&'static str>,
    request: DelegationRequest<S>,
    keys: PublicKeySet<S>,
    verified: Vec<tkms_crypto::delegation::VerifiedPartialDelegation<S>>,
}

struct CeremonyRun {
    epoch: u64,
    waiting: BTreeSet<Addr>,
    holders: Vec<Addr>,
}

/// The manager.
pub struct HManager {
    recorded: Option<SimEpoch>,
    serving: Option<SimEpoch>,
    next: SimEpoch,
    participants: Vec<Addr>,
    nodes: Vec<Addr>,
    breakers: Breakers,
    open: BTreeMap<u32, HOpen>,
    ceremony: Option<CeremonyRun>,
    statuses: BTreeMap<Addr, Report<Addr>>,
    records: Vec<HRecord>,
    ciphertext: ecies::Ciphertext<S>,
    plaintext: Vec<u8>,
    reshare_at: Time,
    interval: Time,
    stop_at: Time,
    node_timeout: Time,
    broken: Option<HandoverBroken>,
}

/// The manager's timers, typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HTimer {
    Issue,
    Call { id: u32, node: Addr },
    Reconcile,
    Decide,
    Reshare,
    CeremonyTimeout(u64),
    CeremonyEnd(u64),
}

impl HTimer {
    fn encode(self) -> u64 {
        match self {
            Self::Issue => 1 << 56,
            Self::Call { id, node } => (2 << 56) | (u64::from(node) << 32) | u64::from(id),
            Self::Reconcile => 3 << 56,
            Self::Decide => 4 << 56,
            Self::Reshare => 5 << 56,
            Self::CeremonyTimeout(e) => (6 << 56) | (e & 0xffff_ffff),
            Self::CeremonyEnd(e) => (7 << 56) | (e & 0xffff_ffff),
        }
    }

    fn decode(t: u64) -> Option<Self> {
        let low = t & 0xffff_ffff;
        let id = u32::try_from(low).ok()?;
        let node = u16::try_from((t >> 32) & 0xffff).ok()?;
        Some(match t >> 56 {
            1 => Self::Issue,
            2 => Self::Call { id, node },
            3 => Self::Reconcile,
            4 => Self::Decide,
            5 => Self::Reshare,
            6 => Self::CeremonyTimeout(low),
            7 => Self::CeremonyEnd(low),
            _ => return None,
        })
    }
}

fn at(now: Time) -> Duration {
    Duration::from_micros(now)
}

impl HManager {
    fn drained(&self) -> bool {
        let serving = self.serving.as_ref().map_or(0, |s| s.epoch);
        self.open.values().all(|o| o.request.epoch() == serving)
    }

    fn commit(&mut self, epoch: SimEpoch) {
        self.recorded = Some(epoch.clone());
        self.breakers = Breakers::new(epoch.holders.iter().filter_map(|a| NodeIndex::new(*a)));
        self.serving = Some(epoch);
    }

    fn issue(&mut self, now: Time, rng: &mut ChaCha20Rng, out: &mut Outbox<HMsg>) {
        let Some(serving) = self.serving.clone() else {
            return;
        };
        let id = u32::try_from(self.records.len()).unwrap_or(u32::MAX);
        let request = DelegationRequest::new(
            serving.epoch,
            format!("req-{id}").into_bytes(),
            *self.ciphertext.ephemeral(),
        );
        let plan = self.breakers.plan(at(now), serving.holders.len(), false);
        let mut collector = Collector::new(plan, serving.keys.threshold(), 1);
        let first = collector.start();
        self.records.push(HRecord {
            epoch: serving.epoch,
            issued: now,
            ..HRecord::default()
        });
        self.open.insert(
            id,
            HOpen {
                collector,
                request,
                keys: serving.keys,
                verified: Vec::new(),
            },
        );
        self.ask(id, first, out);
        self.step(now, id, rng, out);
    }

    fn ask(&mut self, id: u32, nodes: Vec<NodeIndex>, out: &mut Outbox<HMsg>) {
        let Some(open) = self.open.get(&id) else {
            return;
        };
        for n in nodes {
            out.send(
                n.get(),
                HMsg::Partial {
                    id,
                    request: Box::new(open.request.clone()),
                },
            );
            out.timer(
                self.node_timeout,
                HTimer::Call { id, node: n.get() }.encode(),
            );
        }
    }

    fn step(&mut self, now: Time, id: u32, _rng: &mut ChaCha20Rng, out: &mut Outbox<HMsg>) {
        let Some(open) = self.open.get_mut(&id) else {
            return;
        };
        if let Some((_, outcome)) = open.collector.settle().first().copied() {
            let served = outcome == Outcome::Served
                && tkms_crypto::delegation::combine(&open.verified, &open.keys)
                    .ok()
                    .and_then(|s| ecies::open_with_shared_secret(&s, &self.ciphertext).ok())
                    .is_some_and(|m| *m == *self.plaintext);
            self.open.remove(&id);
            if let Some(r) = self.records.get_mut(id as usize) {
                r.finished = Some(now);
                r.served = served;
            }
            return;
        }
        let more = open.collector.more();
        self.ask(id, more, out);
    }

    fn reconcile(&mut self, out: &mut Outbox<HMsg>) {
        if self.ceremony.is_some() || self.broken == Some(HandoverBroken::ManagerTrustsItsFile) {
            return;
        }
        self.statuses.clear();
        out.broadcast(&self.nodes, &HMsg::Status);
        out.timer(100 * MS, HTimer::Decide.encode());
    }

    fn decide(&mut self, out: &mut Outbox<HMsg>) {
        if self.ceremony.is_some() {
            return;
        }
        let reports: Vec<Report<Addr>> = self.statuses.values().cloned().collect();
        let known = Known {
            recorded: self.recorded.as_ref().map_or(0, |r| r.epoch),
            published: None,
            ceremony_running: false,
        };
        let decision = handover::decide(known, &reports);
        let epoch_of = |c: &handover::Candidate<Addr>, this: &Self| -> Option<SimEpoch> {
            let keys = [&this.next]
                .into_iter()
                .chain(this.recorded.as_ref())
                .find(|e| e.epoch == c.id.epoch)?
                .clone();
            Some(SimEpoch {
                holders: c.holders.iter().map(|(_, a)| *a).collect(),
                ..keys
            })
        };
        if let Some(c) = &decision.commit {
            if let Some(e) = epoch_of(c, self) {
                self.commit(e);
            }
            return;
        }
        if let Some(c) = &decision.serve {
            let current = self.serving.as_ref().map(|s| (s.epoch, s.holders.len()));
            if current.is_none_or(|(e, holders)| {
                e < c.id.epoch || (e == c.id.epoch && holders < c.holders.len())
            }) {
                if let Some(e) = epoch_of(c, self) {
                    self.commit(e);
                }
            }
        }
        for (node, epoch) in &decision.abort {
            out.send(*node, HMsg::Abort { epoch: *epoch });
        }
        if self.drained() {
            if let Some(serving) = &self.serving {
                for node in &decision.settle {
                    out.send(
                        *node,
                        HMsg::Commit {
                            epoch: serving.epoch,
                            transcript: serving.transcript,
                        },
                    );
                }
            }
        }
    }

    fn ceremony_ended(&mut self, out: &mut Outbox<HMsg>) {
        let Some(run) = self.ceremony.take() else {
            return;
        };
        if run.holders.len() >= usize::from(self.next.keys.threshold()) {
            let mut next = self.next.clone();
            next.epoch = run.epoch;
            next.holders = run.holders;
            self.commit(next);
        } else {
            for node in &run.holders {
                out.send(*node, HMsg::Abort { epoch: run.epoch });
            }
        }
    }
}

/// The actors of a handover run.
pub enum HActor {
    /// The manager at address 0.
    Manager(Box<HManager>),
    /// A node at its index.
    Node(Box<HNode>),
}

impl Actor for HActor {
    type Msg = HMsg;

    fn start(&mut self, _now: Time, _rng: &mut ChaCha20Rng, out: &mut Outbox<HMsg>) {
        if let Self::Manager(m) = self {
            out.timer(0, HTimer::Issue.encode());
            out.timer(RECONCILE, HTimer::Reconcile.encode());
            out.timer(m.reshare_at, HTimer::Reshare.encode());
        }
    }

    fn on_message(
        &mut self,
        now: Time,
        from: Addr,
        msg: HMsg,
        rng: &mut ChaCha20Rng,
        out: &mut Outbox<HMsg>,
    ) {
        match self {
            Self::Node(n) => match msg {
                HMsg::Partial { id, request } => {
                    let partial = n
                        .holder
                        .get(request.epoch())
                        .ok()
                        .map(|s| Box::new(PartialDelegation::create(&s.share, &request, rng)));
                    out.send(from, HMsg::PartialReply { id, partial });
                }
                HMsg::Status => out.send(from, HMsg::StatusReply(Box::new(n.report()))),
                HMsg::Start { epoch } if n.holder.check_ceremony(epoch).is_ok() => {
                    n.holder.began(epoch);
                    n.in_ceremony = Some(epoch);
                    let jitter = rng.gen_range(0..n.ceremony_time / 2 + 1);
                    out.timer(
                        n.ceremony_time + jitter,
                        HTimer::CeremonyEnd(epoch).encode(),
                    );
                }
                HMsg::Commit { epoch, transcript }
                    if n.holder.check_commit(epoch, &transcript).is_ok() =>
                {
                    n.holder.commit(epoch);
                }
                HMsg::Abort { epoch } if n.holder.check_abort(epoch).is_ok() => {
                    n.holder.abort(epoch);
                }
                _ => {}
            },
            Self::Manager(m) => match msg {
                HMsg::PartialReply { id, partial } => {
                    let Some(node) = NodeIndex::new(from) else {
                        return;
                    };
                    m.breakers.record(node, at(now), Liveness::Answered);
                    let Some(open) = m.open.get_mut(&id) else {
                        return;
                    };
                    if !open.collector.in_flight().contains(&node) {
                        return;
                    }
                    open.collector.answered(node);
                    match partial {
                        Some(p) if p.index() == node => {
                            open.collector.candidate(0, node);
                            match p.verify(&open.keys, &open.request) {
                                Ok(v) => {
                                    open.collector.verified(0, node);
                                    open.verified.push(v);
                                }
                                Err(_) => open.collector.rejected(0, node, "invalid proof"),
                            }
                        }
                        _ => open.collector.item_failed(0, node, "refused"),
                    }
                    m.step(now, id, rng, out);
                }
                HMsg::StatusReply(report) => {
                    m.statuses.insert(from, *report);
                }
                HMsg::Done { epoch, holds } => {
                    let Some(run) = m.ceremony.as_mut().filter(|r| r.epoch == epoch) else {
                        return;
                    };
                    run.waiting.remove(&from);
                    if holds {
                        run.holders.push(from);
                    }
                    if run.waiting.is_empty() {
                        m.ceremony_ended(out);
                    }
                }
                _ => {}
            },
        }
    }

    fn on_timer(&mut self, now: Time, timer: u64, rng: &mut ChaCha20Rng, out: &mut Outbox<HMsg>) {
        match (self, HTimer::decode(timer)) {
            (Self::Node(n), Some(HTimer::CeremonyEnd(epoch))) => {
                if n.in_ceremony != Some(epoch) {
                    return;
                }
                n.in_ceremony = None;
                let holds = n.next.take().is_some_and(|share| {
                    n.holder.adopt(epoch, share);
                    true
                });
                if holds && n.broken == Some(HandoverBroken::NodesSwitchOnFinish) {
                    n.holder.commit(epoch);
                }
                out.send(MANAGER, HMsg::Done { epoch, holds });
            }
            (Self::Manager(m), Some(t)) => match t {
                HTimer::Issue => {
                    if now < m.stop_at {
                        m.issue(now, rng, out);
                        out.timer(m.interval, HTimer::Issue.encode());
                    }
                }
                HTimer::Call { id, node } => {
                    let Some(n) = NodeIndex::new(node) else {
                        return;
                    };
                    let Some(open) = m.open.get_mut(&id) else {
                        return;
                    };
                    if open.collector.in_flight().contains(&n) {
                        m.breakers.record(n, at(now), Liveness::Down);
                        open.collector.node_failed(n, &"timeout");
                        m.step(now, id, rng, out);
                    }
                }
                HTimer::Reconcile => {
                    m.reconcile(out);
                    out.timer(RECONCILE, HTimer::Reconcile.encode());
                }
                HTimer::Decide => m.decide(out),
                HTimer::Reshare => {
                    let epoch = m.next.epoch;
                    m.ceremony = Some(CeremonyRun {
                        epoch,
                        waiting: m.participants.iter().copied().collect(),
                        holders: Vec::new(),
                    });
                    out.broadcast(&m.participants, &HMsg::Start { epoch });
                    out.timer(2 * SECOND, HTimer::CeremonyTimeout(epoch).encode());
                }
                HTimer::CeremonyTimeout(epoch) => {
                    if m.ceremony.as_ref().is_some_and(|r| r.epoch == epoch) {
                        m.ceremony_ended(out);
                    }
                }
                HTimer::CeremonyEnd(_) => {}
            },
            _ => {}
        }
    }

    fn on_restart(&mut self, now: Time, _rng: &mut ChaCha20Rng, out: &mut Outbox<HMsg>) {
        match self {
            Self::Node(n) => {
                // A crash ends its part of a ceremony: it missed the reshare.
                n.in_ceremony = None;
                n.next = None;
            }
            Self::Manager(m) => {
                // Only the committed epoch survives (the state file).
                m.open.clear();
                for r in m.records.iter_mut().filter(|r| r.finished.is_none()) {
                    r.interrupted = true;
                    r.finished = Some(now);
                }
                m.serving.clone_from(&m.recorded);
                m.breakers = Breakers::new(
                    m.serving
                        .iter()
                        .flat_map(|s| s.holders.iter().filter_map(|a| NodeIndex::new(*a))),
                );
                m.ceremony = None;
                m.statuses.clear();
                out.timer(0, HTimer::Issue.encode());
                out.timer(0, HTimer::Reconcile.encode());
            }
        }
    }
}

/// A handover run.
#[derive(Clone, Debug)]
pub struct HandoverScenario {
    /// Seed of the run's only RNG.
    pub seed: u64,
    /// Committee before and after, with thresholds.
    pub from: (u16, u16),
    /// The new committee size and threshold.
    pub to: (u16, u16),
    /// When the reshare starts.
    pub reshare_at: Time,
    /// How long each member's part of the ceremony takes.
    pub ceremony_time: Time,
    /// A request every this often.
    pub interval: Time,
    /// Requests stop then.
    pub stop_at: Time,
    /// The run ends then.
    pub horizon: Time,
    /// Crashes (the manager is address 0).
    pub crashes: Vec<Crash>,
    /// A deliberately broken variant.
    pub broken: Option<HandoverBroken>,
}

impl HandoverScenario {
    /// 5/3 -> 7/4 at 1 s, a request every 10 ms until 4 s, run until 8 s.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            from: (5, 3),
            to: (7, 4),
            reshare_at: SECOND,
            ceremony_time: 60 * MS,
            interval: 10 * MS,
            stop_at: 4 * SECOND,
            horizon: 8 * SECOND,
            crashes: Vec::new(),
            broken: None,
        }
    }
}

/// What a handover run ended with.
#[derive(Debug)]
pub struct HandoverRun {
    /// Every request.
    pub records: Vec<HRecord>,
    /// Each node: (address, epochs held, committed epoch).
    pub nodes: Vec<(Addr, Vec<u64>, u64)>,
    /// The epoch the manager serves at the end, and the one it recorded.
    pub serving: Option<u64>,
    /// The recorded (committed) epoch.
    pub recorded: Option<u64>,
    /// The new epoch's number.
    pub new_epoch: u64,
    /// The new committee.
    pub new_committee: Vec<Addr>,
    /// Whether the final served key set has the original public key.
    pub same_key: bool,
}

/// The node actors: the old committee holds epoch 1 (committed), the new one is dealt the
/// epoch-2 share it adopts when its part of the ceremony ends.
fn nodes(
    s: &HandoverScenario,
    all: &[Addr],
    (old_shares, old_keys): (&[KeyShare<S>], &PublicKeySet<S>),
    (new_shares, new_keys): (&[KeyShare<S>], &PublicKeySet<S>),
) -> BTreeMap<Addr, HActor> {
    let mut actors = BTreeMap::new();
    for a in all {
        let old = old_shares.iter().find(|sh| sh.index().get() == *a);
        let holder = match old {
            Some(sh) => Holder::restore(
                vec![(
                    1,
                    SimShare {
                        share: sh.clone(),
                        keys: old_keys.clone(),
                        transcript: [1; 32],
                    },
                )],
                1,
                1,
            ),
            None => Holder::default(),
        };
        let next = new_shares
            .iter()
            .find(|sh| sh.index().get() == *a)
            .map(|sh| SimShare {
                share: sh.clone(),
                keys: new_keys.clone(),
                transcript: [2; 32],
            });
        actors.insert(
            *a,
            HActor::Node(Box::new(HNode {
                index: *a,
                holder,
                next,
                in_ceremony: None,
                ceremony_time: s.ceremony_time,
                broken: s.broken,
            })),
        );
    }
    actors
}

/// Run `s`.
pub fn run_handover(s: &HandoverScenario) -> Result<HandoverRun, tkms_crypto::Error> {
    let mut rng = ChaCha20Rng::seed_from_u64(s.seed);
    let secret = SecretScalar::<S>::random(&mut rng);
    let (old_shares, old_keys) = shamir::deal(&secret, s.from.1, s.from.0, &mut rng)?;
    let (new_shares, new_keys) = shamir::deal(&secret, s.to.1, s.to.0, &mut rng)?;
    let plaintext = b"opened across the switch".to_vec();
    let ciphertext = ecies::encrypt::<S>(&old_keys.public_key(), &plaintext, &mut rng)?;
    let all: Vec<Addr> = (1..=s.from.0.max(s.to.0)).collect();
    let mut actors = nodes(s, &all, (&old_shares, &old_keys), (&new_shares, &new_keys));
    let old_holders: Vec<Addr> = (1..=s.from.0).collect();
    let first = SimEpoch {
        epoch: 1,
        keys: old_keys.clone(),
        transcript: [1; 32],
        holders: old_holders.clone(),
    };
    let next = SimEpoch {
        epoch: 2,
        keys: new_keys.clone(),
        transcript: [2; 32],
        holders: (1..=s.to.0).collect(),
    };
    let manager = HManager {
        recorded: Some(first.clone()),
        serving: Some(first),
        next,
        participants: all.clone(),
        nodes: all.clone(),
        breakers: Breakers::new(old_holders.iter().filter_map(|a| NodeIndex::new(*a))),
        open: BTreeMap::new(),
        ceremony: None,
        statuses: BTreeMap::new(),
        records: Vec::new(),
        ciphertext,
        plaintext,
        reshare_at: s.reshare_at,
        interval: s.interval,
        stop_at: s.stop_at,
        node_timeout: 200 * MS,
        broken: s.broken,
    };
    actors.insert(MANAGER, HActor::Manager(Box::new(manager)));
    let net = NetConfig {
        loss: 0.0,
        ..NetConfig::default()
    };
    let done = Simulator::new(actors, net, &s.crashes, rng).finish(s.horizon);
    let mut run = HandoverRun {
        records: Vec::new(),
        nodes: Vec::new(),
        serving: None,
        recorded: None,
        new_epoch: 2,
        new_committee: (1..=s.to.0).collect(),
        same_key: false,
    };
    for (a, actor) in done.actors {
        match actor {
            HActor::Manager(m) => {
                run.records = m.records;
                run.serving = m.serving.as_ref().map(|e| e.epoch);
                run.recorded = m.recorded.as_ref().map(|e| e.epoch);
                run.same_key = m
                    .serving
                    .as_ref()
                    .is_some_and(|e| e.keys.public_key_encoded() == old_keys.public_key_encoded());
            }
            HActor::Node(n) => run.nodes.push((a, n.held_epochs(), n.committed())),
        }
    }
    Ok(run)
}

/// **No request lost to an epoch switch.** Every request the manager answered was served, and
/// at the end every node agrees: members of the new committee hold its share and nothing
/// older, the others (and members that missed the reshare) hold nothing; the manager serves
/// and recorded the epoch all nodes were told is committed; the public key never changed.
pub fn handover_invariant(run: &HandoverRun) -> Result<(), String> {
    if let Some((k, r)) = run
        .records
        .iter()
        .enumerate()
        .find(|(_, r)| !r.interrupted && !r.served)
    {
        return Err(format!(
            "request {k} (epoch {}, issued at {} ms) failed",
            r.epoch,
            r.issued / MS
        ));
    }
    let Some(serving) = run.serving else {
        return Err("the manager serves nothing".into());
    };
    if run.recorded != Some(serving) {
        return Err(format!(
            "the manager serves epoch {serving} but recorded {:?}",
            run.recorded
        ));
    }
    if !run.same_key {
        return Err("the public key changed".into());
    }
    for (node, held, committed) in &run.nodes {
        if *committed != serving {
            return Err(format!(
                "node {node} was told epoch {committed} is committed; the manager serves {serving}"
            ));
        }
        if held.iter().any(|e| *e != serving) {
            return Err(format!(
                "node {node} still holds epochs {held:?} besides the committed {serving}"
            ));
        }
    }
    Ok(())
}
