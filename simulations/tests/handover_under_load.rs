//! Invariant: no request is lost to an epoch switch. A 5/3 cluster under a steady load is
//! reshared to 7/4; the manager may crash at any step of the reshare and restart with only its
//! state file; a node may die during the ceremony. Every request the manager answers is served,
//! and at the end every node agrees on the committed epoch, with no superseded share left.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use tkms_simulations::{
    handover::{handover_invariant, run_handover, HandoverBroken, HandoverScenario},
    sim::{Crash, MS},
};

fn check(s: &HandoverScenario) -> tkms_simulations::handover::HandoverRun {
    let run = run_handover(s).unwrap();
    if let Err(v) = handover_invariant(&run) {
        panic!("seed {}: {v}", s.seed);
    }
    run
}

#[test]
fn requests_across_the_switch_are_all_served() {
    for seed in [51, 52, 53] {
        let run = check(&HandoverScenario::new(seed));
        assert_eq!(run.serving, Some(run.new_epoch));
        let on = |e: u64| {
            run.records
                .iter()
                .filter(|r| r.epoch == e && r.served)
                .count()
        };
        assert!(on(1) > 50 && on(2) > 50, "{} / {}", on(1), on(2));
        assert!(run.records.iter().all(|r| !r.interrupted));
    }
}

#[test]
fn a_manager_crash_at_any_step_of_the_reshare_loses_nothing() {
    // From just after the start requests left to well after the commit: before, during and
    // after the nodes' ceremony, before and after the manager records the commit, before and
    // after it tells the nodes.
    for (k, offset) in [1, 5, 10, 30, 50, 70, 90, 110, 150, 250, 600, 1200]
        .into_iter()
        .enumerate()
    {
        let seed = 60 + k as u64;
        let mut s = HandoverScenario::new(seed);
        let at = s.reshare_at + offset * MS;
        s.crashes.push(Crash {
            node: 0,
            at,
            restart: Some(at + 150 * MS),
        });
        let run = check(&s);
        assert_eq!(run.serving, Some(run.new_epoch), "crash {offset} ms in");
    }
}

#[test]
fn a_node_killed_during_the_reshare_is_dropped_then_retired() {
    for seed in [71, 72] {
        let mut s = HandoverScenario::new(seed);
        s.crashes.push(Crash {
            node: 3,
            at: s.reshare_at + 5 * MS,
            restart: Some(s.reshare_at + 1500 * MS),
        });
        let run = check(&s);
        let node3 = run.nodes.iter().find(|(a, _, _)| *a == 3).unwrap();
        assert!(node3.1.is_empty(), "node 3 holds {:?}", node3.1);
        assert_eq!(node3.2, run.new_epoch);
    }
}

/// The check can fail: nodes that drop the old epoch as soon as their part of the ceremony
/// ends fail the requests sent before the manager switches.
#[test]
fn nodes_that_switch_on_finishing_are_caught() {
    let mut s = HandoverScenario::new(81);
    s.broken = Some(HandoverBroken::NodesSwitchOnFinish);
    let run = run_handover(&s).unwrap();
    let verdict = handover_invariant(&run);
    assert!(
        verdict.as_ref().is_err_and(|v| v.contains("failed")),
        "{verdict:?}"
    );
}

/// The check can fail: a manager that trusts its file never finishes the ceremony its crash
/// interrupted, and never tells the nodes.
#[test]
fn a_manager_that_trusts_its_file_is_caught() {
    let mut s = HandoverScenario::new(82);
    s.broken = Some(HandoverBroken::ManagerTrustsItsFile);
    let at = s.reshare_at + 10 * MS;
    s.crashes.push(Crash {
        node: 0,
        at,
        restart: Some(at + 150 * MS),
    });
    let run = run_handover(&s).unwrap();
    let verdict = handover_invariant(&run);
    assert!(
        verdict.as_ref().is_err_and(|v| v.contains("still holds")),
        "{verdict:?}"
    );
}
