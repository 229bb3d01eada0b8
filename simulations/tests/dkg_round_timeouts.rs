//! The DKG completes when its rounds' work takes longer than its round timeout: tkms's rounds
//! end when every message is in, and a timeout only bounds the wait for a silent peer. Under
//! drand-style fixed phases of the same length, the same work misses its phase and the DKG
//! fails (how drand's DKG failed at n = 65 on 10 s phases). The CPU cost model is slowed down
//! 20× so a small committee shows it quickly (the `timeouts` sweep shows it at scale).

#![allow(clippy::unwrap_used)] // tests may panic on failure

use tkms_simulations::{
    cpu::CpuModel,
    dkg_node::{DkgBehaviour, Rounds},
    invariants::dkg_agreement,
    scenario::{run_dkg, CeremonyRun, Scenario},
    sim::MS,
};

fn slow_cpu_short_rounds(seed: u64, rounds: Rounds) -> CeremonyRun {
    let mut s = Scenario::new(seed, 8);
    s.cpu = CpuModel::CALIBRATED.slower(20.0);
    s.rounds = rounds;
    s.timeouts.round = 50 * MS;
    s.net.latency.base = MS;
    s.net.latency.jitter = MS;
    let run = run_dkg(&s).unwrap();
    if let Err(v) = dkg_agreement(&run) {
        panic!("seed {seed} {rounds:?}: {v}");
    }
    run
}

#[test]
fn round_two_takes_longer_than_a_round() {
    let m = CpuModel::CALIBRATED.slower(20.0);
    assert!(m.respond(8, 8, 6) > 50 * MS, "{}", m.respond(8, 8, 6));
}

#[test]
fn event_driven_rounds_complete_where_fixed_phases_of_the_same_length_fail() {
    for seed in [51, 52, 53] {
        let tkms = slow_cpu_short_rounds(seed, Rounds::EventDriven);
        assert!(tkms.public().is_some(), "seed {seed}: tkms should complete");
        let fixed = slow_cpu_short_rounds(seed, Rounds::FixedPhases);
        assert!(
            fixed.public().is_none(),
            "seed {seed}: fixed phases should fail"
        );
        assert!(
            fixed.late > 0,
            "seed {seed}: messages should miss their phase"
        );
    }
}

#[test]
fn a_silent_node_costs_one_timeout_per_round_it_is_waited_for() {
    let mut s = Scenario::new(54, 8).dkg_fault(4, DkgBehaviour::Silent);
    s.timeouts.round = 400 * MS;
    let run = run_dkg(&s).unwrap();
    dkg_agreement(&run).unwrap();
    let done = run.completion().unwrap();
    // Rounds 1, 2 and 3 each wait one timeout for the silent node's dealing, response and
    // confirmation: three timeouts plus the work, not more.
    assert!((1_200 * MS..2_000 * MS).contains(&done), "{done}");
}
