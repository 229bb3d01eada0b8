//! Connection set-up (calibration against the emulated WAN, docs/BENCHMARKS.md): with
//! `net.connect` the first message between two nodes waits for their handshake, so on a
//! lossless link with no jitter a DKG takes exactly `trips` one-way latencies longer than
//! with links that exist from the start; later messages of the pair do not wait again. A
//! lost SYN costs Linux's 1 s retransmission timeout; a run replays bit for bit.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use tkms_simulations::{
    connect::Connect,
    invariants::dkg_agreement,
    scenario::{run_dkg, CeremonyRun, Scenario},
    sim::{MS, SECOND},
};

fn dkg(seed: u64, latency_ms: u64, loss: f64, connect: Option<Connect>) -> CeremonyRun {
    let mut s = Scenario::new(seed, 5).threshold(3);
    s.net.latency.base = latency_ms * MS;
    s.net.latency.jitter = 0;
    s.net.loss = loss;
    s.net.connect = connect;
    let run = run_dkg(&s).unwrap();
    if let Err(v) = dkg_agreement(&run) {
        panic!("seed {seed}: {v}");
    }
    run
}

#[test]
fn the_first_message_of_each_pair_waits_for_the_handshake_and_only_the_first() {
    for latency_ms in [10, 25, 75] {
        let open = dkg(1, latency_ms, 0.0, None).completion().unwrap();
        let dialed = dkg(1, latency_ms, 0.0, Some(Connect::LIBP2P_TCP))
            .completion()
            .unwrap();
        assert_eq!(
            dialed - open,
            u64::from(Connect::LIBP2P_TCP.trips) * latency_ms * MS,
            "at {latency_ms} ms one way: {open} µs with open links, {dialed} µs dialing"
        );
    }
}

#[test]
fn a_lost_syn_costs_a_second_and_a_seed_replays() {
    // Every handshake packet lost once at most: with loss this high some SYN is lost.
    let syn_lost = Connect {
        trips: 2,
        syn_retransmit: SECOND,
    };
    let open = dkg(7, 10, 0.0, None).completion().unwrap();
    let lossy = dkg(7, 10, 0.3, Some(syn_lost));
    assert!(
        lossy.completion().unwrap() >= open + SECOND,
        "{} µs",
        lossy.completion().unwrap()
    );
    assert_eq!(
        lossy.trace,
        dkg(7, 10, 0.3, Some(syn_lost)).trace,
        "a seed replays bit for bit"
    );
}
