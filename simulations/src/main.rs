//! `tkms-simulations <scenario> --seed S [--n N --t T ...] [--out metrics.csv]`: run one
//! scenario (or `--runs R` consecutive seeds), print a one-line summary per run, and write
//! per-run metrics as CSV. `tkms-simulations sweep <name> --seed S --out DIR` runs a sweep
//! (CSV + SVG plots); `tkms-simulations calibrate` measures the real round functions and fits
//! the CPU cost model.

use std::io::Write as _;

use anyhow::{bail, Context as _};
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use tkms_simulations::{
    connect::Connect,
    cpu::{self, CpuModel},
    delegation::{ManagerMode, NodeFault},
    dkg_node::{DkgBehaviour, Rounds},
    invariants,
    scenario::{self, default_threshold, node_addrs, RunMetrics, Scenario},
    sim::{Crash, Jitter, Partition, MS},
};

#[derive(Clone, Copy, Debug)]
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
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A DKG; invariant: agreement.
    Dkg(Args),
    /// A DKG; invariant: secrecy threshold.
    Secrecy(Args),
    /// A DKG then a reshare; invariant: the public key is kept.
    Reshare(Args),
    /// A DKG then delegations; invariants: liveness and only verified partials.
    Delegation(Args),
    /// A sweep: CSV and SVG plots in `--out`.
    Sweep(SweepArgs),
    /// Time the real round functions (thread CPU time) and fit the CPU cost model.
    Calibrate(CalibrateArgs),
    /// Re-render the SVG plots from the sweep CSVs in `--out`.
    Plot {
        /// Directory with the sweep CSVs.
        #[arg(long, default_value = "docs/simulations")]
        out: std::path::PathBuf,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Cpu {
    /// The calibrated cost model (default).
    Calibrated,
    /// No CPU cost: network delays only.
    Free,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RoundsArg {
    /// A round ends when every message is in (tkms).
    EventDriven,
    /// Phases of fixed length (drand before its fix).
    FixedPhases,
}

#[derive(ClapArgs, Debug)]
struct CalibrateArgs {
    /// Committee sizes to measure (each with t = floor(n/3)+1 and floor(2n/3)+1).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "4,8,16,24,32,48,64,96,128"
    )]
    n: Vec<usize>,
    /// Repetitions per measurement (the minimum is kept).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// CSV output path for the measurements.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[derive(ClapArgs, Debug)]
struct SweepArgs {
    /// Which sweep.
    name: tkms_simulations::sweep::Sweep,
    /// Base seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output directory (CSV and SVG).
    #[arg(long, default_value = "docs/simulations")]
    out: std::path::PathBuf,
    /// Seeds per point.
    #[arg(long)]
    seeds: Option<u64>,
    /// Largest committee size (smaller for a quick look).
    #[arg(long)]
    max_n: Option<u16>,
}

#[derive(ClapArgs, Debug)]
struct Args {
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
    /// Connection set-up: one-way trips before a pair's first message (5 models libp2p over
    /// TCP as the nodes run it; 0: links exist from the start). A lost SYN or SYN-ACK costs
    /// 1 s, as in Linux.
    #[arg(long, default_value_t = 0)]
    connect_trips: u32,
    /// First retransmission timeout of a lost message, ms (doubling). Linux's on an
    /// established connection is about the RTT plus max(2 x RTT, 200 ms) early on.
    #[arg(long, default_value_t = 200)]
    retransmit_ms: u64,
    /// Datagram semantics: lost messages are not retransmitted.
    #[arg(long)]
    datagram: bool,
    /// Probability that a message is held back (reordered).
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// DKG round timeout, ms.
    #[arg(long, default_value_t = 2000)]
    round_timeout_ms: u64,
    /// Relay requests per ceremony attempt (default: the ceremony's).
    #[arg(long)]
    max_relays: Option<u32>,
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
    /// CPU cost model.
    #[arg(long, value_enum, default_value_t = Cpu::Calibrated)]
    cpu: Cpu,
    /// Multiply every CPU cost (2 = a machine twice as slow).
    #[arg(long, default_value_t = 1.0)]
    slowdown: f64,
    /// How ceremony rounds end: `event-driven` (tkms) or drand-style `fixed-phases` of
    /// `--round-timeout-ms`.
    #[arg(long, value_enum, default_value_t = RoundsArg::EventDriven)]
    rounds: RoundsArg,
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
    s.net.retransmit = args.retransmit_ms * MS;
    s.net.reorder = args.reorder;
    s.net.connect = (args.connect_trips > 0).then_some(Connect {
        trips: args.connect_trips,
        ..Connect::LIBP2P_TCP
    });
    s.timeouts.round = args.round_timeout_ms * MS;
    if let Some(r) = args.max_relays {
        s.timeouts.max_relays = r;
    }
    s.cpu = match args.cpu {
        Cpu::Calibrated => CpuModel::CALIBRATED,
        Cpu::Free => CpuModel::FREE,
    }
    .slower(args.slowdown);
    s.rounds = match args.rounds {
        RoundsArg::EventDriven => Rounds::EventDriven,
        RoundsArg::FixedPhases => Rounds::FixedPhases,
    };
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

fn run_scenario(which: Which, args: &Args) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for seed in args.seed..args.seed.saturating_add(args.runs.max(1)) {
        let s = build(args, seed)?;
        let m = run_one(which, &s)?;
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

fn calibrate(args: &CalibrateArgs) -> anyhow::Result<()> {
    let mut samples = Vec::new();
    println!("{}", cpu::Sample::HEADER);
    for (i, n) in args.n.iter().enumerate() {
        let mut ts = vec![*n / 3 + 1, 2 * *n / 3 + 1];
        ts.dedup();
        for t in ts {
            let seed = u64::try_from(i).unwrap_or(0) * 100 + t as u64;
            let s = cpu::measure(*n, t.min(*n), args.reps, seed)?;
            println!("{}", s.csv_row());
            samples.push(s);
        }
    }
    let model = cpu::fit(&samples);
    println!("\nfit: {model:#?}\n");
    println!("n,t,round,measured_us,model_us,error_pct");
    for s in &samples {
        let p = cpu::predict(&model, s.n, s.t);
        for (name, measured, model) in [
            ("deal", s.deal, p[0]),
            ("respond", s.respond, p[1]),
            ("finalize", s.finalize, p[2]),
            ("confirm", s.confirm, p[3]),
        ] {
            let err = (model as f64 - measured) / measured * 100.0;
            println!("{},{},{name},{measured:.0},{model},{err:.1}", s.n, s.t);
        }
    }
    if let Some(path) = &args.out {
        let mut f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        writeln!(f, "{}", cpu::Sample::HEADER)?;
        for s in &samples {
            writeln!(f, "{}", s.csv_row())?;
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Dkg(a) => run_scenario(Which::Dkg, &a),
        Command::Secrecy(a) => run_scenario(Which::Secrecy, &a),
        Command::Reshare(a) => run_scenario(Which::Reshare, &a),
        Command::Delegation(a) => run_scenario(Which::Delegation, &a),
        Command::Calibrate(a) => calibrate(&a),
        Command::Plot { out } => tkms_simulations::plot::all(&out),
        Command::Sweep(a) => {
            let started = std::time::Instant::now();
            std::fs::create_dir_all(&a.out)?;
            tkms_simulations::sweep::run(a.name, a.seed, a.seeds, a.max_n, &a.out)?;
            eprintln!(
                "sweep done in {:.1} s wall",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}
