//! Invariant: liveness under node churn. Nodes crash and restart at random, never more than
//! `n - t` at once; the manager's circuit breakers open on the crashed ones. Every request for
//! which `t` honest nodes are up is still served: a breaker orders the nodes, it never turns a
//! servable request into a failure.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use tkms_simulations::{
    delegation::ManagerMode,
    invariants::liveness,
    scenario::{node_addrs, random_churn, run_delegation, DelegationRun, Scenario},
    sim::{Crash, MS, SECOND},
};

/// 5 nodes, t = 3; for 3 s, nodes go down for 100-600 ms at random, at most 2 at once;
/// a request every 5 ms, node calls time out after 100 ms.
fn churn(seed: u64) -> Scenario {
    let mut s = Scenario::new(seed, 5).threshold(3);
    s.crashes = random_churn(seed, &node_addrs(5), 3 * SECOND, 2, 100 * MS..600 * MS);
    s.requests = 600;
    s.request_interval = 5 * MS;
    s.request_deadline = SECOND;
    s.node_timeout = Some(100 * MS);
    s.net.loss = 0.0;
    s
}

fn check(s: &Scenario) -> DelegationRun {
    let run = run_delegation(s).unwrap();
    if let Err(v) = liveness(&run) {
        panic!("seed {}: {v}", s.seed);
    }
    run
}

#[test]
fn every_request_is_served_while_t_nodes_are_up() {
    for seed in [41, 42, 43, 44, 45] {
        let s = churn(seed);
        assert!(s.crashes.len() >= 5, "seed {seed}: a churn worth the name");
        let run = check(&s);
        let served = run.requests.iter().filter(|(_, r)| r.served()).count();
        assert_eq!(served, run.requests.len(), "seed {seed}");
    }
}

/// Nodes 1, 4 and 5 are down at the start, so the first requests fail and their breakers
/// open; 1 and 4 come back while their breakers are still open, and then node 2 goes down:
/// only nodes 1, 3 and 4 are up, exactly t, two of them behind open breakers. The real manager
/// asks them anyway (last, as the fallback) and serves every request from then on.
fn breaker_needed(seed: u64) -> Scenario {
    let mut s = Scenario::new(seed, 5).threshold(3);
    let crash = |node, at, restart| Crash { node, at, restart };
    s.crashes = vec![
        crash(1, 0, Some(250 * MS)),
        crash(4, 0, Some(300 * MS)),
        crash(5, 0, None),
        crash(2, 310 * MS, None),
    ];
    s.requests = 200;
    s.request_interval = 5 * MS;
    s.request_deadline = SECOND;
    s.node_timeout = Some(100 * MS);
    s.net.loss = 0.0;
    s
}

#[test]
fn a_restarted_node_behind_an_open_breaker_is_asked_when_needed() {
    for seed in [46, 47] {
        let run = check(&breaker_needed(seed));
        let late: Vec<_> = run
            .requests
            .iter()
            .filter(|(p, _)| p.at >= 250 * MS)
            .collect();
        assert!(late.len() > 100);
        assert!(late.iter().all(|(_, r)| r.served()), "seed {seed}");
    }
}

/// The check can fail: a manager that skips nodes whose breaker is open fails the requests
/// that need the restarted node, although t honest nodes are up.
#[test]
fn a_breaker_that_skips_live_nodes_is_caught() {
    for seed in [46, 47] {
        let mut s = breaker_needed(seed);
        s.manager = ManagerMode::SkipOpenBreakers;
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
