//! The manager process (STYLE "thin binaries"): read the keys, the registry file and the
//! served epoch, and serve HTTP until `shutdown` resolves. Both `tkms-manager` and
//! `tkms manager run` call [`run`].

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use k256::ecdsa::SigningKey;
use tkms_crypto::{Secp256k1, SecretScalar};
use zeroize::Zeroizing;

use crate::{
    admin::{Admin, Served},
    file_registry::FileRegistry,
    http::{router, AppState, Metrics},
};

/// Manager configuration (command line of `tkms-manager` and `tkms manager run`).
#[derive(Debug, Clone, clap::Args)]
pub struct ManagerConfig {
    /// HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// A node's gRPC URL (`http://127.0.0.1:7001`); repeat for every node.
    #[arg(long = "node", required = true)]
    pub nodes: Vec<String>,
    /// File holding the manager's node-request signing key (32-byte hex scalar).
    #[arg(long)]
    pub node_key_file: PathBuf,
    /// File holding the wallet key that signs `/v0/delegate` proofs (32-byte hex).
    #[arg(long)]
    pub wallet_key_file: PathBuf,
    /// The embedded registry file (authorized gateways per chain).
    #[arg(long)]
    pub registry_file: PathBuf,
    /// File holding the operator token for the admin endpoints (absent: no admin API).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Where the served epoch is recorded (public data only).
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// Per-node timeout of a partial request, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    pub node_timeout_ms: u64,
    /// Longest wait for one ceremony round, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub round_timeout_ms: u64,
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
    let registry = FileRegistry::open(&config.registry_file).map_err(ManagerError::Config)?;
    let _watch = registry.watch(Duration::from_secs(1));

    let served = Arc::new(Served::new(None));
    let admin = Arc::new(Admin::new(
        node_key,
        config.nodes.clone(),
        Duration::from_millis(config.node_timeout_ms),
        Duration::from_millis(config.round_timeout_ms),
        config.state_file.clone(),
        Arc::clone(&served),
    ));
    if let Some(record) = admin.recover().await? {
        tracing::info!(epoch = record.epoch, "serving the recorded epoch");
    } else {
        tracing::warn!("no key yet: POST /admin/dkg to create one");
    }
    let state = Arc::new(AppState {
        served,
        admin: Some(admin),
        admin_token,
        wallet,
        registry: Box::new(registry),
        metrics: Metrics::default(),
        nonces: tkms_sdk::v1::NonceCache::default(),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| ManagerError::Io(format!("cannot listen on {}: {e}", config.listen)))?;
    tracing::info!(addr = %listener.local_addr().map_err(|e| ManagerError::Io(e.to_string()))?, "manager serving");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| ManagerError::Io(e.to_string()))?;
    tracing::info!("manager stopped");
    Ok(())
}
