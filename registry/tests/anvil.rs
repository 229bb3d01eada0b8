//! The registry bindings against a real local chain: each test starts its own anvil (the npm
//! binary, `contracts/install-anvil.sh`), deploys the committed artifact and talks JSON-RPC.
//!
//! - deploy, register 5 nodes, publish an epoch, read `kmsPublicKey()` and the rest back;
//! - refused writes come back as the contract's custom errors, decoded;
//! - the cache equals a fresh read after every kind of event, drops a revoked gateway before
//!   the next block, and recovers from a reorg;
//! - gas of every write, compared with the forge numbers of `contracts/GAS.md`.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::time::Duration;

use alloy::{
    primitives::{keccak256, Address, Bytes, B256},
    providers::Provider,
    signers::local::PrivateKeySigner,
};
use tkms_registry::{
    anvil, bindings::TkmsRegistry::TkmsRegistryErrors, deploy_local, CacheConfig, EpochPublication,
    LocalSetup, NodeRecord, RegistryCache, RegistryClient, RegistryError, Role,
};

/// A SEC1 compressed secp256k1 key (33 bytes), like a node's or the cluster's, derived from
/// `label` so every run stores the same bytes. The gas test needs that: a 33-byte key fills
/// two storage words, and a key whose last byte is zero leaves the second word zero, which
/// costs ~20 000 gas less to store (a random key did that once in 256 runs). A label whose key
/// ends in a zero byte is re-hashed until it does not.
fn compressed_key(label: &str) -> Bytes {
    let mut seed = keccak256(label);
    loop {
        if let Ok(signer) = PrivateKeySigner::from_bytes(&seed) {
            let key = signer.credential().verifying_key().to_encoded_point(true);
            if key.as_bytes()[32] != 0 {
                return Bytes::from(key.as_bytes().to_vec());
            }
        }
        seed = keccak256(seed);
    }
}

/// The fixtures of `contracts/test/TkmsRegistry.t.sol`: a 38-byte ed25519 identity-multihash
/// peer id, two endpoints, a node key and an attestation digest.
fn node(i: u16) -> NodeRecord {
    let mut peer_id = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    peer_id.extend_from_slice(keccak256(format!("peer {i}")).as_slice());
    let digit = char::from(b'0' + u8::try_from(i % 10).unwrap());
    NodeRecord {
        index: i,
        peer_id: peer_id.into(),
        endpoints: vec![
            format!("https://node{digit}.tkms.test:7000"),
            format!("/ip4/127.0.0.1/tcp/900{digit}"),
        ],
        public_key: compressed_key(&format!("node key {i}")),
        attestation_digest: keccak256(format!("attestation {i}")),
    }
}

fn epoch(number: u64, t: u16, n: u16, public_key: Bytes) -> EpochPublication {
    EpochPublication {
        epoch: number,
        t,
        n,
        public_key,
        public_shares_hash: keccak256(format!("shares {number}")),
        transcript_hash: keccak256(format!("transcript {number}")),
    }
}

fn key(anvil: &tkms_registry::AnvilInstance, i: usize) -> PrivateKeySigner {
    PrivateKeySigner::from(anvil.keys()[i].clone())
}

fn expect_revert(result: tkms_registry::Result<impl std::fmt::Debug>) -> TkmsRegistryErrors {
    match result {
        Err(e @ RegistryError::Reverted(_)) => e.revert().cloned().unwrap(),
        other => panic!("expected a decoded contract revert, got {other:?}"),
    }
}

#[tokio::test]
async fn deploy_register_five_nodes_publish_and_read_back() {
    let anvil = anvil::spawn_or_fail();
    let manager = key(&anvil, 1);
    let gateway = Address::repeat_byte(0x61);
    let nodes: Vec<NodeRecord> = (1..=5).map(node).collect();
    let d = deploy_local(
        &anvil,
        &LocalSetup {
            manager: Some(manager.address()),
            gateways: vec![gateway],
            runners: vec![],
            nodes: nodes.clone(),
        },
    )
    .await
    .unwrap();
    assert_eq!(d.chain_id, 31_337);

    // Nothing published yet: the Nox views answer "none", not an error.
    let reader = RegistryClient::connect(&d.rpc_url, d.address, None).unwrap();
    assert_eq!(reader.kms_public_key().await.unwrap(), None);
    assert_eq!(reader.current_epoch().await.unwrap(), 0);

    let cluster_key = compressed_key("cluster key");
    let publisher = RegistryClient::connect(&d.rpc_url, d.address, Some(manager)).unwrap();
    let published = publisher
        .publish_epoch(&epoch(1, 3, 5, cluster_key.clone()))
        .await
        .unwrap();

    assert_eq!(
        reader.kms_public_key().await.unwrap(),
        Some(cluster_key.clone())
    );
    assert_eq!(reader.gateway().await.unwrap(), Some(gateway));
    assert_eq!(reader.current_epoch().await.unwrap(), 1);
    let record = reader.epoch(1).await.unwrap().unwrap();
    assert_eq!(record.publication, epoch(1, 3, 5, cluster_key.clone()));
    let block = reader
        .provider()
        .get_block_by_number(published.block.into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.published_at, block.header.timestamp);
    assert_eq!(reader.epoch(2).await.unwrap(), None);
    assert_eq!(reader.node(3).await.unwrap().as_ref(), Some(&nodes[2]));
    assert_eq!(reader.node(6).await.unwrap(), None);

    let state = reader.state().await.unwrap();
    assert_eq!(state.nodes.values().cloned().collect::<Vec<_>>(), nodes);
    assert_eq!(state.kms_public_key(), Some(&cluster_key));
    assert_eq!(state.owner, d.owner_key.address());
    assert_eq!(state.manager, Some(publisher.sender().unwrap()));
    assert!(state.is_gateway(gateway));
    assert_eq!(state.primary_gateway, Some(gateway));
}

#[tokio::test]
async fn refused_writes_come_back_as_decoded_contract_errors() {
    let anvil = anvil::spawn_or_fail();
    let manager = key(&anvil, 1);
    let gateways = [Address::repeat_byte(0x61), Address::repeat_byte(0x62)];
    let d = deploy_local(
        &anvil,
        &LocalSetup {
            manager: Some(manager.address()),
            gateways: gateways.to_vec(),
            runners: vec![],
            nodes: (1..=3).map(node).collect(),
        },
    )
    .await
    .unwrap();

    // Only the manager publishes: the owner is refused with NotManager(owner).
    let err = d
        .owner
        .publish_epoch(&epoch(1, 2, 3, compressed_key("owner key")))
        .await
        .unwrap_err();
    assert_eq!(err.revert_name(), Some("NotManager"));
    assert!(err.to_string().contains("NotManager"), "{err}");
    match err.revert() {
        Some(TkmsRegistryErrors::NotManager(e)) => assert_eq!(e.caller, d.owner_key.address()),
        other => panic!("expected NotManager, got {other:?}"),
    }

    // The contract's input validation, decoded with its arguments.
    let publisher = RegistryClient::connect(&d.rpc_url, d.address, Some(manager)).unwrap();
    match expect_revert(
        publisher
            .publish_epoch(&epoch(1, 4, 3, compressed_key("t above n")))
            .await,
    ) {
        TkmsRegistryErrors::InvalidThreshold(e) => assert_eq!((e.t, e.n), (4, 3)),
        other => panic!("expected InvalidThreshold, got {other:?}"),
    }
    match expect_revert(
        publisher
            .publish_epoch(&epoch(1, 2, 4, compressed_key("n above nodes")))
            .await,
    ) {
        TkmsRegistryErrors::CommitteeTooLarge(e) => {
            assert_eq!(e.n, 4);
            assert_eq!(e.registeredNodes, alloy::primitives::U256::from(3));
        }
        other => panic!("expected CommitteeTooLarge, got {other:?}"),
    }
    let mut bad_key = compressed_key("bad prefix").to_vec();
    bad_key[0] = 0x04;
    assert!(matches!(
        expect_revert(
            publisher
                .publish_epoch(&epoch(1, 2, 3, bad_key.into()))
                .await
        ),
        TkmsRegistryErrors::InvalidKeyPrefix(_)
    ));
    // Roles: the primary gateway cannot go while another exists; a stranger cannot grant.
    assert!(matches!(
        expect_revert(d.owner.revoke(Role::Gateway, gateways[0]).await),
        TkmsRegistryErrors::CannotRemovePrimaryGateway(_)
    ));
    assert!(matches!(
        expect_revert(publisher.grant(Role::Runner, Address::repeat_byte(7)).await),
        TkmsRegistryErrors::NotOwner(_)
    ));
    assert!(matches!(
        expect_revert(d.owner.register_node(&node(2)).await),
        TkmsRegistryErrors::NodeAlreadyRegistered(_)
    ));
    // Revoking the manager role from someone who does not hold it changes nothing.
    assert!(matches!(
        d.owner.revoke(Role::Manager, Address::repeat_byte(9)).await,
        Err(RegistryError::InvalidArgument(_))
    ));
    // Nothing was changed by any of these.
    assert_eq!(d.owner.current_epoch().await.unwrap(), 0);
    assert_eq!(d.owner.gateway().await.unwrap(), Some(gateways[0]));

    // Client-side errors are clear too.
    let reader = RegistryClient::connect(&d.rpc_url, d.address, None).unwrap();
    assert!(matches!(
        reader.grant(Role::Gateway, Address::repeat_byte(8)).await,
        Err(RegistryError::NoSigner)
    ));
    let nowhere = RegistryClient::connect(&d.rpc_url, Address::repeat_byte(0x42), None).unwrap();
    assert!(matches!(
        nowhere.check_deployed().await,
        Err(RegistryError::NoContract { .. })
    ));
    assert!(matches!(
        RegistryClient::connect("not a url", d.address, None),
        Err(RegistryError::InvalidRpcUrl { .. })
    ));
}

#[tokio::test]
async fn cache_follows_every_event_and_drops_a_revoked_gateway_within_one_block() {
    let anvil = anvil::spawn_or_fail();
    let manager = key(&anvil, 1);
    let gateways = [Address::repeat_byte(0x61), Address::repeat_byte(0x62)];
    let d = deploy_local(
        &anvil,
        &LocalSetup {
            manager: Some(manager.address()),
            gateways: gateways.to_vec(),
            runners: vec![Address::repeat_byte(0x71)],
            nodes: (1..=4).map(node).collect(),
        },
    )
    .await
    .unwrap();
    let publisher = RegistryClient::connect(&d.rpc_url, d.address, Some(manager)).unwrap();
    let reader = RegistryClient::connect(&d.rpc_url, d.address, None).unwrap();
    // From here on, one block per second, as on a real chain (not one per transaction).
    anvil::set_block_time(&anvil, 1).await.unwrap();
    let config = CacheConfig {
        poll_interval: Duration::from_millis(100),
        ..CacheConfig::default()
    };
    let cache = RegistryCache::start(reader.clone(), config).await.unwrap();
    assert_eq!(cache.chain_id(), 31_337);
    assert_eq!(
        *cache.state(),
        reader.state_at(cache.state().block).await.unwrap()
    );
    assert!(cache.state().is_gateway(gateways[1]));

    // Every kind of event, then the cache must equal a fresh read at the block it is at.
    let key1 = compressed_key("key 1");
    let key2 = compressed_key("key 2");
    d.owner
        .grant(Role::Runner, Address::repeat_byte(0x72))
        .await
        .unwrap();
    d.owner
        .revoke(Role::Runner, Address::repeat_byte(0x71))
        .await
        .unwrap();
    d.owner.remove_node(4).await.unwrap();
    let mut updated = node(2);
    updated
        .endpoints
        .push("/dns4/node2.tkms.test/tcp/9002".into());
    d.owner.update_node(&updated).await.unwrap();
    publisher
        .publish_epoch(&epoch(1, 2, 3, key1))
        .await
        .unwrap();
    d.owner.approve_key_change(key2.clone()).await.unwrap();
    let last = publisher
        .publish_epoch(&epoch(3, 2, 3, key2.clone()))
        .await
        .unwrap();
    assert!(
        cache
            .wait_for_block(last.block, Duration::from_secs(5))
            .await
    );
    let cached = cache.state();
    assert_eq!(*cached, reader.state_at(cached.block).await.unwrap());
    assert_eq!(cached.kms_public_key(), Some(&key2));
    assert_eq!(cached.nodes.get(&2), Some(&updated));
    assert_eq!(cached.approved_key_hash, None);

    // Revocation: the cache no longer lists the gateway within one block. Waited for on the
    // cache itself (it polls every 100 ms, one block per second), then checked against the
    // head: the cache must have the revoking block before the chain is 2 blocks past it. The
    // issue asks for one block; one more is tolerated for polling on a loaded CI machine
    // (2 cores, several RPC calls per poll, other tests running alongside).
    let revoked = d.owner.revoke(Role::Gateway, gateways[1]).await.unwrap();
    assert!(
        cache
            .wait_for_block(revoked.block, Duration::from_secs(10))
            .await,
        "the cache did not reach block {} within 10 s",
        revoked.block
    );
    // Read at once: the poll that brought the block has just succeeded, and the RPC call
    // below must not count against the cache's freshness.
    let age = cache.age();
    let head = reader.block_number().await.unwrap();
    assert!(
        head <= revoked.block + 2,
        "the cache reached block {} only when the head was at {head}",
        revoked.block
    );
    let cached = cache.state();
    assert!(
        cached.block >= revoked.block,
        "cache at block {} < {}",
        cached.block,
        revoked.block
    );
    assert!(!cached.is_gateway(gateways[1]));
    assert!(cached.is_gateway(gateways[0]));
    assert!(age < Duration::from_secs(1), "cache age {age:?}");
}

#[tokio::test]
async fn cache_takes_a_fresh_snapshot_after_a_reorg() {
    let anvil = anvil::spawn_or_fail();
    let d = deploy_local(&anvil, &LocalSetup::default()).await.unwrap();
    let reader = RegistryClient::connect(&d.rpc_url, d.address, None).unwrap();
    let config = CacheConfig {
        poll_interval: Duration::from_millis(50),
        ..CacheConfig::default()
    };
    let cache = RegistryCache::start(reader.clone(), config).await.unwrap();
    let provider = reader.provider();
    let snapshot: alloy::primitives::U256 = provider
        .raw_request("evm_snapshot".into(), ())
        .await
        .unwrap();
    let gateway = Address::repeat_byte(0x63);
    let added = d.owner.grant(Role::Gateway, gateway).await.unwrap();
    assert!(
        cache
            .wait_for_block(added.block, Duration::from_secs(5))
            .await
    );
    assert!(cache.state().is_gateway(gateway));

    // Drop the block that added the gateway and grow a different chain past it.
    let reverted: bool = provider
        .raw_request("evm_revert".into(), (snapshot,))
        .await
        .unwrap();
    assert!(reverted);
    for _ in 0..3 {
        provider
            .raw_request::<_, String>("evm_mine".into(), ())
            .await
            .unwrap();
    }
    let head = reader.block_number().await.unwrap();
    assert!(head > added.block);
    assert!(cache.wait_for_block(head, Duration::from_secs(5)).await);
    let cached = cache.state();
    assert!(!cached.is_gateway(gateway));
    assert_eq!(*cached, reader.state_at(cached.block).await.unwrap());
    assert_ne!(cached.block_hash, B256::ZERO);
}

/// Gas of each write (whole transactions, from anvil receipts) for one life cycle like
/// `contracts/test/Gas.t.sol`, with forge's number from `contracts/GAS.md` beside it (0: none).
#[allow(clippy::too_many_lines)] // one statement per write of the life cycle
async fn gas_table(
    anvil: &tkms_registry::AnvilInstance,
) -> Vec<(&'static str, &'static str, u64, u64)> {
    let manager = key(anvil, 1);
    let gateways = [key(anvil, 2).address(), key(anvil, 3).address()];
    let runners = [key(anvil, 4).address(), key(anvil, 5).address()];
    let d = deploy_local(
        anvil,
        &LocalSetup {
            manager: Some(manager.address()),
            ..LocalSetup::default()
        },
    )
    .await
    .unwrap();
    let owner = &d.owner;
    let publisher = RegistryClient::connect(&d.rpc_url, d.address, Some(manager)).unwrap();
    let (k1, k2) = (compressed_key("gas key 1"), compressed_key("gas key 2"));
    let mut rows = vec![
        ("deployment", "", d.receipts[0].1.gas_used, 2_543_990),
        (
            "setManager",
            "first manager",
            d.receipts[1].1.gas_used,
            47_393,
        ),
    ];
    let mut row = |name, case, gas: u64, forge| rows.push((name, case, gas, forge));
    let g = |r: tkms_registry::Result<tkms_registry::WriteReceipt>| r.unwrap().gas_used;
    row(
        "addGateway",
        "first (becomes primary)",
        g(owner.grant(Role::Gateway, gateways[0]).await),
        115_359,
    );
    row(
        "addGateway",
        "further",
        g(owner.grant(Role::Gateway, gateways[1]).await),
        76_573,
    );
    row(
        "setPrimaryGateway",
        "",
        g(owner.set_primary_gateway(gateways[1]).await),
        32_544,
    );
    row(
        "removeGateway",
        "non-primary",
        g(owner.revoke(Role::Gateway, gateways[0]).await),
        43_766,
    );
    row(
        "addRunner",
        "first",
        g(owner.grant(Role::Runner, runners[0]).await),
        91_581,
    );
    row(
        "addRunner",
        "further",
        g(owner.grant(Role::Runner, runners[1]).await),
        74_481,
    );
    row(
        "removeRunner",
        "",
        g(owner.revoke(Role::Runner, runners[0]).await),
        41_591,
    );
    row(
        "registerNode",
        "first node",
        g(owner.register_node(&node(1)).await),
        397_285,
    );
    for i in 2..=5 {
        row(
            "registerNode",
            "further node",
            g(owner.register_node(&node(i)).await),
            363_135,
        );
    }
    let mut reattested = node(2);
    reattested.public_key = owner.node(2).await.unwrap().unwrap().public_key;
    reattested.attestation_digest = keccak256("re-attested");
    row(
        "updateNode",
        "new attestation digest",
        g(owner.update_node(&reattested).await),
        79_773,
    );
    row("removeNode", "", g(owner.remove_node(5).await), 86_865);
    row(
        "publishEpoch",
        "genesis",
        g(publisher.publish_epoch(&epoch(1, 2, 3, k1.clone())).await),
        327_833,
    );
    row(
        "publishEpoch",
        "reshare, same key",
        g(publisher.publish_epoch(&epoch(2, 2, 3, k1)).await),
        213_229,
    );
    row(
        "approveKeyChange",
        "",
        g(owner.approve_key_change(k2.clone()).await),
        61_181,
    );
    row(
        "publishEpoch",
        "approved new key",
        g(publisher.publish_epoch(&epoch(3, 2, 3, k2)).await),
        221_507,
    );
    let manager = publisher.sender().unwrap();
    row(
        "setManager",
        "revoke (zero)",
        g(owner.revoke(Role::Manager, manager).await),
        0,
    );
    rows
}

/// On the contract's own EVM version (cancun, as forge ran it) every write costs what
/// `contracts/GAS.md` says, up to calldata (other addresses and keys): within 1%. anvil's
/// default (latest) hardfork is printed beside it. `--nocapture` shows the table.
#[tokio::test]
async fn gas_of_every_write_matches_the_forge_report() {
    let cancun = gas_table(
        &anvil::spawn_with(alloy::node_bindings::Anvil::cancun).unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    let latest = gas_table(&anvil::spawn_or_fail()).await;
    println!("| write | case | forge (GAS.md) | anvil, cancun | anvil, latest |");
    println!("| --- | --- | ---: | ---: | ---: |");
    let mut off = Vec::new();
    for ((name, case, gas, forge), (_, _, now, _)) in cancun.iter().zip(&latest) {
        println!("| `{name}` | {case} | {forge} | {gas} | {now} |");
        assert!(
            *gas > 21_000 && *now > 21_000,
            "{name}: not a transaction's gas"
        );
        // forge's fixture keys are `prefix || 31 zero bytes || small x`, so two of them share
        // their first 32-byte word and storing the new key's first word over the old one is
        // a no-op SSTORE there (100 gas instead of 2 900). Real keys pay the difference.
        let expected = if *case == "approved new key" {
            forge + 2_800
        } else {
            *forge
        };
        if expected > 0 && (*gas as f64 / expected as f64 - 1.0).abs() > 0.01 {
            off.push(format!("{name} ({case}): {gas} vs forge {forge}"));
        }
    }
    assert!(
        off.is_empty(),
        "gas differs from contracts/GAS.md by more than 1%: {off:?}"
    );
}
