//! `tkms audit verify | show`: check an audit log's hash chain (the manager's or a node's,
//! [`tkms_daemon::audit`]) and read its entries.
//!
//! - `verify FILE [--head HASH]` checks every entry's hash, the `seq` run and every `prev`
//!   link, and reports the first break (an edited, deleted or reordered entry) with its line
//!   and `seq`; it fails if the break exists. `--head` also requires an entry with that hash
//!   (a head recorded earlier, e.g. from the service's log at stop): a log cut or rewritten
//!   before it fails.
//! - `show FILE` prints the entries as JSON lines, filtered by `--requester`, `--op`,
//!   `--result`, `--since` and `--until` (Unix seconds or RFC 3339). A node's entries name the
//!   requester by its signature; `show` recovers the address (as `requester`).

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    path::PathBuf,
};

use alloy_primitives::{Address, Signature, B256};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{Map, Value};
use tkms_daemon::audit::{self, check_line, parse_time};

/// `tkms audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain of an audit log; report the first break.
    Verify {
        /// The log (`audit.jsonl`).
        file: PathBuf,
        /// A head hash recorded earlier, which the log must still contain.
        #[arg(long)]
        head: Option<String>,
    },
    /// Print entries as JSON lines, filtered.
    Show {
        /// The log (`audit.jsonl`).
        file: PathBuf,
        /// Only entries of this requester address.
        #[arg(long)]
        requester: Option<Address>,
        /// Only this operation (`v0/delegate`, `v1/reencrypt`, `admin/dkg`,
        /// `partial_delegation`, ...).
        #[arg(long)]
        op: Option<String>,
        /// Only this result (`ok`, `rate_limited`, `unauthorized`, ...).
        #[arg(long)]
        result: Option<String>,
        /// Only entries at or after this time (Unix seconds or RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only entries before this time (Unix seconds or RFC 3339).
        #[arg(long)]
        until: Option<String>,
    },
}

/// Run `tkms audit`.
pub fn run(args: AuditArgs, output: &mut impl Write) -> Result<()> {
    match args.command {
        AuditCommand::Verify { file, head } => verify(&file, head.as_deref(), output),
        AuditCommand::Show {
            file,
            requester,
            op,
            result,
            since,
            until,
        } => {
            let time = |t: Option<String>, what: &str| -> Result<Option<u64>> {
                t.map(|t| {
                    parse_time(&t).with_context(|| {
                        format!("--{what} {t:?}: expected Unix seconds or RFC 3339")
                    })
                })
                .transpose()
            };
            let filter = Filter {
                requester,
                op,
                result,
                since: time(since, "since")?,
                until: time(until, "until")?,
            };
            show(&file, &filter, output)
        }
    }
}

fn verify(file: &PathBuf, head: Option<&str>, output: &mut impl Write) -> Result<()> {
    let reader = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    match audit::verify(reader) {
        Ok(verified) => {
            if let Some(wanted) = head {
                let wanted = wanted.trim_start_matches("0x").to_ascii_lowercase();
                let reader = BufReader::new(File::open(file)?);
                let found = reader
                    .lines()
                    .map_while(Result::ok)
                    .filter_map(|l| check_line(&l).ok())
                    .any(|e| e.hash == wanted);
                if !found {
                    bail!(
                        "{}: no entry has the head {wanted}: the log was cut or rewritten before it",
                        file.display()
                    );
                }
            }
            match verified.head {
                Some((seq, hash)) => writeln!(
                    output,
                    "ok: {} entries, chain intact; head seq {seq} hash {hash}",
                    verified.entries
                )?,
                None => writeln!(output, "ok: empty log")?,
            }
            Ok(())
        }
        Err(broken) => bail!("{}: chain broken at {broken}", file.display()),
    }
}

struct Filter {
    requester: Option<Address>,
    op: Option<String>,
    result: Option<String>,
    since: Option<u64>,
    until: Option<u64>,
}

/// The requester of a node's entry, from what it signed and its signature.
fn recovered(entry: &Map<String, Value>) -> Option<Address> {
    let signed: B256 = entry.get("signed")?.as_str()?.parse().ok()?;
    let bytes = hex::decode(entry.get("signature")?.as_str()?.trim_start_matches("0x")).ok()?;
    let bytes: [u8; 65] = bytes.try_into().ok()?;
    let parity = match bytes[64] {
        0 | 27 => false,
        1 | 28 => true,
        _ => return None,
    };
    let signature = Signature::from_bytes_and_parity(&bytes[..64], parity);
    tkms_sdk::ecrecover::recover_address(&signature, &signed).ok()
}

fn show(file: &PathBuf, filter: &Filter, output: &mut impl Write) -> Result<()> {
    let reader = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    for entry in audit::entries(reader) {
        let mut entry = entry.map_err(anyhow::Error::msg)?;
        if !entry.contains_key("requester") {
            if let Some(requester) = recovered(&entry) {
                entry.insert("requester".into(), requester.to_string().into());
            }
        }
        let text = |key: &str| entry.get(key).and_then(Value::as_str);
        if let Some(requester) = filter.requester {
            let matches = text("requester")
                .and_then(|r| r.parse::<Address>().ok())
                .is_some_and(|r| r == requester);
            if !matches {
                continue;
            }
        }
        if filter
            .op
            .as_deref()
            .is_some_and(|op| text("op") != Some(op))
        {
            continue;
        }
        if filter
            .result
            .as_deref()
            .is_some_and(|r| text("result") != Some(r))
        {
            continue;
        }
        let time = text("time").and_then(parse_time);
        if filter.since.is_some_and(|s| time.is_none_or(|t| t < s))
            || filter.until.is_some_and(|u| time.is_none_or(|t| t >= u))
        {
            continue;
        }
        writeln!(output, "{}", Value::Object(entry))?;
    }
    Ok(())
}
