//! The simulator's DKG/reshare participant: the node's own sans-IO state machine,
//! [`tkms_crypto::ceremony::Participant`], run as a simulator [`Actor`] on virtual time. The
//! real node drives the same type over libp2p with wall-clock timers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use tkms_crypto::{
    ceremony::{Action, Body, Message, Participant, Timeouts, Timer},
    dkg::{CeremonyConfig, CeremonyOutput},
    ClusterSuite as S, Error, KeyShare, NodeIndex, SecretScalar,
};

use crate::cpu::CpuModel;
use crate::sim::{self, Actor, Addr, Outbox, Time, MS, SECOND};

/// How a participant misbehaves.
pub use tkms_crypto::ceremony::Behaviour as DkgBehaviour;

/// Timeouts and retry limits, in virtual time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DkgTimeouts {
    /// How long each round waits for missing messages.
    pub round: Time,
    /// How long to wait for a relayed dealing before retrying.
    pub relay: Time,
    /// Relay requests per attempt before giving up.
    pub max_relays: u32,
    /// Ceremony attempts (restarts after a transcript mismatch) before giving up.
    pub max_attempts: u32,
}

impl Default for DkgTimeouts {
    fn default() -> Self {
        Self {
            round: 2 * SECOND,
            relay: 500 * MS,
            max_relays: 4,
            max_attempts: 3,
        }
    }
}

impl DkgTimeouts {
    /// The defaults for a committee of `n`, with one relay request allowed per dealer: the
    /// ceremony asks for one missing dealing per relay request, so a node that missed round 1
    /// (a partition, a late start) needs up to `n - 1` of them, more than the ceremony's
    /// default of 4. (With 4, such a node ends with `MissingDealing` while the others succeed:
    /// `tkms-simulations dkg --seed 27 --n 16 --partition 3@0-1000 --max-relays 4`.)
    pub fn for_committee(n: u16) -> Self {
        Self {
            max_relays: u32::from(n).max(Self::default().max_relays),
            ..Self::default()
        }
    }
}

impl From<DkgTimeouts> for Timeouts {
    fn from(t: DkgTimeouts) -> Self {
        Self {
            round: Duration::from_micros(t.round),
            relay: Duration::from_micros(t.relay),
            max_relays: t.max_relays,
            max_attempts: t.max_attempts,
        }
    }
}

/// A ceremony message with its real wire size.
#[derive(Clone, Debug)]
pub struct DkgMsg {
    msg: Message<S>,
    size: usize,
}

impl sim::Message for DkgMsg {
    fn wire_size(&self) -> usize {
        self.size
    }

    fn kind(&self) -> &'static str {
        self.msg.kind()
    }
}

/// How rounds end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounds {
    /// tkms: a round ends as soon as every expected message is in; its timeout only bounds
    /// the wait for silent peers (the [`Participant`] as the node runs it).
    EventDriven,
    /// For comparison (drand's DKG before its fix): phase `k` of attempt `a` ends at the fixed
    /// time `(3a + k)·round` after the start, whatever has arrived. The node takes in a phase's
    /// dealings, responses or confirmations only when the phase ends (held until then), and
    /// drops those that reach it after that, so a phase whose work does not fit in `round`
    /// loses its messages.
    FixedPhases,
}

/// What every participant of a run shares: timeouts, the CPU cost model, the round rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NodeEnv {
    /// Round timeouts.
    pub timeouts: DkgTimeouts,
    /// CPU cost of each step.
    pub cpu: CpuModel,
    /// How rounds end.
    pub rounds: Rounds,
}

impl Default for NodeEnv {
    fn default() -> Self {
        Self {
            timeouts: DkgTimeouts::default(),
            cpu: CpuModel::CALIBRATED,
            rounds: Rounds::EventDriven,
        }
    }
}

/// What this node has seen in one attempt (the sizes the cost model needs).
#[derive(Clone, Debug, Default)]
struct Seen {
    dealers: BTreeSet<NodeIndex>,
    responses: BTreeSet<NodeIndex>,
    confirmations: BTreeSet<NodeIndex>,
    responded: bool,
    finalized: bool,
}

/// One participant of a DKG or reshare ceremony.
#[derive(Debug)]
pub struct DkgNode {
    inner: Participant<S>,
    actions: Vec<Action<S>>,
    env: NodeEnv,
    seen: BTreeMap<u32, Seen>,
    finished_at: Option<Time>,
    late: u64,
    /// [`Rounds::FixedPhases`]: messages held until their phase ends, by deadline.
    held: BTreeMap<Time, Vec<(NodeIndex, Message<S>)>>,
    /// The participant's armed timers, by the simulator timer id each was armed under.
    timers: BTreeMap<u64, Timer>,
    /// The simulator timer id the participant's next timer is armed under.
    next_timer: u64,
}

/// Flag of the simulator timer ids of phase ends (the participant's timers are numbered
/// from 0 below it).
const PHASE_END: u64 = 1 << 63;

fn micros(d: Duration) -> Time {
    Time::try_from(d.as_micros()).unwrap_or(Time::MAX)
}

impl DkgNode {
    /// A participant `me` with node key `key` in `config`; `share` is its current share for a
    /// reshare dealer.
    pub fn new(
        me: NodeIndex,
        key: SecretScalar<S>,
        share: Option<KeyShare<S>>,
        behaviour: DkgBehaviour,
        env: NodeEnv,
        config: CeremonyConfig<S>,
    ) -> Self {
        Self {
            inner: Participant::new(me, key, share, env.timeouts.into(), config)
                .with_behaviour(behaviour),
            actions: Vec::new(),
            env,
            seen: BTreeMap::new(),
            finished_at: None,
            late: 0,
            held: BTreeMap::new(),
            timers: BTreeMap::new(),
            next_timer: 0,
        }
    }

    /// The outcome, once finished.
    pub fn result(&self) -> Option<&Result<CeremonyOutput<S>, Error>> {
        self.inner.result()
    }

    /// Take the outcome out.
    pub fn take_result(&mut self) -> Option<Result<CeremonyOutput<S>, Error>> {
        self.inner.take_result()
    }

    /// When it finished (virtual time, including the CPU time of its last step).
    pub fn done_at(&self) -> Option<Time> {
        self.finished_at
    }

    /// The attempt in progress or finished.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt()
    }

    /// Its behaviour.
    pub fn behaviour(&self) -> DkgBehaviour {
        self.inner.behaviour()
    }

    /// The node index.
    pub fn index(&self) -> NodeIndex {
        self.inner.index()
    }

    /// Messages dropped because they missed their phase's deadline ([`Rounds::FixedPhases`]).
    pub fn late(&self) -> u64 {
        self.late
    }

    fn sizes(&self) -> (usize, usize) {
        let config = self.inner.config();
        (config.recipients().len(), usize::from(config.threshold()))
    }

    /// Under [`Rounds::FixedPhases`], the end of the phase `msg` belongs to.
    fn phase_end(&self, msg: &Message<S>) -> Option<Time> {
        if self.env.rounds != Rounds::FixedPhases {
            return None;
        }
        let phase = match msg.body {
            Body::Dealing(_) | Body::Relay(_) => 1,
            Body::Response(_) => 2,
            Body::Confirmation(_) => 3,
            Body::RelayRequest(_) | Body::SyncRequest => return None,
        };
        Some((3 * u64::from(msg.attempt) + phase) * self.env.timeouts.round)
    }

    /// Hand one message to the participant; returns the CPU time of what it did.
    fn deliver(
        &mut self,
        now: Time,
        from: NodeIndex,
        msg: Message<S>,
        rng: &mut ChaCha20Rng,
    ) -> Time {
        let mut cost = self.observe(from, &msg);
        let (attempt, done) = (self.inner.attempt(), self.inner.is_done());
        self.inner.on_message(
            Duration::from_micros(now),
            from,
            msg,
            rng,
            &mut self.actions,
        );
        cost += self.work(now, false, attempt, done);
        cost
    }

    /// Note what a message tells the cost model, and the CPU time of taking in a dealing that
    /// arrives after this node already responded (validate, decrypt, check: one dealing of
    /// round 2).
    fn observe(&mut self, from: NodeIndex, msg: &Message<S>) -> Time {
        if msg.attempt < self.inner.attempt() {
            return 0;
        }
        let (n, t) = self.sizes();
        let seen = self.seen.entry(msg.attempt).or_default();
        match &msg.body {
            Body::Dealing(d) | Body::Relay(d)
                if seen.dealers.insert(d.dealer()) && seen.responded =>
            {
                return self.env.cpu.respond(1, n, t);
            }
            Body::Response(r) if r.recipient() == from => {
                seen.responses.insert(from);
            }
            Body::Confirmation(c) if c.node() == from => {
                seen.confirmations.insert(from);
            }
            _ => {}
        }
        0
    }

    /// The CPU time of the round functions the last handler ran, read off what it emitted:
    /// a new attempt deals; the first own response of an attempt is round 2; the first own
    /// confirmation, or a relay request, is round 3; finishing after round 3 is round 4
    /// (finishing before it is a failed round 3).
    fn work(&mut self, now: Time, started: bool, attempt_before: u32, done_before: bool) -> Time {
        let (n, t) = self.sizes();
        let cpu = self.env.cpu;
        let me = self.inner.index();
        let attempt = self.inner.attempt();
        let mut cost = 0;
        if attempt != attempt_before {
            // Round 4 of the previous attempt found a mismatch and restarted.
            let confirmations = self
                .seen
                .get(&attempt_before)
                .map_or(0, |s| s.confirmations.len());
            cost += cpu.confirm(confirmations);
        }
        let deals = (started || attempt != attempt_before)
            && self.inner.config().dealers().contains_key(&me)
            && self.inner.behaviour() != DkgBehaviour::Silent;
        if deals {
            let times = if self.inner.behaviour() == DkgBehaviour::Equivocate {
                2
            } else {
                1
            };
            cost += times * cpu.deal(n, t);
            self.seen.entry(attempt).or_default().dealers.insert(me);
        }
        let mut relayed = false;
        for action in &self.actions {
            let Action::Send { msg, .. } = action else {
                continue;
            };
            let seen = self.seen.entry(msg.attempt).or_default();
            match &msg.body {
                Body::Response(r) if r.recipient() == me && !seen.responded => {
                    seen.responded = true;
                    seen.responses.insert(me);
                    cost += cpu.respond(seen.dealers.len(), n, t);
                }
                Body::Confirmation(c) if c.node() == me && !seen.finalized => {
                    seen.finalized = true;
                    seen.confirmations.insert(me);
                    cost += cpu.finalize(seen.dealers.len(), seen.responses.len(), n, t);
                }
                Body::RelayRequest(_) if !relayed => {
                    relayed = true;
                    cost += cpu.finalize(seen.dealers.len(), seen.responses.len(), n, t);
                }
                _ => {}
            }
        }
        if self.inner.is_done() && !done_before {
            let seen = self.seen.entry(attempt).or_default();
            cost += if seen.finalized {
                cpu.confirm(seen.confirmations.len())
            } else {
                cpu.finalize(seen.dealers.len(), seen.responses.len(), n, t)
            };
            self.finished_at = Some(now + cost);
        }
        cost
    }

    /// Hand the participant's actions to the simulator, with the CPU time they took.
    fn flush(&mut self, cost: Time, out: &mut Outbox<DkgMsg>) {
        out.work(cost);
        // A broadcast is one message cloned per peer: measure its encoding once.
        let mut last: Option<(Message<S>, usize)> = None;
        for action in self.actions.drain(..) {
            match action {
                Action::Send { to, msg } => {
                    let size = match &last {
                        Some((m, size)) if *m == msg => *size,
                        _ => msg.to_bytes().len(),
                    };
                    last = Some((msg.clone(), size));
                    out.send(to.get(), DkgMsg { msg, size });
                }
                Action::SetTimer { after, timer } => {
                    let id = self.next_timer;
                    self.next_timer += 1;
                    self.timers.insert(id, timer);
                    out.timer(micros(after), id);
                }
            }
        }
    }
}

impl Actor for DkgNode {
    type Msg = DkgMsg;

    fn start(&mut self, now: Time, rng: &mut ChaCha20Rng, out: &mut Outbox<DkgMsg>) {
        let (attempt, done) = (self.inner.attempt(), self.inner.is_done());
        self.inner
            .start(Duration::from_micros(now), rng, &mut self.actions);
        let cost = self.work(now, true, attempt, done);
        self.flush(cost, out);
    }

    fn on_message(
        &mut self,
        now: Time,
        from: Addr,
        msg: DkgMsg,
        rng: &mut ChaCha20Rng,
        out: &mut Outbox<DkgMsg>,
    ) {
        let mut cost = self.env.cpu.decode(msg.size);
        if let Some(from) = NodeIndex::new(from) {
            match self.phase_end(&msg.msg) {
                Some(end) if now > end => self.late += 1,
                Some(end) => {
                    let held = self.held.entry(end).or_default();
                    if held.is_empty() {
                        out.timer(end - now, PHASE_END | end);
                    }
                    held.push((from, msg.msg));
                }
                None => cost += self.deliver(now, from, msg.msg, rng),
            }
        }
        self.flush(cost, out);
    }

    fn on_timer(&mut self, now: Time, timer: u64, rng: &mut ChaCha20Rng, out: &mut Outbox<DkgMsg>) {
        if timer & PHASE_END != 0 {
            // The phase ended: take in what arrived during it, in arrival order.
            let mut cost = 0;
            for (from, msg) in self.held.remove(&(timer & !PHASE_END)).unwrap_or_default() {
                cost += self.deliver(now, from, msg, rng);
            }
            return self.flush(cost, out);
        }
        let Some(timer) = self.timers.remove(&timer) else {
            return;
        };
        let (attempt, done) = (self.inner.attempt(), self.inner.is_done());
        self.inner
            .on_timer(Duration::from_micros(now), timer, rng, &mut self.actions);
        let cost = self.work(now, false, attempt, done);
        self.flush(cost, out);
    }

    fn on_restart(&mut self, now: Time, _rng: &mut ChaCha20Rng, out: &mut Outbox<DkgMsg>) {
        // The participant's timers died with the crash; it re-arms the one it waits on.
        self.timers.clear();
        self.inner.on_restart(&mut self.actions);
        // Phase-end timers died with the crash (what was held is kept: it models the inbox of
        // a node that persisted it; the participant's own state survives the same way).
        for end in self.held.keys() {
            out.timer(end.saturating_sub(now), PHASE_END | end);
        }
        self.flush(0, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Command, Message as _};
    use rand::SeedableRng;

    #[test]
    fn a_dealer_broadcasts_its_dealing_and_arms_the_round_timer() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let keys: Vec<SecretScalar<S>> = (0..3).map(|_| SecretScalar::random(&mut rng)).collect();
        let committee = keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| {
                Some((
                    NodeIndex::new(u16::try_from(i + 1).ok()?)?,
                    k.public_point(),
                ))
            })
            .collect();
        let config = CeremonyConfig::dkg(1, 2, committee).unwrap();
        let me = NodeIndex::new(1).unwrap();
        let mut node = DkgNode::new(
            me,
            keys[0].clone(),
            None,
            DkgBehaviour::Honest,
            NodeEnv::default(),
            config,
        );
        let mut out = Outbox::default();
        node.start(0, &mut rng, &mut out);
        let sends = out
            .commands()
            .iter()
            .filter(|c| matches!(c, Command::Send { msg, .. } if msg.kind() == "dealing"))
            .count();
        let timers = out
            .commands()
            .iter()
            .filter(|c| matches!(c, Command::SetTimer { .. }))
            .count();
        assert_eq!((sends, timers), (2, 1));
    }
}
