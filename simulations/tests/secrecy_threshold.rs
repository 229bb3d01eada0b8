//! Invariant: secrecy threshold. Lagrange over any t-1 correct shares does not give the secret
//! behind the public key (and t shares do).

#![allow(clippy::unwrap_used)] // tests may panic on failure

use tkms_simulations::{
    dkg_node::DkgBehaviour,
    invariants::secrecy_threshold,
    scenario::{run_dkg, Broken, Scenario},
    sim::MS,
};

#[test]
fn fewer_than_t_shares_never_reconstruct_the_key() {
    for seed in [11, 12, 13] {
        for (n, t) in [(4, 3), (7, 5), (9, 4)] {
            let s = Scenario::new(seed, n)
                .threshold(t)
                .dkg_fault(1, DkgBehaviour::BadShares);
            let run = run_dkg(&s).unwrap();
            if let Err(v) = secrecy_threshold(&run) {
                panic!("seed {seed} n {n} t {t}: {v}");
            }
        }
    }
}

#[test]
fn secrecy_holds_under_loss_reordering_and_a_crash_restart() {
    for seed in [14, 15, 16] {
        let mut s = Scenario::new(seed, 8)
            .threshold(6)
            .dkg_fault(2, DkgBehaviour::Equivocate)
            .crash(5, 20 * MS, Some(900 * MS));
        s.net.loss = 0.05;
        s.net.reorder = 0.3;
        let run = run_dkg(&s).unwrap();
        if let Err(v) = secrecy_threshold(&run) {
            panic!("seed {seed}: {v}");
        }
    }
}

/// The check can fail: a DKG run with threshold t-1 for a cluster meant to need t lets t-1
/// shares reconstruct the key, and the invariant says so.
#[test]
fn a_key_made_with_a_threshold_below_t_is_caught() {
    for seed in [11, 12, 13] {
        let mut s = Scenario::new(seed, 7).threshold(5);
        s.broken = Some(Broken::ThresholdTooLow);
        let run = run_dkg(&s).unwrap();
        let verdict = secrecy_threshold(&run);
        assert!(
            verdict
                .as_ref()
                .is_err_and(|v| v.contains("reconstruct the secret")),
            "seed {seed}: {verdict:?}"
        );
    }
}
