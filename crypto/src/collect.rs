//! Collecting `t` verified partials (docs/RELIABILITY.md, "Fan-out"): whom a request asks, in
//! which order, when it asks more, and when it is served or certainly unavailable. This is
//! the one collect-verify-combine loop of tkms, as a sans-IO state machine: the manager drives
//! it with gRPC calls and tokio timers, the simulator with virtual messages and virtual time,
//! so the simulator's liveness checks test the code the manager runs.
//!
//! Two parts:
//! - [`Breakers`]: a circuit breaker per node that *orders* the nodes (those answering first,
//!   those that keep failing last). It never removes a node: a request that falls short asks
//!   every remaining node, whatever its breaker says. It also keeps each node's smoothed
//!   answer time, from which [`Breakers::hedge_delay`] adapts the hedge to the network.
//! - [`Collector`]: one fan-out carrying one or more items (a batch of delegations shares its
//!   node calls). Answers come in ([`Collector::answered`], [`Collector::node_failed`], per item
//!   [`Collector::candidate`] / [`Collector::item_failed`], then [`Collector::verified`] /
//!   [`Collector::rejected`] once the driver checked the proofs); out come "ask these nodes"
//!   ([`Collector::more`], [`Collector::hedge`]) and each item's [`Outcome`]
//!   ([`Collector::settle`]).
//!
//! The rules, in one place:
//! - an item is served as soon as `t` of its partials are verified;
//! - it is unavailable as soon as `verified + unverified + in flight + not yet asked < t`,
//!   that is, only when no node left could make up the difference (fail fast, never hang);
//! - while an item's `verified + unverified + in flight` is below `t`, the next nodes in order
//!   are asked (a failed node is replaced at once); a hedge asks one more node early.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::Duration,
};

use crate::NodeIndex;

/// Consecutive liveness failures (timeouts, refused connections) after which a breaker opens.
pub const BREAKER_THRESHOLD: u32 = 3;
/// First cool-down of an open breaker; each failed probe doubles it, up to
/// [`BREAKER_MAX_COOLDOWN`].
pub const BREAKER_COOLDOWN: Duration = Duration::from_millis(250);
/// Longest cool-down: a node that comes back is asked again at most this long after.
pub const BREAKER_MAX_COOLDOWN: Duration = Duration::from_secs(1);

/// Shortest adaptive hedge delay: below it, scheduling noise on a loaded host would hedge
/// requests that are not late.
pub const MIN_HEDGE: Duration = Duration::from_millis(2);

/// What a call told about a node's liveness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// It answered (even with a refusal or a bad partial: it is up, and its faults are named,
    /// not hidden).
    Answered,
    /// No answer: timed out, or the connection was refused or lost.
    Down,
}

/// A breaker's change of state, for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerChange {
    /// The node failed [`BREAKER_THRESHOLD`] times in a row (or failed its probe): it is asked
    /// after the others for `cooldown`.
    Opened {
        /// How long it is asked last.
        cooldown: Duration,
    },
    /// The node answers again.
    Closed,
}

/// A node's smoothed answer time, as TCP smooths round trips (RFC 6298 §2: gains 1/8 and 1/4).
#[derive(Clone, Copy, Debug)]
struct AnswerTime {
    smoothed: Duration,
    variation: Duration,
}

impl AnswerTime {
    fn first(sample: Duration) -> Self {
        Self {
            smoothed: sample,
            variation: sample / 2,
        }
    }

    fn update(&mut self, sample: Duration) {
        let deviation = self.smoothed.abs_diff(sample);
        self.variation = self.variation * 3 / 4 + deviation / 4;
        self.smoothed = self.smoothed * 7 / 8 + sample / 8;
    }

    /// When an answer is late: the smoothed time plus four variations (TCP's RTO), the
    /// variation counted as at least an eighth of the smoothed time, so that on a steady link
    /// (where it decays towards zero) a hiccup of a few percent does not hedge: at least 1.5
    /// times the smoothed time.
    fn late_after(&self) -> Duration {
        self.smoothed + self.variation.max(self.smoothed / 8) * 4
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Breaker {
    failures: u32,
    cooldown: Duration,
    open_until: Option<Duration>,
}

/// A circuit breaker per node, on the driver's clock (any monotonic `Duration`, e.g. the time
/// since the manager started, or the simulator's virtual time).
///
/// After [`BREAKER_THRESHOLD`] consecutive liveness failures a node is *open*: it goes to the
/// back of every request's order until its cool-down passes; then it is asked with the others
/// again (a probe): an answer closes it, a failure reopens it for twice as long, up to
/// [`BREAKER_MAX_COOLDOWN`]. Failures reported while it is open belong to the burst that
/// opened it (calls that were already in flight) and change nothing: one burst is one failure.
#[derive(Clone, Debug, Default)]
pub struct Breakers {
    nodes: BTreeMap<NodeIndex, Breaker>,
    answer_times: BTreeMap<NodeIndex, AnswerTime>,
    turn: usize,
}

impl Breakers {
    /// Breakers for `nodes`, all closed.
    pub fn new(nodes: impl IntoIterator<Item = NodeIndex>) -> Self {
        Self {
            nodes: nodes.into_iter().map(|n| (n, Breaker::default())).collect(),
            answer_times: BTreeMap::new(),
            turn: 0,
        }
    }

    /// Whether `node`'s breaker is open at `now`.
    pub fn is_open(&self, node: NodeIndex, now: Duration) -> bool {
        self.nodes
            .get(&node)
            .and_then(|b| b.open_until)
            .is_some_and(|until| now < until)
    }

    /// Record what a call to `node` showed at `now`; the breaker's change, if any.
    pub fn record(
        &mut self,
        node: NodeIndex,
        now: Duration,
        liveness: Liveness,
    ) -> Option<BreakerChange> {
        let open = self.is_open(node, now);
        let b = self.nodes.entry(node).or_default();
        match liveness {
            Liveness::Answered => {
                let was_open = b.failures >= BREAKER_THRESHOLD;
                *b = Breaker::default();
                was_open.then_some(BreakerChange::Closed)
            }
            // Part of the burst that opened it.
            Liveness::Down if open => None,
            Liveness::Down => {
                b.failures = b.failures.saturating_add(1);
                if b.failures < BREAKER_THRESHOLD {
                    return None;
                }
                b.cooldown = if b.cooldown.is_zero() {
                    BREAKER_COOLDOWN
                } else {
                    (b.cooldown * 2).min(BREAKER_MAX_COOLDOWN)
                };
                b.open_until = Some(now + b.cooldown);
                Some(BreakerChange::Opened {
                    cooldown: b.cooldown,
                })
            }
        }
    }

    /// `node` answered a call `took` after it was made.
    pub fn answered_in(&mut self, node: NodeIndex, took: Duration) {
        self.answer_times
            .entry(node)
            .and_modify(|a| a.update(took))
            .or_insert_with(|| AnswerTime::first(took));
    }

    /// How long a request waits for answers before it asks one more node: the time by which
    /// the `threshold` quickest nodes usually have answered (the `threshold`-th smallest of
    /// the nodes' smoothed answer time plus four variations, at least 1.5 times the smoothed
    /// time, over nodes whose breaker is
    /// closed at `now`), within `[MIN_HEDGE, ceiling]`; `initial` until `threshold` nodes have
    /// answered once. On a 150 ms link it is about 150 ms plus the jitter, on loopback a few
    /// milliseconds: a fixed delay either hedges every request or none.
    pub fn hedge_delay(
        &self,
        now: Duration,
        threshold: usize,
        initial: Duration,
        ceiling: Duration,
    ) -> Duration {
        let mut late: Vec<Duration> = self
            .answer_times
            .iter()
            .filter(|(node, _)| !self.is_open(**node, now))
            .map(|(_, a)| a.late_after())
            .collect();
        let delay = if threshold == 0 || late.len() < threshold {
            initial
        } else {
            late.sort_unstable();
            late[threshold - 1]
        };
        delay.clamp(MIN_HEDGE, ceiling.max(MIN_HEDGE))
    }

    /// The order in which a request asks the nodes at `now`: those whose breaker is closed (or
    /// whose cool-down has passed), rotated by one place per call when `rotate` (so that a
    /// request asking fewer than all spreads the load), then the open ones, soonest to close
    /// first. Every node is in the plan; `first` says how many are asked at once.
    pub fn plan(&mut self, now: Duration, first: usize, rotate: bool) -> Plan {
        let (mut usable, mut open): (Vec<_>, Vec<_>) =
            self.nodes.keys().partition(|n| !self.is_open(**n, now));
        if rotate && !usable.is_empty() {
            let turn = self.turn % usable.len();
            self.turn = self.turn.wrapping_add(1);
            usable.rotate_left(turn);
        }
        open.sort_by_key(|n| self.nodes.get(n).and_then(|b| b.open_until));
        let first = first.min(usable.len());
        Plan {
            order: usable.into_iter().chain(open).collect(),
            first,
        }
    }
}

/// Whom a request asks: `order` (every node), of which the first `first` at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Every node, in the order it will be asked.
    pub order: Vec<NodeIndex>,
    /// How many are asked at once.
    pub first: usize,
}

impl Plan {
    /// Ask `nodes` in this order, `first` of them at once.
    pub fn new(nodes: Vec<NodeIndex>, first: usize) -> Self {
        Self {
            first: first.min(nodes.len()),
            order: nodes,
        }
    }
}

/// How an item ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `t` verified partials: combine them ([`Collector::verified_nodes`]).
    Served,
    /// Fewer than `t` nodes can still contribute.
    Unavailable,
}

#[derive(Clone, Debug)]
struct Item<F> {
    candidates: BTreeSet<NodeIndex>,
    verified: BTreeSet<NodeIndex>,
    failed: BTreeSet<NodeIndex>,
    failures: Vec<(NodeIndex, F)>,
    outcome: Option<Outcome>,
    reported: bool,
}

impl<F> Item<F> {
    fn new() -> Self {
        Self {
            candidates: BTreeSet::new(),
            verified: BTreeSet::new(),
            failed: BTreeSet::new(),
            failures: Vec::new(),
            outcome: None,
            reported: false,
        }
    }
}

/// One fan-out: `items` requests that share their node calls, each needing `t` verified
/// partials. `F` is the driver's description of a node failure (kept per item, to name the
/// culprits).
#[derive(Clone, Debug)]
pub struct Collector<F> {
    threshold: usize,
    first: usize,
    waiting: VecDeque<NodeIndex>,
    in_flight: BTreeSet<NodeIndex>,
    items: Vec<Item<F>>,
}

impl<F: Clone> Collector<F> {
    /// A fan-out of `items` items (at least one) over `plan`, needing `threshold` verified
    /// partials per item. Nothing is asked before [`Self::start`].
    pub fn new(plan: Plan, threshold: u16, items: usize) -> Self {
        let mut waiting: VecDeque<NodeIndex> = VecDeque::with_capacity(plan.order.len());
        for n in plan.order {
            if !waiting.contains(&n) {
                waiting.push_back(n);
            }
        }
        Self {
            threshold: usize::from(threshold),
            first: plan.first,
            waiting,
            in_flight: BTreeSet::new(),
            items: (0..items.max(1)).map(|_| Item::new()).collect(),
        }
    }

    /// The nodes to ask at the start: the plan's first ones, and more if fewer than `t` could
    /// answer otherwise. Then call [`Self::settle`]: with fewer than `t` nodes at all, every
    /// item is unavailable at once.
    pub fn start(&mut self) -> Vec<NodeIndex> {
        let mut asked = self.take(self.first);
        asked.extend(self.more());
        asked
    }

    /// The nodes to ask now: for the neediest open item, as many as it lacks (counting the
    /// partials received and the calls in flight as coming), in plan order.
    pub fn more(&mut self) -> Vec<NodeIndex> {
        let lacking = self
            .items
            .iter()
            .filter(|i| i.outcome.is_none())
            .map(|i| self.lacking(i))
            .max()
            .unwrap_or(0);
        self.take(lacking)
    }

    /// One more node, asked early because answers are slow (a hedge): `None` when no item is
    /// open or nobody is left to ask.
    pub fn hedge(&mut self) -> Option<NodeIndex> {
        if self.items.iter().all(|i| i.outcome.is_some()) {
            return None;
        }
        self.take(1).pop()
    }

    fn take(&mut self, count: usize) -> Vec<NodeIndex> {
        let count = count.min(self.waiting.len());
        let asked: Vec<NodeIndex> = self.waiting.drain(..count).collect();
        self.in_flight.extend(asked.iter().copied());
        asked
    }

    /// Partials still missing for `item`, counting calls in flight as coming.
    fn lacking(&self, item: &Item<F>) -> usize {
        let coming = item.verified.len()
            + item.candidates.len()
            + self
                .in_flight
                .iter()
                .filter(|n| !item.failed.contains(n))
                .count();
        self.threshold.saturating_sub(coming)
    }

    /// `node`'s call returned (its items are reported with [`Self::candidate`] and
    /// [`Self::item_failed`]).
    pub fn answered(&mut self, node: NodeIndex) {
        self.in_flight.remove(&node);
    }

    /// `node`'s call failed as a whole (timeout, unreachable, refused, malformed): it
    /// contributes to no item, and is named in every open one.
    pub fn node_failed(&mut self, node: NodeIndex, failure: &F) {
        self.in_flight.remove(&node);
        for item in self.items.iter_mut().filter(|i| i.outcome.is_none()) {
            if item.failed.insert(node) {
                item.failures.push((node, failure.clone()));
            }
        }
    }

    /// `node` sent a partial for `item`, not verified yet.
    pub fn candidate(&mut self, item: usize, node: NodeIndex) {
        if let Some(i) = self.items.get_mut(item) {
            if i.outcome.is_none() && !i.failed.contains(&node) && !i.verified.contains(&node) {
                i.candidates.insert(node);
            }
        }
    }

    /// `node` could not contribute to `item` (refused that item, or a partial that does not
    /// decode).
    pub fn item_failed(&mut self, item: usize, node: NodeIndex, failure: F) {
        if let Some(i) = self.items.get_mut(item) {
            i.candidates.remove(&node);
            if i.outcome.is_none() && i.failed.insert(node) {
                i.failures.push((node, failure));
            }
        }
    }

    /// `node`'s partial for `item` is usable as it arrived (checked on arrival, or checked by
    /// the client only): [`Self::candidate`] and [`Self::verified`] in one.
    pub fn accepted(&mut self, item: usize, node: NodeIndex) {
        self.candidate(item, node);
        self.verified(item, node);
    }

    /// `node`'s partial for `item` passed its proof.
    pub fn verified(&mut self, item: usize, node: NodeIndex) {
        if let Some(i) = self.items.get_mut(item) {
            if i.candidates.remove(&node) && i.outcome.is_none() {
                i.verified.insert(node);
            }
        }
    }

    /// `node`'s partial for `item` failed its proof.
    pub fn rejected(&mut self, item: usize, node: NodeIndex, failure: F) {
        if let Some(i) = self.items.get_mut(item) {
            i.candidates.remove(&node);
            if i.failed.insert(node) {
                i.failures.push((node, failure));
            }
        }
    }

    /// Open items whose unverified partials could complete them (`verified + unverified >=
    /// t`): verify these now (a driver may verify them together, in one batch). When every
    /// node has answered, the items still open are listed too, so every partial that came is
    /// checked and every culprit named.
    pub fn to_verify(&self) -> Vec<usize> {
        let finished = self.in_flight.is_empty() && self.waiting.is_empty();
        self.items
            .iter()
            .enumerate()
            .filter(|(_, i)| {
                i.outcome.is_none()
                    && !i.candidates.is_empty()
                    && (finished || i.verified.len() + i.candidates.len() >= self.threshold)
            })
            .map(|(k, _)| k)
            .collect()
    }

    /// The nodes whose partial for `item` is waiting to be verified.
    pub fn candidates(&self, item: usize) -> impl Iterator<Item = NodeIndex> + '_ {
        self.items
            .get(item)
            .into_iter()
            .flat_map(|i| i.candidates.iter().copied())
    }

    /// Decide the items that can be decided: served with `t` verified partials, unavailable
    /// when fewer than `t` can still come. Each item is returned once.
    pub fn settle(&mut self) -> Vec<(usize, Outcome)> {
        let threshold = self.threshold;
        let waiting = self.waiting.len();
        let in_flight = &self.in_flight;
        let mut decided = Vec::new();
        for (k, item) in self.items.iter_mut().enumerate() {
            if item.outcome.is_none() {
                let possible = item.verified.len()
                    + item.candidates.len()
                    + waiting
                    + in_flight
                        .iter()
                        .filter(|n| !item.failed.contains(n))
                        .count();
                if item.verified.len() >= threshold {
                    item.outcome = Some(Outcome::Served);
                } else if possible < threshold {
                    item.outcome = Some(Outcome::Unavailable);
                }
            }
            if let (Some(outcome), false) = (item.outcome, item.reported) {
                item.reported = true;
                decided.push((k, outcome));
            }
        }
        decided
    }

    /// Whether every item is decided.
    pub fn is_done(&self) -> bool {
        self.items.iter().all(|i| i.outcome.is_some())
    }

    /// Whether `item` is decided.
    pub fn is_decided(&self, item: usize) -> bool {
        self.items.get(item).is_none_or(|i| i.outcome.is_some())
    }

    /// The nodes whose partial for `item` was verified, in index order (the first `t` of them
    /// are combined).
    pub fn verified_nodes(&self, item: usize) -> Vec<NodeIndex> {
        self.items
            .get(item)
            .map(|i| i.verified.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Every node that failed `item`, and why, in the order the failures came.
    pub fn failures(&self, item: usize) -> &[(NodeIndex, F)] {
        self.items.get(item).map_or(&[], |i| i.failures.as_slice())
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> &BTreeSet<NodeIndex> {
        &self.in_flight
    }

    /// Nodes not asked yet.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The threshold.
    pub fn threshold(&self) -> usize {
        self.threshold
    }
}
