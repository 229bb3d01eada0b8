//! `tkms-simulations <scenario> --seed S [--n N --t T ...] [--out metrics.csv]`: run one
//! scenario (or `--runs R` consecutive seeds), print a one-line summary per run, and write
//! per-run metrics as CSV.

use std::io::Write as _;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use tkms_simulations::{
    delegation::{ManagerMode, NodeFault},
    dkg_node::DkgBehaviour,
    invariants,
    scenario::{self, default_threshold, node_addrs, RunMetrics, Scenario},
    sim::{Crash, Jitter, Partition, MS},
};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Which {
    /// A DKG; invariant: agreement.
    Dkg,
    /// A DKG; invariant: secrecy threshold.
    Secrecy,
    /// A DKG then a reshare; invariant: the public key is kept.
    Reshare,
    /// A DKG then delegations; invariants: liveness and only verified partials.
    Delegation,
}

#[derive(Parser, Debug)]
#[command(about = "Deterministic simulation of tkms clusters")]
struct Args {
    /// Scenario to run.
    scenario: Which,
    /// Seed of the run's only RNG.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of consecutive seeds to run.
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Committee size.
    #[arg(long, default_value_t = 7)]
    n: u16,
    /// Threshold (default floor(2n/3)+1).
    #[arg(long)]
    t: Option<u16>,
    /// Base link latency, ms.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Jitter scale, ms.
    #[arg(long, default_value_t = 30)]
    jitter_ms: u64,
    /// Exponential (heavy-tailed) jitter instead of uniform.
    #[arg(long)]
    exp_jitter: bool,
    /// Per-transmission loss probability.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Datagram semantics: lost messages are not retransmitted.
    #[arg(long)]
    datagram: bool,
    /// Probability that a message is held back (reordered).
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// DKG round timeout, ms.
    #[arg(long, default_value_t = 2000)]
    round_timeout_ms: u64,
    /// Byzantine DKG participants, e.g. `3=bad-shares,5=equivocate` (silent, bad-shares,
    /// garbage-shares, bad-pop, equivocate, false-accuser).
    #[arg(long, default_value = "")]
    byzantine: String,
    /// Faulty share holders for delegation, e.g. `2=wrong-partial,4=silent` (also
    /// flipped-proof).
    #[arg(long, default_value = "")]
    faults: String,
    /// Crashes, e.g. `4@100-3000,6@0` (node@crash_ms[-restart_ms]).
    #[arg(long, default_value = "")]
    crash: String,
    /// Partitions isolating nodes, e.g. `1+2@500-2500` (nodes@start_ms-end_ms).
    #[arg(long, default_value = "")]
    partition: String,
    /// Delegation requests.
    #[arg(long, default_value_t = 10)]
    requests: u32,
    /// Request deadline, ms.
    #[arg(long, default_value_t = 1000)]
    deadline_ms: u64,
    /// Reshare to this committee size.
    #[arg(long)]
    new_n: Option<u16>,
    /// Reshare to this threshold.
    #[arg(long)]
    new_t: Option<u16>,
    /// Run the deliberately broken manager that combines unverified partials.
    #[arg(long)]
    broken_manager: bool,
    /// CSV output path.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn pairs(spec: &str) -> impl Iterator<Item = (&str, &str)> {
    spec.split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.split_once(['=', '@']))
}

fn window(spec: &str) -> anyhow::Result<(u64, Option<u64>)> {
    Ok(match spec.split_once('-') {
        Some((a, b)) => (a.parse::<u64>()? * MS, Some(b.parse::<u64>()? * MS)),
        None => (spec.parse::<u64>()? * MS, None),
    })
}

fn build(args: &Args, seed: u64) -> anyhow::Result<Scenario> {
    let mut s = Scenario::new(seed, args.n).threshold(args.t.unwrap_or(default_threshold(args.n)));
    s.net.latency.base = args.latency_ms * MS;
    s.net.latency.jitter = args.jitter_ms * MS;
    if args.exp_jitter {
        s.net.latency.dist = Jitter::Exponential;
    }
    s.net.loss = args.loss;
    s.net.reliable = !args.datagram;
    s.net.reorder = args.reorder;
    s.timeouts.round = args.round_timeout_ms * MS;
    s.requests = args.requests;
    s.request_deadline = args.deadline_ms * MS;
    if args.broken_manager {
        s.manager = ManagerMode::CombineUnverified;
    }
    if args.new_n.is_some() || args.new_t.is_some() {
        let n = args.new_n.unwrap_or(args.n);
        s.reshare_to = Some((n, args.new_t.unwrap_or(default_threshold(n))));
    }
    for (node, b) in pairs(&args.byzantine) {
        let b = DkgBehaviour::ALL
            .into_iter()
            .find(|x| x.name() == b)
            .with_context(|| format!("unknown behaviour {b}"))?;
        s.dkg_faults.insert(node.parse()?, b);
    }
    for (node, f) in pairs(&args.faults) {
        let f = match f {
            "honest" => NodeFault::Honest,
            "silent" => NodeFault::Silent,
            "wrong-partial" => NodeFault::WrongPartial,
            "flipped-proof" => NodeFault::FlippedProof,
            other => bail!("unknown fault {other}"),
        };
        s.node_faults.insert(node.parse()?, f);
    }
    for (node, w) in pairs(&args.crash) {
        let (at, restart) = window(w)?;
        s.crashes.push(Crash {
            node: node.parse()?,
            at,
            restart,
        });
    }
    let mut all = node_addrs(args.n.max(args.new_n.unwrap_or(0)));
    all.push(0);
    for (nodes, w) in pairs(&args.partition) {
        let side = nodes
            .split('+')
            .map(str::parse)
            .collect::<Result<Vec<u16>, _>>()?;
        let (start, end) = window(w)?;
        s.net.partitions.push(Partition::isolate(
            &side,
            &all,
            start,
            end.unwrap_or(u64::MAX),
        ));
    }
    Ok(s)
}

fn run_one(which: Which, s: &Scenario) -> anyhow::Result<RunMetrics> {
    let verdict = |r: Result<(), String>| r.err().unwrap_or_else(|| "ok".to_owned());
    Ok(match which {
        Which::Dkg | Which::Secrecy => {
            let run = scenario::run_dkg(s)?;
            let mut m = RunMetrics::dkg(s, &run);
            if matches!(which, Which::Secrecy) {
                m.scenario = "secrecy".into();
                m.invariant = verdict(invariants::secrecy_threshold(&run));
            } else {
                m.invariant = verdict(invariants::dkg_agreement(&run));
            }
            m
        }
        Which::Reshare => {
            let run = scenario::run_reshare(s)?;
            let mut m = RunMetrics::reshare(s, &run);
            m.invariant = verdict(invariants::reshare_keeps_key(&run));
            m
        }
        Which::Delegation => {
            let run = scenario::run_delegation(s)?;
            let mut m = RunMetrics::delegation(s, &run);
            m.invariant = verdict(
                invariants::liveness(&run).and_then(|()| invariants::only_verified_partials(&run)),
            );
            m
        }
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    for seed in args.seed..args.seed.saturating_add(args.runs.max(1)) {
        let s = build(&args, seed)?;
        let m = run_one(args.scenario, &s)?;
        println!("{}", m.summary());
        rows.push(m);
    }
    if let Some(path) = &args.out {
        let mut f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        writeln!(f, "{}", RunMetrics::HEADER)?;
        for m in &rows {
            writeln!(f, "{}", m.csv_row())?;
        }
    }
    Ok(())
}
