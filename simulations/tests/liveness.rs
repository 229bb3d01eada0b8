//! Invariant: liveness. Delegations complete while at least t honest nodes are reachable; with
//! fewer, every request fails fast by its deadline instead of hanging.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use tkms_simulations::{
    delegation::{ManagerMode, NodeFault},
    invariants::liveness,
    scenario::{node_addrs, run_delegation, DelegationRun, Scenario},
    sim::{Partition, MS},
};

fn check(s: &Scenario) -> DelegationRun {
    let run = run_delegation(s).unwrap();
    if let Err(v) = liveness(&run) {
        panic!("seed {}: {v}", s.seed);
    }
    run
}

/// 10 nodes, t = 5: 2 byzantine, 1 crashed for good, 1 partitioned away from the manager, 1
/// crashing and restarting; 5 honest nodes are reachable throughout. Loss and reordering.
fn degraded(seed: u64) -> Scenario {
    let mut all = node_addrs(10);
    all.push(0);
    let mut s = Scenario::new(seed, 10)
        .threshold(5)
        .node_fault(2, NodeFault::WrongPartial)
        .node_fault(5, NodeFault::Silent)
        .crash(7, 0, None)
        .crash(8, 20 * MS, Some(60 * MS));
    s.net
        .partitions
        .push(Partition::isolate(&[9], &all, 0, u64::MAX));
    s.net.loss = 0.02;
    s.net.reorder = 0.2;
    s
}

#[test]
fn served_with_n_minus_t_nodes_crashed_byzantine_or_partitioned() {
    for seed in [31, 32, 33, 34] {
        let run = check(&degraded(seed));
        assert!(run.reachable_honest >= 5, "{}", run.reachable_honest);
        assert!(run.requests.iter().all(|(_, r)| r.served()));
    }
}

#[test]
fn fails_fast_when_fewer_than_t_honest_nodes_are_reachable() {
    for seed in [35, 36, 37] {
        let s = Scenario::new(seed, 5)
            .threshold(4)
            .node_fault(1, NodeFault::Silent)
            .crash(2, 0, None);
        let run = check(&s);
        assert!(run.requests.iter().all(|(_, r)| !r.served()));
    }
}

/// The check can fail: a manager that asks only t nodes has no fallback when one of them is
/// down, so requests fail although t honest nodes are reachable.
#[test]
fn a_manager_that_asks_only_t_nodes_is_caught() {
    for seed in [31, 32, 33] {
        let mut s = degraded(seed);
        s.manager = ManagerMode::AskOnlyT;
        let run = run_delegation(&s).unwrap();
        let verdict = liveness(&run);
        assert!(
            verdict
                .as_ref()
                .is_err_and(|v| v.contains("honest nodes reachable")),
            "seed {seed}: {verdict:?}"
        );
    }
}

/// The check can fail: a manager with no deadline hangs when fewer than t nodes answer.
#[test]
fn a_manager_that_waits_for_ever_is_caught() {
    for seed in [35, 36] {
        let mut s = Scenario::new(seed, 5)
            .threshold(4)
            .node_fault(1, NodeFault::Silent)
            .crash(2, 0, None);
        s.manager = ManagerMode::NoDeadline;
        let run = run_delegation(&s).unwrap();
        let verdict = liveness(&run);
        assert!(
            verdict
                .as_ref()
                .is_err_and(|v| v.contains("never finished")),
            "seed {seed}: {verdict:?}"
        );
    }
}
