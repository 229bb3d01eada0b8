//! The manager process (docs/STYLE.md "Thin binaries"): read the keys, the registry (a file, or the
//! on-chain registry with `--rpc-url` and `--registry-address`) and the served epoch, and
//! serve HTTP until `shutdown` resolves. Both `tkms-manager` and `tkms manager run` call
//! [`run`].

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use k256::ecdsa::SigningKey;
use tkms_crypto::{Secp256k1, SecretScalar};
use tkms_registry::{
    access::{ChainRegistry, Registry, DEFAULT_MAX_STALENESS},
    Address, CacheConfig, PrivateKeySigner, RegistryClient,
};
use zeroize::Zeroizing;

use crate::{
    admin::{Admin, Served},
    cluster::{Batching, Fanout},
    file_registry::FileRegistry,
    http::{router, AppState, Metrics},
};

/// Manager configuration (command line of `tkms-manager` and `tkms manager run`).
#[derive(Debug, Clone, clap::Args)]
pub struct ManagerConfig {
    /// A TOML file of settings: keys are the long options (`data-dir = "/var/lib/tkms"`);
    /// the command line and `TKMS_*` variables override it (docs/DEPLOY.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// A node's gRPC URL (`http://127.0.0.1:7001`); repeat for every node, in index order.
    /// Without it, the committee is the on-chain registry's node records (their gRPC
    /// endpoints, by index).
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// File holding the manager's node-request signing key (32-byte hex scalar).
    #[arg(long)]
    pub node_key_file: PathBuf,
    /// File holding the wallet key that signs `/v0/delegate` proofs (32-byte hex). With an
    /// on-chain registry it also signs `publishEpoch`: it must hold the registry's manager
    /// role (and ether for gas).
    #[arg(long)]
    pub wallet_key_file: PathBuf,
    /// The embedded registry file (authorized gateways per chain); or `--rpc-url` and
    /// `--registry-address` for the on-chain registry.
    #[arg(long, required_unless_present = "rpc_url", conflicts_with = "rpc_url")]
    pub registry_file: Option<PathBuf>,
    /// JSON-RPC endpoint of the on-chain registry's chain: gateways and runners are authorized
    /// from the chain, and every DKG or reshare is published there (`publishEpoch`).
    #[arg(long, requires = "registry_address")]
    pub rpc_url: Option<String>,
    /// Address of the `TkmsRegistry` contract (with `--rpc-url`).
    #[arg(long, requires = "rpc_url")]
    pub registry_address: Option<Address>,
    /// File holding the operator token for the admin endpoints (absent: no admin API).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Where the served epoch is recorded (public data only).
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// Per-node timeout of a partial request, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    pub node_timeout_ms: u64,
    /// Which nodes a request goes to: `all` (every node at once), or `t` / `t+K` (`t + K`
    /// nodes in turn, one more as soon as one fails and each time `--hedge-after-ms` passes
    /// while answers are missing). `t+1` or more gives `/v1/delegate` clients a spare partial.
    #[arg(long, default_value = "all")]
    pub fanout: Fanout,
    /// Hedge delay of a `t`/`t+K` fan-out: `auto` (from the nodes' answer times: about when
    /// the `t` quickest usually have answered, plus their jitter) or milliseconds.
    #[arg(long, default_value = "auto")]
    pub hedge_after_ms: crate::cluster::Hedge,
    /// Most concurrent `/v0` delegations sent to the nodes in one batch call (1..=256).
    #[arg(long, default_value_t = crate::cluster::DELEGATION_BATCH)]
    pub delegation_batch: usize,
    /// `/v0` delegation batches in flight at once; while they are, new requests queue for
    /// the next batch (1..=1024). One measured the least CPU per request (docs/BENCHMARKS.md).
    #[arg(long, default_value_t = crate::cluster::DELEGATION_BATCHES_IN_FLIGHT)]
    pub delegation_batches_in_flight: usize,
    /// How nodes prove a batch of `/v0` delegations: `aggregate` (one proof per node per
    /// batch, docs/PROTOCOL.md §5.1; nodes of an earlier version answer per item anyway) or
    /// `per-item`.
    #[arg(long, value_enum, default_value = "aggregate")]
    pub delegation_proofs: crate::cluster::DelegationProofs,
    /// Longest wait for one ceremony round, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub round_timeout_ms: u64,
    /// Connection bounds, quotas, the audit log and the replay journal.
    #[command(flatten)]
    pub front: crate::front::FrontDoorArgs,
}

/// Why the manager could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The served epoch could not be loaded.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    /// The HTTP server failed.
    #[error("{0}")]
    Io(String),
}

fn read_secret(path: &PathBuf, what: &str) -> Result<Zeroizing<Vec<u8>>, ManagerError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| ManagerError::Config(format!("{what} {}: {e}", path.display())))?,
    );
    let bytes = hex::decode(text.trim().trim_start_matches("0x"))
        .map_err(|_| ManagerError::Config(format!("{what} {}: not hex", path.display())))?;
    Ok(Zeroizing::new(bytes))
}

/// Stops a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The registry requests are authorized with: the file (reloaded every second), or the
/// on-chain registry, followed by an event-driven cache, with a client that publishes epochs
/// as the manager wallet.
async fn open_registry(
    config: &ManagerConfig,
    wallet: &SigningKey,
) -> Result<
    (
        Arc<dyn Registry>,
        Option<RegistryClient>,
        Option<AbortOnDrop>,
        Option<Vec<tkms_registry::NodeRecord>>,
    ),
    ManagerError,
> {
    tkms_daemon::config::check_registry(
        config.registry_file.is_some(),
        config.rpc_url.is_some(),
        config.registry_address.is_some(),
    )
    .map_err(ManagerError::Config)?;
    if let (Some(url), Some(address)) = (&config.rpc_url, config.registry_address) {
        let registry =
            ChainRegistry::connect(url, address, CacheConfig::default(), DEFAULT_MAX_STALENESS)
                .await
                .map_err(|e| ManagerError::Config(format!("registry {address} at {url}: {e}")))?;
        let signer = PrivateKeySigner::from_signing_key(wallet.clone());
        let me = signer.address();
        let manager = registry.cache().state().manager;
        if manager == Some(me) {
            tracing::info!(registry = %address, wallet = %me, "on-chain registry; this manager publishes its epochs");
        } else {
            tracing::error!(
                registry = %address,
                wallet = %me,
                manager = ?manager,
                "this manager's wallet does not hold the registry's manager role: its epochs \
                 cannot be published, and the nodes will not serve them"
            );
        }
        let publisher = RegistryClient::connect(url, address, Some(signer))
            .map_err(|e| ManagerError::Config(format!("registry {address} at {url}: {e}")))?;
        let nodes = registry.cache().state().nodes.values().cloned().collect();
        return Ok((Arc::new(registry), Some(publisher), None, Some(nodes)));
    }
    let path = config
        .registry_file
        .as_ref()
        .ok_or_else(|| ManagerError::Config("--registry-file or --rpc-url is required".into()))?;
    let registry = FileRegistry::open(path).map_err(ManagerError::Config)?;
    let watch = AbortOnDrop(registry.watch(Duration::from_secs(1)));
    Ok((Arc::new(registry), None, Some(watch), None))
}

/// The committee's gRPC URLs, in index order: `--node` as given, else the registry's node
/// records. A URL given twice, or records whose indices are not 1..=n, are errors: the
/// manager gives the k-th URL index k in a DKG.
fn committee(
    configured: &[String],
    registered: Option<&[tkms_registry::NodeRecord]>,
) -> Result<Vec<String>, ManagerError> {
    let urls = if !configured.is_empty() {
        configured.to_vec()
    } else if let Some(records) = registered.filter(|r| !r.is_empty()) {
        let mut urls = Vec::with_capacity(records.len());
        for (k, record) in records.iter().enumerate() {
            if usize::from(record.index) != k + 1 {
                return Err(ManagerError::Config(format!(
                    "the registry's node indices are not 1..={}: the manager numbers a \
                     committee by its order (give --node URLs instead)",
                    records.len()
                )));
            }
            let url = record
                .endpoints
                .iter()
                .find(|e| e.starts_with("http://") || e.starts_with("https://"))
                .ok_or_else(|| {
                    ManagerError::Config(format!(
                        "the registry's node {} has no gRPC endpoint (http:// or https://) \
                         among {:?}",
                        record.index, record.endpoints
                    ))
                })?;
            urls.push(url.clone());
        }
        urls
    } else {
        return Err(ManagerError::Config(
            "no nodes: give --node URL for each node, or an on-chain registry \
             (--rpc-url, --registry-address) with node records"
                .into(),
        ));
    };
    for (k, url) in urls.iter().enumerate() {
        if urls[..k].contains(url) {
            return Err(ManagerError::Config(format!(
                "node {url} is given twice: each node has one index"
            )));
        }
    }
    Ok(urls)
}

/// Run the manager until `shutdown` resolves.
pub async fn run(
    config: ManagerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ManagerError> {
    let node_key = read_secret(&config.node_key_file, "node key file")?;
    let node_key = SecretScalar::<Secp256k1>::from_bytes(&node_key)
        .map_err(|e| ManagerError::Config(format!("node key: {e}")))?;
    let wallet = read_secret(&config.wallet_key_file, "wallet key file")?;
    let wallet = SigningKey::from_slice(&wallet)
        .map_err(|e| ManagerError::Config(format!("wallet key: {e}")))?;
    let admin_token = match &config.admin_token_file {
        Some(path) => {
            let token = Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        ManagerError::Config(format!("admin token {}: {e}", path.display()))
                    })?
                    .trim()
                    .to_string(),
            );
            if token.len() < 16 {
                return Err(ManagerError::Config(
                    "the admin token must be at least 16 characters".into(),
                ));
            }
            Some(token)
        }
        None => None,
    };
    let (front, nonces, limits) =
        crate::front::FrontDoor::open(&config.front).map_err(ManagerError::Config)?;
    let (registry, publisher, _watch, registry_nodes) = open_registry(&config, &wallet).await?;
    let _roles = AbortOnDrop(crate::front::watch_roles(
        Arc::clone(&front),
        Arc::clone(&registry),
    ));

    let nodes = committee(&config.nodes, registry_nodes.as_deref())?;
    tracing::info!(nodes = ?nodes, "committee");
    let served = Arc::new(Served::new(None));
    let mut admin = Admin::new(
        node_key,
        nodes,
        Duration::from_millis(config.node_timeout_ms),
        Duration::from_millis(config.round_timeout_ms),
        config.state_file.clone(),
        Arc::clone(&served),
    )?;
    if let Some(publisher) = publisher {
        admin = admin
            .with_publisher(publisher)
            .with_chain(Arc::clone(&registry));
    }
    let batching = Batching::new(config.delegation_batch, config.delegation_batches_in_flight)
        .map_err(ManagerError::Config)?
        .with_proofs(config.delegation_proofs);
    admin = admin
        .with_batching(batching)
        .with_fanout(match config.fanout {
            Fanout::Hedged { extra, .. } => Fanout::Hedged {
                extra,
                hedge: config.hedge_after_ms,
            },
            other => other,
        });
    let admin = Arc::new(admin);
    if let Some(record) = admin.recover().await? {
        tracing::info!(epoch = record.epoch, "serving the recorded epoch");
        // The nodes serve only the published epoch: catch up if a publication failed.
        if let Err(e) = admin.publish_served().await {
            tracing::error!(error = %e, "the served epoch is not published on the registry");
        }
    } else {
        tracing::warn!("no key yet: POST /admin/dkg to create one");
    }
    // From now on the served epoch follows the nodes (and the chain), and a node that answers
    // again is asked again at once.
    let _reconciler = AbortOnDrop(tokio::spawn(Arc::clone(&admin).reconcile_forever()));
    let state = Arc::new(AppState {
        served,
        admin: Some(admin),
        admin_token,
        wallet,
        registry: Box::new(registry),
        metrics: Metrics::default(),
        nonces,
        front: Arc::clone(&front),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| ManagerError::Io(format!("cannot listen on {}: {e}", config.listen)))?;
    tracing::info!(addr = %listener.local_addr().map_err(|e| ManagerError::Io(e.to_string()))?, "manager serving");
    front
        .event(
            "manager_start",
            serde_json::json!({ "version": env!("CARGO_PKG_VERSION") }),
        )
        .await;
    let app = crate::front::layer(router(state), Arc::clone(&front));
    tkms_daemon::http::serve(listener, app, limits, front.connection_stats(), shutdown)
        .await
        .map_err(|e| ManagerError::Io(e.to_string()))?;
    front.event("manager_stop", serde_json::json!({})).await;
    tracing::info!("manager stopped");
    Ok(())
}
