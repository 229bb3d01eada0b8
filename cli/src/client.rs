//! `tkms encrypt | delegate | reencrypt | decrypt | bench`: a person at a shell (or a load
//! test) talking to a running cluster through [`tkms_sdk::Client`], which verifies every
//! proof before anything is used.
//!
//! Where to connect and as whom comes from `testnet.json` (`--testnet`, the default file
//! `tkms testnet up` writes) or from explicit flags, which win.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use k256::ecdsa::SigningKey;
use rand_core::OsRng;
use serde_json::{json, Value};
use tkms_crypto::{
    ecies::{self, Ciphertext},
    pre::{ReencryptedCapsule, CAPSULE_LEN},
    suite::Encoded,
    ClusterSuite as S, SecretScalar,
};
use tkms_sdk::{
    v1::{self, RsaRecipient},
    Client, ClusterKey,
};
use zeroize::Zeroizing;

use crate::decode_hex;

/// Where the cluster is and who is asking.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// A `testnet.json` written by `tkms testnet up` (manager URL, chain id, keys).
    #[arg(long, default_value = "testnet.json", global = true)]
    testnet: PathBuf,
    /// The manager's URL (overrides the testnet file).
    #[arg(long, global = true)]
    manager_url: Option<String>,
    /// The chain whose registry authorizes the requester (overrides the testnet file).
    #[arg(long, global = true)]
    chain_id: Option<u64>,
    /// File with the requester's secp256k1 key as hex (default: the testnet's gateway key;
    /// its runner key for `reencrypt` and `decrypt` with `--as-runner`).
    #[arg(long, global = true)]
    key_file: Option<PathBuf>,
    /// Sign as the testnet's development runner instead of its gateway.
    #[arg(long, global = true)]
    as_runner: bool,
    /// The KMS public key (compressed hex, `0x02..`/`0x03..`), for `encrypt` and `bench
    /// delegate --api v0` against a Nox-compatible KMS that serves no `/v0/public-key` (the
    /// single-key Nox KMS publishes its key on chain). Without it they ask `/v0/public-key`;
    /// `delegate --api v0` needs no key.
    #[arg(long, global = true)]
    public_key: Option<String>,
}

/// Which delegation API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Api {
    /// `/v0/delegate`, Nox-compatible: the manager combines `S` and RSA-encrypts it.
    V0,
    /// `/v1/delegate`: each node encrypts its partial to you; the manager never sees `S`.
    V1,
}

/// The cluster commands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Read plaintext on stdin; print an ECIES container to the cluster key as 0x-hex.
    Encrypt,
    /// Read a container on stdin; obtain its shared secret by delegation (a fresh RSA key
    /// receives it) and write the plaintext to stdout.
    Delegate {
        /// Which delegation API.
        #[arg(long, value_enum, default_value_t = Api::V1)]
        api: Api,
    },
    /// Read a container on stdin; print it re-encrypted to `--target-public-key` as 0x-hex
    /// `K || R || C || nonce || ct||tag` (open it with `tkms decrypt --secret-key-file`).
    Reencrypt {
        /// The target's secp256k1 public key, compressed hex.
        #[arg(long)]
        target_public_key: String,
    },
    /// Read a container on stdin and write its plaintext: re-encrypted to a fresh key held
    /// only by this process. With `--secret-key-file`, open a `tkms reencrypt` output
    /// locally instead (no network).
    Decrypt {
        /// The target secret key (hex) of a re-encrypted container.
        #[arg(long)]
        secret_key_file: Option<PathBuf>,
    },
    /// Load-test the cluster: throughput and latency percentiles.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 16, global = true)]
        concurrency: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10.0, global = true)]
        duration: f64,
    },
}

/// What to load-test.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum BenchWhat {
    /// Delegations.
    Delegate {
        /// Which delegation API.
        #[arg(long, value_enum, default_value_t = Api::V0)]
        api: Api,
    },
    /// Re-encryptions (`--batch` capsules per request).
    Reencrypt {
        /// Capsules per request.
        #[arg(long, default_value_t = 1)]
        batch: usize,
    },
}

/// Resolved connection settings.
struct Resolved {
    client: Client,
    chain_id: u64,
    requester: SigningKey,
    public_key: Option<Encoded<S>>,
}

impl Resolved {
    /// The KMS public key: `--public-key`, else `/v0/public-key`.
    async fn public_key(&self) -> Result<Encoded<S>> {
        match &self.public_key {
            Some(key) => Ok(*key),
            None => Ok(*self.key_set().await?.public_key()),
        }
    }

    /// The cluster's key set (`/v0/public-key`: threshold, public shares), which the `/v1`
    /// answers are verified against.
    async fn key_set(&self) -> Result<ClusterKey> {
        self.client.public_key().await.map_err(|e| match e {
            tkms_sdk::ClientError::Refused { status: 404, .. } => anyhow::anyhow!(
                "this KMS serves no /v0/public-key ({e}); give its key with --public-key 0x02.. \
                 (/v0 delegation needs no key; /v1 and re-encryption need a tkms cluster)"
            ),
            other => anyhow::Error::new(other).context("fetching /v0/public-key"),
        })
    }
}

/// The key a command needs.
enum Key {
    /// The public key alone (`/v0` delegation, ECIES encryption).
    Public(Encoded<S>),
    /// The cluster's key set (`/v1`: every node's proof is checked).
    Set(ClusterKey),
}

impl Key {
    fn public_key(&self) -> &Encoded<S> {
        match self {
            Self::Public(key) => key,
            Self::Set(key) => key.public_key(),
        }
    }
}

fn testnet_file(path: &Path) -> Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is not a testnet.json", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn signing_key(hex_text: &str) -> Result<SigningKey> {
    let bytes = Zeroizing::new(decode_hex(hex_text)?);
    SigningKey::from_slice(&bytes).context("not a secp256k1 private key")
}

impl Connection {
    fn resolve(&self) -> Result<Resolved> {
        let testnet = testnet_file(&self.testnet)?;
        let field = |name: &str| testnet.as_ref().and_then(|t| t.get(name)).cloned();
        let url = match (&self.manager_url, field("manager_url")) {
            (Some(u), _) => u.clone(),
            (None, Some(Value::String(u))) => u,
            _ => bail!(
                "no manager: give --manager-url or run `tkms testnet up` (which writes {})",
                self.testnet.display()
            ),
        };
        let Some(chain_id) = self
            .chain_id
            .or_else(|| field("chain_id").and_then(|v| v.as_u64()))
        else {
            bail!("no chain id: give --chain-id");
        };
        let requester = if let Some(path) = &self.key_file {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
            );
            signing_key(&text)?
        } else {
            let name = if self.as_runner {
                "runner_private_key"
            } else {
                "gateway_private_key"
            };
            let Some(Value::String(text)) = field(name) else {
                bail!("no requester key: give --key-file (the testnet file has no {name})");
            };
            signing_key(&Zeroizing::new(text))?
        };
        let mut client = Client::new(&url)?;
        if let Some(Value::String(manager)) = field("manager_address") {
            client = client.with_manager(manager.parse().context("manager_address")?);
        }
        let public_key = self
            .public_key
            .as_deref()
            .map(|hex_text| {
                Encoded::<S>::from_bytes(&decode_hex(hex_text)?)
                    .context("--public-key is not a compressed secp256k1 point")
            })
            .transpose()?;
        Ok(Resolved {
            client,
            chain_id,
            requester,
            public_key,
        })
    }
}

fn read_ciphertext(input: &mut impl Read) -> Result<Ciphertext<S>> {
    let mut text = String::new();
    input
        .read_to_string(&mut text)
        .context("reading the hex ciphertext from stdin")?;
    let bytes = decode_hex(&text).context("ciphertext is not hex")?;
    Ciphertext::<S>::from_bytes(&bytes).context("not an ECIES container K || nonce || ct||tag")
}

/// Run a cluster command.
pub fn run(
    connection: &Connection,
    command: ClusterCommand,
    input: &mut impl Read,
    output: &mut impl Write,
) -> Result<()> {
    // Opening a re-encrypted container needs no cluster.
    if let ClusterCommand::Decrypt {
        secret_key_file: Some(path),
    } = &command
    {
        return open_local(path, input, output);
    }
    let resolved = connection.resolve()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match command {
            ClusterCommand::Encrypt => {
                let key = resolved.public_key().await?;
                let mut plaintext = Zeroizing::new(Vec::new());
                input.read_to_end(&mut plaintext)?;
                let ct = ecies::encrypt::<S>(key.point(), &plaintext, &mut OsRng)?;
                writeln!(output, "0x{}", hex::encode(ct.to_bytes()))?;
            }
            ClusterCommand::Delegate { api } => {
                let ct = read_ciphertext(input)?;
                let secret = delegate(&resolved, api, &ct).await?;
                let plaintext = ecies::open_with_shared_secret(&secret, &ct)?;
                output.write_all(&plaintext)?;
            }
            ClusterCommand::Reencrypt { target_public_key } => {
                let ct = read_ciphertext(input)?;
                let target = Encoded::<S>::from_bytes(&decode_hex(&target_public_key)?)
                    .context("invalid target public key")?;
                let key = resolved.key_set().await?;
                let capsules = resolved
                    .client
                    .reencrypt(
                        &resolved.requester,
                        resolved.chain_id,
                        &key,
                        target,
                        vec![Encoded::new(*ct.ephemeral())],
                    )
                    .await?;
                let capsule = capsules.first().context("no capsule in the answer")?;
                let mut out = capsule.to_bytes().to_vec();
                out.extend_from_slice(ct.nonce());
                out.extend_from_slice(ct.sealed());
                writeln!(output, "0x{}", hex::encode(out))?;
            }
            ClusterCommand::Decrypt { .. } => {
                let ct = read_ciphertext(input)?;
                let key = resolved.key_set().await?;
                let plaintext = resolved
                    .client
                    .decrypt(&resolved.requester, resolved.chain_id, &key, &ct)
                    .await?;
                output.write_all(&plaintext)?;
            }
            ClusterCommand::Bench {
                what,
                concurrency,
                duration,
            } => {
                let key = match what {
                    BenchWhat::Delegate { api: Api::V0 } => {
                        Key::Public(resolved.public_key().await?)
                    }
                    _ => Key::Set(resolved.key_set().await?),
                };
                let report = bench(resolved, key, what, concurrency, duration).await?;
                writeln!(output, "{}", serde_json::to_string_pretty(&report)?)?;
            }
        }
        output.flush()?;
        Ok(())
    })
}

/// The shared secret of `ct`, delegated through `/v0` (no key needed) or `/v1` (every node's
/// proof checked against the key set).
async fn delegate(
    resolved: &Resolved,
    api: Api,
    ct: &Ciphertext<S>,
) -> Result<tkms_crypto::SharedSecret> {
    let recipient = RsaRecipient::generate()?;
    let ephemeral = Encoded::new(*ct.ephemeral());
    Ok(match api {
        Api::V0 => {
            resolved
                .client
                .delegate_v0(
                    &resolved.requester,
                    resolved.chain_id,
                    alloy_primitives_zero(),
                    &ephemeral,
                    &recipient,
                )
                .await?
                .0
        }
        Api::V1 => {
            let key = resolved.key_set().await?;
            let opened = resolved
                .client
                .delegate(
                    &resolved.requester,
                    resolved.chain_id,
                    &key,
                    &ephemeral,
                    &recipient,
                )
                .await?;
            for (node, why) in &opened.rejected {
                eprintln!("tkms: refused the partial of node {node}: {why}");
            }
            opened.value
        }
    })
}

fn alloy_primitives_zero() -> alloy_primitives::B256 {
    alloy_primitives::B256::ZERO
}

/// Open `K || R || C || nonce || ct||tag` with the target's secret key.
fn open_local(path: &Path, input: &mut impl Read, output: &mut impl Write) -> Result<()> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    let bytes = Zeroizing::new(decode_hex(&text).context("secret key file is not hex")?);
    let secret = SecretScalar::<S>::from_bytes(&bytes).context("invalid secret key")?;
    let mut text = String::new();
    input.read_to_string(&mut text)?;
    let bytes = decode_hex(&text).context("input is not hex")?;
    if bytes.len() < CAPSULE_LEN + ecies::NONCE_LEN + 16 {
        bail!("too short for K || R || C || nonce || ct||tag");
    }
    let capsule = ReencryptedCapsule::<S>::from_bytes(&bytes[..CAPSULE_LEN])?;
    let mut nonce = [0u8; ecies::NONCE_LEN];
    nonce.copy_from_slice(&bytes[CAPSULE_LEN..CAPSULE_LEN + ecies::NONCE_LEN]);
    let ct = Ciphertext::<S>::from_parts(
        *capsule.ephemeral(),
        nonce,
        bytes[CAPSULE_LEN + ecies::NONCE_LEN..].to_vec(),
    );
    let plaintext = capsule.decrypt(&secret, &ct)?;
    output.write_all(&plaintext)?;
    output.flush()?;
    Ok(())
}

/// Run `concurrency` request loops for `duration` seconds; every answer is fully verified
/// (proofs, combination) as a real client would, and a delegated secret is compared with the
/// one the client knows (`K = k·G`, so `S = k·PK`).
async fn bench(
    resolved: Resolved,
    key: Key,
    what: BenchWhat,
    concurrency: usize,
    duration: f64,
) -> Result<Value> {
    if concurrency == 0 || !(duration > 0.0 && duration <= 3600.0) {
        bail!("--concurrency must be >= 1 and --duration in (0, 3600] seconds");
    }
    if let BenchWhat::Reencrypt { batch } = what {
        if batch == 0 || batch > v1::MAX_BATCH {
            bail!("--batch must be 1..={}", v1::MAX_BATCH);
        }
    }
    let shared = Arc::new((resolved, key, RsaRecipient::generate()?));
    let deadline = Instant::now() + Duration::from_secs_f64(duration);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let shared = Arc::clone(&shared);
        tasks.spawn(async move {
            let (resolved, key, recipient) = &*shared;
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut first_error = None;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let outcome = one_request(resolved, key, recipient, what).await;
                match outcome {
                    Ok(()) => latencies.push(t0.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (latencies, errors, first_error)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let (l, e, f) = joined?;
        latencies.extend(l);
        errors += e;
        first_error = first_error.or(f);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i].as_secs_f64() * 1000.0
    };
    #[allow(clippy::cast_precision_loss)]
    let throughput = latencies.len() as f64 / elapsed;
    let items = match what {
        BenchWhat::Reencrypt { batch } => batch,
        BenchWhat::Delegate { .. } => 1,
    };
    #[allow(clippy::cast_precision_loss)]
    let item_rate = throughput * items as f64;
    Ok(json!({
        "what": match what {
            BenchWhat::Delegate { api: Api::V0 } => "/v0/delegate",
            BenchWhat::Delegate { api: Api::V1 } => "/v1/delegate",
            BenchWhat::Reencrypt { .. } => "/v1/reencrypt",
        },
        "concurrency": concurrency,
        "batch": items,
        "seconds": elapsed,
        "requests_ok": latencies.len(),
        "errors": errors,
        "first_error": first_error,
        "requests_per_second": throughput,
        "items_per_second": item_rate,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }))
}

async fn one_request(
    resolved: &Resolved,
    key: &Key,
    recipient: &RsaRecipient,
    what: BenchWhat,
) -> Result<()> {
    // An ephemeral key K = k·G, and the secret a delegation of it must return: x(k·PK).
    let ephemeral = || {
        let k = SecretScalar::<S>::random(&mut OsRng);
        let expected = ecies::diffie_hellman(&k, key.public_key());
        (k.public_encoded(), expected)
    };
    let check = |got: &tkms_crypto::SharedSecret, expected: &tkms_crypto::SharedSecret| {
        if got.as_bytes() == expected.as_bytes() {
            Ok(())
        } else {
            Err(anyhow::anyhow!("the delegated secret is not x(k·PK)"))
        }
    };
    match (what, key) {
        (BenchWhat::Delegate { api: Api::V0 }, _) => {
            let (k, expected) = ephemeral();
            let (secret, _) = resolved
                .client
                .delegate_v0(
                    &resolved.requester,
                    resolved.chain_id,
                    alloy_primitives_zero(),
                    &k,
                    recipient,
                )
                .await?;
            check(&secret, &expected)?;
        }
        (BenchWhat::Delegate { api: Api::V1 }, Key::Set(keys)) => {
            let (k, expected) = ephemeral();
            let opened = resolved
                .client
                .delegate(&resolved.requester, resolved.chain_id, keys, &k, recipient)
                .await?;
            check(&opened.value, &expected)?;
        }
        (BenchWhat::Reencrypt { batch }, Key::Set(keys)) => {
            let (_, target) = v1::target_key();
            resolved
                .client
                .reencrypt(
                    &resolved.requester,
                    resolved.chain_id,
                    keys,
                    target,
                    (0..batch)
                        .map(|_| SecretScalar::<S>::random(&mut OsRng).public_encoded())
                        .collect(),
                )
                .await?;
        }
        _ => bail!("/v1 requests need the cluster's key set from /v0/public-key"),
    }
    Ok(())
}
