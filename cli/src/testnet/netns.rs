//! `tkms testnet up --netns`: every node and the manager in a network namespace of its own,
//! with its own address on one bridge, and the wide-area links emulated on every
//! namespace's interface (docs/DEPLOY.md §5).
//!
//! The layout on subnet `10.213.X.0/24` (X picked free, recorded in `netns.json`):
//!
//! ```text
//!   host (this namespace)  tkbrX   10.213.X.1      the bridge: clients reach everything here
//!   manager                tkX-m   10.213.X.2      :8080
//!   node i                 tkX-nI  10.213.X.(10+i) gRPC :7001, libp2p :7101
//! ```
//!
//! Each namespace is joined to the bridge by a veth pair (`tkXhI` on the bridge, `eth0`
//! inside). Links are shaped on ingress: a packet arriving in a namespace is lost with
//! probability `loss` and otherwise held for `rtt / 2` (plus up to `jitter`), in order; two
//! namespaces see `rtt` between them, and the host, which is not shaped, `rtt / 2` to each.
//! The kernels this runs on may lack `sch_netem`, so the shaping is an iptables `NFQUEUE`
//! rule and a small process per namespace ([`shape`], `tkms testnet shape`) that gives each
//! packet its verdict when its time comes. Partitions are iptables `DROP` rules on `eth0`.
//!
//! Why ingress: a packet held on the sender's side still counts against its socket (TCP
//! small queues), so the socket's next segment waited until the held one was released, one
//! more `rtt / 2` for every write that followed another (an HTTP/2 request's HEADERS and
//! DATA, a response and its trailers). A real link frees the sender at once; a packet held
//! at the receiver has left the sender's socket when it crossed the veth pair, as on a WAN.
//!
//! Needs root (or `CAP_NET_ADMIN`), iproute2 and iptables; Linux only.

use std::{
    collections::VecDeque,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The link emulation of `tkms testnet up --netns`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct NetnsArgs {
    /// Run every node and the manager in a network namespace of its own, on a bridge, with
    /// the links shaped by `--rtt-ms`, `--jitter-ms` and `--loss-pct` (Linux, as root;
    /// iproute2 and iptables). `tkms testnet down` removes them.
    #[arg(long)]
    pub netns: bool,
    /// Round-trip time between any two namespaces, in milliseconds (`--netns`).
    #[arg(long, default_value_t = 0.0)]
    pub rtt_ms: f64,
    /// Extra delay of up to this many milliseconds per packet, uniformly drawn (`--netns`).
    #[arg(long, default_value_t = 0.0)]
    pub jitter_ms: f64,
    /// Packets lost on each link, in percent (`--netns`).
    #[arg(long, default_value_t = 0.0)]
    pub loss_pct: f64,
}

impl NetnsArgs {
    /// The longest round trip between two namespaces: `rtt` plus the jitter of each way.
    #[must_use]
    pub fn longest_rtt(&self) -> Duration {
        Duration::from_secs_f64((self.rtt_ms + 2.0 * self.jitter_ms).max(0.0) / 1000.0)
    }
}

impl Network {
    /// Where a local chain is reached from the namespaces of `network` (the host's address on
    /// the bridge), with the longest round trip to it; none without namespaces.
    #[must_use]
    pub fn chain_host(network: Option<&Self>, args: &NetnsArgs) -> Option<(Ipv4Addr, Duration)> {
        network.map(|n| (n.host, args.longest_rtt()))
    }
}

/// One namespace of the testnet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Namespace {
    /// Its name (`ip netns exec NAME ...`).
    pub name: String,
    /// The veth end on the bridge.
    pub veth: String,
    /// Its address on the bridge.
    pub addr: Ipv4Addr,
    /// The link shaper's process id, if one runs.
    #[serde(default)]
    pub shaper_pid: Option<u32>,
}

/// `netns.json`: the namespaces of a testnet, to reach them and to remove them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Network {
    /// The third octet of the subnet.
    pub subnet: u8,
    /// The bridge.
    pub bridge: String,
    /// The host's address on the bridge.
    pub host: Ipv4Addr,
    /// The manager's namespace.
    pub manager: Namespace,
    /// The nodes' namespaces, by index - 1.
    pub nodes: Vec<Namespace>,
    /// One-way delay, jitter (ms) and loss (%) of every link.
    pub shape: (f64, f64, f64),
}

/// gRPC port of every node in its namespace.
pub const GRPC_PORT: u16 = 7001;
/// libp2p port of every node in its namespace.
pub const P2P_PORT: u16 = 7101;
/// HTTP port of the manager in its namespace.
pub const MANAGER_PORT: u16 = 8080;
/// The NFQUEUE number of the link shaper (one queue per namespace: queues are per namespace).
const QUEUE: u16 = 0;

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!("running {program} (install iproute2 and iptables; --netns needs them)")
        })?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// A subnet `10.213.X.0/24` no interface of this host uses.
fn free_subnet() -> Result<u8> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .context("running ip (install iproute2; --netns needs it)")?;
    let used = String::from_utf8_lossy(&out.stdout).into_owned();
    let names = Command::new("ip").args(["netns", "list"]).output()?;
    let names = String::from_utf8_lossy(&names.stdout).into_owned();
    (1..=254u8)
        .find(|x| !used.contains(&format!("10.213.{x}.")) && !names.contains(&format!("tk{x}-")))
        .context("no free subnet 10.213.X.0/24 left")
}

impl Network {
    /// The file that records the network of the testnet in `dir`.
    pub fn file(dir: &Path) -> PathBuf {
        dir.join("netns.json")
    }

    /// Create the bridge and a namespace for the manager and each of `n` nodes, with every
    /// link shaped by `args`; recorded in `dir`.
    pub fn create(dir: &Path, n: u16, args: &NetnsArgs) -> Result<Self> {
        if !cfg!(target_os = "linux") {
            bail!("--netns needs Linux network namespaces");
        }
        if args.rtt_ms < 0.0 || args.jitter_ms < 0.0 || !(0.0..100.0).contains(&args.loss_pct) {
            bail!("--rtt-ms and --jitter-ms must be >= 0 and --loss-pct in 0..100");
        }
        if Self::file(dir).exists() {
            bail!(
                "{} holds the network of a testnet that may still run: `tkms testnet down \
                 --data-dir {}` first",
                Self::file(dir).display(),
                dir.display()
            );
        }
        let subnet = free_subnet()?;
        let ns = |name: String, veth: String, host: u8| Namespace {
            name,
            veth,
            addr: Ipv4Addr::new(10, 213, subnet, host),
            shaper_pid: None,
        };
        let mut network = Self {
            subnet,
            bridge: format!("tkbr{subnet}"),
            host: Ipv4Addr::new(10, 213, subnet, 1),
            manager: ns(format!("tk{subnet}-m"), format!("tk{subnet}h0"), 2),
            nodes: (1..=n)
                .map(|i| {
                    ns(
                        format!("tk{subnet}-n{i}"),
                        format!("tk{subnet}h{i}"),
                        u8::try_from(10 + i).unwrap_or(u8::MAX),
                    )
                })
                .collect(),
            shape: (args.rtt_ms / 2.0, args.jitter_ms, args.loss_pct),
        };
        // Recorded first, so `down` removes whatever part was made if a step fails.
        network.save(dir)?;
        let made = network.make(dir);
        if made.is_err() {
            network.destroy();
            let _ = fs::remove_file(Self::file(dir));
        }
        made?;
        network.save(dir)?;
        Ok(network)
    }

    fn make(&mut self, dir: &Path) -> Result<()> {
        let bridge = self.bridge.clone();
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run(
            "ip",
            &["addr", "add", &format!("{}/24", self.host), "dev", &bridge],
        )?;
        run("ip", &["link", "set", &bridge, "up"])?;
        let shape = self.shape;
        for (k, ns) in std::iter::once(&mut self.manager)
            .chain(self.nodes.iter_mut())
            .enumerate()
        {
            let inner = format!("tk{}n{k}", self.subnet);
            run("ip", &["netns", "add", &ns.name])?;
            run(
                "ip",
                &[
                    "link", "add", &ns.veth, "type", "veth", "peer", "name", &inner,
                ],
            )?;
            run("ip", &["link", "set", &inner, "netns", &ns.name])?;
            run("ip", &["link", "set", &ns.veth, "master", &bridge])?;
            run("ip", &["link", "set", &ns.veth, "up"])?;
            run(
                "ip",
                &["-n", &ns.name, "link", "set", &inner, "name", "eth0"],
            )?;
            run(
                "ip",
                &[
                    "-n",
                    &ns.name,
                    "addr",
                    "add",
                    &format!("{}/24", ns.addr),
                    "dev",
                    "eth0",
                ],
            )?;
            run("ip", &["-n", &ns.name, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
            if shape != (0.0, 0.0, 0.0) {
                ns.shaper_pid = Some(start_shaper(dir, ns, shape)?);
            }
        }
        Ok(())
    }

    fn save(&self, dir: &Path) -> Result<()> {
        fs::write(Self::file(dir), serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    /// The network recorded in `dir`, if any.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        match fs::read(Self::file(dir)) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove every namespace, veth and the bridge (what is already gone is skipped), and
    /// stop the shapers.
    pub fn destroy(&self) {
        for ns in std::iter::once(&self.manager).chain(&self.nodes) {
            // Whatever still runs in the namespace (its shaper, a daemon): asked of the
            // namespace, not by a recorded pid that may belong to another process by now.
            if let Ok(out) = Command::new("ip")
                .args(["netns", "pids", &ns.name])
                .output()
            {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = run("kill", &["-KILL", pid]);
                }
            }
            // Deleting the namespace deletes its veth end, and with it the pair.
            let _ = run("ip", &["netns", "delete", &ns.name]);
            let _ = run("ip", &["link", "delete", &ns.veth]);
        }
        let _ = run("ip", &["link", "delete", &self.bridge]);
    }

    /// The namespace of node `index` (1-based).
    pub fn node(&self, index: u16) -> Result<&Namespace> {
        usize::from(index)
            .checked_sub(1)
            .and_then(|k| self.nodes.get(k))
            .with_context(|| format!("the testnet has no node {index}"))
    }

    /// Cut `ns` off the network (every packet in and out of `eth0` dropped), or join it
    /// back.
    pub fn partition(ns: &Namespace, cut: bool) -> Result<()> {
        for [chain, dir] in [["INPUT", "-i"], ["OUTPUT", "-o"]] {
            let args = |op: &'static str| [op, chain, dir, "eth0", "-j", "DROP"];
            // Idempotent: cut twice and healed once is healed.
            let present = || in_ns(&ns.name, "iptables", &args("-C")).is_ok();
            if cut && !present() {
                in_ns(&ns.name, "iptables", &args("-I"))?;
            }
            while !cut && present() {
                in_ns(&ns.name, "iptables", &args("-D"))?;
            }
        }
        Ok(())
    }
}

/// Start the shaper of `ns` and send the packets arriving on `eth0` through it (ingress: see
/// the module's docs for why not egress).
fn start_shaper(dir: &Path, ns: &Namespace, (delay, jitter, loss): (f64, f64, f64)) -> Result<u32> {
    let exe = std::env::current_exe().context("locating the tkms binary")?;
    let log_path = dir.join(format!("shaper-{}.log", ns.name));
    let log = fs::File::create(&log_path)?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(exe)
        .args([
            "testnet",
            "shape",
            "--delay-ms",
            &delay.to_string(),
            "--jitter-ms",
            &jitter.to_string(),
            "--loss-pct",
            &loss.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the link shaper")?;
    let pid = child.id();
    // The rule goes in only once the shaper has bound the queue (it says so on its log): a
    // packet queued with no listener is dropped, and the namespace would be cut off.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if fs::read_to_string(&log_path).is_ok_and(|l| l.contains("shaping:")) {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the link shaper of {} exited ({status}): {}",
                ns.name,
                fs::read_to_string(&log_path).unwrap_or_default().trim()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the link shaper of {} did not start within 10 s", ns.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    in_ns(
        &ns.name,
        "iptables",
        &[
            "-A",
            "INPUT",
            "-i",
            "eth0",
            "-j",
            "NFQUEUE",
            "--queue-num",
            &QUEUE.to_string(),
        ],
    )?;
    Ok(pid)
}

/// Arguments of `tkms testnet shape` (started by `up --netns` in each namespace).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ShapeArgs {
    /// Delay of every packet, in milliseconds.
    #[arg(long)]
    pub delay_ms: f64,
    /// Extra delay of up to this many milliseconds, uniformly drawn.
    #[arg(long, default_value_t = 0.0)]
    pub jitter_ms: f64,
    /// Packets dropped, in percent.
    #[arg(long, default_value_t = 0.0)]
    pub loss_pct: f64,
}

/// The link shaper: take the packets of this namespace's NFQUEUE, drop each with
/// probability `loss`, and accept the others in order once `delay` (plus jitter) has
/// passed. Runs until killed.
pub fn shape(args: &ShapeArgs) -> Result<()> {
    use rand::Rng as _;
    let mut queue = nfq::Queue::open().context("opening NFQUEUE (needs root)")?;
    queue.bind(QUEUE).context("binding NFQUEUE 0")?;
    // Only the verdict matters: copy no payload to user space.
    queue.set_copy_range(QUEUE, 0)?;
    queue.set_queue_max_len(QUEUE, 1 << 16)?;
    eprintln!(
        "shaping: delay {} ms, jitter {} ms, loss {} %",
        args.delay_ms, args.jitter_ms, args.loss_pct
    );
    let delay = Duration::from_secs_f64(args.delay_ms / 1000.0);
    let mut rng = rand::thread_rng();
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    let mut last = Instant::now();
    loop {
        // Nothing held: sleep in the kernel until a packet comes (an idle link costs no CPU).
        queue.set_nonblocking(!held.is_empty());
        loop {
            match queue.recv() {
                Ok(mut msg) => {
                    if args.loss_pct > 0.0 && rng.gen::<f64>() * 100.0 < args.loss_pct {
                        msg.set_verdict(nfq::Verdict::Drop);
                        queue.verdict(msg)?;
                        continue;
                    }
                    let jitter = if args.jitter_ms > 0.0 {
                        Duration::from_secs_f64(rng.gen::<f64>() * args.jitter_ms / 1000.0)
                    } else {
                        Duration::ZERO
                    };
                    // In order, as one link delivers them.
                    let due = (Instant::now() + delay + jitter).max(last);
                    last = due;
                    msg.set_verdict(nfq::Verdict::Accept);
                    held.push_back((due, msg));
                    queue.set_nonblocking(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("reading NFQUEUE"),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, msg)) = held.pop_front() {
                queue.verdict(msg)?;
            }
        }
        let idle = Duration::from_micros(500);
        let wait = held.front().map_or(idle, |(due, _)| {
            due.saturating_duration_since(now).min(idle)
        });
        std::thread::sleep(wait);
    }
}
