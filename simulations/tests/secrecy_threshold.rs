//! Invariant: secrecy threshold. Lagrange over any t-1 correct shares does not give the secret
//! behind the public key (and t shares do).

#![allow(clippy::unwrap_used)] // tests may panic on failure

use tkms_simulations::{
    dkg_node::DkgBehaviour,
    invariants::secrecy_threshold,
    scenario::{run_dkg, Scenario},
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
