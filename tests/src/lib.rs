//! The fixture of the end-to-end tests: a whole testnet of real processes (`tkms testnet up
//! --detach`, with or without a local chain), whose members a test kills (`kill -9`, waiting
//! until the process is gone) and restarts with the command recorded in `testnet.json`, plus
//! extra node processes, the operator's admin calls, and clean-up when the test ends.
//!
//! ```no_run
//! # async fn example() {
//! use tkms_e2e::{Cluster, Options};
//! let dir = tempfile::tempdir().unwrap();
//! let mut cluster = Cluster::start(dir.path(), &Options::new(5, 3));
//! cluster.kill_node(0); // kill -9, returns once the process is gone
//! cluster.restart_node(0); // its recorded command: same data dir, ports and share
//! let extra = cluster.start_extra_node(); // a fresh node process on free ports
//! let mut nodes = cluster.node_urls();
//! nodes.push(extra);
//! let (status, body) = cluster.reshare(4, &nodes).await;
//! # let _ = (status, body);
//! # }
//! ```
//!
//! The tests run the `tkms` binary that cargo builds beside them (`target/<profile>/tkms`;
//! `$TKMS_BIN` overrides it). `cargo test --workspace` builds it, because the `tkms-cli`
//! package has integration tests of its own; to run only these tests, build it first:
//! `cargo build -p tkms-cli && cargo test -p tkms-e2e --test testnet`.
//!
//! A [`Cluster`] stops every process it knows of when it is dropped, so a failing test leaves
//! nothing running.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
pub use tkms_cli::testnet::{Testnet, TestnetNode};

/// Environment variable naming the `tkms` binary to test instead of the one cargo built.
pub const TKMS_BIN_ENV: &str = "TKMS_BIN";

/// The `tkms` binary under test: `$TKMS_BIN`, else `tkms` in the directory above this test
/// executable (`target/<profile>/deps/..`). Fails the test with one line if it is not built.
///
/// # Panics
/// If the binary does not exist.
#[must_use]
pub fn tkms_bin() -> PathBuf {
    if let Some(path) = std::env::var_os(TKMS_BIN_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{TKMS_BIN_ENV}={} is not a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("tkms");
    assert!(
        bin.is_file(),
        "the tkms binary is not built: run `cargo build -p tkms-cli` (or `cargo test --workspace`, which builds it)"
    );
    bin
}

/// A `tkms` command.
#[must_use]
pub fn tkms() -> Command {
    Command::new(tkms_bin())
}

/// `kill -9 pid`, returning once the process is gone (or a zombie): `kill` only sends the
/// signal, and a node still running for a few milliseconds on a loaded machine could answer
/// the next request or still hold its vault.
///
/// # Panics
/// If `kill` cannot run, or the process is still running 5 s later.
pub fn kill(pid: u32) {
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("running kill");
    let stat = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + Duration::from_secs(5);
    // The state is the field after the command name, which is in parentheses.
    while let Ok(text) = fs::read_to_string(&stat) {
        let state = text
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if matches!(state, Some('Z' | 'X')) {
            break;
        }
        assert!(Instant::now() < deadline, "process {pid} survived kill -9");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGTERM to `pid` (a clean stop), without waiting.
fn terminate(pid: u32) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
}

/// Reads a `testnet.json`.
///
/// # Panics
/// If the file cannot be read or parsed.
#[must_use]
pub fn read_testnet(path: &Path) -> Testnet {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The base URL a just-started `tkms engine serve` (with `--listen ...:0` and piped stdout)
/// prints as its first line, `tkms engine listening on <url>`.
///
/// # Panics
/// If the process has no piped stdout or prints something else first.
pub fn engine_url(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("the engine's stdout is piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reading the engine's first line");
    line.trim()
        .strip_prefix("tkms engine listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from tkms engine serve: {line:?}"))
        .to_owned()
}

/// A child process killed (and reaped) when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How to start a testnet: `tkms testnet up` flags.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--nodes`.
    pub nodes: u16,
    /// `--threshold`.
    pub threshold: u16,
    /// `--chain`: a local anvil with the registry contract instead of the registry file.
    pub chain: bool,
    /// `--round-timeout-ms` (3000 by default here: ceremonies on a loaded CI machine).
    pub round_timeout_ms: u64,
    /// Further `tkms testnet up` flags, e.g. `["--fanout", "t+1"]`.
    pub args: Vec<String>,
}

impl Options {
    /// `nodes` nodes with threshold `threshold`, no chain, 3 s round timeouts.
    #[must_use]
    pub fn new(nodes: u16, threshold: u16) -> Self {
        Self {
            nodes,
            threshold,
            chain: false,
            round_timeout_ms: 3000,
            args: Vec::new(),
        }
    }

    /// On a local chain (`--chain`).
    #[must_use]
    pub fn chain(mut self) -> Self {
        self.chain = true;
        self
    }

    /// Another `tkms testnet up` flag (and its value, as a second call).
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }
}

/// A node started by the fixture beyond the testnet's own (see [`Cluster::start_extra_node`]).
#[derive(Debug, Clone)]
pub struct ExtraNode {
    /// Its data directory (vault, password file, `node.json`, `node.log`).
    pub data_dir: PathBuf,
    /// Its gRPC URL, as `/admin/reshare` takes it.
    pub grpc_url: String,
    /// Its process id, `None` once killed.
    pub pid: Option<u32>,
}

/// A running testnet, stopped when dropped.
///
/// Nodes are named by their position in `testnet.json`'s `nodes` (0-based; node index
/// `i + 1` in a fresh testnet).
pub struct Cluster {
    dir: PathBuf,
    testnet: Testnet,
    /// Current process id of each testnet node, `None` while it is killed.
    node_pids: Vec<Option<u32>>,
    manager_pid: Option<u32>,
    extra: Vec<ExtraNode>,
    /// Processes this fixture started (restarts, extra nodes) or was given: reaped when killed,
    /// killed when the cluster is dropped.
    children: BTreeMap<u32, Child>,
}

impl Cluster {
    /// `tkms testnet up --detach` with `options`, everything under `dir`: the data in
    /// `dir/data`, the description in `dir/testnet.json`. Returns once the DKG is done and the
    /// manager serves (with `--no-dkg` among the options: once the manager answers, keyless).
    ///
    /// # Panics
    /// If the testnet does not come up (with `chain`, first if anvil is not installed: one
    /// line that names the command installing it).
    #[must_use]
    pub fn start(dir: &Path, options: &Options) -> Self {
        if options.chain {
            if let Err(e) = tkms_registry::anvil::anvil_path() {
                panic!("{e}");
            }
        }
        let out = dir.join("testnet.json");
        let mut command = tkms();
        command.args(["testnet", "up", "--detach"]);
        if options.chain {
            command.arg("--chain");
        }
        let status = command
            .args(["--nodes", &options.nodes.to_string()])
            .args(["--threshold", &options.threshold.to_string()])
            .args(["--round-timeout-ms", &options.round_timeout_ms.to_string()])
            .args(&options.args)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--out")
            .arg(&out)
            .status()
            .expect("running tkms testnet up");
        assert!(
            status.success(),
            "tkms testnet up{} failed",
            if options.chain { " --chain" } else { "" }
        );
        let testnet = read_testnet(&out);
        Self {
            dir: dir.to_path_buf(),
            node_pids: testnet.nodes.iter().map(|n| Some(n.pid)).collect(),
            manager_pid: Some(testnet.manager_pid),
            testnet,
            extra: Vec::new(),
            children: BTreeMap::new(),
        }
    }

    /// The testnet as `tkms testnet up` described it (the process ids are those at start).
    #[must_use]
    pub fn testnet(&self) -> &Testnet {
        &self.testnet
    }

    /// The directory given to [`Cluster::start`].
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The testnet's data directory (`dir/data`).
    #[must_use]
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The manager's directory: its keys, `admin.token`, `state.json`, `manager.log`.
    #[must_use]
    pub fn manager_dir(&self) -> PathBuf {
        self.data_dir().join("manager")
    }

    /// `testnet.json`.
    #[must_use]
    pub fn testnet_json(&self) -> PathBuf {
        self.dir.join("testnet.json")
    }

    /// The current process id of node `i`, `None` while it is killed.
    #[must_use]
    pub fn node_pid(&self, i: usize) -> Option<u32> {
        self.node_pids[i]
    }

    /// The current process id of the manager, `None` while it is killed.
    #[must_use]
    pub fn manager_pid(&self) -> Option<u32> {
        self.manager_pid
    }

    /// The gRPC URLs of the testnet's own nodes, in order, as `/admin/reshare` takes them.
    #[must_use]
    pub fn node_urls(&self) -> Vec<String> {
        self.testnet
            .nodes
            .iter()
            .map(|n| format!("http://{}", n.grpc_addr))
            .collect()
    }

    /// The nodes started by [`Cluster::start_extra_node`], in order.
    #[must_use]
    pub fn extra_nodes(&self) -> &[ExtraNode] {
        &self.extra
    }

    /// `kill -9` node `i` and wait until it is gone. Killing a killed node does nothing.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(pid) = self.node_pids[i].take() {
            self.kill_pid(pid);
        }
    }

    /// Restart node `i` with the command recorded for it in `testnet.json` (same data
    /// directory, ports and share), logging to `restart.log` in its data directory. Returns
    /// at once: the node serves again once it has opened its vault and listens.
    ///
    /// # Panics
    /// If the node is running, or the process cannot be started.
    pub fn restart_node(&mut self, i: usize) -> u32 {
        assert!(self.node_pids[i].is_none(), "node {i} is still running");
        let node = &self.testnet.nodes[i];
        let (command, log) = (node.command.clone(), node.data_dir.join("restart.log"));
        let pid = self.spawn(&command, &log);
        self.node_pids[i] = Some(pid);
        pid
    }

    /// `kill -9` the manager and wait until it is gone.
    pub fn kill_manager(&mut self) {
        if let Some(pid) = self.manager_pid.take() {
            self.kill_pid(pid);
        }
    }

    /// Restart the manager with the command recorded in `testnet.json` (same port, keys,
    /// registry and state file), logging to `manager/restart.log`. Returns at once.
    ///
    /// # Panics
    /// If the manager is running, or `testnet.json` has no manager command.
    pub fn restart_manager(&mut self) -> u32 {
        assert!(self.manager_pid.is_none(), "the manager is still running");
        let command = self.testnet.manager_command.clone();
        assert!(
            !command.is_empty(),
            "testnet.json records no manager command"
        );
        let pid = self.spawn(&command, &self.manager_dir().join("restart.log"));
        self.manager_pid = Some(pid);
        pid
    }

    /// Start a fresh node process like the testnet's own (same registry and manager key), in
    /// `dir/extra-node-<n>` with its own password, on free ports; returns its gRPC URL once it
    /// listens. It holds no share until a reshare includes it.
    ///
    /// # Panics
    /// If it does not start within 20 s.
    pub fn start_extra_node(&mut self) -> String {
        let number = self.testnet.nodes.len() + self.extra.len() + 1;
        let template = self.testnet.nodes[0].command.clone();
        let ndir = self.dir.join(format!("extra-node-{number}"));
        fs::create_dir_all(&ndir).expect("creating the extra node's directory");
        let password = ndir.join("password");
        fs::write(&password, "extra node password 0123456789").expect("writing its password");
        let mut command: Vec<String> = vec![template[0].clone()];
        let mut it = template.into_iter().skip(1);
        while let Some(a) = it.next() {
            let replaced = match a.as_str() {
                "--data-dir" => Some(ndir.display().to_string()),
                "--grpc-listen" => Some("127.0.0.1:0".into()),
                "--p2p-listen" => Some("/ip4/127.0.0.1/tcp/0".into()),
                "--password-file" => Some(password.display().to_string()),
                _ => None,
            };
            command.push(a);
            if let Some(value) = replaced {
                it.next();
                command.push(value);
            }
        }
        if command.iter().any(|a| a == "--config") {
            // The testnet starts its nodes from a config file: the command line overrides it.
            command.extend([
                "--data-dir".into(),
                ndir.display().to_string(),
                "--grpc-listen".into(),
                "127.0.0.1:0".into(),
                "--p2p-listen".into(),
                "/ip4/127.0.0.1/tcp/0".into(),
                "--password-file".into(),
                password.display().to_string(),
            ]);
        }
        let pid = self.spawn(&command, &ndir.join("node.log"));
        let info = ndir.join("node.json");
        let deadline = Instant::now() + Duration::from_secs(20);
        let grpc_url = loop {
            if let Ok(bytes) = fs::read(&info) {
                if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                    if let Some(addr) = v["grpc_addr"].as_str() {
                        break format!("http://{addr}");
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "extra node {number} did not start; see {}",
                ndir.join("node.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        self.extra.push(ExtraNode {
            data_dir: ndir,
            grpc_url: grpc_url.clone(),
            pid: Some(pid),
        });
        grpc_url
    }

    /// `kill -9` the `k`-th extra node and wait until it is gone.
    pub fn kill_extra_node(&mut self, k: usize) {
        if let Some(pid) = self.extra[k].pid.take() {
            self.kill_pid(pid);
        }
    }

    /// Hand a process the test started (e.g. `tkms engine serve`) to the cluster, which kills
    /// it when dropped.
    pub fn adopt(&mut self, child: Child) {
        self.children.insert(child.id(), child);
    }

    /// `POST /admin/reshare {"threshold", "nodes"}` with the operator token: the HTTP status
    /// and the JSON answer.
    ///
    /// # Panics
    /// If the manager cannot be reached or answers something other than JSON.
    pub async fn reshare(&self, threshold: u16, nodes: &[String]) -> (reqwest::StatusCode, Value) {
        self.admin_post(
            "/admin/reshare",
            &serde_json::json!({ "threshold": threshold, "nodes": nodes }),
        )
        .await
    }

    /// `POST <path>` on the manager with the operator token and a JSON body.
    ///
    /// # Panics
    /// If the manager cannot be reached or answers something other than JSON.
    pub async fn admin_post(&self, path: &str, body: &Value) -> (reqwest::StatusCode, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.testnet.manager_url))
            .bearer_auth(&self.testnet.admin_token)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = response.status();
        let json = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: not JSON: {e}"));
        (status, json)
    }

    /// `GET <path>` on the manager with the operator token (e.g. `/admin/nodes`,
    /// `/admin/epochs`).
    ///
    /// # Panics
    /// If the manager cannot be reached or answers something other than JSON.
    pub async fn admin_get(&self, path: &str) -> (reqwest::StatusCode, Value) {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.testnet.manager_url))
            .bearer_auth(&self.testnet.admin_token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status();
        let json = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"));
        (status, json)
    }

    /// Start `command` (the binary first) with its output in `log`; its process id.
    fn spawn(&mut self, command: &[String], log: &Path) -> u32 {
        let log =
            fs::File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let child = Command::new(&command[0])
            .args(&command[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", command[0]));
        let pid = child.id();
        self.children.insert(pid, child);
        pid
    }

    /// `kill -9`, wait until gone, and reap it if this fixture started it.
    fn kill_pid(&mut self, pid: u32) {
        kill(pid);
        if let Some(mut child) = self.children.remove(&pid) {
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The processes `testnet up` left running: a clean stop (they are not our children).
        let members = self.node_pids.iter().chain([&self.manager_pid]).flatten();
        for pid in members {
            if !self.children.contains_key(pid) {
                terminate(*pid);
            }
        }
        if let Some(pid) = self.testnet.anvil_pid {
            terminate(pid);
        }
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
