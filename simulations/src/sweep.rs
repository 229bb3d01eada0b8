//! Sweeps: many scenario runs over a grid, written as CSV (one file per sweep, one row per run
//! or per point) and rendered as SVG by [`crate::plot`]. Points run in parallel (rayon); every
//! run is its own seeded simulation, so the CSV is the same whatever the thread count.
//!
//! - `ceremony`: DKG and reshare (proactive refresh) time, messages and bytes for
//!   n = 4…128, t = ⌊2n/3⌋+1, with the calibrated CPU model.
//! - `delegation`: success rate and latency (p50/p99) against the fraction of crashed nodes
//!   and of byzantine (wrong-partial) nodes.
//! - `timeouts`: DKG outcome against n for tkms's event-driven rounds and for drand-style
//!   fixed phases of the same length, and the modelled per-round CPU time against n.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

use crate::cpu::CpuModel;
use crate::delegation::NodeFault;
use crate::dkg_node::Rounds;
use crate::invariants;
use crate::plot;
use crate::scenario::{
    default_threshold, run_delegation_from, run_dkg, run_reshare, CeremonyRun, DelegationSetup,
    Scenario,
};
use crate::sim::{Crash, Time, MS, SECOND};

/// Which sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sweep {
    /// DKG and reshare time, messages and bytes vs n.
    Ceremony,
    /// Delegation success rate and latency vs crashed / byzantine fraction.
    Delegation,
    /// Fixed phase timeouts vs tkms's event-driven rounds, vs n.
    Timeouts,
    /// All three.
    All,
}

/// Committee sizes of the ceremony sweep.
pub const CEREMONY_NS: [u16; 6] = [4, 8, 16, 32, 64, 128];
/// Committee sizes of the timeout study.
pub const TIMEOUT_NS: [u16; 5] = [16, 32, 64, 96, 128];
/// Phase lengths of the drand-style fixed phases, ms.
pub const FIXED_PHASES_MS: [u64; 3] = [100, 250, 500];
/// Round timeouts of tkms's event-driven rounds, ms: the shortest fixed phase, and the default.
pub const TKMS_ROUNDS_MS: [u64; 2] = [100, 2000];
/// Faulty fractions of the delegation sweep, in percent.
pub const FAULT_PERCENTS: [u16; 8] = [0, 10, 20, 30, 35, 40, 50, 60];
/// Committee sizes of the delegation sweep.
pub const DELEGATION_NS: [u16; 2] = [16, 64];

fn ms(t: Time) -> f64 {
    t as f64 / MS as f64
}

fn write(path: &Path, header: &str, rows: &[String]) -> anyhow::Result<()> {
    let mut s = String::with_capacity(rows.len() * 80);
    s.push_str(header);
    s.push('\n');
    for r in rows {
        s.push_str(r);
        s.push('\n');
    }
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

/// Run `sweep` with base seed `seed`, `seeds` seeds per point (default per sweep), committees
/// up to `max_n`, writing CSV and SVG into `out`.
pub fn run(
    sweep: Sweep,
    seed: u64,
    seeds: Option<u64>,
    max_n: Option<u16>,
    out: &Path,
) -> anyhow::Result<()> {
    let max_n = max_n.unwrap_or(u16::MAX);
    if matches!(sweep, Sweep::Ceremony | Sweep::All) {
        ceremony(seed, seeds.unwrap_or(3), max_n, out)?;
    }
    if matches!(sweep, Sweep::Delegation | Sweep::All) {
        delegation(seed, seeds.unwrap_or(4), max_n, out)?;
    }
    if matches!(sweep, Sweep::Timeouts | Sweep::All) {
        timeouts(seed, seeds.unwrap_or(1), max_n, out)?;
    }
    Ok(())
}

/// One ceremony run as a CSV row: phase, n, t, seed, success, completion, attempts, traffic,
/// the busiest node's CPU, and the invariant's verdict.
fn ceremony_row(phase: &str, seed: u64, run: &CeremonyRun, verdict: Result<(), String>) -> String {
    let correct = run.nodes.values().filter(|o| o.is_correct());
    let success =
        correct.clone().count() > 0 && correct.clone().all(|o| matches!(o.result, Some(Ok(_))));
    let attempts = run.nodes.values().map(|o| o.attempt).max().unwrap_or(0) + 1;
    let mut row = String::new();
    let _ = write!(
        row,
        "{phase},{},{},{seed},{success},{:.1},{attempts},{},{},{:.1},{},{}",
        run.config.recipients().len(),
        run.config.threshold(),
        ms(run.completion().unwrap_or(run.end)),
        run.stats.sent,
        run.stats.bytes,
        ms(run.max_cpu),
        run.late,
        verdict
            .err()
            .unwrap_or_else(|| "ok".into())
            .replace(',', ";"),
    );
    row
}

const CEREMONY_HEADER: &str =
    "phase,n,t,seed,success,completion_ms,attempts,messages,bytes,max_cpu_ms,late,invariant";

/// Sweep (a): a DKG then a proactive refresh (reshare to the same committee) per point.
/// Seeds per point: `seeds` up to n = 32, one above (n = 128 is minutes of real crypto).
pub fn ceremony(seed: u64, seeds: u64, max_n: u16, out: &Path) -> anyhow::Result<()> {
    let mut points: Vec<(u16, u64)> = CEREMONY_NS
        .iter()
        .filter(|n| **n <= max_n)
        .flat_map(|n| {
            let k = if *n > 32 { 1 } else { seeds.max(1) };
            (0..k).map(move |i| (*n, seed + i))
        })
        .collect();
    // Largest first, so the longest run starts at once.
    points.sort_by_key(|(n, s)| (std::cmp::Reverse(*n), *s));
    let rows: Vec<anyhow::Result<[String; 2]>> = points
        .par_iter()
        .map(|(n, s)| {
            let scenario = Scenario::new(*s, *n);
            let run = run_reshare(&scenario)?;
            let dkg = ceremony_row("dkg", *s, &run.dkg, invariants::dkg_agreement(&run.dkg));
            let reshare = ceremony_row(
                "reshare",
                *s,
                &run.reshare,
                invariants::reshare_keeps_key(&run),
            );
            eprintln!("ceremony n={n} seed={s} done");
            Ok([dkg, reshare])
        })
        .collect();
    let mut lines = Vec::new();
    for r in rows {
        lines.extend(r?);
    }
    lines.sort_by_key(|l| sort_key(l));
    let path = out.join("ceremony.csv");
    write(&path, CEREMONY_HEADER, &lines)?;
    plot::ceremony(&path, out)
}

/// Rows sort by (first field, n, seed) numerically, so the CSV is stable.
fn sort_key(line: &str) -> (String, u64, u64, u64) {
    let f: Vec<&str> = line.split(',').collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
    (f[0].to_owned(), num(1), num(2), num(3))
}

/// `count` nodes of `1..=n` picked by the seed.
fn pick(n: u16, count: usize, seed: u64) -> Vec<u16> {
    let mut nodes: Vec<u16> = (1..=n).collect();
    nodes.shuffle(&mut ChaCha20Rng::seed_from_u64(seed ^ 0x5eed_f417));
    nodes.truncate(count);
    nodes
}

fn percentile(sorted: &[Time], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    ms(sorted[rank.min(sorted.len()) - 1])
}

const DELEGATION_HEADER: &str =
    "fault,percent,n,t,faulty,seeds,requests,served,success_rate,p50_ms,p99_ms,violations";

/// Sweep (b): per committee size, one setup DKG per seed, then for each fault kind and
/// fraction 50 requests (10 ms apart, 1 s deadline) on links of 20-50 ms with 1% loss.
pub fn delegation(seed: u64, seeds: u64, max_n: u16, out: &Path) -> anyhow::Result<()> {
    let ns: Vec<u16> = DELEGATION_NS
        .iter()
        .copied()
        .filter(|n| *n <= max_n)
        .collect();
    let base = |n: u16, s: u64| {
        let mut sc = Scenario::new(s, n);
        sc.requests = 50;
        sc.request_interval = 10 * MS;
        sc.request_deadline = SECOND;
        sc.net.loss = 0.01;
        sc
    };
    let setups: Vec<((u16, u64), anyhow::Result<DelegationSetup>)> = ns
        .iter()
        .flat_map(|n| (0..seeds.max(1)).map(move |i| (*n, seed + i)))
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|(n, s)| {
            (
                (n, s),
                DelegationSetup::new(&base(n, s)).map_err(Into::into),
            )
        })
        .collect();
    let mut by_point: BTreeMap<(u16, u64), DelegationSetup> = BTreeMap::new();
    for (k, v) in setups {
        by_point.insert(k, v?);
    }
    let mut jobs = Vec::new();
    for n in &ns {
        for fault in ["crash", "wrong-partial"] {
            for pct in FAULT_PERCENTS {
                jobs.push((*n, fault, pct));
            }
        }
    }
    let rows: Vec<anyhow::Result<String>> = jobs
        .par_iter()
        .map(|(n, fault, pct)| {
            let faulty = (usize::from(*n) * usize::from(*pct) + 50) / 100;
            let mut latencies = Vec::new();
            let (mut requests, mut served, mut violations) = (0u64, 0u64, 0u64);
            for i in 0..seeds.max(1) {
                let s = seed + i;
                let mut sc = base(*n, s);
                for node in pick(*n, faulty, s) {
                    if *fault == "crash" {
                        sc.crashes.push(Crash {
                            node,
                            at: 0,
                            restart: None,
                        });
                    } else {
                        sc.node_faults.insert(node, NodeFault::WrongPartial);
                    }
                }
                let setup = by_point.get(&(*n, s)).context("setup missing")?;
                let run = run_delegation_from(&sc, setup)?;
                if invariants::liveness(&run)
                    .and_then(|()| invariants::only_verified_partials(&run))
                    .is_err()
                {
                    violations += 1;
                }
                for (_, r) in &run.requests {
                    requests += 1;
                    if r.served() {
                        served += 1;
                        latencies.extend(r.finished.map(|f| f - r.issued));
                    }
                }
            }
            latencies.sort_unstable();
            Ok(format!(
                "{fault},{pct},{n},{},{faulty},{},{requests},{served},{:.3},{:.1},{:.1},{violations}",
                default_threshold(*n),
                seeds.max(1),
                served as f64 / requests.max(1) as f64,
                percentile(&latencies, 50.0),
                percentile(&latencies, 99.0),
            ))
        })
        .collect();
    let mut lines = rows.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    lines.sort_by_key(|l| sort_key(l));
    let path = out.join("delegation.csv");
    write(&path, DELEGATION_HEADER, &lines)?;
    plot::delegation(&path, out)
}

const TIMEOUTS_HEADER: &str = "rounds,round_ms,n,t,seed,success,completion_ms,attempts,messages,bytes,max_cpu_ms,late,invariant";
const ROUND_COST_HEADER: &str = "n,t,round1_ms,round2_ms,round3_ms,round4_ms";

/// Sweep (c): the DKG under fixed phases of 100/250/500 ms and under tkms's event-driven rounds
/// with a 100 ms timeout and with the default (2 s), for n = 16…128; plus the modelled CPU
/// time per round against n up to 512.
pub fn timeouts(seed: u64, seeds: u64, max_n: u16, out: &Path) -> anyhow::Result<()> {
    let mut jobs: Vec<(Rounds, u64, u16, u64)> = Vec::new();
    for n in TIMEOUT_NS.iter().filter(|n| **n <= max_n) {
        for i in 0..seeds.max(1) {
            for round in FIXED_PHASES_MS {
                jobs.push((Rounds::FixedPhases, round, *n, seed + i));
            }
            for round in TKMS_ROUNDS_MS {
                jobs.push((Rounds::EventDriven, round, *n, seed + i));
            }
        }
    }
    jobs.sort_by_key(|(r, round, n, s)| {
        (std::cmp::Reverse(*n), *s, *round, *r == Rounds::FixedPhases)
    });
    let rows: Vec<anyhow::Result<String>> = jobs
        .par_iter()
        .map(|(rounds, round, n, s)| {
            let mut sc = Scenario::new(*s, *n);
            sc.rounds = *rounds;
            sc.timeouts.round = round * MS;
            let run = run_dkg(&sc)?;
            let name = match rounds {
                Rounds::EventDriven => "tkms",
                Rounds::FixedPhases => "fixed",
            };
            eprintln!("timeouts {name} {round}ms n={n} seed={s} done");
            let row = ceremony_row(name, *s, &run, invariants::dkg_agreement(&run));
            Ok(row.replacen(name, &format!("{name},{round}"), 1))
        })
        .collect();
    let mut lines = rows.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    lines.sort_by_key(|l| {
        let f: Vec<&str> = l.split(',').collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        (f[0].to_owned(), num(1), num(2), num(4))
    });
    let path = out.join("timeouts.csv");
    write(&path, TIMEOUTS_HEADER, &lines)?;
    let model = CpuModel::CALIBRATED;
    let costs: Vec<String> = (2..=9)
        .flat_map(|k| [1u16 << k, 3 << (k - 1)])
        .filter(|n| *n <= 512)
        .collect::<std::collections::BTreeSet<u16>>()
        .into_iter()
        .map(|n| {
            let t = default_threshold(n);
            let r = model.ceremony_rounds(usize::from(n), usize::from(t));
            format!(
                "{n},{t},{:.1},{:.1},{:.1},{:.1}",
                ms(r[0]),
                ms(r[1]),
                ms(r[2]),
                ms(r[3])
            )
        })
        .collect();
    let cost_path = out.join("round_cost.csv");
    write(&cost_path, ROUND_COST_HEADER, &costs)?;
    plot::timeouts(&path, &cost_path, out)
}
