//! Same seed ⇒ same run, bit for bit; another seed ⇒ another run.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use tkms_simulations::{
    dkg_node::DkgBehaviour,
    scenario::{run_delegation, run_dkg, RunMetrics, Scenario},
    sim::MS,
};

fn dkg_fingerprint(seed: u64) -> (u64, String, Vec<u8>) {
    let mut s = Scenario::new(seed, 6)
        .dkg_fault(2, DkgBehaviour::Equivocate)
        .crash(4, 10 * MS, Some(500 * MS));
    s.net.loss = 0.1;
    s.net.reorder = 0.3;
    let run = run_dkg(&s).unwrap();
    let pk = run
        .public()
        .map(|p| p.public_key_encoded().bytes().to_vec())
        .unwrap_or_default();
    (run.trace, RunMetrics::dkg(&s, &run).csv_row(), pk)
}

#[test]
fn same_seed_same_run() {
    assert_eq!(dkg_fingerprint(7), dkg_fingerprint(7));
    assert_ne!(dkg_fingerprint(7).0, dkg_fingerprint(8).0);
    let s = Scenario::new(9, 5);
    let a = run_delegation(&s).unwrap();
    let b = run_delegation(&s).unwrap();
    assert_eq!(a.trace, b.trace);
    let secrets = |r: &tkms_simulations::scenario::DelegationRun| {
        r.requests.iter().map(|(_, r)| r.secret).collect::<Vec<_>>()
    };
    assert_eq!(secrets(&a), secrets(&b));
}
