//! The single-key reference server: what the single-key Nox KMS does for `/v0/delegate`
//! (parse, recover the EIP-712 signer, check it is a gateway, one scalar multiplication
//! `S = sk·K`, RSA-OAEP of `x(S)`, EIP-712 signature of the answer), with the same code as
//! the manager for everything but the key. It exists to measure the cluster against
//! (`docs/BENCHMARKS.md`): `tkms baseline serve`. It holds its whole key in memory and is
//! not part of the product.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc};

use axum::{
    body::Bytes,
    extract::{RawQuery, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use k256::ecdsa::SigningKey;
use rand_core::OsRng;
use serde_json::json;
use tkms_crypto::{ecies, suite::Encoded, Secp256k1, SecretScalar, Suite};
use tkms_registry::access::{FileRegistry, Registry};

use crate::nox::{DelegateRequest, NoxError};

/// `tkms baseline serve` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BaselineConfig {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The registry file naming the gateways (a testnet's `manager/registry.json`).
    #[arg(long)]
    pub registry_file: PathBuf,
    /// The wallet key that signs answers (hex file; a testnet's `manager/wallet.key`, so
    /// clients that check the manager's address accept both).
    #[arg(long)]
    pub wallet_key_file: PathBuf,
    /// Serve no `GET /v0/public-key`, as the single-key Nox KMS (whose key is published on
    /// chain): clients must be given the key (`tkms encrypt --public-key`).
    #[arg(long)]
    pub no_public_key: bool,
}

struct Baseline {
    secret: SecretScalar<Secp256k1>,
    wallet: SigningKey,
    registry: FileRegistry,
}

/// Serve until `shutdown`; prints `baseline listening on http://ADDR` once bound, then
/// `baseline public key 0x..`.
pub async fn run(
    config: BaselineConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(&config.wallet_key_file)
            .map_err(|e| format!("{}: {e}", config.wallet_key_file.display()))?,
    );
    let bytes = zeroize::Zeroizing::new(
        hex::decode(text.trim().trim_start_matches("0x")).map_err(|e| e.to_string())?,
    );
    let wallet = SigningKey::from_slice(&bytes).map_err(|e| e.to_string())?;
    let registry = FileRegistry::open(&config.registry_file)?;
    let state = Arc::new(Baseline {
        secret: SecretScalar::random(&mut OsRng),
        wallet,
        registry,
    });
    let public = format!(
        "0x{}",
        hex::encode(Secp256k1::encode_point(&state.secret.public_point()))
    );
    let mut app = Router::new().route("/v0/delegate", post(delegate));
    if !config.no_public_key {
        app = app.route("/v0/public-key", get(public_key));
    }
    let app = app.with_state(state);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("baseline listening on http://{addr}");
    println!("baseline public key {public}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| e.to_string())
}

/// The same shape as the manager's, as a 1-of-1 key set.
async fn public_key(State(state): State<Arc<Baseline>>) -> Json<serde_json::Value> {
    let pk = format!(
        "0x{}",
        hex::encode(Secp256k1::encode_point(&state.secret.public_point()))
    );
    Json(json!({
        "publicKey": pk,
        "epoch": 1,
        "threshold": 1,
        "n": 1,
        "publicShares": BTreeMap::from([("1", pk.clone())]),
        "commitment": [pk],
    }))
}

fn refuse(e: &NoxError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        Json(json!({ "error": e.to_string(), "code": e.code() })),
    )
        .into_response()
}

async fn delegate(
    State(state): State<Arc<Baseline>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(axum::http::HeaderValue::as_bytes);
    let request = match DelegateRequest::parse(query.as_deref().unwrap_or(""), &body, authorization)
    {
        Ok(r) => r,
        Err(e) => return refuse(&e),
    };
    let signer = match request.signer() {
        Ok(s) => s,
        Err(e) => return refuse(&e),
    };
    let chain_id = request.chain_id();
    if !state.registry.is_gateway(chain_id, signer) {
        return refuse(&NoxError::SignerNotAuthorized { signer, chain_id });
    }
    // The same constant-time multiplication the nodes use for their partials.
    let shared = ecies::diffie_hellman(&state.secret, &Encoded::new(*request.ephemeral()));
    match request.respond(&state.wallet, &shared) {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => refuse(&e),
    }
}
