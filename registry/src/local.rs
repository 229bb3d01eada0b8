//! [`deploy_local`]: a registry deployed and set up on a local anvil in one call.

use alloy::{
    network::TransactionBuilder,
    node_bindings::AnvilInstance,
    primitives::{Address, U256},
    providers::Provider,
    rpc::types::TransactionRequest,
    signers::local::PrivateKeySigner,
};

use crate::{
    client::{RegistryClient, Role, WriteReceipt},
    error::{RegistryError, Result},
    state::NodeRecord,
};

/// Ether sent to an account that must send transactions but has none (1 ETH = 10^18 wei).
const FUNDING_WEI: u128 = 10 * 1_000_000_000_000_000_000;

/// Who gets which role on a fresh local registry.
#[derive(Debug, Clone, Default)]
pub struct LocalSetup {
    /// The manager (publishes epochs). If it holds no ether it is sent 10 ETH by the owner.
    pub manager: Option<Address>,
    /// Gateways; the first becomes the primary one (`gateway()`).
    pub gateways: Vec<Address>,
    /// Runners.
    pub runners: Vec<Address>,
    /// Nodes to register now (more can be registered later with [`Deployment::owner`]).
    pub nodes: Vec<NodeRecord>,
}

/// A registry deployed by [`deploy_local`].
#[derive(Debug, Clone)]
pub struct Deployment {
    /// JSON-RPC endpoint of the chain (`rpc_url` in `testnet.json`).
    pub rpc_url: String,
    /// Chain id (anvil: 31337).
    pub chain_id: u64,
    /// The registry's address (`registry_address` in `testnet.json`).
    pub address: Address,
    /// A client writing as the owner (anvil's first account).
    pub owner: RegistryClient,
    /// The owner's key (anvil's first, well-known development key: never use it elsewhere).
    pub owner_key: PrivateKeySigner,
    /// Every transaction sent, in order, named by the contract function: for gas reports.
    pub receipts: Vec<(&'static str, WriteReceipt)>,
}

/// Deploy a registry on `anvil` owned by anvil's first account, then grant the roles and
/// register the nodes of `setup`. Returns once every transaction is mined.
///
/// This is what `tkms testnet up --chain` runs after starting anvil:
///
/// ```no_run
/// # async fn up(manager: tkms_registry::Address, gateway: tkms_registry::Address) -> tkms_registry::Result<()> {
/// let anvil = tkms_registry::anvil::spawn()?; // keep it alive as long as the testnet
/// let deployment = tkms_registry::deploy_local(
///     &anvil,
///     &tkms_registry::LocalSetup {
///         manager: Some(manager), // the manager wallet's address: it publishes epochs
///         gateways: vec![gateway],
///         ..Default::default()
///     },
/// )
/// .await?;
/// // testnet.json: {"rpc_url": deployment.rpc_url, "registry_address": deployment.address}
/// // Once the nodes are up: deployment.owner.register_node(&record) for each node; after the
/// // DKG the manager publishes with RegistryClient::connect(rpc_url, address, Some(manager_key))
/// //     .publish_epoch(&publication).
/// # Ok(()) }
/// ```
pub async fn deploy_local(anvil: &AnvilInstance, setup: &LocalSetup) -> Result<Deployment> {
    let key =
        anvil.keys().first().cloned().ok_or_else(|| {
            RegistryError::Malformed("anvil reported no development accounts".into())
        })?;
    let owner_key = PrivateKeySigner::from(key);
    let rpc_url = anvil.endpoint();
    let (owner, deployed) = RegistryClient::deploy(&rpc_url, owner_key.clone()).await?;
    let mut receipts = vec![("deploy", deployed)];
    if let Some(manager) = setup.manager {
        receipts.push(("setManager", owner.grant(Role::Manager, manager).await?));
        fund(&owner, manager).await?;
    }
    for &gateway in &setup.gateways {
        receipts.push(("addGateway", owner.grant(Role::Gateway, gateway).await?));
    }
    for &runner in &setup.runners {
        receipts.push(("addRunner", owner.grant(Role::Runner, runner).await?));
    }
    for node in &setup.nodes {
        receipts.push(("registerNode", owner.register_node(node).await?));
    }
    Ok(Deployment {
        rpc_url,
        chain_id: anvil.chain_id(),
        address: owner.address(),
        owner,
        owner_key,
        receipts,
    })
}

/// Send `account` some ether from the owner if it has none, so it can send transactions.
async fn fund(owner: &RegistryClient, account: Address) -> Result<()> {
    let provider = owner.provider();
    if !provider.get_balance(account).await?.is_zero() {
        return Ok(());
    }
    let tx = TransactionRequest::default()
        .with_to(account)
        .with_value(U256::from(FUNDING_WEI));
    let receipt = provider.send_transaction(tx).await?.get_receipt().await?;
    if !receipt.status() {
        return Err(RegistryError::TransactionFailed {
            tx: receipt.transaction_hash,
            block: receipt.block_number.unwrap_or_default(),
        });
    }
    Ok(())
}
