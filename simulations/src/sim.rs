//! The discrete-event core: a virtual clock (u64 microseconds), an event queue ordered by
//! `(time, sequence number)`, a network model and a crash/restart schedule.
//!
//! Nothing here reads the wall clock, sleeps or spawns threads, and every random choice comes
//! from the one [`ChaCha20Rng`] seeded from the run's seed, so a seed replays a run bit for
//! bit. Actors are sans-IO state machines: they react to events and emit [`Command`]s.
//!
//! **CPU.** Each actor is one single-threaded event loop. A handler may declare the CPU time
//! its work took ([`Outbox::work`], from the cost model in [`crate::cpu`]): the actor is then
//! busy until `start + cost`, its commands take effect at that time (messages leave, timers
//! are armed), and events that reach it meanwhile wait in its inbox in arrival order. A crash
//! loses the work in progress and the inbox. With zero cost a handler is instantaneous.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::Rng;
use rand_chacha::ChaCha20Rng;

use crate::connect::{Connect, Connections};

/// Virtual time in microseconds.
pub type Time = u64;
/// An actor's network address (the DKG uses the node index; the manager is 0).
pub type Addr = u16;

/// One millisecond of virtual time.
pub const MS: Time = 1_000;
/// One second of virtual time.
pub const SECOND: Time = 1_000_000;

/// What the simulator needs to know about a message.
pub trait Message: Clone {
    /// Bytes on the wire (the real `to_bytes()` length of the protocol value it carries).
    fn wire_size(&self) -> usize;
    /// A short label for per-kind statistics.
    fn kind(&self) -> &'static str;
}

/// What an actor asks the simulator to do.
#[derive(Clone, Debug)]
pub enum Command<M> {
    /// Send `msg` to `to` over the simulated network.
    Send {
        /// Destination.
        to: Addr,
        /// The message.
        msg: M,
    },
    /// Fire [`Actor::on_timer`] with `timer` after `after` microseconds.
    SetTimer {
        /// Delay.
        after: Time,
        /// An id the actor chooses.
        timer: u64,
    },
}

/// The commands an actor emits while handling one event, and the CPU time it spent.
#[derive(Debug)]
pub struct Outbox<M> {
    commands: Vec<Command<M>>,
    work: Time,
}

impl<M> Default for Outbox<M> {
    fn default() -> Self {
        Self {
            commands: Vec::new(),
            work: 0,
        }
    }
}

impl<M: Clone> Outbox<M> {
    /// Send one message.
    pub fn send(&mut self, to: Addr, msg: M) {
        self.commands.push(Command::Send { to, msg });
    }

    /// Send `msg` to every address in `to`.
    pub fn broadcast<'a>(&mut self, to: impl IntoIterator<Item = &'a Addr>, msg: &M) {
        for a in to {
            self.send(*a, msg.clone());
        }
    }

    /// Arm a timer.
    pub fn timer(&mut self, after: Time, timer: u64) {
        self.commands.push(Command::SetTimer { after, timer });
    }

    /// Declare `cost` µs of CPU work done by this handler (added up over calls).
    pub fn work(&mut self, cost: Time) {
        self.work = self.work.saturating_add(cost);
    }

    /// The CPU time declared so far.
    pub fn cost(&self) -> Time {
        self.work
    }

    /// The commands emitted so far (for unit tests of actors without a simulator).
    pub fn commands(&self) -> &[Command<M>] {
        &self.commands
    }

    /// Take the commands out.
    pub fn drain(&mut self) -> Vec<Command<M>> {
        std::mem::take(&mut self.commands)
    }
}

/// A participant: a state machine driven by the simulator.
pub trait Actor {
    /// The messages it exchanges.
    type Msg: Message;
    /// Called once at time 0.
    fn start(&mut self, now: Time, rng: &mut ChaCha20Rng, out: &mut Outbox<Self::Msg>);
    /// A message arrived.
    fn on_message(
        &mut self,
        now: Time,
        from: Addr,
        msg: Self::Msg,
        rng: &mut ChaCha20Rng,
        out: &mut Outbox<Self::Msg>,
    );
    /// A timer armed earlier fired (timers armed before a crash never fire).
    fn on_timer(
        &mut self,
        now: Time,
        timer: u64,
        rng: &mut ChaCha20Rng,
        out: &mut Outbox<Self::Msg>,
    );
    /// The node comes back after a crash. State survives (it models what a node persists);
    /// timers and messages of the downtime are lost.
    fn on_restart(&mut self, now: Time, rng: &mut ChaCha20Rng, out: &mut Outbox<Self::Msg>) {
        let _ = (now, rng, out);
    }
}

/// How the extra delay on top of the base latency is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[0, jitter]`.
    Uniform,
    /// Exponential with mean `jitter` (capped at 20× the mean): a heavy tail.
    Exponential,
}

/// The latency of one link: `base + jitter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    /// Fixed part, µs.
    pub base: Time,
    /// Scale of the random part, µs.
    pub jitter: Time,
    /// Distribution of the random part.
    pub dist: Jitter,
}

impl Latency {
    pub(crate) fn sample(&self, rng: &mut ChaCha20Rng) -> Time {
        let extra = match (self.jitter, self.dist) {
            (0, _) => 0,
            (j, Jitter::Uniform) => rng.gen_range(0..=j),
            (j, Jitter::Exponential) => {
                let u: f64 = rng.gen_range(f64::EPSILON..1.0);
                // Non-negative and capped at 20·j, so the conversion neither wraps nor loses sign.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let delay = ((-u.ln()) * j as f64).min(20.0 * j as f64) as Time;
                delay
            }
        };
        self.base + extra
    }
}

/// Links `(from, to)` that drop every message sent during `[from_time, until)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Start of the window.
    pub start: Time,
    /// End of the window (exclusive).
    pub end: Time,
    /// Blocked directed links.
    pub links: BTreeSet<(Addr, Addr)>,
}

impl Partition {
    /// Cut `side` off from every other address in `all`, both directions.
    pub fn isolate(side: &[Addr], all: &[Addr], start: Time, end: Time) -> Self {
        let mut links = BTreeSet::new();
        for a in side {
            for b in all.iter().filter(|b| !side.contains(b)) {
                links.insert((*a, *b));
                links.insert((*b, *a));
            }
        }
        Self { start, end, links }
    }

    fn blocks(&self, now: Time, from: Addr, to: Addr) -> bool {
        (self.start..self.end).contains(&now) && self.links.contains(&(from, to))
    }
}

/// A node is down during `[at, restart)` (forever if `restart` is `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crash {
    /// The node.
    pub node: Addr,
    /// When it crashes.
    pub at: Time,
    /// When it comes back, if ever.
    pub restart: Option<Time>,
}

/// The network model.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConfig {
    /// Default latency of every link.
    pub latency: Latency,
    /// Per-link overrides.
    pub links: BTreeMap<(Addr, Addr), Latency>,
    /// Probability that one transmission is lost.
    pub loss: f64,
    /// Reliable transport (TCP/QUIC-like): a lost transmission is retried after
    /// `retransmit` µs (doubling, up to 8 tries), so loss costs latency. Otherwise
    /// (datagrams) a lost message is gone.
    pub reliable: bool,
    /// First retransmission timeout.
    pub retransmit: Time,
    /// Probability that a message is held back by an extra uniform `[0, reorder_delay]`.
    pub reorder: f64,
    /// Maximum extra delay of a held-back message.
    pub reorder_delay: Time,
    /// Partitions.
    pub partitions: Vec<Partition>,
    /// Connection set-up before a pair's first message (none: links exist from the start).
    pub connect: Option<Connect>,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            latency: Latency {
                base: 20 * MS,
                jitter: 30 * MS,
                dist: Jitter::Uniform,
            },
            links: BTreeMap::new(),
            loss: 0.0,
            reliable: true,
            retransmit: 200 * MS,
            reorder: 0.0,
            reorder_delay: 100 * MS,
            partitions: Vec::new(),
            connect: None,
        }
    }
}

/// Traffic counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages handed to the network (self-sends excluded).
    pub sent: u64,
    /// Messages delivered to a live actor.
    pub delivered: u64,
    /// Messages lost (loss, partition, or the receiver was down).
    pub dropped: u64,
    /// Bytes handed to the network (one copy per send; retransmissions not counted).
    pub bytes: u64,
    /// Per message kind: (count, bytes).
    pub by_kind: BTreeMap<&'static str, (u64, u64)>,
}

enum Event<M> {
    Start(Addr),
    Deliver {
        from: Addr,
        to: Addr,
        msg: M,
    },
    Timer {
        node: Addr,
        timer: u64,
        life: u32,
    },
    Crash(Addr),
    Restart(Addr),
    /// The commands of a handler that took CPU time, released when it is done.
    Output {
        node: Addr,
        life: u32,
        commands: Vec<Command<M>>,
    },
    /// The actor's CPU is free again: handle the next event of its inbox.
    Wake(Addr),
}

impl<M> Event<M> {
    /// The actor whose event loop handles this event, if it is one an actor handles.
    fn target(&self) -> Option<Addr> {
        match self {
            Self::Start(a) | Self::Deliver { to: a, .. } | Self::Timer { node: a, .. } => Some(*a),
            _ => None,
        }
    }
}

/// The simulator: actors by address, the clock, the queue, the network and the one RNG.
pub struct Simulator<A: Actor> {
    actors: BTreeMap<Addr, A>,
    now: Time,
    seq: u64,
    queue: BTreeMap<(Time, u64), Event<A::Msg>>,
    net: NetConfig,
    rng: ChaCha20Rng,
    down: BTreeSet<Addr>,
    /// Incremented at each restart, so timers of an earlier life never fire.
    lives: BTreeMap<Addr, u32>,
    /// When each actor's CPU is free.
    busy_until: BTreeMap<Addr, Time>,
    /// Events waiting for a busy actor, in arrival order.
    inbox: BTreeMap<Addr, VecDeque<Event<A::Msg>>>,
    /// Actors with a `Wake` event queued.
    waking: BTreeSet<Addr>,
    /// CPU time spent per actor.
    cpu: BTreeMap<Addr, Time>,
    stats: NetStats,
    events: u64,
    trace: u64,
    connections: Connections,
}

impl<A: Actor> Simulator<A> {
    /// A simulator over `actors`, with crash/restart `crashes`, taking ownership of the run's
    /// RNG (the caller may have used it to set up keys first).
    pub fn new(
        actors: BTreeMap<Addr, A>,
        net: NetConfig,
        crashes: &[Crash],
        rng: ChaCha20Rng,
    ) -> Self {
        let mut sim = Self {
            actors,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            net,
            rng,
            down: BTreeSet::new(),
            lives: BTreeMap::new(),
            busy_until: BTreeMap::new(),
            inbox: BTreeMap::new(),
            waking: BTreeSet::new(),
            cpu: BTreeMap::new(),
            stats: NetStats::default(),
            events: 0,
            trace: 0xcbf2_9ce4_8422_2325,
            connections: Connections::default(),
        };
        let addrs: Vec<Addr> = sim.actors.keys().copied().collect();
        for a in addrs {
            sim.push(0, Event::Start(a));
        }
        for c in crashes {
            sim.push(c.at, Event::Crash(c.node));
            if let Some(r) = c.restart {
                sim.push(r.max(c.at), Event::Restart(c.node));
            }
        }
        sim
    }

    fn push(&mut self, at: Time, event: Event<A::Msg>) {
        self.queue.insert((at, self.seq), event);
        self.seq += 1;
    }

    /// Mix a value into the run's trace hash (FNV-1a), to compare runs bit for bit.
    fn mix(&mut self, values: &[u64]) {
        for v in values {
            for b in v.to_le_bytes() {
                self.trace ^= u64::from(b);
                self.trace = self.trace.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }

    /// Run until the queue is empty or the clock passes `until`. Returns the time of the last
    /// event processed.
    pub fn run(&mut self, until: Time) -> Time {
        while let Some(entry) = self.queue.first_entry() {
            let (at, _) = *entry.key();
            if at > until {
                break;
            }
            let event = entry.remove();
            self.now = at;
            self.events += 1;
            self.step(event);
        }
        self.now
    }

    fn life(&self, a: Addr) -> u32 {
        self.lives.get(&a).copied().unwrap_or(0)
    }

    fn busy(&self, a: Addr) -> bool {
        self.busy_until.get(&a).is_some_and(|t| *t > self.now)
    }

    fn step(&mut self, event: Event<A::Msg>) {
        if let Some(a) = event.target() {
            if self.busy(a) && !self.down.contains(&a) {
                self.inbox.entry(a).or_default().push_back(event);
                self.wake_at_busy_end(a);
                return;
            }
        }
        match event {
            Event::Crash(a) => {
                self.mix(&[self.now, 4, u64::from(a)]);
                self.down.insert(a);
                self.connections.drop_all(a);
                self.stats.dropped += self.inbox.remove(&a).map_or(0, |q| {
                    q.iter()
                        .filter(|e| matches!(e, Event::Deliver { .. }))
                        .count()
                }) as u64;
                self.busy_until.remove(&a);
            }
            Event::Restart(a) => {
                self.mix(&[self.now, 5, u64::from(a)]);
                if self.down.remove(&a) {
                    // A peer that sent to it while it was down recorded a connection.
                    self.connections.drop_all(a);
                    *self.lives.entry(a).or_insert(0) += 1;
                    let mut out = Outbox::default();
                    if let Some(actor) = self.actors.get_mut(&a) {
                        actor.on_restart(self.now, &mut self.rng, &mut out);
                    }
                    self.finish_handler(a, out);
                }
            }
            Event::Output {
                node,
                life,
                commands,
            } => {
                let alive = !self.down.contains(&node) && self.life(node) == life;
                self.mix(&[self.now, 6, u64::from(node), u64::from(alive)]);
                if alive {
                    for command in commands {
                        self.execute(node, command);
                    }
                }
            }
            Event::Wake(a) => {
                self.waking.remove(&a);
                if !self.busy(a) {
                    let next = self.inbox.get_mut(&a).and_then(VecDeque::pop_front);
                    if let Some(next) = next {
                        self.handle(next);
                    }
                }
                if self.inbox.get(&a).is_some_and(|q| !q.is_empty()) {
                    self.wake_at_busy_end(a);
                }
            }
            other => self.handle(other),
        }
    }

    fn wake_at_busy_end(&mut self, a: Addr) {
        if self.waking.insert(a) {
            let at = self
                .busy_until
                .get(&a)
                .copied()
                .unwrap_or(self.now)
                .max(self.now);
            self.push(at, Event::Wake(a));
        }
    }

    /// Run an actor's handler for `event` now (its CPU is free).
    fn handle(&mut self, event: Event<A::Msg>) {
        let mut out = Outbox::default();
        let node = match event {
            Event::Start(a) => {
                self.mix(&[self.now, 1, u64::from(a)]);
                if self.down.contains(&a) {
                    return;
                }
                if let Some(actor) = self.actors.get_mut(&a) {
                    actor.start(self.now, &mut self.rng, &mut out);
                }
                a
            }
            Event::Deliver { from, to, msg } => {
                let size = msg.wire_size() as u64;
                self.mix(&[self.now, 2, u64::from(from), u64::from(to), size]);
                if self.down.contains(&to) {
                    self.stats.dropped += 1;
                    return;
                }
                if from != to {
                    self.stats.delivered += 1;
                }
                if let Some(actor) = self.actors.get_mut(&to) {
                    actor.on_message(self.now, from, msg, &mut self.rng, &mut out);
                }
                to
            }
            Event::Timer { node, timer, life } => {
                let alive = !self.down.contains(&node) && self.life(node) == life;
                self.mix(&[self.now, 3, u64::from(node), timer, u64::from(alive)]);
                if !alive {
                    return;
                }
                if let Some(actor) = self.actors.get_mut(&node) {
                    actor.on_timer(self.now, timer, &mut self.rng, &mut out);
                }
                node
            }
            _ => return,
        };
        self.finish_handler(node, out);
    }

    /// Account a handler's CPU time and release its commands when the work is done.
    fn finish_handler(&mut self, node: Addr, mut out: Outbox<A::Msg>) {
        let cost = out.cost();
        let commands = out.drain();
        if cost == 0 {
            for command in commands {
                self.execute(node, command);
            }
            return;
        }
        self.mix(&[self.now, 7, u64::from(node), cost]);
        *self.cpu.entry(node).or_insert(0) += cost;
        let done = self.now.saturating_add(cost);
        self.busy_until.insert(node, done);
        let life = self.life(node);
        self.push(
            done,
            Event::Output {
                node,
                life,
                commands,
            },
        );
    }

    fn execute(&mut self, from: Addr, command: Command<A::Msg>) {
        match command {
            Command::SetTimer { after, timer } => {
                let life = self.life(from);
                self.push(
                    self.now.saturating_add(after),
                    Event::Timer {
                        node: from,
                        timer,
                        life,
                    },
                );
            }
            Command::Send { to, msg } => {
                if from == to {
                    self.push(self.now, Event::Deliver { from, to, msg });
                    return;
                }
                let size = msg.wire_size() as u64;
                self.stats.sent += 1;
                self.stats.bytes += size;
                let kind = self.stats.by_kind.entry(msg.kind()).or_insert((0, 0));
                kind.0 += 1;
                kind.1 += size;
                match self.transit(from, to) {
                    Some(delay) => {
                        let at = self.now.saturating_add(delay);
                        self.push(at, Event::Deliver { from, to, msg });
                    }
                    None => self.stats.dropped += 1,
                }
            }
        }
    }

    /// The delay of one message, or `None` if it is lost.
    fn transit(&mut self, from: Addr, to: Addr) -> Option<Time> {
        let now = self.now;
        if self.net.partitions.iter().any(|p| p.blocks(now, from, to)) {
            return None;
        }
        let latency = self
            .net
            .links
            .get(&(from, to))
            .copied()
            .unwrap_or(self.net.latency);
        let mut delay = match self.net.connect {
            Some(c) => {
                self.connections
                    .wait((from, to), now, c, &latency, &self.net, &mut self.rng)
            }
            None => 0,
        };
        let mut rto = self.net.retransmit;
        let mut tries = 0;
        while self.net.loss > 0.0 && self.rng.gen_bool(self.net.loss.clamp(0.0, 1.0)) {
            tries += 1;
            if !self.net.reliable || tries >= 8 {
                return None;
            }
            delay += rto;
            rto = rto.saturating_mul(2);
        }
        delay += latency.sample(&mut self.rng);
        if self.net.reorder > 0.0 && self.rng.gen_bool(self.net.reorder.clamp(0.0, 1.0)) {
            delay += self.rng.gen_range(0..=self.net.reorder_delay);
        }
        Some(delay)
    }

    /// The current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The actors (to read results after a run).
    pub fn actors(&self) -> &BTreeMap<Addr, A> {
        &self.actors
    }

    /// Take the actors out.
    pub fn into_actors(self) -> BTreeMap<Addr, A> {
        self.actors
    }

    /// Traffic counters.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// Events processed.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// A hash of every event processed (time, kind, endpoints, sizes): equal for equal runs.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    /// Nodes down at the current time.
    pub fn down(&self) -> &BTreeSet<Addr> {
        &self.down
    }

    /// CPU time each actor spent (µs of virtual time).
    pub fn cpu(&self) -> &BTreeMap<Addr, Time> {
        &self.cpu
    }
}

/// What is left after a run.
pub struct Finished<A> {
    /// The actors, with their results.
    pub actors: BTreeMap<Addr, A>,
    /// The run's RNG, to continue the same stream in a later phase.
    pub rng: ChaCha20Rng,
    /// Traffic counters.
    pub stats: NetStats,
    /// Time of the last event.
    pub end: Time,
    /// Events processed.
    pub events: u64,
    /// Trace hash (see [`Simulator::trace_hash`]).
    pub trace: u64,
    /// Nodes down at the end.
    pub down: BTreeSet<Addr>,
    /// CPU time each actor spent.
    pub cpu: BTreeMap<Addr, Time>,
}

impl<A: Actor> Simulator<A> {
    /// Run to quiescence (or `until`) and hand everything back.
    pub fn finish(mut self, until: Time) -> Finished<A> {
        let end = self.run(until);
        Finished {
            actors: self.actors,
            rng: self.rng,
            stats: self.stats,
            end,
            events: self.events,
            trace: self.trace,
            down: self.down,
            cpu: self.cpu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[derive(Clone, Debug)]
    struct Ping(u32);

    impl Message for Ping {
        fn wire_size(&self) -> usize {
            4
        }
        fn kind(&self) -> &'static str {
            "ping"
        }
    }

    /// Actor 1 (kicked by a timer at time 0) sends three pings to actor 2, which works 10 ms
    /// on each and echoes it; actor 1 records when the echoes arrive.
    #[derive(Default)]
    struct Echo {
        got: Vec<(Time, u32)>,
    }

    impl Actor for Echo {
        type Msg = Ping;
        fn start(&mut self, _: Time, _: &mut ChaCha20Rng, _: &mut Outbox<Ping>) {}
        fn on_message(
            &mut self,
            now: Time,
            from: Addr,
            msg: Ping,
            _: &mut ChaCha20Rng,
            out: &mut Outbox<Ping>,
        ) {
            if from == 1 {
                out.work(10 * MS);
                out.send(from, msg);
            } else {
                self.got.push((now, msg.0));
            }
        }
        fn on_timer(&mut self, _: Time, _: u64, _: &mut ChaCha20Rng, out: &mut Outbox<Ping>) {
            for i in 0..3 {
                out.send(2, Ping(i));
            }
        }
    }

    fn run(crash: &[Crash]) -> Vec<(Time, u32)> {
        let net = NetConfig {
            latency: Latency {
                base: MS,
                jitter: 0,
                dist: Jitter::Uniform,
            },
            ..NetConfig::default()
        };
        let actors = BTreeMap::from([(1, Echo::default()), (2, Echo::default())]);
        let mut sim = Simulator::new(actors, net, crash, ChaCha20Rng::seed_from_u64(1));
        // Kick actor 1 with a timer event at time 0.
        sim.push(
            0,
            Event::Timer {
                node: 1,
                timer: 0,
                life: 0,
            },
        );
        let done = sim.finish(SECOND);
        assert_eq!(done.cpu.get(&2).copied().unwrap_or(0) % (10 * MS), 0);
        done.actors[&1].got.clone()
    }

    #[test]
    fn a_busy_actor_handles_its_inbox_in_order_one_job_at_a_time() {
        // Pings arrive at 1 ms; the echoes leave at 11, 21, 31 ms and arrive 1 ms later.
        assert_eq!(run(&[]), vec![(12 * MS, 0), (22 * MS, 1), (32 * MS, 2)]);
    }

    #[test]
    fn a_crash_loses_the_work_in_progress_and_the_inbox() {
        let crash = [Crash {
            node: 2,
            at: 15 * MS,
            restart: Some(16 * MS),
        }];
        // The first echo left at 11 ms; the second job (11-21 ms) and the queued third are lost.
        assert_eq!(run(&crash), vec![(12 * MS, 0)]);
    }
}
