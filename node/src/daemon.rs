//! The node process (docs/ARCHITECTURE.md §4.2, docs/STYLE.md "Thin binaries"): open the vault,
//! load the node's identity and latest share, start the libp2p ceremony channel and the gRPC
//! service, and serve until `shutdown` resolves. Both `tkms-node` and `tkms node run` call [`run`].

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use libp2p::{identity::Keypair, Multiaddr};
use serde::Serialize;
use tkms_crypto::{suite::Encoded, Suite};
use tkms_proto::node::v1::node_server::NodeServer;
use tkms_proto::ClusterSuite as S;
use tkms_registry::access::FileRegistry;
use tokio::sync::{mpsc, oneshot};

use crate::{
    ceremony::Ceremonies,
    epochs::{EpochError, Epochs},
    p2p::P2p,
    service::NodeService,
    vault::{
        AwsKmsPassword, AwsKmsPasswordConfig, EnvPassword, FilePassword, KdfParams,
        PasswordProvider, Vault, VaultError,
    },
};

/// Where the vault password comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PasswordSource {
    /// An environment variable (development only: the process environment is easy to leak).
    Env,
    /// A file, e.g. a mounted Kubernetes secret.
    File,
    /// A KMS-encrypted password in a file, decrypted with `kms:Decrypt` at start.
    AwsKms,
}

/// Argon2id cost of a new vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KdfCost {
    /// OWASP's production parameters (19 MiB, 2 passes).
    Production,
    /// Cheap parameters for local testnets and tests; logged as insecure.
    Insecure,
}

/// Node configuration (command line of `tkms-node` and `tkms node run`).
#[derive(Debug, Clone, clap::Args)]
pub struct NodeConfig {
    /// A TOML file of settings: keys are the long options (`data-dir = "/var/lib/tkms"`);
    /// the command line and `TKMS_*` variables override it (docs/DEPLOY.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory of the vault (`vault.redb`) and the node's status file (`node.json`).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// gRPC listen address for the manager.
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub grpc_listen: SocketAddr,
    /// libp2p listen address for ceremonies with the other nodes.
    #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0")]
    pub p2p_listen: Multiaddr,
    /// The libp2p address the other nodes dial (default: the bound `--p2p-listen` address).
    /// Needed when listening on every interface (`/ip4/0.0.0.0/...`) or behind NAT.
    #[arg(long)]
    pub p2p_advertise: Option<Multiaddr>,
    /// The gRPC URL the manager dials (default: `http://` and the bound `--grpc-listen`
    /// address); written to `node.json` and printed by `tkms node init` for registration.
    #[arg(long)]
    pub grpc_advertise: Option<String>,
    /// Do not check at start that this host reaches its own advertised addresses (for a node
    /// behind a NAT that does not hairpin).
    #[arg(long)]
    pub skip_advertise_check: bool,
    /// Manager public key (33-byte compressed secp256k1, hex) whose signed requests this node
    /// accepts; repeat for several.
    #[arg(long = "manager-key", required = true)]
    pub manager_keys: Vec<String>,
    /// The embedded registry file (the manager's): the node re-checks every requester's
    /// authorization against it. Without any registry the node trusts the manager's check
    /// (logged as a warning at start).
    #[arg(long)]
    pub registry_file: Option<PathBuf>,
    /// JSON-RPC endpoint of the on-chain registry's chain (with `--registry-address`; instead
    /// of `--registry-file`): requesters are re-checked against the chain's roles, ceremony
    /// members against its node records, and the share against its published epoch.
    #[arg(long, requires = "registry_address", conflicts_with = "registry_file")]
    pub rpc_url: Option<String>,
    /// Address of the `TkmsRegistry` contract (with `--rpc-url`).
    #[arg(long, requires = "rpc_url")]
    pub registry_address: Option<tkms_registry::Address>,
    /// The vault's password and cost.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Connection bounds of the gRPC listener, and what to do if the audit log fails.
    #[command(flatten)]
    pub front: crate::front::NodeFrontArgs,
}

/// Where a node's vault password comes from, and the cost of a new vault (`tkms node run`
/// and `tkms node init`).
#[derive(Debug, Clone, clap::Args)]
pub struct VaultArgs {
    /// Where the vault password comes from.
    #[arg(long, value_enum, default_value_t = PasswordSource::File)]
    pub password: PasswordSource,
    /// The password file (`--password file`).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// The environment variable (`--password env`).
    #[arg(long, default_value = "TKMS_VAULT_PASSWORD")]
    pub password_env: String,
    /// File with the KMS `CiphertextBlob` of the password, raw or base64 (`--password aws-kms`).
    #[arg(long)]
    pub password_kms_ciphertext_file: Option<PathBuf>,
    /// KMS key id, ARN or alias of the ciphertext (`--password aws-kms`; optional, KMS finds
    /// the key from the ciphertext, and refuses a ciphertext under another key if it is given).
    #[arg(long)]
    pub password_kms_key_id: Option<String>,
    /// AWS region of the KMS key (`--password aws-kms`; default: `AWS_REGION`, the profile).
    #[arg(long)]
    pub password_kms_region: Option<String>,
    /// Endpoint URL of a KMS-compatible server (`--password aws-kms`; default: AWS KMS).
    #[arg(long)]
    pub password_kms_endpoint: Option<String>,
    /// Argon2id cost when the vault is created.
    #[arg(long, value_enum, default_value_t = KdfCost::Production)]
    pub kdf: KdfCost,
}

/// Configuration of `tkms node init`: create a node's vault and identity, and print what
/// must be registered for it.
#[derive(Debug, Clone, clap::Args)]
pub struct InitConfig {
    /// A TOML file of settings: the same file as `tkms node run` reads (the settings `init`
    /// has no use for are skipped).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory of the vault (`vault.redb`); created if missing.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The vault's password and cost.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// The libp2p address the other nodes will dial (`/ip4/203.0.113.5/tcp/7101`).
    #[arg(long)]
    pub p2p_advertise: Option<Multiaddr>,
    /// The gRPC URL the manager will dial (`http://203.0.113.5:7001`).
    #[arg(long)]
    pub grpc_advertise: Option<String>,
}

/// What `tkms node init` prints: the node's public identity, and the registry record to
/// register for it. Nothing in it is secret.
#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// Whether the vault was created now (else it existed and was opened).
    pub created: bool,
    /// Node key (compressed secp256k1, hex): registered, and pinned by the manager's TLS.
    pub node_key: String,
    /// libp2p peer id (base58).
    pub peer_id: String,
    /// libp2p peer id as registered (binary, hex).
    pub peer_id_hex: String,
    /// The registry record's endpoints: the gRPC URL and the libp2p address with peer id
    /// (empty where not given).
    pub endpoints: Vec<String>,
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The vault could not be opened or read.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The stored epochs could not be loaded.
    #[error(transparent)]
    Epochs(#[from] EpochError),
    /// The libp2p channel could not start.
    #[error(transparent)]
    P2p(#[from] crate::p2p::P2pError),
    /// A socket or file operation failed.
    #[error("{0}")]
    Io(String),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Server(String),
}

/// The status file `node.json`: what operators and `tkms testnet` need to reach the node.
/// Nothing in it is secret.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatusFile {
    /// Process id.
    pub pid: u32,
    /// gRPC address.
    pub grpc_addr: String,
    /// libp2p address with peer id.
    pub p2p_addr: String,
    /// Node key, compressed hex.
    pub node_key: String,
    /// The gRPC URL the manager dials (advertised, else `http://` and the bound address).
    pub grpc_url: String,
}

/// The vault password provider. Async because `aws-kms` decrypts here, once, before the vault
/// opens (see [`AwsKmsPassword`]).
async fn password_provider(config: &VaultArgs) -> Result<Box<dyn PasswordProvider>, NodeError> {
    match config.password {
        PasswordSource::Env => Ok(Box::new(EnvPassword::new(config.password_env.clone()))),
        PasswordSource::File => {
            let path = config.password_file.clone().ok_or_else(|| {
                NodeError::Config("--password file needs --password-file PATH".into())
            })?;
            Ok(Box::new(FilePassword::new(path)))
        }
        PasswordSource::AwsKms => {
            let path = config.password_kms_ciphertext_file.clone().ok_or_else(|| {
                NodeError::Config(
                    "--password aws-kms needs --password-kms-ciphertext-file PATH".into(),
                )
            })?;
            let kms = AwsKmsPasswordConfig {
                key_id: config.password_kms_key_id.clone(),
                region: config.password_kms_region.clone(),
                endpoint: config.password_kms_endpoint.clone(),
                ..AwsKmsPasswordConfig::new(path)
            };
            Ok(Box::new(AwsKmsPassword::decrypt(&kms).await?))
        }
    }
}

/// Open the vault in `dir`, creating it (and the node's identity) if missing.
async fn open_vault(dir: &Path, args: &VaultArgs) -> Result<Vault, NodeError> {
    let provider = password_provider(args).await?;
    let params = match args.kdf {
        KdfCost::Production => KdfParams::production(),
        KdfCost::Insecure => KdfParams::insecure_for_tests(),
    };
    let vault_path = dir.join("vault.redb");
    tokio::task::spawn_blocking(move || Vault::open(vault_path, provider.as_ref(), params))
        .await
        .map_err(|e| NodeError::Io(e.to_string()))?
        .map_err(NodeError::from)
}

/// `tkms node init`: create (or open) the vault in `--data-dir` with the node's identity,
/// and return what the operator registers for it (docs/DEPLOY.md §3).
pub async fn init(config: &InitConfig) -> Result<Registration, NodeError> {
    let created = !config.data_dir.join("vault.redb").exists();
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| NodeError::Io(format!("{}: {e}", config.data_dir.display())))?;
    let vault = open_vault(&config.data_dir, &config.vault).await?;
    let identity = vault.identity()?;
    let mut seed = *identity.p2p_seed;
    let keypair = Keypair::ed25519_from_bytes(&mut seed)
        .map_err(|e| NodeError::Config(format!("p2p identity: {e}")))?;
    let peer_id = keypair.public().to_peer_id();
    let mut endpoints = Vec::new();
    if let Some(url) = &config.grpc_advertise {
        grpc_endpoint(url)
            .map_err(|e| NodeError::Config(format!("--grpc-advertise {url}: {e}")))?;
        endpoints.push(url.clone());
    }
    if let Some(addr) = &config.p2p_advertise {
        check_p2p_advertise(addr)?;
        endpoints.push(
            addr.clone()
                .with(libp2p::multiaddr::Protocol::P2p(peer_id))
                .to_string(),
        );
    }
    Ok(Registration {
        data_dir: config.data_dir.clone(),
        created,
        node_key: hex::encode(S::encode_point(&identity.node_key.public_point())),
        peer_id: peer_id.to_string(),
        peer_id_hex: hex::encode(peer_id.to_bytes()),
        endpoints,
    })
}

/// The accepted manager keys, after the checks clap does not make (it does not see a config
/// file's values for "required" and "requires").
fn checked_manager_keys(config: &NodeConfig) -> Result<Vec<Encoded<S>>, NodeError> {
    if config.p2p_advertise.is_none() && binds_every_interface(&config.p2p_listen) {
        return Err(NodeError::Config(format!(
            "--p2p-listen {} binds every interface, which peers cannot dial: give the address \
             they reach this node at with --p2p-advertise",
            config.p2p_listen
        )));
    }
    if config.manager_keys.is_empty() {
        return Err(NodeError::Config(
            "no --manager-key: the node would accept no manager".into(),
        ));
    }
    tkms_daemon::config::check_registry(
        config.registry_file.is_some(),
        config.rpc_url.is_some(),
        config.registry_address.is_some(),
    )
    .map_err(NodeError::Config)?;
    if let Some(addr) = &config.p2p_advertise {
        check_p2p_advertise(addr)?;
    }
    if let Some(url) = &config.grpc_advertise {
        grpc_endpoint(url)
            .map_err(|e| NodeError::Config(format!("--grpc-advertise {url}: {e}")))?;
    }
    config
        .manager_keys
        .iter()
        .map(|k| {
            let bytes = hex::decode(k.trim_start_matches("0x"))
                .map_err(|e| NodeError::Config(format!("manager key {k:?}: {e}")))?;
            Encoded::from_bytes(&bytes)
                .map_err(|e| NodeError::Config(format!("manager key {k:?}: {e}")))
        })
        .collect()
}

fn write_status(dir: &Path, status: &NodeStatusFile) -> Result<(), NodeError> {
    let tmp = dir.join("node.json.tmp");
    let json = serde_json::to_vec_pretty(status).map_err(|e| NodeError::Io(e.to_string()))?;
    std::fs::write(&tmp, json).map_err(|e| NodeError::Io(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join("node.json")).map_err(|e| NodeError::Io(e.to_string()))
}

/// Run the node until `shutdown` resolves.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let managers = checked_manager_keys(&config)?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| NodeError::Io(format!("{}: {e}", config.data_dir.display())))?;
    let (nonces, audit, listener_limits) =
        crate::front::open(&config.front, &config.data_dir, &managers).map_err(NodeError::Io)?;
    let vault = open_vault(&config.data_dir, &config.vault).await?;
    let identity = vault.identity()?;
    let vault = Arc::new(vault);
    let epochs = Arc::new(Epochs::load(Arc::clone(&vault))?);
    let snapshot = epochs.snapshot();
    if snapshot.held.is_empty() {
        if snapshot.retired {
            tracing::warn!(
                committed = snapshot.committed,
                "retired: this node holds no share of the committed epoch"
            );
        } else {
            tracing::info!("no share stored yet: waiting for a DKG");
        }
    }
    for share in &snapshot.held {
        tracing::info!(epoch = share.epoch, index = %share.share.index(), committed = share.epoch <= snapshot.committed, "resuming with a stored share");
    }

    let mut seed = *identity.p2p_seed;
    let keypair = Keypair::ed25519_from_bytes(&mut seed)
        .map_err(|e| NodeError::Config(format!("p2p identity: {e}")))?;
    let (inbox_tx, inbox_rx) = mpsc::channel(4096);
    let (p2p_stop, p2p_stopped) = oneshot::channel();
    let p2p = P2p::start(
        keypair,
        config.p2p_listen.clone(),
        config.p2p_advertise.clone(),
        inbox_tx,
        p2p_stopped,
    )
    .await?;
    let node_key = Encoded::new(identity.node_key.public_point());
    let ceremonies = Arc::new(Ceremonies::new(
        p2p.clone(),
        identity.node_key.clone(),
        Arc::clone(&epochs),
    ));
    tokio::spawn(Arc::clone(&ceremonies).dispatch(inbox_rx));

    let listener = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|e| NodeError::Io(format!("cannot listen on {}: {e}", config.grpc_listen)))?;
    let grpc_addr = listener
        .local_addr()
        .map_err(|e| NodeError::Io(e.to_string()))?;
    let grpc_url = advertised_grpc(&config, grpc_addr, &p2p).await?;

    let mut service = NodeService::new(epochs, managers)
        .with_ceremonies(ceremonies, node_key)
        .with_nonces(nonces);
    let _registry_watch = if let Some(path) = &config.registry_file {
        let registry = FileRegistry::open(path).map_err(NodeError::Config)?;
        let watch = registry.watch(std::time::Duration::from_secs(1));
        service = service.with_registry(Arc::new(registry));
        Some(AbortOnDrop(watch))
    } else if let (Some(url), Some(address)) = (&config.rpc_url, config.registry_address) {
        let registry = connect_chain_registry(url, address).await?;
        check_registered(
            &registry.cache().state().nodes,
            &S::encode_point(node_key.point()),
            &p2p.peer_id(),
        )?;
        service = service.with_registry(Arc::new(registry));
        None
    } else {
        tracing::warn!("no registry configured: this node does not re-check requesters itself and trusts the manager's check");
        None
    };
    // The gRPC channel is TLS 1.3, authenticated by the node key on this side and by the
    // manager's key on the other (checked per request against the accepted managers).
    let tls = tkms_proto::tls::node_server_config(&identity.node_key)
        .map_err(|e| NodeError::Config(format!("TLS identity: {e}")))?;
    // Ready: the status file tells `tkms testnet` and operators where this node serves.
    write_status(
        &config.data_dir,
        &NodeStatusFile {
            pid: std::process::id(),
            grpc_addr: grpc_addr.to_string(),
            p2p_addr: p2p.address().to_string(),
            node_key: hex::encode(S::encode_point(node_key.point())),
            grpc_url: grpc_url.clone(),
        },
    )?;
    tracing::info!(%grpc_addr, p2p = %p2p.address(), node_key = %hex::encode(node_key.bytes()), "node serving");
    let incoming = tkms_proto::tls::incoming_with(listener, tls, listener_limits, Arc::default());
    let result = tonic::transport::Server::builder()
        .add_service(NodeServer::new(crate::front::AuditedNode::new(
            service, audit,
        )))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| NodeError::Server(e.to_string()));
    let _ = p2p_stop.send(());
    tracing::info!("node stopped");
    result
}

/// Refuse to start when the registry lists this node (by its peer id or its node key) with
/// the other half of its identity different: the vault is another node's, or the record is
/// stale. Such a node would be refused by every ceremony; say so now.
fn check_registered(
    records: &std::collections::BTreeMap<u16, tkms_registry::NodeRecord>,
    node_key: &[u8],
    peer_id: &libp2p::PeerId,
) -> Result<(), NodeError> {
    let peer = peer_id.to_bytes();
    for record in records.values() {
        let same_key = record.public_key.as_ref() == node_key;
        let same_peer = record.peer_id.as_ref() == peer.as_slice();
        if same_key != same_peer {
            return Err(NodeError::Config(format!(
                "the registry's node {} has node key {} and peer id {}, but this node's vault \
                 holds node key {} and peer id {peer_id}: this is another node's vault, or \
                 the record must be registered again (tkms node init prints it)",
                record.index,
                hex::encode(&record.public_key),
                libp2p::PeerId::from_bytes(&record.peer_id)
                    .map_or_else(|_| hex::encode(&record.peer_id), |p| p.to_string()),
                hex::encode(node_key),
            )));
        }
    }
    Ok(())
}

/// The gRPC URL the manager dials, after checking that this host reaches what the node
/// advertises (docs/DEPLOY.md §3).
async fn advertised_grpc(
    config: &NodeConfig,
    grpc_addr: SocketAddr,
    p2p: &P2p,
) -> Result<String, NodeError> {
    let grpc_url = match &config.grpc_advertise {
        Some(url) => url.clone(),
        None if grpc_addr.ip().is_unspecified() => {
            return Err(NodeError::Config(format!(
                "--grpc-listen {grpc_addr} binds every interface, which the manager cannot \
                 dial: give the URL it reaches this node at with --grpc-advertise"
            )))
        }
        None => format!("http://{grpc_addr}"),
    };
    // An address that was not advertised is the bound one: reachable by construction.
    if !config.skip_advertise_check {
        if config.grpc_advertise.is_some() {
            check_reachable("--grpc-advertise", &grpc_url, grpc_endpoint(&grpc_url)).await?;
        }
        if config.p2p_advertise.is_some() {
            let p2p_addr = p2p.address();
            check_reachable(
                "--p2p-advertise",
                &p2p_addr.to_string(),
                p2p_endpoint(&p2p_addr),
            )
            .await?;
        }
    }
    Ok(grpc_url)
}

/// Whether `addr` is `/ip4/0.0.0.0/...` or `/ip6/::/...`.
fn binds_every_interface(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_unspecified(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

/// Host and port of an advertised gRPC URL (`http://10.0.0.5:7001`): a scheme, and a host
/// others can dial (not 0.0.0.0).
fn grpc_endpoint(url: &str) -> Result<(String, u16), String> {
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("not an http:// or https:// URL".into());
    }
    let host = uri.host().ok_or("no host")?;
    if host
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return Err("an address of every interface, which nobody can dial".into());
    }
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// An advertised libp2p address: dialable, and without `/p2p/` (the node adds its peer id).
fn check_p2p_advertise(addr: &Multiaddr) -> Result<(), NodeError> {
    if addr
        .iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
    {
        return Err(NodeError::Config(format!(
            "--p2p-advertise {addr}: give the address without /p2p/; the node adds its peer id"
        )));
    }
    p2p_endpoint(addr)
        .map(|_| ())
        .map_err(|e| NodeError::Config(format!("--p2p-advertise {addr}: {e}")))
}

/// Host and TCP port of a libp2p address (`/ip4/10.0.0.5/tcp/7101/p2p/...`).
fn p2p_endpoint(addr: &Multiaddr) -> Result<(String, u16), String> {
    use libp2p::multiaddr::Protocol;
    if binds_every_interface(addr) {
        return Err("an address of every interface, which nobody can dial".into());
    }
    let mut host = None;
    let mut port = None;
    for p in addr {
        match p {
            Protocol::Ip4(ip) => host = Some(ip.to_string()),
            Protocol::Ip6(ip) => host = Some(ip.to_string()),
            Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h) => host = Some(h.to_string()),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    match (host, port) {
        (Some(host), Some(port)) => Ok((host, port)),
        _ => Err("not an /ip4, /ip6 or /dns address with /tcp".into()),
    }
}

/// Fail at start, not at the first ceremony, when this host cannot reach an address it
/// advertises: a typo, an address of another host, or a port not forwarded.
async fn check_reachable(
    option: &str,
    shown: &str,
    endpoint: Result<(String, u16), String>,
) -> Result<(), NodeError> {
    let unreachable = |why: String| {
        NodeError::Config(format!(
            "the advertised address {shown} ({option}) is not reachable from this host: \
             {why}; advertise the address others reach this node at (behind a NAT that does \
             not hairpin, --skip-advertise-check)"
        ))
    };
    let (host, port) = endpoint.map_err(unreachable)?;
    match tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable("no answer in 3 s".into())),
    }
}

/// Stops a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The chain registry at `url`, retried for up to 30 s while its first read fails (the chain's
/// RPC may come up after the node, or be slow on a loaded machine): a node that gave up at
/// once would exit after its operator started it.
async fn connect_chain_registry(
    url: &str,
    address: alloy_primitives::Address,
) -> Result<tkms_registry::access::ChainRegistry, NodeError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match tkms_registry::access::ChainRegistry::connect(
            url,
            address,
            tkms_registry::CacheConfig::default(),
            tkms_registry::access::DEFAULT_MAX_STALENESS,
        )
        .await
        {
            Ok(registry) => return Ok(registry),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(%address, %url, error = %e, "the registry cannot be read yet; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(NodeError::Config(format!(
                    "registry {address} at {url}: {e}"
                )))
            }
        }
    }
}
