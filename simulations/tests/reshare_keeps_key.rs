//! Invariant: a reshare keeps the public key, and the new shares are consistent with it.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use tkms_simulations::{
    dkg_node::DkgBehaviour,
    invariants::reshare_keeps_key,
    scenario::{node_addrs, run_reshare, Broken, Scenario},
    sim::{Partition, MS},
};

fn check(s: &Scenario) {
    let run = run_reshare(s).unwrap();
    if let Err(v) = reshare_keeps_key(&run) {
        panic!("seed {}: {v}", s.seed);
    }
}

#[test]
fn proactive_refresh_with_a_silent_and_a_cheating_dealer() {
    for seed in [21, 22, 23] {
        let s = Scenario::new(seed, 7)
            .threshold(4)
            .dkg_fault(2, DkgBehaviour::Silent)
            .dkg_fault(6, DkgBehaviour::BadShares);
        check(&s);
    }
}

#[test]
fn growing_the_committee_and_raising_the_threshold() {
    for seed in [24, 25, 26] {
        let mut s = Scenario::new(seed, 5).threshold(3).crash(4, 10 * MS, None);
        s.reshare_to = Some((8, 6));
        s.net.reorder = 0.3;
        check(&s);
    }
}

#[test]
fn refresh_under_loss_a_healing_partition_and_a_crash_restart() {
    for seed in [27, 28, 29] {
        let mut all = node_addrs(8);
        all.push(0);
        let mut s = Scenario::new(seed, 8)
            .dkg_fault(1, DkgBehaviour::Equivocate)
            .crash(6, 5 * MS, Some(1_200 * MS));
        s.net.loss = 0.05;
        s.net.reorder = 0.2;
        s.net
            .partitions
            .push(Partition::isolate(&[3], &all, 0, 1_000 * MS));
        check(&s);
    }
}

/// The check can fail: a "reshare" that is in fact a fresh DKG changes the key, and the
/// invariant says so.
#[test]
fn a_reshare_that_makes_a_new_key_is_caught() {
    for seed in [21, 22, 23] {
        let mut s = Scenario::new(seed, 6).threshold(4);
        s.broken = Some(Broken::FreshDkgAsReshare);
        let run = run_reshare(&s).unwrap();
        let verdict = reshare_keeps_key(&run);
        assert!(
            verdict
                .as_ref()
                .is_err_and(|v| v.contains("changed the public key")),
            "seed {seed}: {verdict:?}"
        );
    }
}
