//! The audit log (docs/ARCHITECTURE.md §4.6): every key use and every admin action, appended to a
//! hash-chained, append-only file of JSON lines, and the checker behind `tkms audit verify`.
//!
//! Each line is one JSON object. Its fields are the caller's (requester, operation, epoch,
//! result...; never a secret: only digests and public identifiers are logged) plus:
//!
//! - `seq`: 1 for the first entry of a log, then one more per entry;
//! - `time`: RFC 3339 UTC with milliseconds;
//! - `prev`: the `hash` of the entry before (64 zeros for the first);
//! - `hash`: SHA-256 of the line up to `hash` itself, that is of the bytes of the line with
//!   its last member (`,"hash":"…"`) removed, as written.
//!
//! So an edited entry no longer matches its own hash, a deleted or reordered one breaks the
//! `seq` run and the `prev` link of the next, and [`verify`] names the first entry where the
//! chain breaks. Rewriting the whole chain after an edit is possible for whoever can write the
//! file: compare the head ([`Verified::head`]) with one recorded elsewhere (the service logs
//! it at start and stop; `tkms audit verify --head`), and keep the nodes' logs, each on its
//! own machine, to cross-check the manager's.
//!
//! Vault's file audit device is the model: it refuses requests when no audit device can
//! write; here [`AuditLog::append`] returns the error and the service decides (fail closed
//! by default, `--audit-fail open` to serve anyway).

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read, Seek, SeekFrom},
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, PoisonError,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::journal::{Journal, SyncPolicy, Ticket};

/// One entry's own fields (without `seq`, `time`, `prev` and `hash`).
pub type Fields = Map<String, Value>;

/// What closes every line: `,"hash":"` + 64 hex digits + `"}`.
const HASH_MEMBER: &str = ",\"hash\":\"";
const HASH_HEX_LEN: usize = 64;
/// `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// When the last append failed, in ms since the Unix epoch (0: never).
#[derive(Debug, Default)]
struct Health(AtomicU64);

/// How long after a failed append the log is reported as not ready.
const FAILURE_MEMORY: Duration = Duration::from_secs(1);

/// The running end of the chain.
#[derive(Debug, Clone)]
struct Head {
    seq: u64,
    hash: String,
}

/// An open audit log. Appends are serialized; each write reaches the kernel before
/// [`AuditLog::append`] returns.
#[derive(Debug)]
pub struct AuditLog {
    journal: Journal,
    head: Mutex<Head>,
    failed_at: Health,
}

impl AuditLog {
    /// Open (or create) the log at `path` and continue its chain. A torn last line (a crash
    /// in the middle of a write, never acknowledged) is cut off and reported.
    pub fn open(path: &Path, policy: SyncPolicy) -> io::Result<Self> {
        let (head, keep) = match File::open(path) {
            Ok(file) => read_head(file)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, None),
            Err(e) => return Err(e),
        };
        if let Some(keep) = keep {
            tracing::warn!(path = %path.display(), keep, "the audit log ends with a torn line (a crash mid-write); cutting it off");
        }
        let journal = Journal::open(path, keep, policy)?;
        let head = head.unwrap_or(Head {
            seq: 0,
            hash: GENESIS.to_string(),
        });
        tracing::info!(path = %path.display(), seq = head.seq, head = %head.hash, "audit log open");
        Ok(Self {
            journal,
            head: Mutex::new(head),
            failed_at: Health::default(),
        })
    }

    /// The path of the log.
    pub fn path(&self) -> &Path {
        self.journal.path()
    }

    /// `(seq, hash)` of the last entry (seq 0 and [`GENESIS`] when empty).
    pub fn head(&self) -> (u64, String) {
        let head = self.head.lock().unwrap_or_else(PoisonError::into_inner);
        (head.seq, head.hash.clone())
    }

    /// Whether the log can be trusted with the next entry: the last append, if it failed,
    /// failed more than a second ago, and no sync of the log has ever failed (a service in
    /// fail-closed mode refuses work while this is false; after a failed sync, until it is
    /// restarted on a sound disk).
    pub fn ready(&self) -> bool {
        let failed = self.failed_at.0.load(Ordering::Relaxed);
        let memory = u64::try_from(FAILURE_MEMORY.as_millis()).unwrap_or(u64::MAX);
        (failed == 0 || now_ms().saturating_sub(failed) > memory) && !self.journal.sync_failed()
    }

    /// Append one entry.
    pub fn append(&self, fields: Fields) -> io::Result<Ticket> {
        self.append_all(std::iter::once(fields))
    }

    /// Append entries in one write, chained in order.
    pub fn append_all(&self, entries: impl IntoIterator<Item = Fields>) -> io::Result<Ticket> {
        let mut head = self.head.lock().unwrap_or_else(PoisonError::into_inner);
        let time = rfc3339(now_ms());
        let start = head.clone();
        let result = self.journal.append_with(
            || {
                let mut next = start;
                let mut bytes = Vec::new();
                for fields in entries {
                    next.seq += 1;
                    let (line, hash) = line(next.seq, &time, &next.hash, fields);
                    bytes.extend_from_slice(&line);
                    next.hash = hash;
                }
                (bytes, next)
            },
            |next| *head = next,
        );
        if let Err(e) = &result {
            self.failed_at.0.store(now_ms().max(1), Ordering::Relaxed);
            tracing::error!(path = %self.path().display(), error = %e, "the audit log cannot be written");
        }
        result
    }

    /// Wait until the entries up to `ticket` are durable.
    pub async fn durable(&self, ticket: Ticket) -> io::Result<()> {
        let result = self.journal.durable(ticket).await;
        if result.is_err() {
            self.failed_at.0.store(now_ms().max(1), Ordering::Relaxed);
        }
        result
    }

    /// Make everything appended so far durable now (at shutdown).
    pub fn sync_now(&self) -> io::Result<()> {
        self.journal.sync_now()
    }
}

/// The line for entry `seq` and its hash.
fn line(seq: u64, time: &str, prev: &str, fields: Fields) -> (Vec<u8>, String) {
    let mut map = Map::new();
    map.insert("seq".into(), Value::from(seq));
    map.insert("time".into(), Value::from(time));
    for (k, v) in fields {
        if !matches!(k.as_str(), "seq" | "time" | "prev" | "hash") {
            map.insert(k, v);
        }
    }
    map.insert("prev".into(), Value::from(prev));
    // A map of strings and JSON values always serializes.
    let mut body = serde_json::to_vec(&map).unwrap_or_else(|_| b"{}".to_vec());
    let hash = hex::encode(Sha256::digest(&body));
    body.pop(); // the closing brace
    body.extend_from_slice(HASH_MEMBER.as_bytes());
    body.extend_from_slice(hash.as_bytes());
    body.extend_from_slice(b"\"}\n");
    (body, hash)
}

/// The last whole line's head, and the length to keep if the file ends with a torn line.
fn read_head(mut file: File) -> io::Result<(Option<Head>, Option<u64>)> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok((None, None));
    }
    // The tail holds the last line (entries are far shorter than this).
    let start = len.saturating_sub(1 << 20);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let mut keep = None;
    let mut whole = tail.as_slice();
    if whole.last() != Some(&b'\n') {
        let cut = whole.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        keep = Some(start + cut as u64);
        whole = &whole[..cut];
    }
    let Some(last) = whole[..whole.len().saturating_sub(1)]
        .split(|&b| b == b'\n')
        .next_back()
        .filter(|l| !l.is_empty())
    else {
        return Ok((None, keep));
    };
    let text = std::str::from_utf8(last)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "last audit line is not UTF-8"))?;
    let entry = check_line(text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the last audit entry is damaged ({e}); move the log aside to start a new one"),
        )
    })?;
    Ok((
        Some(Head {
            seq: entry.seq,
            hash: entry.hash,
        }),
        keep,
    ))
}

/// One line, checked against its own hash.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its position in the chain.
    pub seq: u64,
    /// The previous entry's hash.
    pub prev: String,
    /// Its own hash.
    pub hash: String,
    /// Every member but `hash`.
    pub fields: Map<String, Value>,
}

/// Parse a line and check its own hash.
pub fn check_line(line: &str) -> Result<Entry, String> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let Some(at) = line.rfind(HASH_MEMBER) else {
        return Err("not an audit entry: it has no hash".into());
    };
    let hash = &line[at + HASH_MEMBER.len()..];
    let Some(hash) = hash.strip_suffix("\"}") else {
        return Err("not an audit entry: it does not end with its hash".into());
    };
    if hash.len() != HASH_HEX_LEN || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("not an audit entry: malformed hash".into());
    }
    let mut body = line.as_bytes()[..at].to_vec();
    body.push(b'}');
    if hex::encode(Sha256::digest(&body)) != hash.to_ascii_lowercase() {
        return Err("edited: the entry does not match its hash".into());
    }
    let fields: Map<String, Value> =
        serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
    let seq = fields.get("seq").and_then(Value::as_u64).ok_or("no seq")?;
    let prev = fields
        .get("prev")
        .and_then(Value::as_str)
        .ok_or("no prev")?
        .to_string();
    Ok(Entry {
        seq,
        prev,
        hash: hash.to_ascii_lowercase(),
        fields,
    })
}

/// A log whose chain holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries checked.
    pub entries: u64,
    /// `(seq, hash)` of the last entry, if any.
    pub head: Option<(u64, String)>,
}

/// Where a chain breaks first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}{}: {reason}", seq.map(|s| format!(" (seq {s})")).unwrap_or_default())]
pub struct Break {
    /// 1-based line number in the file.
    pub line: u64,
    /// The entry's `seq`, if it could be read.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

/// Check a whole log: every entry's hash, the `seq` run from 1 and every `prev` link. The
/// first break is the error.
pub fn verify(reader: impl Read) -> Result<Verified, Break> {
    let mut previous: Option<(u64, String)> = None;
    let mut entries = 0;
    for (k, line) in BufReader::new(reader).split(b'\n').enumerate() {
        let number = k as u64 + 1;
        let broken = |seq, reason: String| Break {
            line: number,
            seq,
            reason,
        };
        let line = line.map_err(|e| broken(None, format!("cannot read: {e}")))?;
        let text = std::str::from_utf8(&line).map_err(|_| broken(None, "not UTF-8".into()))?;
        let entry = check_line(text).map_err(|e| broken(None, e))?;
        let (expected_seq, expected_prev) = match &previous {
            None => (1, GENESIS.to_string()),
            Some((seq, hash)) => (seq + 1, hash.clone()),
        };
        let seq = Some(entry.seq);
        if entry.seq != expected_seq {
            let reason = match &previous {
                None => format!(
                    "the log starts at seq {} instead of 1: entries before it were removed",
                    entry.seq
                ),
                Some((p, _)) if entry.seq > expected_seq => format!(
                    "seq {} follows seq {p}: entries {expected_seq}..{} were removed or moved",
                    entry.seq,
                    entry.seq - 1
                ),
                Some((p, _)) => format!(
                    "seq {} follows seq {p}: entries were reordered or duplicated",
                    entry.seq
                ),
            };
            return Err(broken(seq, reason));
        }
        if entry.prev != expected_prev {
            return Err(broken(
                seq,
                "does not link to the entry before it (that entry was replaced, or this one \
                 moved)"
                    .into(),
            ));
        }
        entries += 1;
        previous = Some((entry.seq, entry.hash));
    }
    Ok(Verified {
        entries,
        head: previous,
    })
}

/// Every line of a log as JSON (entries that do not parse are errors with their line
/// number), without checking the chain.
pub fn entries(reader: impl Read) -> impl Iterator<Item = Result<Map<String, Value>, String>> {
    BufReader::new(reader).lines().enumerate().map(|(k, line)| {
        let line = line.map_err(|e| format!("line {}: {e}", k + 1))?;
        serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", k + 1))
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `ms` since the Unix epoch as RFC 3339 UTC with milliseconds (`2026-11-02T10:00:00.123Z`).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// Parse a time filter: Unix seconds, or RFC 3339 UTC (`2026-11-02T10:00:00Z`, fraction and
/// time optional); milliseconds since the Unix epoch.
pub fn parse_time(text: &str) -> Option<u64> {
    if let Ok(secs) = text.parse::<u64>() {
        return secs.checked_mul(1000);
    }
    let text = text.strip_suffix('Z').unwrap_or(text);
    let (date, time) = text.split_once('T').unwrap_or((text, "00:00:00"));
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(str::parse::<u64>);
    let (h, mi, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let millis: u64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    let days = u64::try_from(days_from_civil(y, m, day)).ok()?;
    Some(((days * 86_400 + h * 3600 + mi * 60 + s) * 1000) + millis)
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What a service does when its audit log cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditFail {
    /// Refuse key uses (and admin actions) until it can: nothing is served unrecorded.
    Closed,
    /// Serve anyway, logging the error.
    Open,
}

/// A sync policy from a setting: `always` (every key use waits for `fdatasync`), or a
/// number of milliseconds between background syncs.
pub fn sync_policy(setting: &str) -> Result<SyncPolicy, String> {
    match setting {
        "always" => Ok(SyncPolicy::Immediately),
        ms => ms
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms > 0)
            .map(|ms| SyncPolicy::Every(Duration::from_millis(ms)))
            .ok_or_else(|| format!("expected `always` or a number of milliseconds, got {ms:?}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn fields(op: &str, k: u64) -> Fields {
        let Value::Object(map) = json!({ "op": op, "item": k }) else {
            unreachable!()
        };
        map
    }

    fn write(path: &Path, n: u64) {
        let log = AuditLog::open(path, SyncPolicy::Immediately).unwrap();
        for k in 0..n {
            log.append(fields("v0/delegate", k)).unwrap();
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn verify_lines(lines: &[String]) -> Result<Verified, Break> {
        let mut text = lines.join("\n");
        text.push('\n');
        verify(text.as_bytes())
    }

    #[test]
    fn the_chain_continues_across_reopen_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        write(&path, 3);
        write(&path, 2);
        let ok = verify(File::open(&path).unwrap()).unwrap();
        assert_eq!(ok.entries, 5);
        let log = AuditLog::open(&path, SyncPolicy::Immediately).unwrap();
        assert_eq!(Some(log.head()), ok.head);
        let first = check_line(&lines(&path)[0]).unwrap();
        assert_eq!(first.seq, 1);
        assert_eq!(first.prev, GENESIS);
        assert_eq!(first.fields["op"], "v0/delegate");
    }

    #[test]
    fn edits_deletions_and_reorderings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        write(&path, 5);
        let good = lines(&path);
        assert!(verify_lines(&good).is_ok());

        let mut edited = good.clone();
        edited[2] = edited[2].replace("\"item\":2", "\"item\":7");
        let e = verify_lines(&edited).unwrap_err();
        assert_eq!((e.line, e.reason.starts_with("edited")), (3, true), "{e}");

        let mut deleted = good.clone();
        deleted.remove(1);
        let e = verify_lines(&deleted).unwrap_err();
        assert_eq!((e.line, e.seq), (2, Some(3)), "{e}");

        let mut swapped = good.clone();
        swapped.swap(3, 4);
        let e = verify_lines(&swapped).unwrap_err();
        assert_eq!((e.line, e.seq), (4, Some(5)), "{e}");

        let e = verify_lines(&good[1..]).unwrap_err();
        assert_eq!((e.line, e.seq), (1, Some(2)), "{e}");
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_the_chain_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        write(&path, 2);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"{\"seq\":3,\"ti");
        std::fs::write(&path, bytes).unwrap();
        write(&path, 1);
        let ok = verify(File::open(&path).unwrap()).unwrap();
        assert_eq!(ok.entries, 3);
    }

    #[test]
    fn times_round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_793_613_845_123), "2026-11-02T10:04:05.123Z");
        assert_eq!(
            parse_time("2026-11-02T10:04:05.123Z"),
            Some(1_793_613_845_123)
        );
        assert_eq!(parse_time("2026-11-02"), Some(1_793_577_600_000));
        assert_eq!(parse_time("1793613845"), Some(1_793_613_845_000));
        assert_eq!(parse_time("2026-13-02"), None);
        assert_eq!(parse_time("yesterday"), None);
        for ms in [951_782_400_000u64, 1_709_251_199_999, 4_102_444_800_000] {
            assert_eq!(parse_time(&rfc3339(ms)), Some(ms));
        }
    }
}
