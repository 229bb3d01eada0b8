//! Invariant: a reshare keeps the public key, and the new shares are consistent with it.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use tkms_simulations::{
    dkg_node::DkgBehaviour,
    invariants::reshare_keeps_key,
    scenario::{run_reshare, Scenario},
    sim::MS,
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
