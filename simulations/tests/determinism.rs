//! Same seed ⇒ same run, bit for bit; another seed ⇒ another run.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use tkms_simulations::{
    dkg_node::{DkgBehaviour, Rounds},
    scenario::{run_delegation, run_dkg, DelegationRun, RunMetrics, Scenario},
    sim::MS,
};

fn dkg_fingerprint(s: &Scenario) -> (u64, String, Vec<u8>) {
    let run = run_dkg(s).unwrap();
    let pk = run
        .public()
        .map(|p| p.public_key_encoded().bytes().to_vec())
        .unwrap_or_default();
    (run.trace, RunMetrics::dkg(s, &run).csv_row(), pk)
}

fn faulty(seed: u64) -> Scenario {
    let mut s = Scenario::new(seed, 6)
        .dkg_fault(2, DkgBehaviour::Equivocate)
        .crash(4, 10 * MS, Some(500 * MS));
    s.net.loss = 0.1;
    s.net.reorder = 0.3;
    s
}

#[test]
fn same_seed_same_run() {
    assert_eq!(dkg_fingerprint(&faulty(7)), dkg_fingerprint(&faulty(7)));
    assert_ne!(dkg_fingerprint(&faulty(7)).0, dkg_fingerprint(&faulty(8)).0);
    let s = Scenario::new(9, 5);
    let a = run_delegation(&s).unwrap();
    let b = run_delegation(&s).unwrap();
    assert_eq!(a.trace, b.trace);
    let secrets = |r: &DelegationRun| r.requests.iter().map(|(_, r)| r.secret).collect::<Vec<_>>();
    assert_eq!(secrets(&a), secrets(&b));
}

#[test]
fn same_seed_same_run_with_fixed_phases_and_a_slow_cpu() {
    let s = |seed| {
        let mut s = faulty(seed);
        s.rounds = Rounds::FixedPhases;
        s.timeouts.round = 150 * MS;
        s.cpu = s.cpu.slower(5.0);
        s
    };
    assert_eq!(dkg_fingerprint(&s(3)), dkg_fingerprint(&s(3)));
    assert_ne!(dkg_fingerprint(&s(3)).0, dkg_fingerprint(&s(4)).0);
}
