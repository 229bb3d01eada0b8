//! The fan-out collector and the circuit breakers: a request is served exactly when `t`
//! nodes can give it a valid partial, asks every node before it fails, and a breaker orders
//! nodes without ever removing one.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::{collections::BTreeSet, time::Duration};

use proptest::prelude::*;
use tkms_crypto::{
    collect::{
        BreakerChange, Breakers, Collector, Liveness, Outcome, Plan, BREAKER_COOLDOWN,
        BREAKER_MAX_COOLDOWN, BREAKER_THRESHOLD, MIN_HEDGE,
    },
    NodeIndex,
};

fn node(i: u16) -> NodeIndex {
    NodeIndex::new(i).unwrap()
}

fn nodes(n: u16) -> Vec<NodeIndex> {
    (1..=n).map(node).collect()
}

const MS: Duration = Duration::from_millis(1);

/// How a node answers in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Honest,
    Down,
    Liar,
    /// Refuses this one item only.
    RefusesItem(usize),
}

fn behaviour() -> impl Strategy<Value = Node> {
    prop_oneof![
        4 => Just(Node::Honest),
        2 => Just(Node::Down),
        1 => Just(Node::Liar),
        1 => (0usize..3).prop_map(Node::RefusesItem),
    ]
}

/// Drive a collector to the end: every asked node answers in the order asked (a FIFO of calls
/// in flight), partials are verified as soon as the collector lists them. Returns the
/// outcomes, the nodes asked (in order), and the nodes verified per item.
fn drive(
    plan: Plan,
    t: u16,
    items: usize,
    behaviour: &[Node],
) -> (Vec<Option<Outcome>>, Vec<NodeIndex>, Vec<Vec<NodeIndex>>) {
    let mut c: Collector<&'static str> = Collector::new(plan, t, items);
    let mut outcomes = vec![None; items];
    let mut asked: Vec<NodeIndex> = Vec::new();
    let mut queue: std::collections::VecDeque<NodeIndex> = c.start().into();
    asked.extend(queue.iter().copied());
    let settle = |c: &mut Collector<&'static str>, outcomes: &mut Vec<Option<Outcome>>| {
        for (k, o) in c.settle() {
            assert!(outcomes[k].is_none(), "item {k} decided twice");
            outcomes[k] = Some(o);
        }
    };
    settle(&mut c, &mut outcomes);
    while let Some(n) = queue.pop_front() {
        let b = behaviour[usize::from(n.get() - 1)];
        match b {
            Node::Down => c.node_failed(n, &"down"),
            Node::Honest | Node::Liar | Node::RefusesItem(_) => {
                c.answered(n);
                for k in 0..items {
                    if b == Node::RefusesItem(k) {
                        c.item_failed(k, n, "refused");
                    } else {
                        c.candidate(k, n);
                    }
                }
            }
        }
        for k in c.to_verify() {
            let candidates: Vec<NodeIndex> = c.candidates(k).collect();
            for m in candidates {
                if behaviour[usize::from(m.get() - 1)] == Node::Liar {
                    c.rejected(k, m, "invalid proof");
                } else {
                    c.verified(k, m);
                }
            }
        }
        settle(&mut c, &mut outcomes);
        let more = c.more();
        asked.extend(more.iter().copied());
        queue.extend(more);
        settle(&mut c, &mut outcomes);
    }
    assert!(c.is_done(), "nothing in flight, yet an item is open");
    let verified = (0..items).map(|k| c.verified_nodes(k)).collect();
    (outcomes, asked, verified)
}

proptest! {
    /// Served exactly when `t` nodes can give the item a valid partial; never a node asked
    /// twice; only verified partials combined; failures fail fast (every node asked at most).
    #[test]
    fn served_iff_t_nodes_can_answer(
        (n, t, behaviour, first, rotate) in (1u16..=9).prop_flat_map(|n| (
            Just(n),
            1..=n,
            proptest::collection::vec(behaviour(), usize::from(n)),
            0..=usize::from(n),
            0..usize::from(n),
        )),
        items in 1usize..=3,
    ) {
        let mut order = nodes(n);
        order.rotate_left(rotate);
        let (outcomes, asked, verified) = drive(Plan::new(order, first), t, items, &behaviour);
        let unique: BTreeSet<_> = asked.iter().collect();
        prop_assert_eq!(unique.len(), asked.len(), "a node was asked twice: {:?}", asked);
        for k in 0..items {
            let able = behaviour
                .iter()
                .filter(|b| matches!(b, Node::Honest) || matches!(b, Node::RefusesItem(r) if *r != k))
                .count();
            let expected = if able >= usize::from(t) { Outcome::Served } else { Outcome::Unavailable };
            prop_assert_eq!(outcomes[k], Some(expected), "item {} with {} able nodes", k, able);
            for v in &verified[k] {
                let b = behaviour[usize::from(v.get() - 1)];
                prop_assert!(b != Node::Liar && b != Node::Down && b != Node::RefusesItem(k));
            }
            if expected == Outcome::Served {
                prop_assert!(verified[k].len() >= usize::from(t));
            }
        }
    }
}

#[test]
fn a_request_that_falls_short_asks_the_nodes_behind_open_breakers() {
    // 5 nodes, t = 3; nodes 3, 4, 5 have open breakers (they failed earlier and were
    // restarted since), nodes 1 and 2 answer. The open ones are asked last, not skipped.
    let mut breakers = Breakers::new(nodes(5));
    for n in 3..=5 {
        for _ in 0..BREAKER_THRESHOLD {
            breakers.record(node(n), Duration::ZERO, Liveness::Down);
        }
    }
    let plan = breakers.plan(MS, 5, false);
    assert_eq!(plan.first, 2);
    assert_eq!(plan.order, nodes(5));
    let behaviour = [Node::Honest; 5];
    let (outcomes, asked, _) = drive(plan, 3, 1, &behaviour);
    assert_eq!(outcomes, vec![Some(Outcome::Served)]);
    // Only one node behind a breaker was needed.
    assert_eq!(asked.len(), 3, "{asked:?}");
}

#[test]
fn a_failed_node_is_replaced_at_once_and_a_hedge_asks_one_more() {
    let mut c: Collector<&str> = Collector::new(Plan::new(nodes(5), 3), 3, 1);
    assert_eq!(c.start(), nodes(3));
    c.node_failed(node(2), &"down");
    assert_eq!(c.more(), vec![node(4)]);
    assert_eq!(c.hedge(), Some(node(5)));
    assert_eq!(c.hedge(), None);
    assert!(c.settle().is_empty());
}

#[test]
fn fewer_than_t_nodes_is_unavailable_before_anything_is_asked() {
    let mut c: Collector<&str> = Collector::new(Plan::new(nodes(2), 2), 3, 2);
    let asked = c.start();
    assert_eq!(asked.len(), 2);
    assert_eq!(
        c.settle(),
        vec![(0, Outcome::Unavailable), (1, Outcome::Unavailable)]
    );
}

#[test]
fn breaker_opens_after_consecutive_failures_and_a_burst_counts_once() {
    let mut b = Breakers::new(nodes(3));
    let n = node(1);
    for _ in 1..BREAKER_THRESHOLD {
        assert_eq!(b.record(n, Duration::ZERO, Liveness::Down), None);
    }
    // An answer in between resets the count.
    b.record(n, Duration::ZERO, Liveness::Answered);
    for _ in 1..BREAKER_THRESHOLD {
        b.record(n, Duration::ZERO, Liveness::Down);
    }
    assert_eq!(
        b.record(n, Duration::ZERO, Liveness::Down),
        Some(BreakerChange::Opened {
            cooldown: BREAKER_COOLDOWN
        })
    );
    // Fifty more failures of calls that were in flight when it opened: the same burst.
    for _ in 0..50 {
        assert_eq!(b.record(n, 10 * MS, Liveness::Down), None);
    }
    assert!(b.is_open(n, BREAKER_COOLDOWN.saturating_sub(MS)));
    assert!(!b.is_open(n, BREAKER_COOLDOWN));
    // After the cool-down it is asked again (a probe); each failed probe doubles the
    // cool-down, up to the bound.
    let mut now = BREAKER_COOLDOWN;
    let mut cooldown = BREAKER_COOLDOWN;
    for _ in 0..10 {
        let change = b.record(n, now, Liveness::Down);
        cooldown = (cooldown * 2).min(BREAKER_MAX_COOLDOWN);
        assert_eq!(change, Some(BreakerChange::Opened { cooldown }));
        now += cooldown;
    }
    assert_eq!(cooldown, BREAKER_MAX_COOLDOWN);
    assert_eq!(
        b.record(n, now, Liveness::Answered),
        Some(BreakerChange::Closed)
    );
    assert!(!b.is_open(n, now));
}

#[test]
fn plan_puts_open_breakers_last_and_rotates_the_others() {
    let mut b = Breakers::new(nodes(4));
    for _ in 0..BREAKER_THRESHOLD {
        b.record(node(2), Duration::ZERO, Liveness::Down);
    }
    let p = b.plan(MS, 2, true);
    assert_eq!(p.order, vec![node(1), node(3), node(4), node(2)]);
    assert_eq!(p.first, 2);
    let p = b.plan(MS, 2, true);
    assert_eq!(p.order, vec![node(3), node(4), node(1), node(2)]);
    // Every node is always in the plan.
    let p = b.plan(MS, 4, false);
    assert_eq!(p.first, 3);
    assert_eq!(p.order.len(), 4);
}

/// The hedge delay follows the nodes' answer times: the initial value until `t` nodes have
/// answered, then about the `t`-th quickest node's answer time plus its jitter, whether the
/// links are loopback or a WAN; a few slow nodes (at most `n - t`) do not stretch it, a node
/// behind an open breaker does not count, and it stays within its bounds.
#[test]
fn the_hedge_delay_adapts_to_the_nodes_answer_times() {
    let initial = 100 * MS;
    let ceiling = 2_000 * MS;
    for answer in [MS, 20 * MS, 150 * MS] {
        let mut b = Breakers::new(nodes(5));
        b.answered_in(node(1), answer);
        b.answered_in(node(2), answer);
        assert_eq!(b.hedge_delay(Duration::ZERO, 3, initial, ceiling), initial);
        // Steady answers, node 5 five times slower.
        for _ in 0..30 {
            for i in 1..=4 {
                b.answered_in(node(i), answer);
            }
            b.answered_in(node(5), answer * 5);
        }
        let delay = b.hedge_delay(Duration::ZERO, 3, initial, ceiling);
        assert!(
            delay >= (answer * 3 / 2).max(MIN_HEDGE) && delay <= answer * 8 / 5 + MIN_HEDGE,
            "answers in {answer:?}: hedge after {delay:?}"
        );
        // Jitter widens it: answers alternating between 1x and 2x.
        for k in 0..30u32 {
            for i in 1..=5 {
                b.answered_in(node(i), answer * (1 + k % 2));
            }
        }
        let jittery = b.hedge_delay(Duration::ZERO, 3, initial, ceiling);
        assert!(jittery > answer * 2, "{answer:?}: {jittery:?}");
        assert!(jittery < answer * 4 + MIN_HEDGE, "{answer:?}: {jittery:?}");
    }
    // Bounds.
    let mut b = Breakers::new(nodes(3));
    for i in 1..=3 {
        b.answered_in(node(i), Duration::from_micros(10));
    }
    assert_eq!(
        b.hedge_delay(Duration::ZERO, 2, initial, ceiling),
        MIN_HEDGE
    );
    for i in 1..=3 {
        b.answered_in(node(i), 60_000 * MS);
    }
    assert_eq!(b.hedge_delay(Duration::ZERO, 2, initial, ceiling), ceiling);
    // Nodes behind an open breaker are left out: with two of three open, too few estimates.
    let mut b = Breakers::new(nodes(3));
    for i in 1..=3 {
        b.answered_in(node(i), 10 * MS);
    }
    for i in 2..=3 {
        for _ in 0..BREAKER_THRESHOLD {
            b.record(node(i), Duration::ZERO, Liveness::Down);
        }
    }
    assert_eq!(b.hedge_delay(Duration::ZERO, 2, initial, ceiling), initial);
}
