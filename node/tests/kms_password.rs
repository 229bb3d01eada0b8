//! The `aws-kms` vault password provider against a real local KMS-compatible server
//! (`moto_server`, installed by `./test.sh`, started by the test on a free port): a vault
//! opened and reopened with a KMS-encrypted password, a foreign password refused, clear and
//! bounded errors, and the `tkms-node` binary started with `--password aws-kms`.
//! The tests fail, never skip, without moto.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Once,
    time::{Duration, Instant},
};

use aws_sdk_kms::{
    config::{BehaviorVersion, Credentials, Region},
    primitives::Blob,
};
use base64::Engine as _;
use tkms_crypto::{Secp256k1, Suite};
use tkms_node::vault::{
    AwsKmsPassword, AwsKmsPasswordConfig, KdfParams, PasswordProvider, Vault, VaultError,
};

const PASSWORD: &[u8] = b"correct horse battery staple";
const REGION: &str = "us-east-1";
/// The secp256k1 generator, as a manager key the node accepts.
const MANAGER_KEY: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";

/// The SDK's default credential chain finds moto's dummy credentials in the environment.
/// Every test calls this first, before it spawns or reads anything, so no test reads the
/// environment while it is being written.
fn aws_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (name, value) in aws_vars() {
            std::env::set_var(name, value);
        }
    });
}

fn aws_vars() -> [(&'static str, &'static str); 5] {
    [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/tkms-test-aws-config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/tkms-test-aws-credentials",
        ),
    ]
}

/// The engine's moto starter (a free port, restarted on a new one if another process took it
/// during start-up, ready only once moto's S3 answers there), shared as a file rather than
/// from `tkms-testkit`: each caller adds its own inherent methods to `Moto` (KMS keys here,
/// S3 buckets in the engine), which a type from another crate would not allow.
#[path = "../../engine/tests/common/moto.rs"]
mod moto;
use moto::Moto;

impl Moto {
    fn client(&self) -> aws_sdk_kms::Client {
        let conf = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(self.endpoint())
            .build();
        aws_sdk_kms::Client::from_conf(conf)
    }

    async fn create_key(&self) -> String {
        let out = self.client().create_key().send().await.unwrap();
        out.key_metadata.unwrap().key_id
    }

    /// `kms:Encrypt` of `plaintext`: the raw `CiphertextBlob`.
    async fn encrypt(&self, key_id: &str, plaintext: &[u8]) -> Vec<u8> {
        let out = self
            .client()
            .encrypt()
            .key_id(key_id)
            .plaintext(Blob::new(plaintext))
            .send()
            .await
            .unwrap();
        out.ciphertext_blob.unwrap().into_inner()
    }

    fn config(&self, ciphertext_file: &Path) -> AwsKmsPasswordConfig {
        AwsKmsPasswordConfig {
            region: Some(REGION.to_owned()),
            endpoint: Some(self.endpoint()),
            ..AwsKmsPasswordConfig::new(ciphertext_file)
        }
    }
}

/// The ciphertext as `aws kms encrypt --output text` prints it: base64 and a newline.
fn write_base64(path: &Path, ciphertext: &[u8]) {
    let text = base64::engine::general_purpose::STANDARD.encode(ciphertext);
    std::fs::write(path, format!("{text}\n")).unwrap();
}

fn node_key(vault: &Vault) -> [u8; 33] {
    Secp256k1::encode_point(&vault.identity().unwrap().node_key.public_point())
}

async fn decrypt_error(config: &AwsKmsPasswordConfig) -> String {
    match AwsKmsPassword::decrypt(config).await {
        Ok(_) => panic!("decrypting {config:?} should fail"),
        Err(e @ VaultError::Password(_)) => e.to_string(),
        Err(other) => panic!("not a password provider error: {other:?}"),
    }
}

#[tokio::test]
async fn a_kms_encrypted_password_opens_the_vault_across_restarts_and_a_foreign_one_is_refused() {
    aws_env();
    let moto = Moto::start();
    let key_id = moto.create_key().await;
    let dir = tempfile::tempdir().unwrap();
    let vault_path = dir.path().join("vault.redb");
    let base64_file = dir.path().join("password.kms.b64");
    // A password file encrypted as is: its trailing newline is not part of the password.
    let ciphertext = moto
        .encrypt(&key_id, b"correct horse battery staple\n")
        .await;
    write_base64(&base64_file, &ciphertext);

    let provider = AwsKmsPassword::decrypt(&moto.config(&base64_file))
        .await
        .unwrap();
    assert_eq!(provider.password().unwrap().as_slice(), PASSWORD);
    assert!(
        provider.describe().contains(&key_id),
        "{}",
        provider.describe()
    );
    for shown in [provider.describe(), format!("{provider:?}")] {
        assert!(!shown.contains("horse"), "the password leaks: {shown}");
    }
    let created = {
        let vault = Vault::open(&vault_path, &provider, KdfParams::insecure_for_tests()).unwrap();
        node_key(&vault)
    };

    // Restart: the same ciphertext decrypted again, raw this time and with the key named.
    let raw_file = dir.path().join("password.kms");
    std::fs::write(&raw_file, &ciphertext).unwrap();
    let config = AwsKmsPasswordConfig {
        key_id: Some(key_id.clone()),
        ..moto.config(&raw_file)
    };
    let provider = AwsKmsPassword::decrypt(&config).await.unwrap();
    let vault = Vault::open(&vault_path, &provider, KdfParams::insecure_for_tests()).unwrap();
    assert_eq!(
        node_key(&vault),
        created,
        "the restarted vault has another identity"
    );
    drop(vault);

    // A ciphertext that decrypts fine, to another password: the vault refuses it.
    let foreign_file = dir.path().join("foreign.kms.b64");
    write_base64(
        &foreign_file,
        &moto.encrypt(&key_id, b"another password").await,
    );
    let foreign = AwsKmsPassword::decrypt(&moto.config(&foreign_file))
        .await
        .unwrap();
    assert!(matches!(
        Vault::open(&vault_path, &foreign, KdfParams::insecure_for_tests()),
        Err(VaultError::WrongPassword)
    ));
}

#[tokio::test]
async fn kms_password_errors_are_clear_and_bounded() {
    aws_env();
    let moto = Moto::start();
    let key_id = moto.create_key().await;
    let other_key = moto.create_key().await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name);
    let good = file("good");
    write_base64(&good, &moto.encrypt(&key_id, PASSWORD).await);

    let missing = decrypt_error(&moto.config(&file("missing"))).await;
    assert!(
        missing.contains("cannot read the KMS ciphertext file") && missing.contains("missing"),
        "{missing}"
    );
    std::fs::write(file("empty"), "\n").unwrap();
    let empty = decrypt_error(&moto.config(&file("empty"))).await;
    assert!(empty.contains("is empty"), "{empty}");

    // Not a ciphertext of this KMS.
    write_base64(&file("garbage"), &[7u8; 64]);
    let garbage = decrypt_error(&moto.config(&file("garbage"))).await;
    assert!(garbage.contains("KMS Decrypt failed"), "{garbage}");

    // A ciphertext under another key than the one named.
    let config = AwsKmsPasswordConfig {
        key_id: Some(other_key),
        ..moto.config(&good)
    };
    let wrong_key = decrypt_error(&config).await;
    assert!(wrong_key.contains("KMS Decrypt failed"), "{wrong_key}");

    // A password of only a newline is empty.
    write_base64(&file("newline"), &moto.encrypt(&key_id, b"\n").await);
    let newline = decrypt_error(&moto.config(&file("newline"))).await;
    assert!(newline.contains("empty password"), "{newline}");

    // Nothing listens: refused connections, retried, then a clear error.
    let started = Instant::now();
    let config = AwsKmsPasswordConfig {
        endpoint: Some(format!("http://127.0.0.1:{}", moto::free_port())),
        timeout: Duration::from_secs(5),
        ..moto.config(&good)
    };
    let refused = decrypt_error(&config).await;
    assert!(refused.contains("KMS Decrypt failed"), "{refused}");
    assert!(started.elapsed() < Duration::from_secs(8), "{refused}");

    // A server that accepts connections and never answers: the timeout bounds the wait.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    let config = AwsKmsPasswordConfig {
        endpoint: Some(format!("http://{}", silent.local_addr().unwrap())),
        timeout: Duration::from_secs(1),
        ..moto.config(&good)
    };
    let hung = decrypt_error(&config).await;
    assert!(hung.contains("KMS Decrypt failed"), "{hung}");
    assert!(started.elapsed() < Duration::from_secs(4), "{hung}");

    // And the good one still decrypts.
    let provider = AwsKmsPassword::decrypt(&moto.config(&good)).await.unwrap();
    assert_eq!(provider.password().unwrap().as_slice(), PASSWORD);
}

/// A `tkms-node` process, killed on drop if still running.
struct NodeProcess {
    child: Child,
    log: PathBuf,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    fn start(data_dir: &Path, moto: &Moto, ciphertext_file: &Path, run: &str) -> Self {
        let log = data_dir.with_extension(format!("{run}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_tkms-node"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--grpc-listen", "127.0.0.1:0"])
            .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0"])
            .args(["--manager-key", MANAGER_KEY, "--kdf", "insecure"])
            .args(["--password", "aws-kms", "--password-kms-ciphertext-file"])
            .arg(ciphertext_file)
            .args(["--password-kms-region", REGION])
            .args(["--password-kms-endpoint", &moto.endpoint()])
            .envs(aws_vars())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The status file's node key, once the node serves.
    fn wait_serving(&mut self, data_dir: &Path) -> String {
        let status = data_dir.join("node.json");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(json) = std::fs::read(&status) {
                let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
                return json["node_key"].as_str().unwrap().to_owned();
            }
            if let Some(exit) = self.child.try_wait().unwrap() {
                panic!("tkms-node exited ({exit}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "tkms-node did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Exit status and log of a node that must stop by itself.
    fn wait_exit(&mut self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                return (exit.success(), self.log());
            }
            assert!(
                Instant::now() < deadline,
                "tkms-node did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let (ok, log) = self.wait_exit();
        assert!(ok, "tkms-node did not stop cleanly:\n{log}");
    }
}

#[tokio::test]
async fn tkms_node_runs_with_an_aws_kms_password_and_refuses_a_foreign_one() {
    aws_env();
    let moto = Moto::start();
    let key_id = moto.create_key().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node");
    let ciphertext = dir.path().join("password.kms.b64");
    write_base64(&ciphertext, &moto.encrypt(&key_id, PASSWORD).await);

    let mut node = NodeProcess::start(&data_dir, &moto, &ciphertext, "first");
    let first_key = node.wait_serving(&data_dir);
    node.terminate();
    assert!(
        !node.log().contains("horse"),
        "the password leaks:\n{}",
        node.log()
    );

    std::fs::remove_file(data_dir.join("node.json")).unwrap();
    let mut node = NodeProcess::start(&data_dir, &moto, &ciphertext, "restart");
    assert_eq!(node.wait_serving(&data_dir), first_key);
    node.terminate();

    let foreign = dir.path().join("foreign.kms.b64");
    write_base64(&foreign, &moto.encrypt(&key_id, b"another password").await);
    let mut node = NodeProcess::start(&data_dir, &moto, &foreign, "foreign");
    let (ok, log) = node.wait_exit();
    assert!(!ok && log.contains("wrong vault password"), "{log}");
}
