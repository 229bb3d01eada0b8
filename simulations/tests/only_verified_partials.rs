//! Invariant: no request is served with an unverified partial, and every result opens the
//! client's ciphertext. A deliberately broken manager that combines partials without verifying
//! them is caught by the same check.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use tkms_simulations::{
    delegation::{ManagerMode, NodeFault},
    invariants::only_verified_partials,
    scenario::{node_addrs, run_delegation, Scenario},
    sim::{Partition, MS},
};

const SEEDS: [u64; 4] = [41, 42, 43, 44];

fn scenario(seed: u64, mode: ManagerMode) -> Scenario {
    let mut s = Scenario::new(seed, 9)
        .threshold(4)
        .node_fault(1, NodeFault::WrongPartial)
        .node_fault(3, NodeFault::FlippedProof)
        .node_fault(6, NodeFault::WrongPartial);
    s.manager = mode;
    s.requests = 8;
    // Loss, reordering, node 2 cut off for the first 40 ms and a crash-restart of node 5:
    // at least t = 4 honest nodes stay reachable.
    let mut all = node_addrs(9);
    all.push(0);
    s.net.loss = 0.03;
    s.net.reorder = 0.2;
    s.net
        .partitions
        .push(Partition::isolate(&[2], &all, 0, 40 * MS));
    s.crash(5, 30 * MS, Some(45 * MS))
}

#[test]
fn the_verifying_manager_serves_only_verified_partials() {
    for seed in SEEDS {
        let run = run_delegation(&scenario(seed, ManagerMode::Verify)).unwrap();
        assert!(run.requests.iter().all(|(_, r)| r.served()), "seed {seed}");
        assert!(
            run.requests.iter().any(|(_, r)| !r.rejected.is_empty()),
            "seed {seed}: no bad partial reached the manager"
        );
        if let Err(v) = only_verified_partials(&run) {
            panic!("seed {seed}: {v}");
        }
    }
}

#[test]
fn a_manager_that_combines_unverified_partials_is_caught() {
    for seed in SEEDS {
        let run = run_delegation(&scenario(seed, ManagerMode::CombineUnverified)).unwrap();
        let verdict = only_verified_partials(&run);
        assert!(
            verdict.is_err(),
            "seed {seed}: the broken manager went unnoticed"
        );
    }
}
