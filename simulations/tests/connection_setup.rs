//! Connection set-up (calibration against the emulated WAN, docs/BENCHMARKS.md): with
//! `net.connect` the first message between two nodes waits for their handshake, so on a
//! lossless link with no jitter a DKG takes exactly `trips` one-way latencies longer than
//! with links that exist from the start; later messages of the pair do not wait again. With
//! loss the DKG still completes, later, and a run replays bit for bit. (What a lost handshake
//! packet costs is tested in `simulations/src/connect.rs`.)

#![allow(clippy::unwrap_used)] // tests may panic on failure

use tkms_simulations::{
    connect::Connect,
    invariants::dkg_agreement,
    scenario::{run_dkg, CeremonyRun, Scenario},
    sim::MS,
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
fn a_lossy_handshake_still_completes_and_a_seed_replays() {
    let open = dkg(7, 10, 0.0, None).completion().unwrap();
    let lossy = dkg(7, 10, 0.1, Some(Connect::LIBP2P_TCP));
    assert!(lossy.completion().unwrap() > open, "{lossy:?}");
    assert_eq!(
        lossy.trace,
        dkg(7, 10, 0.1, Some(Connect::LIBP2P_TCP)).trace,
        "a seed replays bit for bit"
    );
}
