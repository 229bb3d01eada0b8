//! The `tkms` command line: ECIES helpers (Nox-compatible) for a person at a shell or a script
//! checking interoperability. Cluster commands (`testnet`, `delegate`, `reencrypt`) come with
//! the cluster.

use std::{
    io::{Read, Write},
    path::PathBuf,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use rand_core::OsRng;
use tkms_crypto::{ecies, Secp256k1, SecretScalar, Suite, P256};
use zeroize::Zeroizing;

mod audit;
mod client;
mod engine;

mod registry;
pub mod testnet;

/// The subcommands that run a daemon: their options also come from `TKMS_*` variables and a
/// `--config` file (tkms_daemon::config, docs/DEPLOY.md).
pub const DAEMON_COMMANDS: &[tkms_daemon::config::Layered<'static>] = {
    use tkms_daemon::config::UnknownKeys::{Refuse, Skip};
    &[
        (&["node", "run"], Refuse),
        (&["node", "init"], Skip),
        (&["manager", "run"], Refuse),
    ]
};

/// The tkms command-line tool.
#[derive(Debug, Parser)]
#[command(name = "tkms", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where the cluster is and who asks (for the cluster commands).
    #[command(flatten)]
    connection: client::Connection,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The encrypted vector engine: its HTTP service and clients of it.
    Engine(engine::EngineArgs),
    /// Audit logs of the manager and the nodes: check a log's hash chain, show its entries.
    Audit(audit::AuditArgs),
    /// ECIES (HKDF-SHA256 + AES-256-GCM, byte-compatible with the Nox KMS).
    Ecies {
        /// Curve suite.
        #[arg(long, value_enum, default_value_t = Curve::Secp256k1, global = true)]
        curve: Curve,
        #[command(subcommand)]
        command: EciesCommand,
    },
    /// Talk to a running cluster: encrypt, delegate, reencrypt, decrypt, bench.
    #[command(flatten)]
    Cluster(client::ClusterCommand),
    /// The on-chain registry: show it, grant and revoke roles, deploy one.
    Registry(registry::RegistryArgs),
    /// A whole cluster on this machine.
    Testnet {
        #[command(subcommand)]
        command: TestnetCommand,
    },
    /// Run a KMS node (what `tkms-node` does).
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// The single-key reference server the cluster is benchmarked against (not for use).
    Baseline {
        #[command(subcommand)]
        command: BaselineCommand,
    },
    /// Run the manager (what `tkms-manager` does).
    Manager {
        #[command(subcommand)]
        command: ManagerCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TestnetCommand {
    /// Start N nodes and a manager on loopback, run the DKG (unless `--no-dkg`), write
    /// testnet.json; Ctrl-C stops.
    Up(testnet::UpArgs),
    /// Stop a detached testnet and remove its network namespaces.
    Down(testnet::DataDirArgs),
    /// Cut a node of a `--netns` testnet off the network.
    Partition {
        #[command(flatten)]
        dir: testnet::DataDirArgs,
        /// The node's index.
        #[arg(long)]
        node: u16,
    },
    /// Join a partitioned node back.
    Heal {
        #[command(flatten)]
        dir: testnet::DataDirArgs,
        /// The node's index.
        #[arg(long)]
        node: u16,
    },
    /// The link shaper `up --netns` runs in each namespace (not for direct use).
    #[command(hide = true)]
    Shape(testnet::ShapeArgs),
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Serve until SIGTERM or Ctrl-C.
    Run(tkms_node::daemon::NodeConfig),
    /// Create the node's vault and identity; print the record to register (JSON).
    Init(tkms_node::daemon::InitConfig),
}

#[derive(Debug, Subcommand)]
enum BaselineCommand {
    /// Serve `/v0/delegate` with one whole key, until Ctrl-C.
    Serve(tkms_manager::single::BaselineConfig),
}

#[derive(Debug, Subcommand)]
enum ManagerCommand {
    /// Serve until SIGTERM or Ctrl-C.
    Run(tkms_manager::daemon::ManagerConfig),
}

/// Run a daemon on a multi-threaded runtime until SIGTERM or Ctrl-C.
fn serve<F, Fut>(daemon: F) -> Result<()>
where
    F: FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    tkms_daemon::init_tracing();
    let runtime = tokio::runtime::Runtime::new()?;
    // The signal handlers go in now, before the daemon starts (they need the runtime).
    let shutdown = {
        let _entered = runtime.enter();
        Box::pin(tkms_daemon::shutdown_signal())
    };
    runtime.block_on(daemon(shutdown))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Curve {
    Secp256k1,
    P256,
}

#[derive(Debug, Subcommand)]
enum EciesCommand {
    /// Print a new key pair as JSON `{"secret_key":"0x..","public_key":"0x.."}`.
    Keygen,
    /// Read plaintext on stdin; print the container `K || nonce || ct||tag` as 0x-hex.
    Encrypt {
        /// Recipient public key, SEC1 compressed hex (0x optional).
        #[arg(long)]
        public_key: String,
    },
    /// Read a hex container on stdin; write the plaintext to stdout.
    Decrypt {
        /// File holding the 32-byte secret key as hex (0x optional).
        #[arg(long)]
        secret_key_file: PathBuf,
    },
}

/// Run a parsed command line with the given input and output.
pub fn run(cli: Cli, input: &mut impl Read, output: &mut impl Write) -> Result<()> {
    match cli.command {
        Command::Engine(args) => engine::run(args, output),
        Command::Audit(args) => audit::run(args, output),
        Command::Ecies {
            curve: Curve::Secp256k1,
            command,
        } => ecies_command::<Secp256k1>(command, input, output),
        Command::Ecies {
            curve: Curve::P256,
            command,
        } => ecies_command::<P256>(command, input, output),
        Command::Registry(args) => registry::run(args, output),
        Command::Cluster(command) => client::run(&cli.connection, command, input, output),
        Command::Testnet { command } => match command {
            TestnetCommand::Up(args) => testnet::up(&args),
            TestnetCommand::Down(args) => testnet::down(&args),
            TestnetCommand::Partition { dir, node } => testnet::partition(&dir, node, true),
            TestnetCommand::Heal { dir, node } => testnet::partition(&dir, node, false),
            TestnetCommand::Shape(args) => testnet::netns::shape(&args),
        },
        Command::Node {
            command: NodeCommand::Run(config),
        } => serve(|shutdown| async move {
            tkms_node::daemon::run(config, shutdown)
                .await
                .map_err(anyhow::Error::from)
        }),
        Command::Node {
            command: NodeCommand::Init(config),
        } => {
            let runtime = tokio::runtime::Runtime::new()?;
            let registration = runtime.block_on(tkms_node::daemon::init(&config))?;
            serde_json::to_writer_pretty(&mut *output, &registration)?;
            writeln!(output)?;
            Ok(())
        }
        Command::Baseline {
            command: BaselineCommand::Serve(config),
        } => serve(|shutdown| async move {
            tkms_manager::single::run(config, shutdown)
                .await
                .map_err(anyhow::Error::msg)
        }),
        Command::Manager {
            command: ManagerCommand::Run(config),
        } => serve(|shutdown| async move {
            tkms_manager::daemon::run(config, shutdown)
                .await
                .map_err(anyhow::Error::from)
        }),
    }
}

fn ecies_command<S: Suite>(
    command: EciesCommand,
    input: &mut impl Read,
    output: &mut impl Write,
) -> Result<()> {
    match command {
        EciesCommand::Keygen => {
            let secret = SecretScalar::<S>::random(&mut OsRng);
            let secret_hex = Zeroizing::new(hex::encode(secret.to_bytes().as_ref()));
            let public_hex = hex::encode(S::encode_point(&secret.public_point()));
            writeln!(
                output,
                "{{\"secret_key\":\"0x{}\",\"public_key\":\"0x{public_hex}\"}}",
                secret_hex.as_str()
            )?;
        }
        EciesCommand::Encrypt { public_key } => {
            let bytes = decode_hex(&public_key).context("public key is not hex")?;
            let public = S::decode_point(&bytes).context("invalid public key")?;
            let mut plaintext = Zeroizing::new(Vec::new());
            input
                .read_to_end(&mut plaintext)
                .context("reading plaintext from stdin")?;
            let ciphertext = ecies::encrypt::<S>(&public, &plaintext, &mut OsRng)?;
            writeln!(output, "0x{}", hex::encode(ciphertext.to_bytes()))?;
        }
        EciesCommand::Decrypt { secret_key_file } => {
            let text =
                Zeroizing::new(std::fs::read_to_string(&secret_key_file).with_context(|| {
                    format!("reading secret key file {}", secret_key_file.display())
                })?);
            let bytes = Zeroizing::new(decode_hex(&text).context("secret key file is not hex")?);
            let secret = SecretScalar::<S>::from_bytes(&bytes).context("invalid secret key")?;
            let mut text = String::new();
            input
                .read_to_string(&mut text)
                .context("reading the hex ciphertext from stdin")?;
            let container = decode_hex(&text).context("ciphertext is not hex")?;
            let ciphertext =
                ecies::Ciphertext::<S>::from_bytes(&container).context("invalid ciphertext")?;
            let plaintext = ecies::decrypt(&secret, &ciphertext)?;
            output.write_all(&plaintext)?;
        }
    }
    output.flush()?;
    Ok(())
}

/// Hex with optional `0x` and surrounding whitespace.
fn decode_hex(text: &str) -> Result<Vec<u8>> {
    let text = text.trim();
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() {
        bail!("empty input");
    }
    Ok(hex::decode(digits)?)
}
