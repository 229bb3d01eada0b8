//! What a loopback testnet keeps on this machine: its ports (picked once, held until their
//! process starts), its development secrets in files only the user can read, and its child
//! processes.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use k256::ecdsa::SigningKey;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use tkms_crypto::{Secp256k1, SecretScalar, Suite};
use zeroize::Zeroizing;

/// The ports of a testnet, as recorded in its `ports.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Ports {
    pub(super) manager: u16,
    pub(super) grpc: Vec<u16>,
    pub(super) p2p: Vec<u16>,
    /// The listeners holding these ports until their processes start; never recorded.
    #[serde(skip)]
    pub(super) held: HeldPorts,
}

/// Listeners that hold a testnet's ports from the moment they are picked until the process
/// that listens there is about to start.
///
/// Why: a port found by binding `127.0.0.1:0` and closing the listener at once is free only
/// at that instant. Linux may hand the same port to the next `bind` of port 0: our own next
/// pick (two processes on one port, and `up` fails), anvil's (`--chain` starts it after the
/// ports are picked, on a port of its own choosing) or an outgoing connection of a node
/// started earlier. While the listeners are open, every port of the testnet is distinct and
/// nobody else can take one; each is released right before the process that binds it.
#[derive(Debug, Default)]
pub(super) struct HeldPorts(BTreeMap<u16, TcpListener>);

impl HeldPorts {
    /// A free loopback port, held until [`HeldPorts::release`].
    pub(super) fn pick(&mut self) -> Result<u16> {
        let listener = TcpListener::bind("127.0.0.1:0").context("picking a free port")?;
        let port = listener.local_addr()?.port();
        self.0.insert(port, listener);
        Ok(port)
    }

    /// Hold `port`, recorded by an earlier `up`, until [`HeldPorts::release`].
    pub(super) fn hold(&mut self, port: u16, ports_file: &Path) -> Result<()> {
        let listener = TcpListener::bind(("127.0.0.1", port)).with_context(|| {
            format!(
                "port {port}, recorded in {}, is in use: is this testnet (or another program) \
                 still running there?",
                ports_file.display()
            )
        })?;
        self.0.insert(port, listener);
        Ok(())
    }

    /// Stop holding `port`: the process about to start listens there.
    pub(super) fn release(&mut self, port: u16) {
        self.0.remove(&port);
    }
}

/// Write a secret file readable only by the user.
pub(super) fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)?;
    Ok(())
}

/// Read the hex secret at `path`, or create it with `make`.
pub(super) fn secret_file(
    path: &Path,
    make: impl FnOnce() -> Zeroizing<String>,
) -> Result<Zeroizing<String>> {
    if path.exists() {
        let text = Zeroizing::new(fs::read_to_string(path)?);
        return Ok(Zeroizing::new(text.trim().to_string()));
    }
    let value = make();
    write_private(path, value.as_bytes())?;
    Ok(value)
}

pub(super) fn random_hex(bytes: usize) -> Zeroizing<String> {
    let mut b = Zeroizing::new(vec![0u8; bytes]);
    OsRng.fill_bytes(&mut b);
    Zeroizing::new(hex::encode(&*b))
}

/// The compressed public key of the hex secret scalar `secret`, as hex.
pub(super) fn public_hex(secret: &str) -> Result<String> {
    let bytes = Zeroizing::new(hex::decode(secret)?);
    let key = SecretScalar::<Secp256k1>::from_bytes(&bytes)?;
    Ok(hex::encode(Secp256k1::encode_point(&key.public_point())))
}

/// The ECDSA key of the hex secret `secret`.
pub(super) fn signing_key(secret: &str) -> Result<SigningKey> {
    Ok(SigningKey::from_slice(&Zeroizing::new(hex::decode(
        secret,
    )?))?)
}

pub(super) fn scalar_hex() -> Zeroizing<String> {
    let s = SecretScalar::<Secp256k1>::random(&mut OsRng);
    Zeroizing::new(hex::encode(s.to_bytes().as_ref()))
}

/// The whole command line that [`Proc::spawn`] runs for `args` in namespace `ns`: what
/// `testnet.json` records to restart a process.
pub(super) fn command_line(ns: Option<&str>, args: &[String]) -> Result<Vec<String>> {
    let mut full = Vec::new();
    if let Some(ns) = ns {
        full.extend(["ip".into(), "netns".into(), "exec".into(), ns.to_string()]);
    }
    full.push(std::env::current_exe()?.display().to_string());
    full.extend_from_slice(args);
    Ok(full)
}

/// A running child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub(super) struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    /// Start this binary with `args`, in network namespace `ns` if given, logging to `log`.
    pub(super) fn spawn(
        name: String,
        args: &[String],
        log: &Path,
        ns: Option<&str>,
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the tkms binary")?;
        let log_file =
            fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = match ns {
            // `ip netns exec` enters the namespace and execs: the pid is the daemon's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        // The daemons read their settings from the files the testnet wrote; a TKMS_*
        // variable of the caller's shell would override them (tkms_daemon::config).
        for (name, _) in std::env::vars_os() {
            if name
                .to_string_lossy()
                .starts_with(tkms_daemon::config::ENV_PREFIX)
            {
                command.env_remove(&name);
            }
        }
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { name, child })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early ({status}); see its log", self.name);
        }
        Ok(())
    }

    pub(super) fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Deserialize)]
pub(super) struct NodeStatus {
    pub(super) pid: u32,
    pub(super) grpc_addr: String,
    pub(super) p2p_addr: String,
    #[serde(default)]
    pub(super) node_key: String,
}

pub(super) fn wait_for_node(dir: &Path, proc: &mut Proc, deadline: Instant) -> Result<NodeStatus> {
    let path = dir.join("node.json");
    loop {
        if let Ok(bytes) = fs::read(&path) {
            if let Ok(status) = serde_json::from_slice::<NodeStatus>(&bytes) {
                if status.pid == proc.pid() {
                    return Ok(status);
                }
            }
        }
        proc.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "{} did not start within the deadline; see {}",
                proc.name,
                dir.join("node.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(super) fn http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?)
}

/// The ports of the testnet in `dir`: fixed at creation so a restarted node or manager comes
/// back where it was. All of them are returned held (see [`HeldPorts`]), recorded ones too:
/// anvil, started next with `--chain`, must not be given one of them either.
pub(super) fn ports(dir: &Path, n: u16) -> Result<Ports> {
    let ports_file = dir.join("ports.json");
    if ports_file.exists() {
        let mut ports: Ports = serde_json::from_slice(&fs::read(&ports_file)?)?;
        if ports.grpc.len() != usize::from(n) || ports.p2p.len() != usize::from(n) {
            bail!(
                "{} holds a testnet of {} nodes, not {n}; use another --data-dir",
                dir.display(),
                ports.grpc.len()
            );
        }
        for &port in std::iter::once(&ports.manager)
            .chain(&ports.grpc)
            .chain(&ports.p2p)
        {
            ports.held.hold(port, &ports_file)?;
        }
        Ok(ports)
    } else {
        let mut held = HeldPorts::default();
        let manager = held.pick()?;
        let grpc = (0..n).map(|_| held.pick()).collect::<Result<_>>()?;
        let p2p = (0..n).map(|_| held.pick()).collect::<Result<_>>()?;
        let ports = Ports {
            manager,
            grpc,
            p2p,
            held,
        };
        fs::write(&ports_file, serde_json::to_vec_pretty(&ports)?)?;
        Ok(ports)
    }
}
