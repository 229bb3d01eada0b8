//! `tkms engine ...`: the encrypted vector engine (docs/ARCHITECTURE.md §4.4).
//!
//! * `serve` runs the HTTP service ([`tkms_engine::service::run`]) over memory, disk or S3
//!   storage until Ctrl-C / SIGTERM.
//! * `create-index`, `load`, `query` are clients of a running service (`--url`), so they work
//!   while the service holds its store.
//! * `openapi` prints the service's OpenAPI 3 document (the one it serves at `/openapi.json`). The API key comes from `--api-key-file` or
//!   `TKMS_ENGINE_API_KEY`; the index KEK from `--index-key-file` (64 hex characters) or
//!   `TKMS_ENGINE_INDEX_KEY`, and may be omitted for an index the service unwraps through a
//!   KMS envelope (`serve --aws-kms-key-id ...` or `serve --tkms-manager-url ...`). Keys are
//!   never printed.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tkms_engine::kms::{AwsKmsConfig, AwsKmsProvider, KeyProvider, TkmsConfig, TkmsProvider};
use tkms_engine::service::{ServiceConfig, DEFAULT_MAX_BODY_BYTES};
use tkms_engine::{S3Config, StorageConfig};
use zeroize::Zeroizing;

/// `tkms engine` arguments.
#[derive(Debug, Args)]
pub struct EngineArgs {
    #[command(subcommand)]
    command: EngineCommand,
}

#[derive(Debug, Subcommand)]
enum EngineCommand {
    /// Run the HTTP service (CyborgDB-compatible REST API with X-API-Key auth).
    Serve(ServeArgs),
    /// Create an index on a running service.
    CreateIndex(CreateIndexArgs),
    /// Upsert the vectors of a .fvecs or .npy file into an index (ids: row numbers).
    Load(LoadArgs),
    /// Query an index with one vector and print the hits as JSON.
    Query(QueryArgs),
    /// Print the service's OpenAPI 3 document (JSON), as served at /openapi.json.
    Openapi,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Storage {
    Memory,
    Disk,
    S3,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Storage backend.
    #[arg(long, value_enum, default_value_t = Storage::Disk)]
    storage: Storage,
    /// Data directory of the disk backend.
    #[arg(long, required_if_eq("storage", "disk"))]
    data_dir: Option<PathBuf>,
    /// S3 bucket (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    #[arg(long, required_if_eq("storage", "s3"))]
    s3_bucket: Option<String>,
    /// Object-name prefix in the bucket.
    #[arg(long, default_value = "tkms-engine")]
    s3_prefix: String,
    /// S3-compatible endpoint URL (plain http allowed when given).
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long, default_value = "us-east-1")]
    s3_region: String,
    /// File with the accepted API keys, one per line (else TKMS_ENGINE_API_KEY).
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Unwrap index KEKs from `aws-kms` envelopes with this KMS key (id, ARN or alias).
    #[arg(long)]
    aws_kms_key_id: Option<String>,
    /// Region of the KMS key.
    #[arg(long, default_value = "us-east-1")]
    aws_kms_region: String,
    /// KMS endpoint URL (a KMS-compatible server); credentials from the AWS default chain.
    #[arg(long)]
    aws_kms_endpoint: Option<String>,
    /// Wrap and unwrap index KEKs through the tkms cluster whose manager is at this URL
    /// (`tkms` envelopes: the KEK ECIES-encrypted to the cluster key, opened via /v1/reencrypt).
    #[arg(long, requires_all = ["tkms_chain_id", "tkms_requester_key_file"])]
    tkms_manager_url: Option<String>,
    /// Chain whose registry authorizes the requester key.
    #[arg(long, requires = "tkms_manager_url")]
    tkms_chain_id: Option<u64>,
    /// File with the requester's secp256k1 key (a runner or gateway), 64 hex characters.
    #[arg(long, requires = "tkms_manager_url")]
    tkms_requester_key_file: Option<PathBuf>,
    /// Accept only cluster answers signed by this manager wallet address.
    #[arg(long, requires = "tkms_manager_url")]
    tkms_manager_address: Option<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Connection bounds and deadlines of the listener.
    #[command(flatten)]
    http: tkms_daemon::http::HttpLimitArgs,
}

#[derive(Debug, Args)]
struct ClientArgs {
    /// Base URL of the service.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// File holding the API key (else TKMS_ENGINE_API_KEY).
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// File holding the index KEK as 64 hex characters (else TKMS_ENGINE_INDEX_KEY; omit both
    /// for an index with a KMS envelope the service can unwrap).
    #[arg(long)]
    index_key_file: Option<PathBuf>,
    /// Index name.
    #[arg(long)]
    index: String,
}

#[derive(Debug, Args)]
struct CreateIndexArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Vector dimension (default: taken from the first upsert).
    #[arg(long)]
    dimension: Option<usize>,
    /// euclidean, squared_euclidean, cosine or dot_product.
    #[arg(long, default_value = "euclidean")]
    metric: String,
    /// Number of IVF lists training builds (default: chosen from the item count at training).
    #[arg(long)]
    n_lists: Option<usize>,
    /// Default number of probed lists.
    #[arg(long)]
    n_probes: Option<usize>,
    /// Instead of an index key: create under a fresh KEK wrapped by this KMS provider of the
    /// service (aws-kms or tkms).
    #[arg(long, conflicts_with = "index_key_file")]
    kms_provider: Option<String>,
    /// Print a fresh random KEK (hex) to this file (mode 0600) and use it.
    #[arg(long, conflicts_with_all = ["index_key_file", "kms_provider"])]
    generate_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct LoadArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// .fvecs or .npy file.
    #[arg(long)]
    file: PathBuf,
    /// Vectors per upsert request.
    #[arg(long, default_value_t = 5000)]
    batch: usize,
    /// Prefix of the ids (id = prefix + row number).
    #[arg(long, default_value = "")]
    id_prefix: String,
    /// Train the index (k-means) after loading.
    #[arg(long)]
    train: bool,
}

#[derive(Debug, Args)]
struct QueryArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The query vector as comma-separated numbers.
    #[arg(long, allow_hyphen_values = true)]
    vector: String,
    /// Number of results.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Lists to probe.
    #[arg(long)]
    n_probes: Option<usize>,
    /// MongoDB-style metadata filter, as JSON.
    #[arg(long)]
    filter: Option<String>,
}

/// Runs `tkms engine ...`.
pub fn run(args: EngineArgs, output: &mut impl Write) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match args.command {
        EngineCommand::Serve(a) => rt.block_on(serve(a, output)),
        EngineCommand::CreateIndex(a) => rt.block_on(create_index(a, output)),
        EngineCommand::Load(a) => rt.block_on(load(a, output)),
        EngineCommand::Query(a) => rt.block_on(query(a, output)),
        EngineCommand::Openapi => {
            output.write_all(tkms_engine::service::openapi_json_text().as_bytes())?;
            Ok(())
        }
    }
}

fn read_secret_file(path: &Path, what: &str) -> Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the {what} file {}", path.display()))?,
    );
    Ok(Zeroizing::new(text.trim().to_owned()))
}

fn env_secret(var: &str) -> Option<Zeroizing<String>> {
    std::env::var(var)
        .ok()
        .map(|v| Zeroizing::new(v.trim().to_owned()))
        .filter(|v| !v.is_empty())
}

fn api_keys(file: Option<&Path>) -> Result<Vec<Zeroizing<String>>> {
    if let Some(path) = file {
        let text = read_secret_file(path, "API key")?;
        let keys: Vec<_> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| Zeroizing::new(l.to_owned()))
            .collect();
        if keys.is_empty() {
            bail!("the API key file {} holds no key", path.display());
        }
        return Ok(keys);
    }
    env_secret("TKMS_ENGINE_API_KEY")
        .map(|k| vec![k])
        .context("no API key: pass --api-key-file or set TKMS_ENGINE_API_KEY")
}

async fn serve(a: ServeArgs, output: &mut impl Write) -> Result<()> {
    let storage = match a.storage {
        Storage::Memory => StorageConfig::memory(),
        Storage::Disk => StorageConfig::disk(a.data_dir.context("--data-dir is required")?),
        Storage::S3 => StorageConfig::s3(S3Config {
            bucket: a.s3_bucket.context("--s3-bucket is required")?,
            prefix: a.s3_prefix,
            allow_http: a
                .s3_endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://")),
            endpoint: a.s3_endpoint,
            region: a.s3_region,
            access_key_id: std::env::var("AWS_ACCESS_KEY_ID")
                .context("AWS_ACCESS_KEY_ID is needed for S3 storage")?,
            secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY")
                .context("AWS_SECRET_ACCESS_KEY is needed for S3 storage")?,
        }),
    };
    let mut config = ServiceConfig::new(a.listen, storage, api_keys(a.api_key_file.as_deref())?);
    config.max_body_bytes = a.max_body_bytes;
    config.listener = a
        .http
        .limits(a.max_body_bytes)
        .map_err(anyhow::Error::msg)?;
    if let Some(key_id) = a.aws_kms_key_id {
        let kms_config = AwsKmsConfig {
            key_id,
            region: a.aws_kms_region,
            endpoint: a.aws_kms_endpoint,
            credentials: None,
        };
        let provider = tokio::task::spawn_blocking(move || AwsKmsProvider::new(kms_config))
            .await
            .context("starting the aws-kms provider")??;
        config
            .key_providers
            .push(Arc::new(provider) as Arc<dyn KeyProvider>);
    }
    if let Some(manager_url) = a.tkms_manager_url {
        let key_file = a
            .tkms_requester_key_file
            .context("--tkms-requester-key-file is required with --tkms-manager-url")?;
        let manager_address = a
            .tkms_manager_address
            .map(|m| m.parse())
            .transpose()
            .context("--tkms-manager-address is not an address")?;
        let provider = TkmsProvider::new(TkmsConfig {
            manager_url,
            chain_id: a
                .tkms_chain_id
                .context("--tkms-chain-id is required with --tkms-manager-url")?,
            requester: TkmsConfig::requester_from_file(&key_file)?,
            manager_address,
        })?;
        config
            .key_providers
            .push(Arc::new(provider) as Arc<dyn KeyProvider>);
    }
    let server = tkms_engine::service::bind(config).await?;
    writeln!(
        output,
        "tkms engine listening on http://{}",
        server.local_addr()?
    )?;
    output.flush()?;
    server.run(tkms_daemon::shutdown_signal()).await?;
    Ok(())
}

/// A client of the service.
struct Service {
    http: reqwest::Client,
    url: String,
    api_key: Zeroizing<String>,
    index: String,
    index_key: Option<Zeroizing<String>>,
}

impl Service {
    fn new(a: &ClientArgs) -> Result<Self> {
        let api_key = match &a.api_key_file {
            Some(p) => read_secret_file(p, "API key")?,
            None => env_secret("TKMS_ENGINE_API_KEY")
                .context("no API key: pass --api-key-file or set TKMS_ENGINE_API_KEY")?,
        };
        let index_key = match &a.index_key_file {
            Some(p) => Some(read_secret_file(p, "index key")?),
            None => env_secret("TKMS_ENGINE_INDEX_KEY"),
        };
        Ok(Self {
            http: reqwest::Client::new(),
            url: a.url.trim_end_matches('/').to_owned(),
            api_key,
            index: a.index.clone(),
            index_key,
        })
    }

    /// The request body's index fields.
    fn base(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("index_name".into(), json!(self.index));
        if let Some(k) = &self.index_key {
            m.insert("index_key".into(), json!(k.as_str()));
        }
        m
    }

    async fn post(&self, path: &str, body: &serde_json::Map<String, Value>) -> Result<Value> {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .header("X-API-Key", self.api_key.as_str())
            .json(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the engine service at {}", self.url))?;
        let status = resp.status();
        let value: Value = resp
            .json()
            .await
            .with_context(|| format!("{path}: the service answered {status} without JSON"))?;
        if !status.is_success() {
            bail!(
                "{path}: {status}: {} ({})",
                value["detail"].as_str().unwrap_or("unknown error"),
                value["code"].as_str().unwrap_or("-")
            );
        }
        Ok(value)
    }
}

async fn create_index(a: CreateIndexArgs, output: &mut impl Write) -> Result<()> {
    let mut svc = Service::new(&a.client)?;
    if let Some(path) = &a.generate_key {
        let key = tkms_engine::IndexKey::generate();
        let hex_key = Zeroizing::new(hex::encode(key.expose_secret()));
        write_private(path, hex_key.as_bytes())?;
        svc.index_key = Some(hex_key);
    }
    // The current (API 0.17) form; the IVF settings only exist in the nested form.
    let mut body = svc.base();
    if let Some(d) = a.dimension {
        body.insert("dimension".into(), json!(d));
    }
    body.insert("metric".into(), json!(a.metric));
    let mut config = serde_json::Map::new();
    if let Some(n) = a.n_lists {
        config.insert("n_lists".into(), json!(n));
    }
    if let Some(n) = a.n_probes {
        config.insert("n_probes".into(), json!(n));
    }
    if !config.is_empty() {
        body.insert("index_config".into(), Value::Object(config));
    }
    if let Some(p) = a.kms_provider {
        body.remove("index_key");
        body.insert("kms_name".into(), json!(p));
    } else if svc.index_key.is_none() {
        bail!("no index key: pass --index-key-file, --generate-key, --kms-provider or set TKMS_ENGINE_INDEX_KEY");
    }
    let r = svc.post("/v1/indexes/create", &body).await?;
    writeln!(output, "{}", r["message"].as_str().unwrap_or("created"))?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| {
        format!(
            "creating the key file {} (it must not exist)",
            path.display()
        )
    })?;
    f.write_all(bytes)?;
    Ok(())
}

async fn load(a: LoadArgs, output: &mut impl Write) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let svc = Service::new(&a.client)?;
    let vectors = tokio::task::spawn_blocking({
        let file = a.file.clone();
        move || tkms_engine::vecfile::read_vectors(&file)
    })
    .await??;
    let n = vectors.len();
    let bar = ProgressBar::new(n as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} vectors ({per_sec}, eta {eta})",
        )
        .context("progress bar template")?,
    );
    let started = Instant::now();
    for (b, chunk) in vectors.data.chunks(a.batch * vectors.dim).enumerate() {
        let items: Vec<Value> = chunk
            .chunks_exact(vectors.dim)
            .enumerate()
            .map(|(i, v)| json!({"id": format!("{}{}", a.id_prefix, b * a.batch + i), "vector": v}))
            .collect();
        let count = items.len();
        let mut body = svc.base();
        body.insert("items".into(), Value::Array(items));
        svc.post("/v1/vectors/upsert", &body)
            .await
            .with_context(|| format!("upserting rows {}..{}", b * a.batch, b * a.batch + count))?;
        bar.inc(count as u64);
    }
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    writeln!(
        output,
        "loaded {n} vectors of dimension {} in {secs:.1} s ({:.0} vectors/s)",
        vectors.dim,
        n as f64 / secs.max(1e-9)
    )?;
    if a.train {
        let t = Instant::now();
        svc.post("/v1/indexes/train", &svc.base()).await?;
        writeln!(output, "trained in {:.1} s", t.elapsed().as_secs_f64())?;
    }
    Ok(())
}

async fn query(a: QueryArgs, output: &mut impl Write) -> Result<()> {
    let svc = Service::new(&a.client)?;
    let vector: Vec<f32> = a
        .vector
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<f32>()
                .with_context(|| format!("--vector: {s:?} is not a number"))
        })
        .collect::<Result<_>>()?;
    let mut body = svc.base();
    body.insert("query_vectors".into(), json!(vector));
    body.insert("top_k".into(), json!(a.top_k));
    body.insert("include".into(), json!(["distance", "metadata"]));
    if let Some(n) = a.n_probes {
        body.insert("n_probes".into(), json!(n));
    }
    if let Some(f) = a.filter {
        let f: Value = serde_json::from_str(&f).context("--filter is not JSON")?;
        body.insert("filters".into(), f);
    }
    let r = svc.post("/v1/vectors/query", &body).await?;
    // One list of hits per query vector; this command sends one.
    writeln!(
        output,
        "{}",
        serde_json::to_string_pretty(&r["results"][0])?
    )?;
    Ok(())
}
