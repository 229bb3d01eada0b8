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
    /// Directory of the vault (`vault.redb`) and the node's status file (`node.json`).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// gRPC listen address for the manager.
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub grpc_listen: SocketAddr,
    /// libp2p listen address for ceremonies with the other nodes.
    #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0")]
    pub p2p_listen: Multiaddr,
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
    /// Connection bounds of the gRPC listener, and what to do if the audit log fails.
    #[command(flatten)]
    pub front: crate::front::NodeFrontArgs,
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
}

/// The vault password provider. Async because `aws-kms` decrypts here, once, before the vault
/// opens (see [`AwsKmsPassword`]).
async fn password_provider(config: &NodeConfig) -> Result<Box<dyn PasswordProvider>, NodeError> {
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

fn manager_keys(config: &NodeConfig) -> Result<Vec<Encoded<S>>, NodeError> {
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
    let managers = manager_keys(&config)?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| NodeError::Io(format!("{}: {e}", config.data_dir.display())))?;
    let (nonces, audit, listener_limits) =
        crate::front::open(&config.front, &config.data_dir, &managers).map_err(NodeError::Io)?;
    let provider = password_provider(&config).await?;
    let params = match config.kdf {
        KdfCost::Production => KdfParams::production(),
        KdfCost::Insecure => KdfParams::insecure_for_tests(),
    };
    let vault_path = config.data_dir.join("vault.redb");
    let vault =
        tokio::task::spawn_blocking(move || Vault::open(vault_path, provider.as_ref(), params))
            .await
            .map_err(|e| NodeError::Io(e.to_string()))??;
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
    let p2p = P2p::start(keypair, config.p2p_listen.clone(), inbox_tx, p2p_stopped).await?;
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
        service = service.with_registry(Arc::new(registry));
        None
    } else {
        tracing::warn!("no registry configured: this node does not re-check requesters itself and trusts the manager's check");
        None
    };
    // Ready: the status file tells `tkms testnet` and operators where this node serves.
    write_status(
        &config.data_dir,
        &NodeStatusFile {
            pid: std::process::id(),
            grpc_addr: grpc_addr.to_string(),
            p2p_addr: p2p.address().to_string(),
            node_key: hex::encode(S::encode_point(node_key.point())),
        },
    )?;
    tracing::info!(%grpc_addr, p2p = %p2p.address(), node_key = %hex::encode(node_key.bytes()), "node serving");
    // The gRPC channel is TLS 1.3, authenticated by the node key on this side and by the
    // manager's key on the other (checked per request against the accepted managers).
    let tls = tkms_proto::tls::node_server_config(&identity.node_key)
        .map_err(|e| NodeError::Config(format!("TLS identity: {e}")))?;
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
