//! Who may call the cluster, behind one [`Registry`] trait that the manager and the nodes
//! both consult (docs/ARCHITECTURE.md §4.1-§4.3):
//!
//! - [`StaticRegistry`]: a fixed list, for tests;
//! - [`FileRegistry`]: the embedded registry of a testnet or a single-operator deployment, a
//!   JSON file the operator edits, re-read when it changes (checked once a second), so
//!   revoking a gateway takes effect without a restart;
//!
//!   ```json
//!   { "gateways": { "31337": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8" },
//!     "runners":  { "31337": ["0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"] } }
//!   ```
//! - [`ChainRegistry`]: the on-chain `TkmsRegistry` through the event-driven
//!   [`RegistryCache`], so a request is authorized without any chain access; a gateway the
//!   owner revokes is refused as soon as the cache has seen the block that revoked it (one
//!   poll interval, below the block time). It fails closed: if the chain has not been reached
//!   for longer than the staleness bound, every check fails, and it recovers by itself when
//!   the endpoint answers again.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, RwLock,
    },
    time::{Duration, SystemTime},
};

use alloy::primitives::Address;
use serde::{Deserialize, Serialize};

use crate::{
    CacheConfig, EpochPublication, RegistryCache, RegistryClient, RegistryError, RegistryState,
};

/// Who may call the cluster, and which key epoch the registry publishes.
pub trait Registry: Send + Sync + 'static {
    /// The gateway authorized for `/v0/delegate` on `chain_id`, if that chain is served.
    fn gateway(&self, chain_id: u64) -> Option<Address>;

    /// Whether `account` holds the gateway role on `chain_id`. A registry with several
    /// gateways (the on-chain one) answers for each of them; by default an account is a
    /// gateway when it is [`Registry::gateway`].
    fn is_gateway(&self, chain_id: u64, account: Address) -> bool {
        self.gateway(chain_id) == Some(account)
    }

    /// Whether `account` holds the runner role on `chain_id` (may ask for re-encryptions).
    fn is_runner(&self, _chain_id: u64, _account: Address) -> bool {
        false
    }

    /// The key epoch the registry publishes, which a node checks its share against.
    fn published_epoch(&self) -> Published {
        Published::NotTracked
    }

    /// The node key registered for node `index`, which a node checks every ceremony member
    /// against, so that a compromised manager cannot reshare the key to nodes it controls.
    fn registered_node_key(&self, _index: u16) -> Registered {
        Registered::NotTracked
    }

    /// Every role this registry grants now, for the audit log's record of role changes
    /// (`None` when it cannot be read now).
    fn roles(&self) -> Option<BTreeSet<RoleGrant>> {
        None
    }
}

/// A role a requester holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RoleKind {
    /// May delegate (`/v0/delegate`, `/v1/delegate`) and re-encrypt.
    Gateway,
    /// May re-encrypt (`/v1/reencrypt`).
    Runner,
}

impl RoleKind {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Runner => "runner",
        }
    }
}

/// `account` holds `role` on `chain_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoleGrant {
    /// The chain.
    pub chain_id: u64,
    /// The requester.
    pub account: Address,
    /// The role.
    pub role: RoleKind,
}

/// What a registry says about a node index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// This registry does not list nodes (file and static registries).
    NotTracked,
    /// No node is registered at this index.
    Absent,
    /// The registered node key (33-byte compressed secp256k1).
    Key(Vec<u8>),
    /// The registry's state is too stale to act on.
    Unknown,
}

/// What a registry says about the current key epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// This registry does not publish epochs (file and static registries).
    NotTracked,
    /// It does, but none was published yet.
    Nothing,
    /// The current epoch.
    Epoch(EpochPublication),
    /// It does, but its state is too stale to act on.
    Unknown,
}

/// An embedded registry: one gateway per served chain, from configuration.
#[derive(Debug, Clone, Default)]
pub struct StaticRegistry {
    gateways: BTreeMap<u64, Address>,
    runners: BTreeSet<(u64, Address)>,
}

impl StaticRegistry {
    /// Serve `chain_id` for `gateway`.
    #[must_use]
    pub fn with_gateway(mut self, chain_id: u64, gateway: Address) -> Self {
        self.gateways.insert(chain_id, gateway);
        self
    }

    /// Let `runner` ask for re-encryptions on `chain_id`.
    #[must_use]
    pub fn with_runner(mut self, chain_id: u64, runner: Address) -> Self {
        self.runners.insert((chain_id, runner));
        self
    }
}

impl Registry for StaticRegistry {
    fn gateway(&self, chain_id: u64) -> Option<Address> {
        self.gateways.get(&chain_id).copied()
    }

    fn is_runner(&self, chain_id: u64, account: Address) -> bool {
        self.runners.contains(&(chain_id, account))
    }

    fn roles(&self) -> Option<BTreeSet<RoleGrant>> {
        let gateways = self.gateways.iter().map(|(&chain_id, &account)| RoleGrant {
            chain_id,
            account,
            role: RoleKind::Gateway,
        });
        let runners = self.runners.iter().map(|&(chain_id, account)| RoleGrant {
            chain_id,
            account,
            role: RoleKind::Runner,
        });
        Some(gateways.chain(runners).collect())
    }
}

impl<R: Registry + ?Sized> Registry for Arc<R> {
    fn gateway(&self, chain_id: u64) -> Option<Address> {
        (**self).gateway(chain_id)
    }
    fn is_gateway(&self, chain_id: u64, account: Address) -> bool {
        (**self).is_gateway(chain_id, account)
    }
    fn is_runner(&self, chain_id: u64, account: Address) -> bool {
        (**self).is_runner(chain_id, account)
    }
    fn published_epoch(&self) -> Published {
        (**self).published_epoch()
    }
    fn registered_node_key(&self, index: u16) -> Registered {
        (**self).registered_node_key(index)
    }
    fn roles(&self) -> Option<BTreeSet<RoleGrant>> {
        (**self).roles()
    }
}

/// The file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    /// The gateway authorized for `/v0/delegate`, per chain id (decimal string keys).
    #[serde(default)]
    pub gateways: BTreeMap<String, Address>,
    /// Runners allowed to ask for re-encryptions (`/v1/reencrypt`), per chain id.
    #[serde(default)]
    pub runners: BTreeMap<String, BTreeSet<Address>>,
}

impl RegistryFile {
    /// Parse and check.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let file: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        for chain in file.gateways.keys().chain(file.runners.keys()) {
            chain
                .parse::<u64>()
                .map_err(|_| format!("chain id {chain:?} is not a decimal u64"))?;
        }
        Ok(file)
    }

    /// Write atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, path)
    }
}

/// A [`Registry`] backed by a JSON file, reloaded when it changes.
#[derive(Debug, Clone)]
pub struct FileRegistry {
    path: PathBuf,
    current: Arc<RwLock<(Option<SystemTime>, RegistryFile)>>,
}

impl FileRegistry {
    /// Load `path` (it must exist and parse).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, String> {
        let path = path.into();
        let bytes =
            std::fs::read(&path).map_err(|e| format!("registry file {}: {e}", path.display()))?;
        let file = RegistryFile::parse(&bytes)
            .map_err(|e| format!("registry file {}: {e}", path.display()))?;
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        Ok(Self {
            path,
            current: Arc::new(RwLock::new((modified, file))),
        })
    }

    /// Re-read the file if it changed; a file that no longer parses is ignored (logged) and
    /// the last good contents stay in force.
    pub fn reload(&self) {
        let Ok(modified) = std::fs::metadata(&self.path).and_then(|m| m.modified()) else {
            return;
        };
        let known = self.read().0;
        if known == Some(modified) {
            return;
        }
        match std::fs::read(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|b| RegistryFile::parse(&b))
        {
            Ok(file) => {
                tracing::info!(path = %self.path.display(), "registry file reloaded");
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = (Some(modified), file);
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "registry file is invalid; keeping the previous contents");
                self.current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0 = Some(modified);
            }
        }
    }

    /// Reload every `period` until the returned task is dropped or aborted.
    pub fn watch(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                this.reload();
            }
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (Option<SystemTime>, RegistryFile)> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Registry for FileRegistry {
    fn gateway(&self, chain_id: u64) -> Option<Address> {
        self.read().1.gateways.get(&chain_id.to_string()).copied()
    }

    fn is_runner(&self, chain_id: u64, account: Address) -> bool {
        self.read()
            .1
            .runners
            .get(&chain_id.to_string())
            .is_some_and(|r| r.contains(&account))
    }

    fn roles(&self) -> Option<BTreeSet<RoleGrant>> {
        let current = self.read();
        let file = &current.1;
        let mut roles = BTreeSet::new();
        for (chain, account) in &file.gateways {
            if let Ok(chain_id) = chain.parse() {
                roles.insert(RoleGrant {
                    chain_id,
                    account: *account,
                    role: RoleKind::Gateway,
                });
            }
        }
        for (chain, accounts) in &file.runners {
            if let Ok(chain_id) = chain.parse() {
                roles.extend(accounts.iter().map(|&account| RoleGrant {
                    chain_id,
                    account,
                    role: RoleKind::Runner,
                }));
            }
        }
        Some(roles)
    }
}

/// How long the manager keeps trusting a cache that cannot reach the chain.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(60);

/// A [`Registry`] backed by the on-chain registry of one chain.
///
/// `/v0/delegate` requests for that chain (its `chain_id`) are checked against the contract's
/// gateway role; requests for any other chain are for a chain this manager does not serve.
#[derive(Debug)]
pub struct ChainRegistry {
    cache: RegistryCache,
    max_staleness: Duration,
    stale_logged: AtomicBool,
}

impl ChainRegistry {
    /// Follow the registry at `address` through `rpc_url` (one snapshot now, then events).
    pub async fn connect(
        rpc_url: &str,
        address: Address,
        config: CacheConfig,
        max_staleness: Duration,
    ) -> Result<Self, RegistryError> {
        let client = RegistryClient::connect(rpc_url, address, None)?;
        let cache = RegistryCache::start(client, config).await?;
        Ok(Self::new(cache, max_staleness))
    }

    /// Use a running cache.
    pub fn new(cache: RegistryCache, max_staleness: Duration) -> Self {
        Self {
            cache,
            max_staleness,
            stale_logged: AtomicBool::new(false),
        }
    }

    /// The cache behind this registry.
    pub fn cache(&self) -> &RegistryCache {
        &self.cache
    }

    /// The registry's state if it serves `chain_id` and is fresh enough to act on.
    fn current(&self, chain_id: u64) -> Option<Arc<RegistryState>> {
        if chain_id != self.cache.chain_id() {
            return None;
        }
        let age = self.cache.age();
        if age > self.max_staleness {
            if !self.stale_logged.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    registry = %self.cache.address(),
                    age_secs = age.as_secs(),
                    "the on-chain registry has not been reached for too long: refusing every gateway until it is"
                );
            }
            return None;
        }
        self.stale_logged.store(false, Ordering::Relaxed);
        Some(self.cache.state())
    }
}

impl Registry for ChainRegistry {
    /// The primary gateway (`gateway()` on the contract), as Nox services read it.
    fn gateway(&self, chain_id: u64) -> Option<Address> {
        self.current(chain_id)?.primary_gateway
    }

    fn is_gateway(&self, chain_id: u64, account: Address) -> bool {
        self.current(chain_id)
            .is_some_and(|s| s.is_gateway(account))
    }

    fn is_runner(&self, chain_id: u64, account: Address) -> bool {
        self.current(chain_id).is_some_and(|s| s.is_runner(account))
    }

    fn registered_node_key(&self, index: u16) -> Registered {
        match self.current(self.cache.chain_id()) {
            Some(state) => state.nodes.get(&index).map_or(Registered::Absent, |n| {
                Registered::Key(n.public_key.to_vec())
            }),
            None => Registered::Unknown,
        }
    }

    fn roles(&self) -> Option<BTreeSet<RoleGrant>> {
        let chain_id = self.cache.chain_id();
        let state = self.current(chain_id)?;
        let gateways = state.gateways.iter().map(|&account| RoleGrant {
            chain_id,
            account,
            role: RoleKind::Gateway,
        });
        let runners = state.runners.iter().map(|&account| RoleGrant {
            chain_id,
            account,
            role: RoleKind::Runner,
        });
        Some(gateways.chain(runners).collect())
    }

    fn published_epoch(&self) -> Published {
        match self.current(self.cache.chain_id()) {
            Some(state) => match &state.epoch {
                Some(e) => Published::Epoch(e.publication.clone()),
                None => Published::Nothing,
            },
            None => Published::Unknown,
        }
    }
}

/// The `publicSharesHash` of an epoch: `keccak256("tkms/v1/public-shares" || (index u16 BE ||
/// PK_i compressed)...)` over the committee in increasing index order. The manager publishes
/// it; a node recomputes it from its key set before serving.
pub fn public_shares_hash<'a>(
    shares: impl IntoIterator<Item = (u16, &'a [u8])>,
) -> alloy::primitives::B256 {
    let mut sorted: Vec<(u16, &[u8])> = shares.into_iter().collect();
    sorted.sort_by_key(|(i, _)| *i);
    let mut buf = Vec::with_capacity(21 + sorted.len() * 35);
    buf.extend_from_slice(b"tkms/v1/public-shares");
    for (index, point) in sorted {
        buf.extend_from_slice(&index.to_be_bytes());
        buf.extend_from_slice(point);
    }
    alloy::primitives::keccak256(&buf)
}

/// Whether a published epoch describes exactly this key: same epoch, threshold, committee
/// size, public key and public shares. `Err` says what differs.
pub fn check_publication<'a>(
    published: &EpochPublication,
    epoch: u64,
    threshold: u16,
    public_key: &[u8],
    shares: impl IntoIterator<Item = (u16, &'a [u8])>,
) -> Result<(), String> {
    let shares: Vec<(u16, &[u8])> = shares.into_iter().collect();
    if published.epoch != epoch {
        return Err(format!(
            "the registry publishes epoch {}, this share is of epoch {epoch}",
            published.epoch
        ));
    }
    if published.t != threshold || usize::from(published.n) != shares.len() {
        return Err(format!(
            "the registry publishes t = {}, n = {}; this key set has t = {threshold}, n = {}",
            published.t,
            published.n,
            shares.len()
        ));
    }
    if published.public_key.as_ref() != public_key {
        return Err("the registry publishes another public key".into());
    }
    if published.public_shares_hash != public_shares_hash(shares) {
        return Err("the registry publishes other public shares".into());
    }
    Ok(())
}
