//! Invariant: DKG agreement. All correct nodes finish with the same public key, public shares
//! and transcript, with shares consistent with the key, or all abort.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use tkms_simulations::{
    dkg_node::DkgBehaviour::{self, *},
    invariants::dkg_agreement,
    scenario::{node_addrs, run_dkg, Broken, Scenario},
    sim::{Jitter, Partition, MS},
};

const SEEDS: [u64; 4] = [1, 2, 3, 4];

fn check(s: &Scenario) -> bool {
    let run = run_dkg(s).unwrap();
    if let Err(v) = dkg_agreement(&run) {
        panic!("seed {} n {} t {}: {v}", s.seed, s.n, s.t);
    }
    run.public().is_some()
}

#[test]
fn byzantine_dealers_up_to_n_minus_t_are_excluded_and_honest_nodes_agree() {
    let mixes: [&[(u16, DkgBehaviour)]; 3] = [
        &[(2, BadShares), (5, Equivocate)],
        &[(1, GarbageShares), (3, BadProofOfPossession)],
        &[(4, FalseAccuser), (7, Silent)],
    ];
    for seed in SEEDS {
        for faults in mixes {
            let mut s = Scenario::new(seed, 7).threshold(5);
            for (i, b) in faults {
                s = s.dkg_fault(*i, *b);
            }
            assert!(check(&s), "seed {seed}: DKG should succeed with {faults:?}");
        }
    }
}

#[test]
fn agreement_under_loss_reordering_heavy_tails_and_a_crash_restart() {
    for seed in SEEDS {
        let mut s =
            Scenario::new(seed, 10)
                .dkg_fault(3, BadShares)
                .crash(6, 30 * MS, Some(1_500 * MS));
        s.net.loss = 0.05;
        s.net.reorder = 0.2;
        s.net.latency.dist = Jitter::Exponential;
        check(&s);
    }
}

#[test]
fn agreement_when_a_partition_cuts_two_nodes_off_during_the_first_rounds() {
    for seed in SEEDS {
        let mut all = node_addrs(9);
        all.push(0);
        let mut s = Scenario::new(seed, 9).dkg_fault(5, Equivocate);
        s.net
            .partitions
            .push(Partition::isolate(&[2, 8], &all, 0, 2_500 * MS));
        s.net.loss = 0.02;
        check(&s);
    }
}

#[test]
fn too_many_faulty_dealers_make_every_honest_node_abort() {
    for seed in SEEDS {
        let s = Scenario::new(seed, 5)
            .threshold(4)
            .dkg_fault(1, Silent)
            .dkg_fault(2, BadProofOfPossession);
        assert!(!check(&s), "seed {seed}: 3 good dealers < t = 4 must abort");
    }
}

/// The check can fail: one honest node handed a different configuration (a distribution bug)
/// ends differently from the rest, and agreement says so.
#[test]
fn a_node_with_a_divergent_configuration_is_caught() {
    for seed in SEEDS {
        let mut s = Scenario::new(seed, 7).threshold(5);
        s.broken = Some(Broken::DivergentConfig(3));
        let run = run_dkg(&s).unwrap();
        let verdict = dkg_agreement(&run);
        assert!(
            verdict.as_ref().is_err_and(|v| v.contains("split outcome")),
            "seed {seed}: {verdict:?}"
        );
    }
}
