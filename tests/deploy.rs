//! The operator's path across machines (docs/DEPLOY.md), run as an operator would run it:
//! `tkms node init`, settings from a TOML file under `TKMS_*` variables under the command
//! line, and every bad configuration the issue names stopped at start with a message that
//! says what is wrong — never a hang: an unreadable password file, a key the file does not
//! know, an advertised address nobody reaches, a bind to every interface with no advertised
//! address, a node given twice to the manager, a vault whose identity the registry lists
//! with another node key.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::{
    net::TcpListener,
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tkms_e2e::tkms;

/// Run `command` to its end (at most 60 s: a hang is a failure); its output.
fn finish(command: &mut Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{command:?} did not stop within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// `command` fails, and its stderr holds every one of `expected`.
fn fails_saying(command: &mut Command, expected: &[&str]) {
    let out = finish(command);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{command:?} succeeded; stderr: {stderr}"
    );
    for e in expected {
        assert!(
            stderr.contains(e),
            "{command:?}: expected {e:?} in: {stderr}"
        );
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tkms node run` on the vault in `data_dir` with the password in `password`, the cheap KDF
/// and one accepted manager key.
fn node_run(data_dir: &Path, password: &Path) -> Command {
    let mut c = tkms();
    c.args([
        "node",
        "run",
        "--kdf",
        "insecure",
        "--manager-key",
        MANAGER_KEY,
    ])
    .arg("--data-dir")
    .arg(data_dir)
    .arg("--password-file")
    .arg(password);
    c
}

/// A manager key a node accepts (any valid point).
const MANAGER_KEY: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";

#[test]
fn node_init_prints_the_record_from_file_environment_and_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    write(&password, "a vault password for the init test");
    let config = dir.path().join("node.toml");
    // The node's file, with settings `init` has no use for (skipped by init).
    write(
        &config,
        &format!(
            "data_dir = {:?}\npassword = \"file\"\nkdf = \"insecure\"\nmanager-key = [{MANAGER_KEY:?}]\n\
             grpc-advertise = \"http://192.0.2.7:7001\"\np2p-advertise = \"/ip4/192.0.2.7/tcp/7101\"\n",
            dir.path().join("from-file").display().to_string(),
        ),
    );
    // The password file comes from the environment, the data dir from the command line.
    let init = |data_dir: &Path| {
        let out = finish(
            tkms()
                .args(["node", "init", "--config"])
                .arg(&config)
                .arg("--data-dir")
                .arg(data_dir)
                .env("TKMS_PASSWORD_FILE", &password),
        );
        assert!(
            out.status.success(),
            "tkms node init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let data_dir = dir.path().join("node");
    let first = init(&data_dir);
    assert_eq!(first["data_dir"], data_dir.display().to_string());
    assert_eq!(first["created"], true);
    assert!(data_dir.join("vault.redb").exists());
    assert!(
        !dir.path().join("from-file").exists(),
        "the command line lost to the file"
    );
    let key = first["node_key"].as_str().unwrap();
    assert_eq!(key.len(), 66, "{first}");
    let peer = first["peer_id"].as_str().unwrap();
    assert_eq!(
        first["endpoints"],
        serde_json::json!([
            "http://192.0.2.7:7001",
            format!("/ip4/192.0.2.7/tcp/7101/p2p/{peer}")
        ])
    );
    // Again: the same vault, the same identity.
    let again = init(&data_dir);
    assert_eq!(again["created"], false);
    assert_eq!(again["node_key"], first["node_key"]);
    assert_eq!(again["peer_id"], first["peer_id"]);
    // Nothing secret is printed.
    let printed = again.to_string();
    assert!(!printed.contains("a vault password"), "{printed}");
}

#[test]
fn bad_node_configuration_stops_the_node_at_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    write(&password, "a vault password for the node tests");
    let node = |name: &str| {
        let mut c = node_run(&dir.path().join(name), &password);
        c.args(["--grpc-listen", "127.0.0.1:0"]);
        c
    };

    // An unreadable password file.
    let missing = dir.path().join("no-such-password");
    fails_saying(
        &mut node_run(&dir.path().join("a"), &missing),
        &["no-such-password"],
    );

    // A key of the file that names no setting; a value of the wrong type.
    let config = dir.path().join("typo.toml");
    write(&config, "grpc-lisen = \"127.0.0.1:7001\"\n");
    fails_saying(
        node("b").arg("--config").arg(&config),
        &["typo.toml", "\"grpc-lisen\" is not a setting"],
    );
    write(&config, "p2p-listen = 7101\n");
    fails_saying(node("b").arg("--config").arg(&config), &["7101"]);
    fails_saying(
        node("b").env("TKMS_CONFIG", dir.path().join("absent.toml")),
        &["absent.toml"],
    );

    // Advertised addresses nobody reaches, and binds to every interface with none.
    let port = closed_port();
    fails_saying(
        node("c").args(["--p2p-advertise", &format!("/ip4/127.0.0.1/tcp/{port}")]),
        &["--p2p-advertise", "is not reachable from this host"],
    );
    fails_saying(
        node("c").args(["--grpc-advertise", &format!("http://127.0.0.1:{port}")]),
        &["--grpc-advertise", "is not reachable from this host"],
    );
    fails_saying(
        node("c").args(["--p2p-listen", "/ip4/0.0.0.0/tcp/0"]),
        &["binds every interface", "--p2p-advertise"],
    );
    // Advertised addresses nobody can dial, or in the wrong form.
    fails_saying(
        node("c").args(["--p2p-advertise", "/ip4/0.0.0.0/tcp/7101"]),
        &["--p2p-advertise", "every interface"],
    );
    fails_saying(
        node("c").args(["--grpc-advertise", "127.0.0.1:7001"]),
        &["--grpc-advertise", "not an http:// or https:// URL"],
    );
    fails_saying(
        node("c").args([
            "--p2p-advertise",
            "/ip4/127.0.0.1/tcp/7101/p2p/12D3KooWCyKbAd3tRcA2VefUKozjKjMnZwdT8We13rSaZ6npy675",
        ]),
        &["without /p2p/"],
    );
    // The same from the environment, where the command line leaves the option out.
    fails_saying(
        node_run(&dir.path().join("d"), &password).env("TKMS_GRPC_LISTEN", "0.0.0.0:0"),
        &[
            "--grpc-listen 0.0.0.0:",
            "binds every interface",
            "--grpc-advertise",
        ],
    );
}

#[test]
fn a_node_given_twice_or_no_node_at_all_stops_the_manager_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    write(
        &key,
        "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318",
    );
    let registry = dir.path().join("registry.json");
    write(&registry, "{\"gateways\": {}, \"runners\": {}}");
    let config = dir.path().join("manager.toml");
    write(
        &config,
        &format!(
            "listen = \"127.0.0.1:0\"\nnode-key-file = {k:?}\nwallet-key-file = {k:?}\nregistry-file = {r:?}\n",
            k = key.display().to_string(),
            r = registry.display().to_string()
        ),
    );
    fails_saying(
        tkms()
            .args(["manager", "run", "--config"])
            .arg(&config)
            .env("TKMS_NODE", "http://127.0.0.1:7001,http://127.0.0.1:7001"),
        &["http://127.0.0.1:7001 is given twice"],
    );
    fails_saying(
        tkms().args(["manager", "run", "--config"]).arg(&config),
        &["no nodes"],
    );
    // A registry file in the file and a chain in the environment: refused, not one of them
    // picked in silence.
    fails_saying(
        tkms()
            .args(["manager", "run", "--config"])
            .arg(&config)
            .args(["--node", "http://127.0.0.1:7001"])
            .env("TKMS_RPC_URL", "http://127.0.0.1:8545")
            .env(
                "TKMS_REGISTRY_ADDRESS",
                "0x5FbDB2315678afecb367f032d93F642f64180aa3",
            ),
        &["both name a registry"],
    );
    // Both in the file: refused, not one of them picked in silence.
    let both = dir.path().join("both.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("rpc-url = \"http://127.0.0.1:8545\"\nregistry-address = \"0x5FbDB2315678afecb367f032d93F642f64180aa3\"\n");
    write(&both, &text);
    fails_saying(
        tkms()
            .args(["manager", "run", "--config"])
            .arg(&both)
            .args(["--node", "http://127.0.0.1:7001"]),
        &["both name a registry"],
    );
    // An empty list variable does not hide the file's list (here a list with a duplicate).
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("node = [\"http://127.0.0.1:7002\", \"http://127.0.0.1:7002\"]\n");
    write(&config, &text);
    fails_saying(
        tkms()
            .args(["manager", "run", "--config"])
            .arg(&config)
            .env("TKMS_NODE", ""),
        &["http://127.0.0.1:7002 is given twice"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_the_registry_lists_with_another_node_key_stops_the_node_at_start() {
    if let Err(e) = tkms_registry::anvil::anvil_path() {
        panic!("{e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    write(&password, "a vault password for the registry test");
    let data_dir = dir.path().join("node");
    let out = finish(
        tkms()
            .args(["node", "init", "--kdf", "insecure"])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--password-file")
            .arg(&password),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let me: Value = serde_json::from_slice(&out.stdout).unwrap();
    let peer = hex::decode(me["peer_id_hex"].as_str().unwrap()).unwrap();

    // The registry lists this node's peer id with another node key.
    let anvil = tkms_registry::anvil::spawn_or_fail();
    let deployment = tkms_registry::deploy_local(&anvil, &tkms_registry::LocalSetup::default())
        .await
        .unwrap();
    let record = tkms_registry::NodeRecord {
        index: 1,
        peer_id: peer.into(),
        endpoints: vec!["http://127.0.0.1:7001".into()],
        public_key: hex::decode(MANAGER_KEY).unwrap().into(),
        attestation_digest: tkms_registry::B256::ZERO,
    };
    deployment.owner.register_node(&record).await.unwrap();

    fails_saying(
        node_run(&data_dir, &password)
            .args(["--grpc-listen", "127.0.0.1:0"])
            .args(["--rpc-url", &deployment.rpc_url])
            .args(["--registry-address", &deployment.address.to_string()]),
        &["the registry's node 1 has node key", "another node's vault"],
    );
}
