//! The local chain of `tkms testnet up --chain`: anvil, the registry deployed on it, the nodes
//! registered, and the published epoch checked.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use k256::ecdsa::SigningKey;
use tkms_registry::{AnvilInstance, Bytes, Deployment, LocalSetup, NodeRecord, B256};

use super::{local::Proc, TestnetNode};

/// The local chain of a `--chain` testnet. Dropping it stops anvil.
pub(super) struct Chain {
    pub(super) anvil: AnvilInstance,
    pub(super) deployment: Deployment,
    /// The JSON-RPC URL the nodes and the manager use: the deployment's (loopback), or with
    /// `--netns` the host's address on the bridge, which every namespace reaches.
    pub(super) daemon_rpc_url: String,
    /// How long the nodes' registry caches get to see a change.
    catch_up: Duration,
}

/// Start anvil serving `chain_id` and deploy the registry: anvil's first development account
/// owns it, the manager wallet publishes epochs, the development gateway and runner hold
/// their roles. With `bridge` (`--netns`: the host's address on the bridge, and the links'
/// round trip) anvil listens there too, so that the daemons in the namespaces reach it.
pub(super) async fn start_chain(
    chain_id: u64,
    keys: [&SigningKey; 3],
    bridge: Option<(Ipv4Addr, Duration)>,
) -> Result<Chain> {
    let (bridge, rtt) = (bridge.map(|b| b.0), bridge.map_or(Duration::ZERO, |b| b.1));
    let [wallet, gateway, runner] = keys;
    // On two addresses anvil picks a port for each unless given one: one port, free on all.
    let port = match bridge {
        Some(_) => Some(
            std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
                .and_then(|l| l.local_addr())
                .context("picking a port for the local chain")?
                .port(),
        ),
        None => None,
    };
    let anvil = tkms_registry::anvil::spawn_with(|a| {
        let a = a.chain_id(chain_id);
        match (bridge, port) {
            // anvil takes a comma-separated list of addresses to listen on.
            (Some(host), Some(port)) => a
                .port(port)
                .args(["--host".to_string(), format!("127.0.0.1,{host}")]),
            _ => a,
        }
    })
    .context("starting the local chain for --chain")?;
    let address = tkms_manager::nox::wallet_address;
    let deployment = tkms_registry::deploy_local(
        &anvil,
        &LocalSetup {
            manager: Some(address(wallet)),
            gateways: vec![address(gateway)],
            runners: vec![address(runner)],
            nodes: Vec::new(),
        },
    )
    .await
    .context("deploying the registry")?;
    eprintln!(
        "tkms testnet: registry {} deployed on the local chain {} (chain id {chain_id})",
        deployment.address, deployment.rpc_url
    );
    let daemon_rpc_url = match bridge {
        Some(host) => format!("http://{host}:{}", anvil.port()),
        None => deployment.rpc_url.clone(),
    };
    Ok(Chain {
        anvil,
        deployment,
        daemon_rpc_url,
        // A cache refresh is a few JSON-RPC calls in a row, each a round trip on a shaped link.
        catch_up: CACHE_CATCH_UP + rtt * 10,
    })
}

/// Register every node (index, libp2p peer id, gRPC URL and libp2p address, node key), then
/// give the nodes' registry caches time to see it: a node joins a ceremony only with members
/// the registry lists.
pub(super) async fn register_nodes(chain: &Chain, nodes: &[(Proc, TestnetNode)]) -> Result<()> {
    let d = &chain.deployment;
    for (_, node) in nodes {
        let addr: libp2p::Multiaddr = node
            .p2p_addr
            .parse()
            .with_context(|| format!("node {}: p2p address {:?}", node.index, node.p2p_addr))?;
        let (peer, _) = tkms_node::p2p::split_peer(&addr)
            .with_context(|| format!("node {}: no peer id in {addr}", node.index))?;
        let record = NodeRecord {
            index: node.index,
            peer_id: Bytes::from(peer.to_bytes()),
            endpoints: vec![format!("http://{}", node.grpc_addr), node.p2p_addr.clone()],
            public_key: Bytes::from(
                hex::decode(&node.node_key)
                    .with_context(|| format!("node {}: node key", node.index))?,
            ),
            attestation_digest: B256::ZERO,
        };
        d.owner
            .register_node(&record)
            .await
            .with_context(|| format!("registering node {}", node.index))?;
    }
    tokio::time::sleep(chain.catch_up).await;
    Ok(())
}

/// How long the nodes' registry caches (polling every 250 ms) get to see a change on loopback.
pub(super) const CACHE_CATCH_UP: Duration = Duration::from_secs(1);

/// The registry must publish the key the manager serves; then the nodes get time to see it.
pub(super) async fn check_published(
    chain: &Chain,
    public: &serde_json::Value,
    mdir: &Path,
) -> Result<()> {
    let d = &chain.deployment;
    let served = public["publicKey"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("0x")
        .to_lowercase();
    match d.owner.kms_public_key().await? {
        Some(key) if hex::encode(&key) == served => {}
        published => bail!(
            "the registry publishes {}, but the manager serves 0x{served}; see {}",
            published.map_or_else(|| "no key".to_string(), |k| k.to_string()),
            mdir.join("manager.log").display()
        ),
    }
    tokio::time::sleep(chain.catch_up).await;
    Ok(())
}
