//! `tkms testnet up`: a whole cluster on loopback (docs/ARCHITECTURE.md §6). It starts `N` node
//! processes and a manager (this same binary, `tkms node run` / `tkms manager run`), runs the DKG
//! through the manager's admin API, writes `testnet.json` as soon as the cluster serves, and stops
//! everything on Ctrl-C.
//!
//! Everything lives under `--data-dir`: per node its vault (`node-i/vault.redb`, encrypted),
//! its vault password file and log; the manager's keys, operator token, registry file, state
//! file and log. These are development secrets in files readable only by the user (mode
//! 0600): a testnet is for development, and says so. Running `up` again on the same data dir
//! resumes the same cluster (same ports, same key) instead of creating a new one; a node
//! killed and restarted with the command recorded in `testnet.json` rejoins with its share.
//!
//! With `--chain` the registry is on a real local chain instead of a file (docs/ARCHITECTURE.md
//! §4.3): anvil is started ([`tkms_registry::anvil`]), a `TkmsRegistry` deployed by anvil's first
//! development account (the owner), the manager wallet made its manager, the development gateway
//! and runner granted their roles, and each node registered (index, libp2p peer id, endpoints, node
//! key) once it is up. Nodes and manager then follow the chain (`--rpc-url`, `--registry-address`);
//! the manager publishes the DKG's epoch there, and the nodes serve only that epoch. The chain
//! lives in anvil's memory: `up` again on the same data dir deploys a fresh registry, and the
//! manager publishes the epoch it serves on it.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use k256::ecdsa::SigningKey;
use serde::{Deserialize, Serialize};

mod chain;
mod local;
pub mod netns;

use chain::{check_published, register_nodes, start_chain, Chain};
use local::{
    command_line, http, ports, public_hex, random_hex, scalar_hex, secret_file, signing_key,
    wait_for_node, write_private, Ports, Proc,
};

pub use netns::{NetnsArgs, Network, ShapeArgs};

/// Arguments of `tkms testnet up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 5)]
    pub nodes: u16,
    /// Threshold `t` (default: floor(2n/3) + 1).
    #[arg(long)]
    pub threshold: Option<u16>,
    /// Directory for every node's and the manager's files.
    #[arg(long, default_value = "tkms-testnet")]
    pub data_dir: PathBuf,
    /// Where to write the endpoints and keys.
    #[arg(long, default_value = "testnet.json")]
    pub out: PathBuf,
    /// The chain id served by `/v0/delegate`.
    #[arg(long, default_value_t = 31337)]
    pub chain_id: u64,
    /// Longest wait for one DKG round, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub round_timeout_ms: u64,
    /// Exit after writing `testnet.json`, leaving the processes running (for scripts and
    /// tests; stop them with the pids in the file).
    #[arg(long)]
    pub detach: bool,
    /// Start the nodes and the manager without running the DKG: the cluster has no key until
    /// `POST /admin/dkg` (to watch or disturb the DKG itself, e.g. with `testnet partition`).
    #[arg(long)]
    pub no_dkg: bool,
    /// Keep the registry on a local chain: start anvil (`contracts/install-anvil.sh`, or
    /// `TKMS_ANVIL`), deploy the registry, register the nodes, and publish the DKG's epoch.
    #[arg(long)]
    pub chain: bool,
    /// The manager's fan-out: `all` nodes at once, or `t` / `t+K` nodes in turn with hedging
    /// (`tkms manager run --fanout`).
    #[arg(long, default_value = "all")]
    pub fanout: tkms_manager::cluster::Fanout,
    /// Most concurrent `/v0` delegations per batch call to the nodes (`tkms manager run
    /// --delegation-batch`).
    #[arg(long, default_value_t = tkms_manager::cluster::DELEGATION_BATCH)]
    pub delegation_batch: usize,
    /// `/v0` delegation batches in flight at once (`tkms manager run
    /// --delegation-batches-in-flight`).
    #[arg(long, default_value_t = tkms_manager::cluster::DELEGATION_BATCHES_IN_FLIGHT)]
    pub delegation_batches_in_flight: usize,
    /// One more argument for `tkms manager run` (repeat; e.g. `--manager-arg=--quota-gateway
    /// --manager-arg=5:5`). The manager writes its audit log and replay journal under
    /// `<data-dir>/manager` in any case.
    #[arg(long = "manager-arg", allow_hyphen_values = true)]
    pub manager_args: Vec<String>,
    /// One more argument for every `tkms node run` (repeat).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    /// Network namespaces and emulated wide-area links.
    #[command(flatten)]
    pub network: NetnsArgs,
}

/// Arguments of `tkms testnet down`, `partition` and `heal`.
#[derive(Debug, Clone, clap::Args)]
pub struct DataDirArgs {
    /// The testnet's directory.
    #[arg(long, default_value = "tkms-testnet")]
    pub data_dir: PathBuf,
    /// Its `testnet.json`.
    #[arg(long, default_value = "testnet.json")]
    pub out: PathBuf,
}

/// Where each process of the testnet listens, and in which namespace.
struct Layout {
    manager_listen: String,
    manager_ns: Option<String>,
    nodes: Vec<NodeAddrs>,
}

struct NodeAddrs {
    grpc_listen: String,
    p2p_listen: String,
    ns: Option<String>,
}

impl Layout {
    fn loopback(ports: &Ports) -> Self {
        Self {
            manager_listen: format!("127.0.0.1:{}", ports.manager),
            manager_ns: None,
            nodes: ports
                .grpc
                .iter()
                .zip(&ports.p2p)
                .map(|(g, p)| NodeAddrs {
                    grpc_listen: format!("127.0.0.1:{g}"),
                    p2p_listen: format!("/ip4/127.0.0.1/tcp/{p}"),
                    ns: None,
                })
                .collect(),
        }
    }

    fn namespaces(network: &Network) -> Self {
        Self {
            manager_listen: format!("{}:{}", network.manager.addr, netns::MANAGER_PORT),
            manager_ns: Some(network.manager.name.clone()),
            nodes: network
                .nodes
                .iter()
                .map(|ns| NodeAddrs {
                    grpc_listen: format!("{}:{}", ns.addr, netns::GRPC_PORT),
                    p2p_listen: format!("/ip4/{}/tcp/{}", ns.addr, netns::P2P_PORT),
                    ns: Some(ns.name.clone()),
                })
                .collect(),
        }
    }
}

/// Write the `--option value` pairs of `args` as the TOML settings file that `--config`
/// reads (a repeated option becomes an array, a bare flag `true`): the testnet starts its
/// daemons through the same file an operator writes (docs/DEPLOY.md).
fn write_config(path: &Path, args: &[String]) -> Result<()> {
    let mut table = toml::Table::new();
    let mut k = 0;
    while k < args.len() {
        let key = args[k]
            .strip_prefix("--")
            .with_context(|| format!("{:?} is not an option", args[k]))?;
        let value = args.get(k + 1).filter(|v| !v.starts_with("--"));
        k += if value.is_some() { 2 } else { 1 };
        let value = value.map_or(toml::Value::Boolean(true), |v| {
            toml::Value::String(v.clone())
        });
        match table.remove(key) {
            None => table.insert(key.to_string(), value),
            Some(toml::Value::Array(mut values)) => {
                values.push(value);
                table.insert(key.to_string(), toml::Value::Array(values))
            }
            Some(first) => table.insert(key.to_string(), toml::Value::Array(vec![first, value])),
        };
    }
    let text = format!("# Written by `tkms testnet up`; see docs/DEPLOY.md.\n{table}");
    write_private(path, text.as_bytes())
}

/// One node in `testnet.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestnetNode {
    /// Node index.
    pub index: u16,
    /// Process id.
    pub pid: u32,
    /// gRPC address.
    pub grpc_addr: String,
    /// libp2p address with peer id.
    pub p2p_addr: String,
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// Node key (compressed secp256k1, hex), as registered on chain with `--chain`.
    #[serde(default)]
    pub node_key: String,
    /// The command line that (re)starts this node.
    pub command: Vec<String>,
}

/// `testnet.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Testnet {
    /// The manager's base URL.
    pub manager_url: String,
    /// Chain id served.
    pub chain_id: u64,
    /// Cluster public key, compressed hex with 0x.
    pub public_key: String,
    /// Threshold.
    pub threshold: u16,
    /// Manager process id.
    pub manager_pid: u32,
    /// Address of the wallet that signs `/v0/delegate` proofs.
    pub manager_address: String,
    /// Development gateway key (authorized in the registry file), hex with 0x.
    pub gateway_private_key: String,
    /// Development runner key (may ask for `/v1/reencrypt`), hex with 0x.
    pub runner_private_key: String,
    /// Operator token of the admin endpoints.
    pub admin_token: String,
    /// The registry file (edit it to authorize or revoke gateways); none with `--chain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_file: Option<PathBuf>,
    /// JSON-RPC endpoint of the local chain (`--chain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_url: Option<String>,
    /// Address of the registry contract on it (`--chain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_address: Option<String>,
    /// The registry owner's key, hex with 0x: anvil's first, publicly known development key
    /// (`--chain`; development only). `tkms registry grant|revoke --key-file` takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_owner_private_key: Option<String>,
    /// Process id of anvil (`--chain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anvil_pid: Option<u32>,
    /// The nodes.
    pub nodes: Vec<TestnetNode>,
    /// The command line that (re)starts the manager (it recovers the served epoch from its
    /// state file and the nodes).
    #[serde(default)]
    pub manager_command: Vec<String>,
}

/// Start the node processes and wait until each has written its status file. Each node's
/// ports (loopback) are released just before it starts.
fn start_nodes(
    dir: &Path,
    layout: &Layout,
    mut ports: Option<&mut Ports>,
    manager_public: &str,
    registry_args: &[String],
    extra_args: &[String],
    deadline: Instant,
) -> Result<Vec<(Proc, TestnetNode)>> {
    let mut nodes: Vec<(Proc, TestnetNode)> = Vec::new();
    for (k, addrs) in layout.nodes.iter().enumerate() {
        let index = u16::try_from(k + 1)?;
        let ndir = dir.join(format!("node-{index}"));
        fs::create_dir_all(&ndir)?;
        let password = ndir.join("password");
        secret_file(&password, || random_hex(32))?;
        let _ = fs::remove_file(ndir.join("node.json"));
        let mut settings: Vec<String> = vec![
            "--data-dir".into(),
            ndir.display().to_string(),
            "--grpc-listen".into(),
            addrs.grpc_listen.clone(),
            "--p2p-listen".into(),
            addrs.p2p_listen.clone(),
            "--manager-key".into(),
            manager_public.to_string(),
            "--password".into(),
            "file".into(),
            "--password-file".into(),
            password.display().to_string(),
            "--kdf".into(),
            "insecure".into(),
        ];
        settings.extend_from_slice(registry_args);
        let config = ndir.join("node.toml");
        write_config(&config, &settings)?;
        let mut command: Vec<String> = vec![
            "node".into(),
            "run".into(),
            "--config".into(),
            config.display().to_string(),
        ];
        command.extend_from_slice(extra_args);
        if let Some(ports) = ports.as_deref_mut() {
            ports.held.release(ports.grpc[k]);
            ports.held.release(ports.p2p[k]);
        }
        let proc = Proc::spawn(
            format!("node {index}"),
            &command,
            &ndir.join("node.log"),
            addrs.ns.as_deref(),
        )?;
        let full = command_line(addrs.ns.as_deref(), &command)?;
        nodes.push((
            proc,
            TestnetNode {
                index,
                pid: 0,
                grpc_addr: String::new(),
                p2p_addr: String::new(),
                data_dir: ndir,
                node_key: String::new(),
                command: full,
            },
        ));
    }
    for (proc, node) in &mut nodes {
        let status = wait_for_node(&node.data_dir, proc, deadline)?;
        node.pid = status.pid;
        node.grpc_addr = status.grpc_addr;
        node.p2p_addr = status.p2p_addr;
        node.node_key = status.node_key;
    }

    Ok(nodes)
}

/// The threshold of the key `/v0/public-key` described, or `t` when there is no key yet.
fn keyed_threshold(public: &serde_json::Value, t: u16) -> u16 {
    public["threshold"]
        .as_u64()
        .map_or(t, |v| u16::try_from(v).unwrap_or(t))
}

/// Wait for the manager, and run the DKG (`t` of `n`, given as `dkg`) if the cluster has no
/// key yet; return `/v0/public-key` (null when there is no key and `dkg` is `None`).
async fn ensure_key(
    manager_url: &str,
    manager: &mut Proc,
    admin_token: &str,
    dkg: Option<(u16, u16)>,
    deadline: Instant,
    mdir: &Path,
) -> Result<serde_json::Value> {
    let client = http()?;
    // Wait for the manager.
    loop {
        manager.check_alive()?;
        // Any answer means the manager is up (a degraded cluster answers 503).
        if client
            .get(format!("{manager_url}/health"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the manager did not start; see {}",
                mdir.join("manager.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key = client
        .get(format!("{manager_url}/v0/public-key"))
        .send()
        .await?;
    if key.status().is_success() {
        return Ok(key.json::<serde_json::Value>().await?);
    }
    let Some((t, n)) = dkg else {
        eprintln!("tkms testnet: no key yet (--no-dkg): POST /admin/dkg to create it");
        return Ok(serde_json::Value::Null);
    };
    eprintln!("tkms testnet: running the DKG ({t} of {n})...");
    let started = Instant::now();
    let dkg = client
        .post(format!("{manager_url}/admin/dkg"))
        .bearer_auth(admin_token)
        .json(&serde_json::json!({ "threshold": t }))
        .send()
        .await?;
    if !dkg.status().is_success() {
        let body = dkg.text().await.unwrap_or_default();
        bail!("the DKG failed: {body}");
    }
    eprintln!("tkms testnet: DKG done in {:.2?}", started.elapsed());
    let key = client
        .get(format!("{manager_url}/v0/public-key"))
        .send()
        .await?;
    Ok(key.json::<serde_json::Value>().await?)
}

/// Start the manager process in front of `nodes`; the process and its command line.
#[allow(clippy::too_many_arguments)]
fn start_manager(
    mdir: &Path,
    registry_args: &[String],
    layout: &Layout,
    round_timeout_ms: u64,
    fanout: tkms_manager::cluster::Fanout,
    batching: tkms_manager::cluster::Batching,
    extra_args: &[String],
    nodes: &[(Proc, TestnetNode)],
) -> Result<(Proc, Vec<String>)> {
    let mut settings: Vec<String> = vec![
        "--listen".into(),
        layout.manager_listen.clone(),
        "--node-key-file".into(),
        mdir.join("node-request.key").display().to_string(),
        "--wallet-key-file".into(),
        mdir.join("wallet.key").display().to_string(),
    ];
    settings.extend_from_slice(registry_args);
    settings.extend([
        "--admin-token-file".into(),
        mdir.join("admin.token").display().to_string(),
        "--state-file".into(),
        mdir.join("state.json").display().to_string(),
        "--round-timeout-ms".into(),
        round_timeout_ms.to_string(),
        "--fanout".into(),
        fanout.to_string(),
        "--delegation-batch".into(),
        batching.max().to_string(),
        "--delegation-batches-in-flight".into(),
        batching.in_flight().to_string(),
        "--audit-log".into(),
        mdir.join("audit.jsonl").display().to_string(),
        "--nonce-journal".into(),
        mdir.join("nonces.journal").display().to_string(),
    ]);
    for (_, node) in nodes {
        settings.push("--node".into());
        settings.push(format!("http://{}", node.grpc_addr));
    }
    let config = mdir.join("manager.toml");
    write_config(&config, &settings)?;
    let mut margs: Vec<String> = vec![
        "manager".into(),
        "run".into(),
        "--config".into(),
        config.display().to_string(),
    ];
    margs.extend_from_slice(extra_args);
    let proc = Proc::spawn(
        "manager".into(),
        &margs,
        &mdir.join("manager.log"),
        layout.manager_ns.as_deref(),
    )?;
    Ok((proc, command_line(layout.manager_ns.as_deref(), &margs)?))
}

fn print_summary(testnet: &Testnet, out: &Path, manager_pid: u32, t: u16, n: u16) {
    println!("tkms testnet is up ({t} of {n})");
    println!("  manager     {}  (pid {manager_pid})", testnet.manager_url);
    if testnet.public_key.is_empty() {
        println!("  public key  none yet (--no-dkg): POST /admin/dkg to create it");
    } else {
        println!("  public key  {}", testnet.public_key);
    }
    if let (Some(rpc), Some(registry)) = (&testnet.rpc_url, &testnet.registry_address) {
        println!("  chain       {rpc}  registry {registry}");
    }
    for node in &testnet.nodes {
        println!(
            "  node {:<3}    grpc {}  p2p {}  (pid {})",
            node.index, node.grpc_addr, node.p2p_addr, node.pid
        );
    }
    println!(
        "  gateway key {} (development only)",
        testnet.gateway_private_key
    );
    println!("  written to  {}", out.display());
}

/// The registry file of a new testnet: the development gateway and runner on its chain.
fn development_registry(
    chain_id: u64,
    gateway: &SigningKey,
    runner: &SigningKey,
) -> tkms_manager::file_registry::RegistryFile {
    let chain = chain_id.to_string();
    tkms_manager::file_registry::RegistryFile {
        gateways: BTreeMap::from([(chain.clone(), tkms_manager::nox::wallet_address(gateway))]),
        runners: BTreeMap::from([(
            chain,
            std::iter::once(tkms_manager::nox::wallet_address(runner)).collect(),
        )]),
    }
}

/// The registry flags of the nodes and the manager: the chain's (its owner key is written
/// next to the manager's keys for `tkms registry --key-file`), or the registry file, created
/// with the development gateway and runner if it does not exist.
fn registry_args(
    chain: Option<&Chain>,
    mdir: &Path,
    chain_id: u64,
    gateway: &SigningKey,
    runner: &SigningKey,
) -> Result<(Option<PathBuf>, Vec<String>)> {
    if let Some(chain) = chain {
        let d = &chain.deployment;
        write_private(
            &mdir.join("registry-owner.key"),
            d.owner_key.to_bytes().to_string().as_bytes(),
        )?;
        let args = vec![
            "--rpc-url".into(),
            chain.daemon_rpc_url.clone(),
            "--registry-address".into(),
            d.address.to_string(),
        ];
        return Ok((None, args));
    }
    let registry_file = mdir.join("registry.json");
    if !registry_file.exists() {
        development_registry(chain_id, gateway, runner).save(&registry_file)?;
    }
    let args = vec![
        "--registry-file".into(),
        registry_file.display().to_string(),
    ];
    Ok((Some(registry_file), args))
}

/// The node count, the threshold and the batching of `args`, checked before anything starts.
fn checked(args: &UpArgs) -> Result<(u16, u16, tkms_manager::cluster::Batching)> {
    let n = args.nodes;
    if n == 0 || n > 64 {
        bail!("--nodes must be 1..=64 for a local testnet, got {n}");
    }
    let t = args.threshold.unwrap_or(2 * n / 3 + 1);
    if t == 0 || t > n {
        bail!("--threshold must be 1..={n}, got {t}");
    }
    let batching = tkms_manager::cluster::Batching::new(
        args.delegation_batch,
        args.delegation_batches_in_flight,
    )
    .map_err(|e| anyhow::anyhow!("--delegation-batch / --delegation-batches-in-flight: {e}"))?;
    Ok((n, t, batching))
}

/// Where the processes of the testnet in `dir` listen. With `--netns` every process has an
/// address of its own (the namespaces are made here); else the ports are picked (or read
/// back) and held before anything else starts, anvil included, and each is released just
/// before the process that listens on it.
fn place(args: &UpArgs, dir: &Path, n: u16) -> Result<(Option<Network>, Option<Ports>, Layout)> {
    if args.network.netns {
        let network = Network::create(dir, n, &args.network)?;
        let layout = Layout::namespaces(&network);
        return Ok((Some(network), None, layout));
    }
    let ports = ports(dir, n)?;
    let layout = Layout::loopback(&ports);
    Ok((None, Some(ports), layout))
}

/// Start the testnet; with `detach`, return once `testnet.json` is written.
pub fn up(args: &UpArgs) -> Result<()> {
    let (n, t, batching) = checked(args)?;
    let dir = &args.data_dir;
    fs::create_dir_all(dir.join("manager"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;

    let (network, mut ports, layout) = place(args, &dir, n)?;
    let bridge = Network::chain_host(network.as_ref(), &args.network);
    // Whatever fails from here on removes the namespaces again (unless detached and up).
    let network_guard = NetworkGuard(network, dir.clone());

    let mdir = dir.join("manager");
    let node_key = secret_file(&mdir.join("node-request.key"), scalar_hex)?;
    let wallet_hex = secret_file(&mdir.join("wallet.key"), scalar_hex)?;
    let gateway_hex = secret_file(&mdir.join("gateway.key"), scalar_hex)?;
    let runner_hex = secret_file(&mdir.join("runner.key"), scalar_hex)?;
    let admin_token = secret_file(&mdir.join("admin.token"), || random_hex(24))?;
    let manager_public = public_hex(&node_key)?;
    let (wallet, gateway, runner) = (
        signing_key(&wallet_hex)?,
        signing_key(&gateway_hex)?,
        signing_key(&runner_hex)?,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let keys = [&wallet, &gateway, &runner];
    let chain = (args.chain)
        .then(|| runtime.block_on(start_chain(args.chain_id, keys, bridge)))
        .transpose()?;
    let (registry_file, registry_args) =
        registry_args(chain.as_ref(), &mdir, args.chain_id, &gateway, &runner)?;

    eprintln!(
        "tkms testnet: {n} nodes, threshold {t}, data in {} (development only: the keys in it \
         are plain files)",
        dir.display()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let nodes = start_nodes(
        &dir,
        &layout,
        ports.as_mut(),
        &manager_public,
        &registry_args,
        &args.node_args,
        deadline,
    )?;
    if let Some(chain) = &chain {
        runtime.block_on(register_nodes(chain, &nodes))?;
    }

    let manager_url = format!("http://{}", layout.manager_listen);
    if let Some(ports) = ports.as_mut() {
        ports.held.release(ports.manager);
    }
    let (mut manager, manager_command) = start_manager(
        &mdir,
        &registry_args,
        &layout,
        args.round_timeout_ms,
        args.fanout,
        batching,
        &args.manager_args,
        &nodes,
    )?;

    let public = runtime.block_on(ensure_key(
        &manager_url,
        &mut manager,
        admin_token.as_str(),
        (!args.no_dkg).then_some((t, n)),
        deadline,
        &mdir,
    ))?;
    if let Some(chain) = chain.as_ref().filter(|_| !public.is_null()) {
        runtime.block_on(check_published(chain, &public, &mdir))?;
    }

    let testnet = Testnet {
        manager_url: manager_url.clone(),
        chain_id: args.chain_id,
        public_key: public["publicKey"].as_str().unwrap_or_default().to_string(),
        threshold: keyed_threshold(&public, t),
        manager_pid: manager.pid(),
        manager_address: tkms_manager::nox::wallet_address(&wallet).to_string(),
        gateway_private_key: format!("0x{}", gateway_hex.as_str()),
        runner_private_key: format!("0x{}", runner_hex.as_str()),
        admin_token: admin_token.to_string(),
        registry_file,
        rpc_url: chain.as_ref().map(|c| c.deployment.rpc_url.clone()),
        registry_address: chain.as_ref().map(|c| c.deployment.address.to_string()),
        registry_owner_private_key: chain
            .as_ref()
            .map(|c| c.deployment.owner_key.to_bytes().to_string()),
        anvil_pid: chain.as_ref().map(|c| c.anvil.child().id()),
        nodes: nodes.iter().map(|(_, n)| n.clone()).collect(),
        manager_command,
    };
    let out = &args.out;
    let tmp = out.with_extension("json.tmp");
    write_private(&tmp, &serde_json::to_vec_pretty(&testnet)?)?;
    fs::rename(&tmp, out)?;

    print_summary(&testnet, out, manager.pid(), t, n);
    wait_and_stop(args.detach, &runtime, manager, nodes, chain, network_guard);
    Ok(())
}

/// Removes a testnet's namespaces when dropped (an `up` that failed, or stopped by Ctrl-C).
struct NetworkGuard(Option<Network>, PathBuf);

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        if let Some(network) = self.0.take() {
            network.destroy();
            let _ = fs::remove_file(Network::file(&self.1));
        }
    }
}

/// `tkms testnet down`: stop the processes of a detached testnet (the pids in its
/// `testnet.json`) and remove its namespaces.
pub fn down(args: &DataDirArgs) -> Result<()> {
    if let Ok(bytes) = fs::read(&args.out) {
        let testnet: Testnet = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {}", args.out.display()))?;
        let pids = std::iter::once(testnet.manager_pid)
            .chain(testnet.nodes.iter().map(|n| n.pid))
            .chain(testnet.anvil_pid);
        for pid in pids {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
    if let Some(network) = Network::load(&args.data_dir)? {
        // The daemons get a moment to stop before their namespaces go.
        std::thread::sleep(Duration::from_millis(500));
        network.destroy();
        fs::remove_file(Network::file(&args.data_dir))?;
    }
    Ok(())
}

/// `tkms testnet partition|heal --node I`: cut node `I` of a `--netns` testnet off the
/// network, or join it back.
pub fn partition(args: &DataDirArgs, node: u16, cut: bool) -> Result<()> {
    let network = Network::load(&args.data_dir)?.with_context(|| {
        format!(
            "{} has no network namespaces (start it with --netns)",
            args.data_dir.display()
        )
    })?;
    Network::partition(network.node(node)?, cut)
}

/// With `detach`, leave every process running; else wait for Ctrl-C and stop the manager,
/// the nodes and the chain.
fn wait_and_stop(
    detach: bool,
    runtime: &tokio::runtime::Runtime,
    mut manager: Proc,
    mut nodes: Vec<(Proc, TestnetNode)>,
    chain: Option<Chain>,
    mut network: NetworkGuard,
) {
    if detach {
        // `tkms testnet down` removes the namespaces.
        network.0 = None;
        // Leave the processes running: forget the handles so Drop does not stop them.
        for (proc, _) in nodes {
            std::mem::forget(proc);
        }
        std::mem::forget(manager);
        std::mem::forget(chain);
        return;
    }
    println!("Ctrl-C stops the testnet.");
    runtime.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    eprintln!("tkms testnet: stopping");
    manager.stop();
    for (proc, _) in &mut nodes {
        proc.stop();
    }
    // Dropping the anvil instance stops the chain; the network guard removes the namespaces.
    drop(chain);
    drop(network);
}
