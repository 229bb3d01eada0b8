//! `tkms registry show|grant|revoke|deploy`: an operator's view and control of the on-chain
//! registry (docs/ARCHITECTURE.md §4.3) through `tkms-registry`. Every command prints one JSON
//! object.
//!
//! Writes are signed with the key in `--key-file` (32-byte hex private key, `0x` optional):
//! the owner's for roles, any funded account for `deploy` (it becomes the owner). The key
//! is never taken on the command line, where other users of the machine could read it.

use std::{io::Write, path::PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use tkms_registry::{
    Address, PrivateKeySigner, RegistryClient, RegistryError, RegistryState, Role, WriteReceipt,
};
use zeroize::Zeroizing;

/// `tkms registry ...`
#[derive(Debug, Args)]
pub(crate) struct RegistryArgs {
    /// JSON-RPC endpoint of the registry's chain.
    #[arg(long, default_value = "http://127.0.0.1:8545", global = true)]
    rpc_url: String,
    #[command(subcommand)]
    command: RegistryCommand,
}

#[derive(Debug, Subcommand)]
enum RegistryCommand {
    /// Print the owner, manager, gateways, runners, nodes and current epoch.
    Show {
        /// Address of the registry contract.
        #[arg(long)]
        registry: Address,
    },
    /// Grant a role (signed by the owner).
    Grant {
        #[command(flatten)]
        change: RoleChange,
        /// For a gateway: also make it the primary one (the one `gateway()` returns).
        #[arg(long)]
        primary: bool,
    },
    /// Revoke a role (signed by the owner). Revoking the primary gateway needs another
    /// gateway made primary first (`grant gateway OTHER --primary`), unless it is the last.
    Revoke {
        #[command(flatten)]
        change: RoleChange,
    },
    /// Deploy a new registry owned by the key's account; prints its address.
    Deploy {
        /// File holding the deployer's (future owner's) private key as hex.
        #[arg(long)]
        key_file: PathBuf,
    },
}

/// Who gets or loses which role, where, signed by whom.
#[derive(Debug, Args)]
struct RoleChange {
    /// The role.
    #[arg(value_enum)]
    role: RoleArg,
    /// The account.
    account: Address,
    /// Address of the registry contract.
    #[arg(long)]
    registry: Address,
    /// File holding the owner's private key as hex.
    #[arg(long)]
    key_file: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    /// Publishes key epochs (one account; granting replaces the previous one).
    Manager,
    /// Authorizes `/v0/delegate` requests with its EIP-712 signature.
    Gateway,
    /// Calls the cluster as a runner.
    Runner,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Manager => Role::Manager,
            RoleArg::Gateway => Role::Gateway,
            RoleArg::Runner => Role::Runner,
        }
    }
}

/// Run `tkms registry ...`, printing one JSON object to `output`.
pub(crate) fn run(args: RegistryArgs, output: &mut impl Write) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let value = runtime.block_on(execute(args))?;
    writeln!(output, "{value}")?;
    output.flush()?;
    Ok(())
}

async fn execute(args: RegistryArgs) -> Result<Value> {
    let rpc = args.rpc_url.as_str();
    match args.command {
        RegistryCommand::Show { registry } => {
            let client = RegistryClient::connect(rpc, registry, None)?;
            client.check_deployed().await?;
            let chain_id = client.chain_id().await?;
            let state = client.state().await?;
            Ok(show(registry, chain_id, &state))
        }
        RegistryCommand::Grant { change, primary } => {
            let RoleChange {
                role,
                account,
                registry,
                key_file,
            } = change;
            let client = writer(rpc, registry, &key_file).await?;
            let role = Role::from(role);
            if primary && role != Role::Gateway {
                bail!("--primary applies to gateways only");
            }
            let mut receipts = Vec::new();
            // `--primary` on an existing gateway only switches the primary; anything else is
            // sent as is, so the contract refuses what it refuses (`GatewayAlreadyAdded`, ...).
            let already = primary && client.state().await?.is_gateway(account);
            if !already {
                receipts.push(("grant", client.grant(role, account).await.map_err(explain)?));
            }
            if primary {
                receipts.push((
                    "setPrimaryGateway",
                    client.set_primary_gateway(account).await.map_err(explain)?,
                ));
            }
            Ok(json!({
                "granted": role.to_string(),
                "account": account.to_string(),
                "transactions": receipts.iter().map(|(what, r)| receipt(what, r)).collect::<Vec<_>>(),
            }))
        }
        RegistryCommand::Revoke { change } => {
            let RoleChange {
                role,
                account,
                registry,
                key_file,
            } = change;
            let client = writer(rpc, registry, &key_file).await?;
            let role = Role::from(role);
            let r = client.revoke(role, account).await.map_err(explain)?;
            Ok(json!({
                "revoked": role.to_string(),
                "account": account.to_string(),
                "transactions": [receipt("revoke", &r)],
            }))
        }
        RegistryCommand::Deploy { key_file } => {
            let key = read_key(&key_file)?;
            let owner = key.address();
            let (client, r) = RegistryClient::deploy(rpc, key).await.map_err(explain)?;
            Ok(json!({
                "registry_address": client.address().to_string(),
                "owner": owner.to_string(),
                "chain_id": client.chain_id().await?,
                "transactions": [receipt("deploy", &r)],
            }))
        }
    }
}

/// A client signing with the key in `key_file`, after checking the registry exists.
async fn writer(rpc: &str, registry: Address, key_file: &PathBuf) -> Result<RegistryClient> {
    let client = RegistryClient::connect(rpc, registry, Some(read_key(key_file)?))?;
    client.check_deployed().await?;
    Ok(client)
}

fn read_key(path: &PathBuf) -> Result<PrivateKeySigner> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading key file {}", path.display()))?,
    );
    let bytes = Zeroizing::new(
        super::decode_hex(&text)
            .with_context(|| format!("key file {} is not hex", path.display()))?,
    );
    PrivateKeySigner::from_slice(&bytes).map_err(|_| {
        anyhow::anyhow!(
            "key file {} does not hold a valid 32-byte secp256k1 private key",
            path.display()
        )
    })
}

/// Add what the operator can do about the errors they can fix.
fn explain(e: RegistryError) -> anyhow::Error {
    let hint = match e.revert_name() {
        Some("NotOwner") => Some("this key is not the registry's owner"),
        Some("CannotRemovePrimaryGateway") => {
            Some("make another gateway primary first: tkms registry grant gateway OTHER --primary")
        }
        Some("GatewayAlreadyAdded" | "RunnerAlreadyAdded") => Some("nothing to do"),
        _ => None,
    };
    match hint {
        Some(h) => anyhow::Error::new(e).context(h),
        None => e.into(),
    }
}

fn receipt(what: &str, r: &WriteReceipt) -> Value {
    json!({
        "call": what,
        "tx": r.tx_hash.to_string(),
        "block": r.block,
        "gas_used": r.gas_used,
    })
}

fn show(registry: Address, chain_id: u64, s: &RegistryState) -> Value {
    let addresses = |set: &std::collections::BTreeSet<Address>| {
        set.iter().map(ToString::to_string).collect::<Vec<_>>()
    };
    let nodes: Vec<Value> = s
        .nodes
        .values()
        .map(|n| {
            json!({
                "index": n.index,
                "peer_id": n.peer_id.to_string(),
                "endpoints": n.endpoints,
                "public_key": n.public_key.to_string(),
                "attestation_digest": n.attestation_digest.to_string(),
            })
        })
        .collect();
    let epoch = s.epoch.as_ref().map(|e| {
        let p = &e.publication;
        json!({
            "epoch": p.epoch,
            "t": p.t,
            "n": p.n,
            "public_key": p.public_key.to_string(),
            "public_shares_hash": p.public_shares_hash.to_string(),
            "transcript_hash": p.transcript_hash.to_string(),
            "published_at": e.published_at,
        })
    });
    json!({
        "registry": registry.to_string(),
        "chain_id": chain_id,
        "block": s.block,
        "owner": s.owner.to_string(),
        "pending_owner": s.pending_owner.map(|a| a.to_string()),
        "manager": s.manager.map(|a| a.to_string()),
        "gateway": s.primary_gateway.map(|a| a.to_string()),
        "gateways": addresses(&s.gateways),
        "runners": addresses(&s.runners),
        "nodes": nodes,
        "epoch": epoch,
        "kms_public_key": s.kms_public_key().map(ToString::to_string),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests may panic on failure

    use clap::Parser;
    use serde_json::Value;
    use tkms_registry::{anvil, Address};

    use crate::{run, Cli};

    fn tkms(args: &[&str]) -> anyhow::Result<Value> {
        let cli = Cli::try_parse_from(std::iter::once("tkms").chain(args.iter().copied()))?;
        let mut out = Vec::new();
        run(cli, &mut std::io::empty(), &mut out)?;
        Ok(serde_json::from_slice(&out)?)
    }

    fn key_file(dir: &tempfile::TempDir, name: &str, key: &[u8]) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("0x{}\n", hex::encode(key))).unwrap();
        path.display().to_string()
    }

    #[test]
    fn deploy_grant_show_revoke_against_anvil() {
        let anvil = anvil::spawn_or_fail();
        let rpc = anvil.endpoint();
        let dir = tempfile::tempdir().unwrap();
        let owner = key_file(&dir, "owner", &anvil.keys()[0].to_bytes());
        let stranger = key_file(&dir, "stranger", &anvil.keys()[1].to_bytes());
        let gateways = [Address::repeat_byte(0x61), Address::repeat_byte(0x62)];
        let [g1, g2] = gateways.map(|g| g.to_string());

        let deployed = tkms(&[
            "registry",
            "deploy",
            "--rpc-url",
            &rpc,
            "--key-file",
            &owner,
        ])
        .unwrap();
        let registry = deployed["registry_address"].as_str().unwrap().to_string();
        assert_eq!(deployed["owner"], anvil.addresses()[0].to_string());
        assert_eq!(deployed["chain_id"], 31_337);
        let at = ["--rpc-url", rpc.as_str(), "--registry", registry.as_str()];
        let write = |verb: &str, role: &str, account: &str, key: &str, extra: &[&str]| {
            let mut args = vec!["registry", verb, role, account, "--key-file", key];
            args.extend_from_slice(&at);
            args.extend_from_slice(extra);
            tkms(&args)
        };

        write("grant", "gateway", &g1, &owner, &[]).unwrap();
        write("grant", "gateway", &g2, &owner, &["--primary"]).unwrap();
        write("grant", "runner", &g1, &owner, &[]).unwrap();
        let shown = tkms(&[&["registry", "show"][..], &at[..]].concat()).unwrap();
        assert_eq!(shown["gateway"], g2);
        assert_eq!(shown["gateways"].as_array().unwrap().len(), 2);
        assert_eq!(shown["runners"], serde_json::json!([g1]));
        assert_eq!(shown["epoch"], Value::Null);
        assert_eq!(shown["kms_public_key"], Value::Null);

        // Refusals name the contract error and what to do.
        let err = write("grant", "gateway", &g1, &stranger, &[]).unwrap_err();
        assert!(format!("{err:#}").contains("NotOwner"), "{err:#}");
        let err = write("revoke", "gateway", &g2, &owner, &[]).unwrap_err();
        assert!(format!("{err:#}").contains("--primary"), "{err:#}");

        write("revoke", "gateway", &g1, &owner, &[]).unwrap();
        let shown = tkms(&[&["registry", "show"][..], &at[..]].concat()).unwrap();
        assert_eq!(shown["gateways"], serde_json::json!([g2]));

        // Bad input is refused before anything is sent.
        std::fs::write(dir.path().join("bad"), "not hex").unwrap();
        let bad = dir.path().join("bad").display().to_string();
        assert!(write("grant", "runner", &g2, &bad, &[]).is_err());
        assert!(tkms(&["registry", "show", "--registry", "0x1234"]).is_err());
        let nowhere = Address::repeat_byte(0x42).to_string();
        let err = tkms(&[
            "registry",
            "show",
            "--rpc-url",
            &rpc,
            "--registry",
            &nowhere,
        ])
        .unwrap_err();
        assert!(format!("{err:#}").contains("no contract"), "{err:#}");
    }
}
