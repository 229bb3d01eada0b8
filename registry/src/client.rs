//! [`RegistryClient`]: deploy, write and read the registry over JSON-RPC.

use std::{collections::BTreeSet, fmt, time::Duration};

use alloy::{
    contract::{CallBuilder, CallDecoder},
    eips::BlockId,
    network::EthereumWallet,
    primitives::{Address, Bytes, B256},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::TransactionReceipt,
    signers::local::PrivateKeySigner,
    transports::http::reqwest::Url,
};

use crate::{
    bindings::TkmsRegistry::{self, TkmsRegistryErrors, TkmsRegistryInstance},
    error::{RegistryError, Result},
    state::{EpochPublication, EpochRecord, NodeRecord, RegistryState},
};

/// A role the owner grants and revokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The one account that publishes epochs (`setManager`). Granting replaces the previous
    /// manager; revoking clears it.
    Manager,
    /// An account whose EIP-712 signature authorizes `/v0/delegate` (`addGateway`,
    /// `removeGateway`).
    Gateway,
    /// An account that may call the cluster as a runner (`addRunner`, `removeRunner`).
    Runner,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Manager => "manager",
            Self::Gateway => "gateway",
            Self::Runner => "runner",
        })
    }
}

/// What a mined write cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteReceipt {
    /// Transaction hash.
    pub tx_hash: B256,
    /// Block the transaction was mined in.
    pub block: u64,
    /// Gas used by the whole transaction (21 000 base + calldata + execution).
    pub gas_used: u64,
}

impl WriteReceipt {
    fn from_receipt(r: &TransactionReceipt) -> Result<Self> {
        let block = r.block_number.unwrap_or_default();
        if !r.status() {
            return Err(RegistryError::TransactionFailed {
                tx: r.transaction_hash,
                block,
            });
        }
        Ok(Self {
            tx_hash: r.transaction_hash,
            block,
            gas_used: r.gas_used,
        })
    }
}

/// A connection to one deployed registry. Without a signing key it only reads.
///
/// Writes wait for their receipt and fail with [`RegistryError::Reverted`] (the contract's
/// custom error, decoded) when the contract refuses them; a node estimates gas before sending,
/// so a refused write costs nothing.
#[derive(Clone)]
pub struct RegistryClient {
    provider: DynProvider,
    address: Address,
    sender: Option<Address>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("address", &self.address)
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

fn provider(rpc_url: &str, signer: Option<PrivateKeySigner>) -> Result<DynProvider> {
    let url: Url = rpc_url.parse().map_err(|e| RegistryError::InvalidRpcUrl {
        url: rpc_url.to_string(),
        reason: format!("{e}"),
    })?;
    Ok(match signer {
        Some(signer) => ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer))
            .connect_http(url)
            .erased(),
        None => ProviderBuilder::new().connect_http(url).erased(),
    })
}

impl RegistryClient {
    /// A client of the registry at `address`, reached through `rpc_url`. With `signer` it can
    /// also write (as that account). Nothing is sent yet: see [`Self::check_deployed`].
    pub fn connect(
        rpc_url: &str,
        address: Address,
        signer: Option<PrivateKeySigner>,
    ) -> Result<Self> {
        let sender = signer.as_ref().map(PrivateKeySigner::address);
        Ok(Self {
            provider: provider(rpc_url, signer)?,
            address,
            sender,
        })
    }

    /// Deploy a new registry owned by `signer` and return a client for it, with the
    /// deployment's receipt.
    pub async fn deploy(rpc_url: &str, signer: PrivateKeySigner) -> Result<(Self, WriteReceipt)> {
        let sender = signer.address();
        let provider = provider(rpc_url, Some(signer))?;
        let receipt = TkmsRegistry::deploy_builder(&provider)
            .send()
            .await?
            .get_receipt()
            .await?;
        let written = WriteReceipt::from_receipt(&receipt)?;
        let address = receipt.contract_address.ok_or(RegistryError::NotDeployed {
            tx: receipt.transaction_hash,
        })?;
        tracing::info!(%address, owner = %sender, gas = written.gas_used, "deployed TkmsRegistry");
        Ok((
            Self {
                provider,
                address,
                sender: Some(sender),
            },
            written,
        ))
    }

    /// The registry's address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// The account writes are sent from, if the client has a signing key.
    pub fn sender(&self) -> Option<Address> {
        self.sender
    }

    /// The underlying provider (for chain queries this client does not wrap).
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    fn contract(&self) -> TkmsRegistryInstance<DynProvider> {
        // DynProvider is an Arc: cloning it is cheap.
        TkmsRegistry::new(self.address, self.provider.clone())
    }

    /// The chain id of the endpoint.
    pub async fn chain_id(&self) -> Result<u64> {
        Ok(self.provider.get_chain_id().await?)
    }

    /// The latest block number.
    pub async fn block_number(&self) -> Result<u64> {
        Ok(self.provider.get_block_number().await?)
    }

    /// Wait until the chain's head is at `block` or later (polling every 20 ms); `false` on
    /// timeout.
    pub async fn wait_for_block(&self, block: u64, timeout: Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.block_number().await? >= block {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fail with [`RegistryError::NoContract`] unless code is deployed at the address.
    pub async fn check_deployed(&self) -> Result<()> {
        let code = self.provider.get_code_at(self.address).await?;
        if code.is_empty() {
            return Err(RegistryError::NoContract {
                address: self.address,
            });
        }
        Ok(())
    }

    async fn send<D: CallDecoder + Unpin>(
        &self,
        what: &str,
        call: CallBuilder<&DynProvider, D>,
    ) -> Result<WriteReceipt> {
        let Some(from) = self.sender else {
            return Err(RegistryError::NoSigner);
        };
        let receipt = call.from(from).send().await?.get_receipt().await?;
        let written = WriteReceipt::from_receipt(&receipt)?;
        tracing::info!(
            registry = %self.address,
            %from,
            tx = %written.tx_hash,
            block = written.block,
            gas = written.gas_used,
            "{what}"
        );
        Ok(written)
    }

    // --- Roles -------------------------------------------------------------------------------

    /// Grant `role` to `account` (owner only). For [`Role::Manager`] this replaces the current
    /// manager. A gateway added when none exists becomes the primary one.
    pub async fn grant(&self, role: Role, account: Address) -> Result<WriteReceipt> {
        let c = self.contract();
        match role {
            Role::Manager => self.send("setManager", c.setManager(account)).await,
            Role::Gateway => self.send("addGateway", c.addGateway(account)).await,
            Role::Runner => self.send("addRunner", c.addRunner(account)).await,
        }
    }

    /// Revoke `role` from `account` (owner only). The primary gateway can only be revoked
    /// when it is the last one: make another primary first ([`Self::set_primary_gateway`]).
    /// Revoking [`Role::Manager`] from an account that is not the manager is refused
    /// ([`RegistryError::InvalidArgument`]) rather than clearing someone else's role.
    pub async fn revoke(&self, role: Role, account: Address) -> Result<WriteReceipt> {
        let c = self.contract();
        match role {
            Role::Manager => {
                let current = c.manager().call().await?;
                if current != account {
                    return Err(RegistryError::InvalidArgument(format!(
                        "{account} is not the manager (the manager is {current})"
                    )));
                }
                self.send("setManager(0)", c.setManager(Address::ZERO))
                    .await
            }
            Role::Gateway => self.send("removeGateway", c.removeGateway(account)).await,
            Role::Runner => self.send("removeRunner", c.removeRunner(account)).await,
        }
    }

    /// Make the existing gateway `account` the one `gateway()` returns (owner only).
    pub async fn set_primary_gateway(&self, account: Address) -> Result<WriteReceipt> {
        self.send(
            "setPrimaryGateway",
            self.contract().setPrimaryGateway(account),
        )
        .await
    }

    // --- Nodes and epochs --------------------------------------------------------------------

    /// Register a node (owner only).
    pub async fn register_node(&self, node: &NodeRecord) -> Result<WriteReceipt> {
        let (index, peer_id, endpoints, key, digest) = node_args(node);
        let contract = self.contract();
        let call = contract.registerNode(index, peer_id, endpoints, key, digest);
        self.send("registerNode", call).await
    }

    /// Replace a registered node's record (owner only).
    pub async fn update_node(&self, node: &NodeRecord) -> Result<WriteReceipt> {
        let (index, peer_id, endpoints, key, digest) = node_args(node);
        let contract = self.contract();
        let call = contract.updateNode(index, peer_id, endpoints, key, digest);
        self.send("updateNode", call).await
    }

    /// Remove a registered node (owner only).
    pub async fn remove_node(&self, index: u16) -> Result<WriteReceipt> {
        self.send("removeNode", self.contract().removeNode(index))
            .await
    }

    /// Approve the next epoch's change of the cluster key to `public_key` (owner only; a
    /// fresh DKG after genesis needs it, a reshare does not).
    pub async fn approve_key_change(&self, public_key: Bytes) -> Result<WriteReceipt> {
        self.send(
            "approveKeyChange",
            self.contract().approveKeyChange(public_key),
        )
        .await
    }

    /// Publish a key epoch (manager only).
    pub async fn publish_epoch(&self, epoch: &EpochPublication) -> Result<WriteReceipt> {
        self.send(
            "publishEpoch",
            self.contract().publishEpoch(
                epoch.epoch,
                epoch.t,
                epoch.n,
                epoch.public_key.clone(),
                epoch.public_shares_hash,
                epoch.transcript_hash,
            ),
        )
        .await
    }

    // --- Reads (latest block) ----------------------------------------------------------------

    /// The current cluster key (`kmsPublicKey()`), or `None` before the first epoch.
    pub async fn kms_public_key(&self) -> Result<Option<Bytes>> {
        none_on(self.contract().kmsPublicKey().call().await, |e| {
            matches!(e, TkmsRegistryErrors::NoEpochPublished(_))
        })
    }

    /// The primary gateway (`gateway()`), or `None` when no gateway is registered.
    pub async fn gateway(&self) -> Result<Option<Address>> {
        none_on(self.contract().gateway().call().await, |e| {
            matches!(e, TkmsRegistryErrors::NoGateway(_))
        })
    }

    /// Node `index`, or `None` if it is not registered.
    pub async fn node(&self, index: u16) -> Result<Option<NodeRecord>> {
        Ok(none_on(self.contract().node(index).call().await, |e| {
            matches!(e, TkmsRegistryErrors::UnknownNode(_))
        })?
        .map(NodeRecord::from))
    }

    /// The current epoch number (0 before the first epoch).
    pub async fn current_epoch(&self) -> Result<u64> {
        Ok(self.contract().currentEpoch().call().await?)
    }

    /// Epoch `number`, or `None` if it was never published.
    pub async fn epoch(&self, number: u64) -> Result<Option<EpochRecord>> {
        Ok(none_on(self.contract().epoch(number).call().await, |e| {
            matches!(e, TkmsRegistryErrors::UnknownEpoch(_))
        })?
        .map(EpochRecord::from))
    }

    /// Everything at the latest block, read in one consistent view.
    pub async fn state(&self) -> Result<RegistryState> {
        let block = self.block_number().await?;
        self.state_at(block).await
    }

    /// Everything as of block `block` (every call is pinned to that block, so the state is
    /// consistent even while the chain moves).
    pub async fn state_at(&self, block: u64) -> Result<RegistryState> {
        let header = self
            .provider
            .get_block_by_number(block.into())
            .await?
            .ok_or_else(|| RegistryError::Malformed(format!("block {block} is unknown")))?;
        let at = BlockId::from(header.header.hash);
        let c = self.contract();
        let owner = c.owner().block(at).call().await?;
        let pending_owner = c.pendingOwner().block(at).call().await?;
        let manager = c.manager().block(at).call().await?;
        let primary_gateway = none_on(c.gateway().block(at).call().await, |e| {
            matches!(e, TkmsRegistryErrors::NoGateway(_))
        })?;
        let gateways: BTreeSet<Address> =
            c.gateways().block(at).call().await?.into_iter().collect();
        let runners: BTreeSet<Address> = c.runners().block(at).call().await?.into_iter().collect();
        let mut nodes = std::collections::BTreeMap::new();
        for index in c.nodeIndices().block(at).call().await? {
            let node = c.node(index).block(at).call().await?;
            nodes.insert(index, NodeRecord::from(node));
        }
        let current = c.currentEpoch().block(at).call().await?;
        let epoch = if current == 0 {
            None
        } else {
            Some(EpochRecord::from(c.epoch(current).block(at).call().await?))
        };
        let approved = c.approvedKeyHash().block(at).call().await?;
        Ok(RegistryState {
            block,
            block_hash: header.header.hash,
            owner,
            pending_owner: (!pending_owner.is_zero()).then_some(pending_owner),
            manager: (!manager.is_zero()).then_some(manager),
            primary_gateway,
            gateways,
            runners,
            nodes,
            epoch,
            approved_key_hash: (!approved.is_zero()).then_some(approved),
        })
    }
}

/// The arguments of `registerNode` and `updateNode`.
fn node_args(n: &NodeRecord) -> (u16, Bytes, Vec<String>, Bytes, B256) {
    (
        n.index,
        n.peer_id.clone(),
        n.endpoints.clone(),
        n.public_key.clone(),
        n.attestation_digest,
    )
}

/// `Ok(None)` when the call reverted with the custom error `absent` recognizes.
fn none_on<T>(
    result: std::result::Result<T, alloy::contract::Error>,
    absent: impl FnOnce(&TkmsRegistryErrors) -> bool,
) -> Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) => match RegistryError::from(e) {
            RegistryError::Reverted(r) if absent(&r.error) => Ok(None),
            other => Err(other),
        },
    }
}
