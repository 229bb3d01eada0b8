//! The CPU cost model: how long each protocol step keeps a node's (single) CPU busy, in virtual
//! µs. The simulator runs the real `tkms-crypto` code, but its virtual clock must not depend on
//! how fast the machine running the simulation is (same seed ⇒ same run, on any machine), so
//! the cost of a step is a formula in the sizes of the step (`n`, `t`, dealings and responses
//! processed), with coefficients fitted by least squares to wall-clock measurements of the
//! real round functions ([`measure`] and [`fit`], `tkms-simulations calibrate`; thread CPU time,
//! so a loaded machine does not inflate them).
//!
//! Shapes, from what each round function does:
//! - `deal(n, t) = a0 + a1·n + a2·t` — one ECIES encryption per recipient, `t` commitments;
//! - `respond(k, n, t) = k·(b0 + b1·n + b2·t)` — per dealing: validation (its signed digest
//!   covers `n` ciphertexts), decryption, a Feldman check of `t` terms;
//! - `finalize(k, r, n, t) = c0·k + c1·(k + r)·n + c2·n·t + c3·n²·t` — dealings re-validated,
//!   response signatures over `n` acknowledgements, `n` public shares of `t` terms (the last
//!   term takes up what grows faster than that at large `n`);
//! - `confirm(r) = d0 + d1·r`, `decode(bytes) = e0 + e1·bytes`;
//! - delegation: a partial with its proof, one proof verified, a combination of `t`.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tkms_crypto::{
    ceremony::{Body, Message},
    delegation::{self, DelegationRequest, PartialDelegation},
    dkg::{self, CeremonyConfig, Confirmation, Dealing, Response},
    shamir::SecretPolynomial,
    Error, KeyShare, NodeIndex, PublicKeySet, SecretScalar,
};

use crate::sim::Time;
use tkms_crypto::ClusterSuite as S;

/// Coefficients of the cost formulas, in µs (see the module docs for the shapes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuModel {
    /// `deal`: `[a0, a1, a2]`.
    pub deal: [f64; 3],
    /// `respond`: `[b0, b1, b2]`.
    pub respond: [f64; 3],
    /// `finalize`: `[c0, c1, c2, c3]`.
    pub finalize: [f64; 4],
    /// `confirm`: `[d0, d1]`.
    pub confirm: [f64; 2],
    /// `decode`: `[e0, e1]`.
    pub decode: [f64; 2],
    /// A delegation partial with its DLEQ proof (node).
    pub partial: f64,
    /// Verifying one partial's proof (manager).
    pub verify: f64,
    /// Combining `t` partials: `[f0, f1]`, `f0 + f1·t`.
    pub combine: [f64; 2],
    /// Every cost is multiplied by this (2.0: a machine twice as slow).
    pub slowdown: f64,
}

impl CpuModel {
    /// No CPU cost: every handler is instantaneous (network delays only).
    pub const FREE: Self = Self {
        deal: [0.0; 3],
        respond: [0.0; 3],
        finalize: [0.0; 4],
        confirm: [0.0; 2],
        decode: [0.0; 2],
        partial: 0.0,
        verify: 0.0,
        combine: [0.0; 2],
        slowdown: 1.0,
    };

    /// Fitted by `tkms-simulations calibrate` (release build, thread CPU time, minimum of 3) on
    /// the project's 2-core AMD EPYC VM, 2026-11-23, n = 4…128 with t = ⌊n/3⌋+1 and
    /// ⌊2n/3⌋+1. Measurements: `docs/simulations/calibration.csv`; model vs measured:
    /// `docs/simulations/calibration_fit.csv` (mostly within ±10%).
    pub const CALIBRATED: Self = Self {
        deal: [81.466, 107.794, 47.366],
        respond: [315.135, 6.2326, 16.0114],
        finalize: [463.305, 12.3603, 9.75281, 0.134_732],
        confirm: [-56.602, 110.112],
        decode: [-3.1743, 0.094_534],
        partial: 217.484,
        verify: 153.665,
        combine: [48.770, 12.1998],
        slowdown: 1.0,
    };

    /// The same model on a machine `factor` times slower.
    #[must_use]
    pub fn slower(mut self, factor: f64) -> Self {
        self.slowdown = factor;
        self
    }

    fn us(&self, value: f64) -> Time {
        // Non-negative and far below 2^53 µs: the conversion neither wraps nor loses sign.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let t = (value * self.slowdown).max(0.0).round() as Time;
        t
    }

    /// Round 1 for one dealer.
    pub fn deal(&self, n: usize, t: usize) -> Time {
        self.us(dot(&self.deal, &deal_features(n, t)))
    }

    /// Round 2 for one recipient over `k` dealings.
    pub fn respond(&self, k: usize, n: usize, t: usize) -> Time {
        self.us(dot(&self.respond, &respond_features(k, n, t)))
    }

    /// Round 3 for one node with `k` dealings and `r` responses.
    pub fn finalize(&self, k: usize, r: usize, n: usize, t: usize) -> Time {
        self.us(dot(&self.finalize, &finalize_features(k, r, n, t)))
    }

    /// Round 4 over `r` confirmations.
    pub fn confirm(&self, r: usize) -> Time {
        self.us(dot(&self.confirm, &[1.0, r as f64]))
    }

    /// Decoding one message of `bytes` bytes from the wire.
    pub fn decode(&self, bytes: usize) -> Time {
        self.us(dot(&self.decode, &[1.0, bytes as f64]))
    }

    /// A node's delegation partial.
    pub fn partial(&self) -> Time {
        self.us(self.partial)
    }

    /// The manager verifying one partial.
    pub fn verify(&self) -> Time {
        self.us(self.verify)
    }

    /// The manager combining `t` partials.
    pub fn combine(&self, t: usize) -> Time {
        self.us(dot(&self.combine, &[1.0, t as f64]))
    }

    /// The CPU time one node spends in a fault-free ceremony of `n` with threshold `t`, per
    /// round: `[deal + decoding n-1 dealings, respond, decoding n-1 responses + finalize,
    /// confirm]`. The message sizes are those of the real encodings (see
    /// [`ceremony_message_sizes`]).
    pub fn ceremony_rounds(&self, n: usize, t: usize) -> [Time; 4] {
        let (dealing, response) = ceremony_message_sizes(n, t);
        let peers = n.saturating_sub(1) as u64;
        [
            self.deal(n, t) + peers * self.decode(dealing),
            self.respond(n, n, t),
            peers * self.decode(response) + self.finalize(n, n, n, t),
            self.confirm(n),
        ]
    }
}

impl Default for CpuModel {
    fn default() -> Self {
        Self::CALIBRATED
    }
}

/// Wire sizes of a fault-free dealing and response message for `n` and `t` (the real
/// `to_bytes()` layout: a dealing carries `t` commitments, a proof of possession, `n`
/// ECIES-encrypted shares and a signature; a response `n` acknowledgements and a signature).
/// Checked against the real encodings in the tests.
pub fn ceremony_message_sizes(n: usize, t: usize) -> (usize, usize) {
    // attempt (4) + tag (1) + dealer (2) + length-prefixed commitments (4 + 33·t)
    // + PoP (33 + 32) + count (2) + n × length-prefixed ciphertext (4 + 33 + 12 + 32 + 16)
    // + signature (33 + 32).
    let dealing = 5 + 2 + 4 + 33 * t + 65 + 2 + 97 * n + 65;
    // attempt (4) + tag (1) + recipient (2) + count (2) + n × ack (2 + 32 + 65) + count (2)
    // + signature (65).
    let response = 5 + 2 + 2 + 99 * n + 2 + 65;
    (dealing, response)
}

fn dot<const N: usize>(c: &[f64; N], x: &[f64; N]) -> f64 {
    c.iter().zip(x).map(|(a, b)| a * b).sum()
}

fn deal_features(n: usize, t: usize) -> [f64; 3] {
    [1.0, n as f64, t as f64]
}

fn respond_features(k: usize, n: usize, t: usize) -> [f64; 3] {
    let k = k as f64;
    [k, k * n as f64, k * t as f64]
}

fn finalize_features(k: usize, r: usize, n: usize, t: usize) -> [f64; 4] {
    let (k, r, n, t) = (k as f64, r as f64, n as f64, t as f64);
    [k, (k + r) * n, n * t, n * n * t]
}

/// One calibration measurement: wall-clock µs of the real round functions for one node.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Committee size.
    pub n: usize,
    /// Threshold.
    pub t: usize,
    /// `dkg::deal`.
    pub deal: f64,
    /// `dkg::respond` over `n` dealings.
    pub respond: f64,
    /// `dkg::finalize` with `n` dealings and `n` responses.
    pub finalize: f64,
    /// `dkg::confirm` over `n` confirmations.
    pub confirm: f64,
    /// Decoding one dealing message, and its size.
    pub decode_dealing: (f64, usize),
    /// Decoding one response message, and its size.
    pub decode_response: (f64, usize),
    /// Delegation: partial, verify one, combine `t`.
    pub delegation: [f64; 3],
}

impl Sample {
    /// CSV header.
    pub const HEADER: &'static str = "n,t,deal_us,respond_us,finalize_us,confirm_us,decode_dealing_us,dealing_bytes,decode_response_us,response_bytes,partial_us,verify_us,combine_us";

    /// One CSV line.
    pub fn csv_row(&self) -> String {
        format!(
            "{},{},{:.1},{:.1},{:.1},{:.1},{:.1},{},{:.1},{},{:.1},{:.1},{:.1}",
            self.n,
            self.t,
            self.deal,
            self.respond,
            self.finalize,
            self.confirm,
            self.decode_dealing.0,
            self.decode_dealing.1,
            self.decode_response.0,
            self.decode_response.1,
            self.delegation[0],
            self.delegation[1],
            self.delegation[2],
        )
    }
}

/// This thread's CPU time in µs (not wall clock: other processes on the machine do not inflate
/// it).
fn thread_cpu_us() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 * 1e6 + t.tv_nsec as f64 / 1e3
}

/// The minimum thread CPU µs of `reps` runs of `f`.
fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..reps.max(1) {
        let start = thread_cpu_us();
        let v = f();
        best = best.min(thread_cpu_us() - start);
        last = Some(v);
    }
    (best, last.expect("at least one repetition"))
}

fn idx(i: usize) -> NodeIndex {
    NodeIndex::new(u16::try_from(i).expect("committee fits in u16")).expect("indices start at 1")
}

/// Measure the real round functions for one node of a fault-free ceremony of `n` with
/// threshold `t` (wall clock, minimum of `reps` runs; the other nodes' messages are made with
/// the same functions, untimed).
pub fn measure(n: usize, t: usize, reps: usize, seed: u64) -> Result<Sample, Error> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let keys: Vec<SecretScalar<S>> = (0..n).map(|_| SecretScalar::random(&mut rng)).collect();
    let committee = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (idx(i + 1), k.public_point()))
        .collect();
    let t16 = u16::try_from(t).expect("threshold fits in u16");
    let config = CeremonyConfig::<S>::dkg(1, t16, committee)?;
    let me = idx(1);
    let (deal, _) = time(reps, || dkg::deal(&config, me, &keys[0], None, &mut rng));
    let dealings: Vec<Dealing<S>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| dkg::deal(&config, idx(i + 1), k, None, &mut rng))
        .collect::<Result<_, _>>()?;
    let dealing_bytes = Message::new(0, Body::Dealing(dealings[1].clone())).to_bytes();
    let (decode_dealing, _) = time(reps, || Message::<S>::from_bytes(&dealing_bytes));
    let (respond, mine) = time(reps, || {
        dkg::respond(&config, me, &keys[0], &dealings, &mut rng)
    });
    let (_, received) = mine?;
    let mut responses: Vec<Response<S>> = Vec::with_capacity(n);
    for (i, k) in keys.iter().enumerate() {
        responses.push(dkg::respond(&config, idx(i + 1), k, &dealings, &mut rng)?.0);
    }
    let response_bytes = Message::new(0, Body::Response(responses[1].clone())).to_bytes();
    let (decode_response, _) = time(reps, || Message::<S>::from_bytes(&response_bytes));
    let (finalize, output) = time(reps, || {
        dkg::finalize(
            &config, &keys[0], &received, &dealings, &responses, &mut rng,
        )
    });
    let (output, confirmation) = output?;
    // Round 4 verifies every confirmation's signature: time `n` of them (copies of this node's
    // own; the verdict does not matter here).
    let confirmations: Vec<Confirmation<S>> = confirmation.into_iter().cycle().take(n).collect();
    let (confirm, _) = time(reps, || dkg::confirm(&config, &output, &confirmations));
    Ok(Sample {
        n,
        t,
        deal,
        respond,
        finalize,
        confirm,
        decode_dealing: (decode_dealing, dealing_bytes.len()),
        decode_response: (decode_response, response_bytes.len()),
        delegation: measure_delegation(t, reps.max(20), &mut rng)?,
    })
}

fn measure_delegation(t: usize, reps: usize, rng: &mut ChaCha20Rng) -> Result<[f64; 3], Error> {
    let t16 = u16::try_from(t).expect("threshold fits in u16");
    let poly = SecretPolynomial::<S>::random(t16, rng);
    let keys = PublicKeySet::new(poly.commit(), (1..=t).map(idx));
    let shares: Vec<KeyShare<S>> = (1..=t)
        .filter_map(|i| Some(KeyShare::new(idx(i), poly.evaluate(idx(i))?)))
        .collect();
    let request = DelegationRequest::new(
        1,
        b"calibrate".to_vec(),
        SecretScalar::<S>::random(rng).public_point(),
    );
    let (partial, _) = time(reps, || {
        PartialDelegation::create(&shares[0], &request, rng)
    });
    let partials: Vec<PartialDelegation<S>> = shares
        .iter()
        .map(|s| PartialDelegation::create(s, &request, rng))
        .collect();
    let (verify, _) = time(reps, || partials[0].clone().verify(&keys, &request));
    let (verified, errors) = delegation::verify_all(partials, &keys, &request, rng);
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    let (combine, _) = time(reps, || delegation::combine(&verified, &keys));
    Ok([partial, verify, combine])
}

/// Least squares on relative error, `argmin Σ ((x·c - y) / y)²`, so small and large committees
/// weigh alike.
fn relative_least_squares<const N: usize>(rows: &[([f64; N], f64)]) -> [f64; N] {
    let weighted: Vec<([f64; N], f64)> = rows
        .iter()
        .filter(|(_, y)| *y > 0.0)
        .map(|(x, y)| (x.map(|v| v / y), 1.0))
        .collect();
    least_squares(&weighted)
}

/// Least squares `argmin ‖X·c - y‖` by the normal equations (tiny, well-conditioned after
/// column scaling).
fn least_squares<const N: usize>(rows: &[([f64; N], f64)]) -> [f64; N] {
    let mut scale = [0.0f64; N];
    for (x, _) in rows {
        for (s, v) in scale.iter_mut().zip(x) {
            *s = s.max(v.abs());
        }
    }
    for s in &mut scale {
        if *s == 0.0 {
            *s = 1.0;
        }
    }
    let mut a = [[0.0f64; N]; N];
    let mut b = [0.0f64; N];
    for (x, y) in rows {
        let x: Vec<f64> = x.iter().zip(&scale).map(|(v, s)| v / s).collect();
        for i in 0..N {
            b[i] += x[i] * y;
            for j in 0..N {
                a[i][j] += x[i] * x[j];
            }
        }
    }
    // Gaussian elimination with partial pivoting.
    for col in 0..N {
        let pivot = (col..N)
            .max_by(|p, q| a[*p][col].abs().total_cmp(&a[*q][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        let d = a[col][col];
        if d.abs() < 1e-12 {
            continue;
        }
        let pivot_row = a[col];
        let pivot_b = b[col];
        for (row, (a_row, b_row)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
            if row != col {
                let f = a_row[col] / d;
                for (x, p) in a_row.iter_mut().zip(pivot_row) {
                    *x -= f * p;
                }
                *b_row -= f * pivot_b;
            }
        }
    }
    let mut c = [0.0f64; N];
    for i in 0..N {
        if a[i][i].abs() >= 1e-12 {
            c[i] = b[i] / a[i][i] / scale[i];
        }
    }
    c
}

/// Fit a [`CpuModel`] to calibration samples.
pub fn fit(samples: &[Sample]) -> CpuModel {
    let rows = |f: &dyn Fn(&Sample) -> (Vec<f64>, f64)| -> Vec<(Vec<f64>, f64)> {
        samples.iter().map(f).collect()
    };
    let arr3 = |v: Vec<(Vec<f64>, f64)>| -> Vec<([f64; 3], f64)> {
        v.into_iter()
            .map(|(x, y)| ([x[0], x[1], x[2]], y))
            .collect()
    };
    let deal = relative_least_squares(&arr3(rows(&|s| (deal_features(s.n, s.t).to_vec(), s.deal))));
    let respond = relative_least_squares(&arr3(rows(&|s| {
        (respond_features(s.n, s.n, s.t).to_vec(), s.respond)
    })));
    let finalize = relative_least_squares(
        &samples
            .iter()
            .map(|s| (finalize_features(s.n, s.n, s.n, s.t), s.finalize))
            .collect::<Vec<_>>(),
    );
    let confirm = relative_least_squares(
        &samples
            .iter()
            .map(|s| ([1.0, s.n as f64], s.confirm))
            .collect::<Vec<_>>(),
    );
    let decode = relative_least_squares(
        &samples
            .iter()
            .flat_map(|s| {
                [
                    ([1.0, s.decode_dealing.1 as f64], s.decode_dealing.0),
                    ([1.0, s.decode_response.1 as f64], s.decode_response.0),
                ]
            })
            .collect::<Vec<_>>(),
    );
    let combine = relative_least_squares(
        &samples
            .iter()
            .map(|s| ([1.0, s.t as f64], s.delegation[2]))
            .collect::<Vec<_>>(),
    );
    let mean = |i: usize| {
        samples.iter().map(|s| s.delegation[i]).sum::<f64>() / samples.len().max(1) as f64
    };
    CpuModel {
        deal,
        respond,
        finalize,
        confirm,
        decode,
        partial: mean(0),
        verify: mean(1),
        combine,
        slowdown: 1.0,
    }
}

/// The model's prediction for a sample's sizes, in the [`Sample`] layout (for the fit report).
pub fn predict(model: &CpuModel, n: usize, t: usize) -> [Time; 4] {
    [
        model.deal(n, t),
        model.respond(n, n, t),
        model.finalize(n, n, n, t),
        model.confirm(n),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_squares_recovers_an_exact_linear_law() {
        let law = [3.0, 0.5, 0.25];
        let rows: Vec<([f64; 3], f64)> = [(4.0, 3.0), (8.0, 6.0), (16.0, 11.0), (32.0, 22.0)]
            .iter()
            .map(|(n, t)| {
                let x = [1.0, *n, n * t];
                (x, dot(&law, &x))
            })
            .collect();
        let c = least_squares(&rows);
        for (a, b) in c.iter().zip(law) {
            assert!((a - b).abs() < 1e-6, "{c:?}");
        }
    }

    #[test]
    fn modelled_message_sizes_are_the_real_encodings() {
        let s = measure(5, 4, 1, 3).expect("a fault-free ceremony");
        assert_eq!(
            ceremony_message_sizes(5, 4),
            (s.decode_dealing.1, s.decode_response.1)
        );
    }

    #[test]
    fn costs_grow_with_the_committee() {
        let m = CpuModel::CALIBRATED;
        let small = m.ceremony_rounds(16, 11);
        let large = m.ceremony_rounds(64, 43);
        assert!(
            small.iter().zip(&large).all(|(s, l)| s < l),
            "{small:?} {large:?}"
        );
        assert_eq!(CpuModel::FREE.ceremony_rounds(64, 43), [0; 4]);
    }
}
