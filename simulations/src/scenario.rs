//! Ready-made runs: a DKG, a reshare after a DKG, delegations after a DKG. Faults (byzantine
//! behaviours, crashes, partitions) apply to the phase under study; setup phases run on the
//! same network without faults. Every random choice comes from one `ChaCha20Rng` seeded with
//! [`Scenario::seed`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tkms_crypto::{
    dkg::{CeremonyConfig, CeremonyOutput},
    ecies, Error, KeyShare, NodeIndex, PublicKeySet, SecretScalar,
};

use crate::cpu::CpuModel;
use crate::delegation::{
    DelegationActor, Manager, ManagerMode, NodeFault, PlannedRequest, RequestRecord, ShareNode,
    MANAGER,
};
use crate::dkg_node::{DkgBehaviour, DkgNode, DkgTimeouts, NodeEnv, Rounds};
use crate::sim::{Addr, Crash, NetConfig, NetStats, Simulator, Time, MS, SECOND};
use tkms_crypto::ClusterSuite as S;

/// Deliberately broken variants of the system, each there to show that the invariant meant to
/// catch it does (a check that cannot fail proves nothing). Never the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// BROKEN: this node is handed a ceremony configuration with threshold `t + 1` (a
    /// configuration-distribution bug); everyone else runs the real one. Caught by DKG
    /// agreement: the honest nodes do not all end the same way.
    DivergentConfig(u16),
    /// BROKEN: the DKG runs with threshold `t - 1` while the cluster is meant to need `t`.
    /// Caught by the secrecy threshold: `t - 1` shares reconstruct the key.
    ThresholdTooLow,
    /// BROKEN: the "reshare" runs a fresh DKG among the new committee. Caught by "reshare
    /// keeps the key".
    FreshDkgAsReshare,
}

/// Everything that defines a run.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The seed of the run's only RNG.
    pub seed: u64,
    /// Committee size.
    pub n: u16,
    /// Threshold.
    pub t: u16,
    /// Network model.
    pub net: NetConfig,
    /// Crash/restart schedule (phase under study).
    pub crashes: Vec<Crash>,
    /// Byzantine DKG/reshare participants by index.
    pub dkg_faults: BTreeMap<u16, DkgBehaviour>,
    /// Byzantine or silent share holders during delegation, by index.
    pub node_faults: BTreeMap<u16, NodeFault>,
    /// DKG round timeouts.
    pub timeouts: DkgTimeouts,
    /// CPU cost of each protocol step.
    pub cpu: CpuModel,
    /// How ceremony rounds end (tkms: event-driven).
    pub rounds: Rounds,
    /// Manager behaviour.
    pub manager: ManagerMode,
    /// Delegation requests to issue.
    pub requests: u32,
    /// Spacing between requests.
    pub request_interval: Time,
    /// Per-request deadline.
    pub request_deadline: Time,
    /// Per-node call timeout (default: 90 % of the deadline: the manager's node timeout is
    /// its deadline, less the time to verify and combine).
    pub node_timeout: Option<Time>,
    /// Reshare target committee size and threshold (defaults: `n`, `t`).
    pub reshare_to: Option<(u16, u16)>,
    /// Virtual time limit of each phase.
    pub horizon: Time,
    /// A deliberately broken variant (tests of the invariants only).
    pub broken: Option<Broken>,
}

impl Scenario {
    /// Defaults: `t = floor(2n/3) + 1`, 20–50 ms links, 2 s round timeouts, one relay request
    /// per dealer ([`DkgTimeouts::for_committee`]), calibrated CPU costs, 10 requests.
    pub fn new(seed: u64, n: u16) -> Self {
        Self {
            seed,
            n,
            t: default_threshold(n),
            net: NetConfig::default(),
            crashes: Vec::new(),
            dkg_faults: BTreeMap::new(),
            node_faults: BTreeMap::new(),
            timeouts: DkgTimeouts::for_committee(n),
            cpu: CpuModel::CALIBRATED,
            rounds: Rounds::EventDriven,
            manager: ManagerMode::Verify,
            requests: 10,
            request_interval: 10 * MS,
            request_deadline: SECOND,
            node_timeout: None,
            reshare_to: None,
            horizon: 600 * SECOND,
            broken: None,
        }
    }

    /// Set the threshold.
    #[must_use]
    pub fn threshold(mut self, t: u16) -> Self {
        self.t = t;
        self
    }

    /// Make `node` a byzantine DKG participant.
    #[must_use]
    pub fn dkg_fault(mut self, node: u16, b: DkgBehaviour) -> Self {
        self.dkg_faults.insert(node, b);
        self
    }

    /// Make `node` a faulty share holder.
    #[must_use]
    pub fn node_fault(mut self, node: u16, f: NodeFault) -> Self {
        self.node_faults.insert(node, f);
        self
    }

    /// Add a crash.
    #[must_use]
    pub fn crash(mut self, node: u16, at: Time, restart: Option<Time>) -> Self {
        self.crashes.push(Crash { node, at, restart });
        self
    }
}

/// `floor(2n/3) + 1`, the threshold the sweeps use.
pub fn default_threshold(n: u16) -> u16 {
    // 2n/3 + 1 <= n for n >= 3, and min(.., n) caps it otherwise: it always fits in a u16.
    u16::try_from((2 * u32::from(n) / 3 + 1).min(u32::from(n))).unwrap_or(n)
}

fn idx(i: u16) -> NodeIndex {
    NodeIndex::new(i).expect("node indices start at 1")
}

/// A node's end state in a ceremony.
#[derive(Debug)]
pub struct NodeOutcome {
    /// What it was told to do.
    pub behaviour: DkgBehaviour,
    /// Its result (`None`: never finished).
    pub result: Option<Result<CeremonyOutput<S>, Error>>,
    /// When it finished.
    pub done_at: Option<Time>,
    /// The attempt it ended in.
    pub attempt: u32,
    /// Down at the end of the run.
    pub down: bool,
}

impl NodeOutcome {
    /// Honest and up at the end: the nodes the invariants speak about.
    pub fn is_correct(&self) -> bool {
        self.behaviour == DkgBehaviour::Honest && !self.down
    }
}

/// The result of one ceremony in the simulator.
#[derive(Debug)]
pub struct CeremonyRun {
    /// The configuration of attempt 0.
    pub config: CeremonyConfig<S>,
    /// Outcome per participant.
    pub nodes: BTreeMap<NodeIndex, NodeOutcome>,
    /// Traffic.
    pub stats: NetStats,
    /// Time of the last event.
    pub end: Time,
    /// Trace hash.
    pub trace: u64,
    /// Messages dropped for missing their phase's deadline ([`Rounds::FixedPhases`]).
    pub late: u64,
    /// CPU time of the busiest node, µs.
    pub max_cpu: Time,
    /// The threshold the cluster is meant to have (the scenario's), which the secrecy
    /// invariant holds the result to.
    pub intended_threshold: u16,
}

impl CeremonyRun {
    /// Latest finish time over correct nodes.
    pub fn completion(&self) -> Option<Time> {
        self.nodes
            .values()
            .filter(|o| o.is_correct())
            .map(|o| o.done_at)
            .try_fold(0, |acc, d| d.map(|d| acc.max(d)))
    }

    /// The key all correct nodes agreed on (the first correct node's), if it succeeded.
    pub fn public(&self) -> Option<&PublicKeySet<S>> {
        self.nodes
            .values()
            .filter(|o| o.is_correct())
            .find_map(|o| o.result.as_ref()?.as_ref().ok())
            .map(CeremonyOutput::public)
    }

    /// Shares of correct nodes that succeeded.
    pub fn shares(&self) -> Vec<KeyShare<S>> {
        self.nodes
            .values()
            .filter(|o| o.is_correct())
            .filter_map(|o| o.result.as_ref()?.as_ref().ok()?.share().cloned())
            .collect()
    }

    fn max_attempt(&self) -> u32 {
        self.nodes.values().map(|o| o.attempt).max().unwrap_or(0)
    }
}

/// Per-node configurations that differ from the ceremony's (the `DivergentConfig` bug).
type Overrides = BTreeMap<NodeIndex, CeremonyConfig<S>>;

#[allow(clippy::too_many_arguments)]
fn run_ceremony(
    scenario: &Scenario,
    (config, intended_threshold, overrides): (&CeremonyConfig<S>, u16, &Overrides),
    keys: &BTreeMap<NodeIndex, SecretScalar<S>>,
    shares: &BTreeMap<NodeIndex, KeyShare<S>>,
    faults: &BTreeMap<u16, DkgBehaviour>,
    crashes: &[Crash],
    net: NetConfig,
    rng: ChaCha20Rng,
) -> (CeremonyRun, ChaCha20Rng) {
    let members: Vec<NodeIndex> = config
        .dealers()
        .keys()
        .chain(config.recipients().keys())
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut actors = BTreeMap::new();
    for i in members {
        let Some(key) = keys.get(&i) else { continue };
        let behaviour = faults
            .get(&i.get())
            .copied()
            .unwrap_or(DkgBehaviour::Honest);
        actors.insert(
            i.get(),
            DkgNode::new(
                i,
                key.clone(),
                shares.get(&i).cloned(),
                behaviour,
                NodeEnv {
                    timeouts: scenario.timeouts,
                    cpu: scenario.cpu,
                    rounds: scenario.rounds,
                },
                overrides.get(&i).unwrap_or(config).clone(),
            ),
        );
    }
    let done = Simulator::new(actors, net, crashes, rng).finish(scenario.horizon);
    let mut late = 0;
    let nodes = done
        .actors
        .into_iter()
        .map(|(a, mut node)| {
            late += node.late();
            let outcome = NodeOutcome {
                behaviour: node.behaviour(),
                result: node.take_result(),
                done_at: node.done_at(),
                attempt: node.attempt(),
                down: done.down.contains(&a),
            };
            (node.index(), outcome)
        })
        .collect();
    let run = CeremonyRun {
        config: config.clone(),
        nodes,
        stats: done.stats,
        end: done.end,
        trace: done.trace,
        late,
        max_cpu: done.cpu.values().copied().max().unwrap_or(0),
        intended_threshold,
    };
    (run, done.rng)
}

fn node_keys(count: u16, rng: &mut ChaCha20Rng) -> BTreeMap<NodeIndex, SecretScalar<S>> {
    (1..=count)
        .map(|i| (idx(i), SecretScalar::random(rng)))
        .collect()
}

fn committee(
    keys: &BTreeMap<NodeIndex, SecretScalar<S>>,
    range: impl Fn(u16) -> bool,
) -> BTreeMap<NodeIndex, <S as tkms_crypto::Suite>::Point> {
    keys.iter()
        .filter(|(i, _)| range(i.get()))
        .map(|(i, k)| (*i, k.public_point()))
        .collect()
}

/// A DKG among `n` nodes, with the scenario's faults.
pub fn run_dkg(scenario: &Scenario) -> Result<CeremonyRun, Error> {
    let mut rng = ChaCha20Rng::seed_from_u64(scenario.seed);
    let keys = node_keys(scenario.n, &mut rng);
    let members = committee(&keys, |_| true);
    let t = match scenario.broken {
        Some(Broken::ThresholdTooLow) => scenario.t.saturating_sub(1).max(1),
        _ => scenario.t,
    };
    let config = CeremonyConfig::dkg(1, t, members.clone())?;
    let mut overrides = Overrides::new();
    if let Some(Broken::DivergentConfig(node)) = scenario.broken {
        let other = CeremonyConfig::dkg(1, (t + 1).min(scenario.n), members)?;
        overrides.insert(idx(node), other);
    }
    let (run, _) = run_ceremony(
        scenario,
        (&config, scenario.t, &overrides),
        &keys,
        &BTreeMap::new(),
        &scenario.dkg_faults,
        &scenario.crashes,
        scenario.net.clone(),
        rng,
    );
    Ok(run)
}

/// A setup's outputs: the DKG run, every node key, and the RNG to continue with.
type Setup = (
    CeremonyRun,
    BTreeMap<NodeIndex, SecretScalar<S>>,
    ChaCha20Rng,
);

/// A fault-free DKG (setup: no byzantine nodes, crashes or partitions; the same links, loss
/// and CPU model), then the studied phase continues the same RNG stream.
fn setup(scenario: &Scenario, committee_size: u16) -> Result<Setup, Error> {
    let mut rng = ChaCha20Rng::seed_from_u64(scenario.seed);
    let keys = node_keys(committee_size.max(scenario.n), &mut rng);
    let n = scenario.n;
    let config = CeremonyConfig::dkg(1, scenario.t, committee(&keys, |i| i <= n))?;
    let (run, rng) = run_ceremony(
        scenario,
        (&config, scenario.t, &Overrides::new()),
        &keys,
        &BTreeMap::new(),
        &BTreeMap::new(),
        &[],
        NetConfig {
            partitions: Vec::new(),
            ..scenario.net.clone()
        },
        rng,
    );
    Ok((run, keys, rng))
}

/// The result of a reshare scenario.
#[derive(Debug)]
pub struct ReshareRun {
    /// The DKG that made the key.
    pub dkg: CeremonyRun,
    /// The reshare under study.
    pub reshare: CeremonyRun,
}

/// A DKG, then a reshare from every old node to `reshare_to` (default: same committee, a
/// proactive refresh), with the scenario's faults applied to the reshare.
pub fn run_reshare(scenario: &Scenario) -> Result<ReshareRun, Error> {
    let (new_n, new_t) = scenario.reshare_to.unwrap_or((scenario.n, scenario.t));
    let (dkg, keys, rng) = setup(scenario, new_n)?;
    let previous = dkg.public().cloned().ok_or(Error::NotEnoughConfirmations {
        got: 0,
        required: usize::from(scenario.t),
    })?;
    let shares: BTreeMap<NodeIndex, KeyShare<S>> =
        dkg.shares().into_iter().map(|s| (s.index(), s)).collect();
    let dealers = committee(&keys, |i| shares.contains_key(&idx(i)));
    let recipients = committee(&keys, |i| i <= new_n);
    let config = if scenario.broken == Some(Broken::FreshDkgAsReshare) {
        CeremonyConfig::dkg(2, new_t, recipients)?
    } else {
        CeremonyConfig::reshare(2, new_t, previous, dealers, recipients)?
    };
    let (reshare, _) = run_ceremony(
        scenario,
        (&config, new_t, &Overrides::new()),
        &keys,
        &shares,
        &scenario.dkg_faults,
        &scenario.crashes,
        scenario.net.clone(),
        rng,
    );
    Ok(ReshareRun { dkg, reshare })
}

/// The result of a delegation scenario.
#[derive(Debug)]
pub struct DelegationRun {
    /// The key set the manager used.
    pub keys: PublicKeySet<S>,
    /// Every request, with its plaintext oracle.
    pub requests: Vec<(PlannedRequest, RequestRecord)>,
    /// Honest share holders that were up and reachable from the manager the whole run.
    pub reachable_honest: usize,
    /// Per planned request (in order): honest share holders up and reachable from the
    /// manager from its issue to its deadline.
    pub available: Vec<usize>,
    /// Per-request deadline.
    pub deadline: Time,
    /// Traffic of the delegation phase.
    pub stats: NetStats,
    /// Time of the last event.
    pub end: Time,
    /// Trace hash.
    pub trace: u64,
}

/// The fault-free DKG a delegation scenario starts from: it depends only on the seed, `n`,
/// `t`, the network (without partitions), the timeouts and the CPU model, so one setup serves
/// every fault pattern of a sweep point.
pub struct DelegationSetup {
    keys: PublicKeySet<S>,
    shares: Vec<KeyShare<S>>,
    rng: ChaCha20Rng,
}

impl DelegationSetup {
    /// Run the setup DKG of `scenario`.
    pub fn new(scenario: &Scenario) -> Result<Self, Error> {
        let mut setup_scenario = scenario.clone();
        setup_scenario.net.partitions.clear();
        let (dkg, _, rng) = setup(&setup_scenario, scenario.n)?;
        let keys = dkg.public().cloned().ok_or(Error::NotEnoughConfirmations {
            got: 0,
            required: usize::from(scenario.t),
        })?;
        Ok(Self {
            keys,
            shares: dkg.shares(),
            rng,
        })
    }
}

/// A DKG, then `requests` delegations through the manager, with the scenario's node faults,
/// crashes and partitions applied to the delegation phase.
pub fn run_delegation(scenario: &Scenario) -> Result<DelegationRun, Error> {
    run_delegation_from(scenario, &DelegationSetup::new(scenario)?)
}

/// The delegation phase of `scenario` from `setup` (which must be
/// `DelegationSetup::new(scenario)`, or of a scenario differing only in faults).
pub fn run_delegation_from(
    scenario: &Scenario,
    setup: &DelegationSetup,
) -> Result<DelegationRun, Error> {
    let keys = setup.keys.clone();
    let mut rng = setup.rng.clone();
    let epoch = 1;
    let mut plan = Vec::new();
    for r in 0..scenario.requests {
        let plaintext = format!("message {r} of seed {}", scenario.seed).into_bytes();
        let ciphertext = ecies::encrypt::<S>(&keys.public_key(), &plaintext, &mut rng)?;
        plan.push(PlannedRequest {
            at: Time::from(r) * scenario.request_interval,
            ciphertext,
            plaintext,
        });
    }
    let mut actors = BTreeMap::new();
    let mut nodes = Vec::new();
    for share in setup.shares.iter().cloned() {
        let a = share.index().get();
        let fault = scenario
            .node_faults
            .get(&a)
            .copied()
            .unwrap_or(NodeFault::Honest);
        nodes.push(a);
        actors.insert(
            a,
            DelegationActor::Node(Box::new(ShareNode::new(share, fault, scenario.cpu))),
        );
    }
    let (reachable_honest, available) = availability(scenario, &nodes, &plan);
    let manager = Manager::new(
        keys.clone(),
        epoch,
        nodes,
        scenario.manager,
        scenario.request_deadline,
        plan,
    )
    .with_cpu(scenario.cpu)
    .with_node_timeout(
        scenario
            .node_timeout
            .unwrap_or(scenario.request_deadline - scenario.request_deadline / 10),
    );
    actors.insert(MANAGER, DelegationActor::Manager(Box::new(manager)));
    let done = Simulator::new(actors, scenario.net.clone(), &scenario.crashes, rng)
        .finish(scenario.horizon);
    let mut requests = Vec::new();
    if let Some(DelegationActor::Manager(m)) = done.actors.get(&MANAGER) {
        for (id, p) in m.plan().iter().enumerate() {
            let id = u32::try_from(id).unwrap_or(u32::MAX);
            if let Some(r) = m.records().get(&id) {
                requests.push((p.clone(), r.clone()));
            }
        }
    }
    Ok(DelegationRun {
        keys,
        requests,
        reachable_honest,
        available,
        deadline: scenario.request_deadline,
        stats: done.stats,
        end: done.end,
        trace: done.trace,
    })
}

/// Honest share holders up and reachable from the manager for the whole run, and for each
/// planned request from its issue to its deadline.
fn availability(
    scenario: &Scenario,
    nodes: &[Addr],
    plan: &[PlannedRequest],
) -> (usize, Vec<usize>) {
    let honest = |a: &Addr| {
        scenario
            .node_faults
            .get(a)
            .is_none_or(|f| *f == NodeFault::Honest)
    };
    let cut_off = |a: Addr, from: Time, to: Time| {
        scenario
            .crashes
            .iter()
            .any(|c| c.node == a && c.at < to && c.restart.is_none_or(|r| r > from))
            || scenario.net.partitions.iter().any(|p| {
                p.start < to
                    && p.end > from
                    && (p.links.contains(&(MANAGER, a)) || p.links.contains(&(a, MANAGER)))
            })
    };
    let reachable_honest = nodes
        .iter()
        .filter(|a| honest(a) && !cut_off(**a, 0, Time::MAX))
        .count();
    let available = plan
        .iter()
        .map(|p| {
            let (from, to) = (p.at, p.at + scenario.request_deadline);
            nodes
                .iter()
                .filter(|a| honest(a) && !cut_off(**a, from, to))
                .count()
        })
        .collect();
    (reachable_honest, available)
}

/// One CSV row of per-run metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunMetrics {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Committee size.
    pub n: u16,
    /// Threshold.
    pub t: u16,
    /// Did the phase succeed (all correct nodes finished with a key / all requests served)?
    pub success: bool,
    /// Virtual completion time of the phase, µs (last correct node done / last request).
    pub completion_us: u64,
    /// Mean request latency, µs (delegation only).
    pub mean_latency_us: u64,
    /// Max request latency, µs (delegation only).
    pub max_latency_us: u64,
    /// Requests served (delegation only).
    pub served: u64,
    /// Requests failed (delegation only).
    pub failed: u64,
    /// Ceremony attempts used (1 = no restart).
    pub attempts: u32,
    /// Messages sent.
    pub messages: u64,
    /// Messages dropped.
    pub dropped: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Result of the scenario's invariant ("ok" or the violation).
    pub invariant: String,
}

impl RunMetrics {
    /// The CSV header.
    pub const HEADER: &'static str = "scenario,seed,n,t,success,completion_us,mean_latency_us,max_latency_us,served,failed,attempts,messages,dropped,bytes,invariant";

    /// One CSV line (no newline).
    pub fn csv_row(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},\"{}\"",
            self.scenario,
            self.seed,
            self.n,
            self.t,
            self.success,
            self.completion_us,
            self.mean_latency_us,
            self.max_latency_us,
            self.served,
            self.failed,
            self.attempts,
            self.messages,
            self.dropped,
            self.bytes,
            self.invariant.replace('"', "'"),
        );
        s
    }

    /// The one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "{} seed={} n={} t={} success={} completion={:.3}s attempts={} served={} failed={} \
             mean_latency={:.1}ms messages={} dropped={} bytes={} invariant={}",
            self.scenario,
            self.seed,
            self.n,
            self.t,
            self.success,
            self.completion_us as f64 / 1e6,
            self.attempts,
            self.served,
            self.failed,
            self.mean_latency_us as f64 / 1e3,
            self.messages,
            self.dropped,
            self.bytes,
            self.invariant,
        )
    }

    fn from_ceremony(name: &str, s: &Scenario, run: &CeremonyRun, t: u16) -> Self {
        let success = run
            .nodes
            .values()
            .filter(|o| o.is_correct())
            .all(|o| matches!(o.result, Some(Ok(_))));
        Self {
            scenario: name.to_owned(),
            seed: s.seed,
            n: u16::try_from(run.config.recipients().len()).unwrap_or(u16::MAX),
            t,
            success,
            completion_us: run.completion().unwrap_or(run.end),
            attempts: run.max_attempt() + 1,
            messages: run.stats.sent,
            dropped: run.stats.dropped,
            bytes: run.stats.bytes,
            ..Self::default()
        }
    }

    /// Metrics of a DKG run.
    pub fn dkg(s: &Scenario, run: &CeremonyRun) -> Self {
        Self::from_ceremony("dkg", s, run, s.t)
    }

    /// Metrics of a reshare run (the reshare phase).
    pub fn reshare(s: &Scenario, run: &ReshareRun) -> Self {
        Self::from_ceremony("reshare", s, &run.reshare, run.reshare.config.threshold())
    }

    /// Metrics of a delegation run (the delegation phase).
    pub fn delegation(s: &Scenario, run: &DelegationRun) -> Self {
        let served: Vec<&RequestRecord> = run
            .requests
            .iter()
            .map(|(_, r)| r)
            .filter(|r| r.served())
            .collect();
        let latencies: Vec<u64> = served
            .iter()
            .filter_map(|r| Some(r.finished? - r.issued))
            .collect();
        let mean = if latencies.is_empty() {
            0
        } else {
            latencies.iter().sum::<u64>() / latencies.len() as u64
        };
        Self {
            scenario: "delegation".to_owned(),
            seed: s.seed,
            n: s.n,
            t: s.t,
            success: served.len() == run.requests.len(),
            completion_us: run
                .requests
                .iter()
                .filter_map(|(_, r)| r.finished)
                .max()
                .unwrap_or(0),
            mean_latency_us: mean,
            max_latency_us: latencies.iter().copied().max().unwrap_or(0),
            served: served.len() as u64,
            failed: (run.requests.len() - served.len()) as u64,
            attempts: 1,
            messages: run.stats.sent,
            dropped: run.stats.dropped,
            bytes: run.stats.bytes,
            invariant: String::new(),
        }
    }
}

/// Addresses `1..=n`.
pub fn node_addrs(n: u16) -> Vec<Addr> {
    (1..=n).collect()
}

/// A seeded schedule of node crashes and restarts over `[0, until)`: each node of `nodes` in
/// turn may go down for `down` (a range of µs), never more than `max_down` at once.
pub fn random_churn(
    seed: u64,
    nodes: &[Addr],
    until: Time,
    max_down: usize,
    down: std::ops::Range<Time>,
) -> Vec<Crash> {
    use rand::Rng;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut crashes: Vec<Crash> = Vec::new();
    let mut now = 0;
    while now < until {
        now += rng.gen_range(down.start / 2..down.end);
        let node = nodes[rng.gen_range(0..nodes.len())];
        let overlapping = |c: &Crash| c.at <= now && c.restart.is_none_or(|r| r > now);
        if crashes.iter().filter(|c| overlapping(c)).count() >= max_down
            || crashes.iter().any(|c| c.node == node && overlapping(c))
        {
            continue;
        }
        let restart = now + rng.gen_range(down.clone());
        // Keep the bound over the whole downtime: no later crash may overlap too many.
        let busy = crashes
            .iter()
            .filter(|c| c.at < restart && c.restart.is_none_or(|r| r > now))
            .count();
        if busy < max_down {
            crashes.push(Crash {
                node,
                at: now,
                restart: Some(restart),
            });
        }
    }
    crashes
}
