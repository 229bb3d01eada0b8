//! The `tkms` binary as a shell user meets it: `--help` names every command, and a wrong
//! command line fails with an error on stderr and nothing on stdout.
//!
//! Being an integration test of this package, it also makes `cargo test` build the `tkms`
//! binary (`target/<profile>/tkms`), which the end-to-end tests in `tests/` (`tkms-e2e`) run.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::process::Command;

fn tkms(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tkms"))
        .args(args)
        .output()
        .expect("running tkms")
}

#[test]
fn help_names_every_command() {
    let out = tkms(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in [
        "encrypt",
        "delegate",
        "reencrypt",
        "decrypt",
        "bench",
        "engine",
        "ecies",
        "registry",
        "testnet",
        "node",
        "manager",
        "baseline",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "{command} missing from:\n{help}"
        );
    }
}

#[test]
fn a_wrong_command_line_fails_with_an_error_on_stderr() {
    for args in [
        &["no-such-command"][..],
        &["testnet", "up", "--nodes", "zero"],
    ] {
        let out = tkms(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("error:"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A running `tkms baseline serve`, stopped when dropped.
struct Baseline {
    child: std::process::Child,
    url: String,
    public_key: String,
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `tkms baseline serve` without `/v0/public-key` (as the single-key Nox KMS, whose key
/// is published on chain), with `gateway` authorized on chain 31337.
fn baseline_without_public_key(
    dir: &std::path::Path,
    gateway: &k256::ecdsa::SigningKey,
) -> Baseline {
    use std::io::BufRead;
    let registry = dir.join("registry.json");
    let address = tkms_sdk::nox::wallet_address(gateway);
    std::fs::write(
        &registry,
        format!("{{\"gateways\": {{\"31337\": \"{address}\"}}}}"),
    )
    .unwrap();
    let wallet = dir.join("wallet.key");
    let wallet_key = k256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    std::fs::write(&wallet, hex::encode(wallet_key.to_bytes())).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tkms"))
        .args(["baseline", "serve", "--no-public-key", "--registry-file"])
        .arg(&registry)
        .arg("--wallet-key-file")
        .arg(&wallet)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut field = |prefix: &str| {
        let line = lines.next().unwrap().unwrap();
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{line:?} does not start with {prefix:?}"))
            .to_string()
    };
    let url = field("baseline listening on ");
    let public_key = field("baseline public key ");
    Baseline {
        child,
        url,
        public_key,
    }
}

/// `tkms encrypt`, `tkms delegate --api v0` and `tkms bench delegate --api v0` work against a
/// Nox-compatible KMS that serves no `/v0/public-key`, given its key with `--public-key`; and
/// without it, they say so instead of failing on a 404.
#[test]
fn client_commands_work_against_a_kms_without_a_public_key_route() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let gateway = k256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let key_file = dir.path().join("gateway.key");
    std::fs::write(&key_file, hex::encode(gateway.to_bytes())).unwrap();
    let kms = baseline_without_public_key(dir.path(), &gateway);
    let no_testnet = dir.path().join("no-testnet.json");
    let run = |args: &[&str], stdin: &[u8]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tkms"))
            .args(args)
            .arg("--manager-url")
            .arg(&kms.url)
            .args(["--chain-id", "31337", "--key-file"])
            .arg(&key_file)
            .arg("--testnet")
            .arg(&no_testnet)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    };

    // Without the key: a clear error naming --public-key, not a bare 404.
    for args in [&["encrypt"][..], &["bench", "delegate", "--api", "v0"]] {
        let out = run(args, b"x");
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--public-key"), "{args:?}: {stderr}");
    }

    let out = run(&["encrypt", "--public-key", &kms.public_key], b"hello, nox");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ciphertext = out.stdout;
    let out = run(&["delegate", "--api", "v0"], &ciphertext);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hello, nox");

    let out = run(
        &[
            "bench",
            "delegate",
            "--api",
            "v0",
            "--public-key",
            &kms.public_key,
            "--concurrency",
            "2",
            "--duration",
            "1",
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["requests_ok"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
}
