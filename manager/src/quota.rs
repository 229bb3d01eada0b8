//! Request quotas (docs/ARCHITECTURE.md §4.6: "quotas are token buckets per requester address and per
//! client address (429 + `Retry-After`), refused before any node work").
//!
//! A [`Limit`] is a token bucket: `rate` tokens a second up to `burst`; a request takes one,
//! and a request that finds none is refused with the time until the next token. Buckets are
//! kept per key (a requester's address and role, a client's IP address or IPv6 /64) and
//! forgotten once they have refilled, so the table only holds recently busy keys. Requester
//! buckets are made only for addresses that hold a role on the registry (the check comes
//! after the role check), so a flood of signatures by random keys cannot grow the table; the
//! client-address bucket comes first, before anything is parsed.
//!
//! Settings (`tkms manager run`): a limit per role (`--quota-gateway`, `--quota-runner`),
//! per client address (`--quota-client-address`), for the admin endpoints per client address
//! (`--quota-admin`: wrong operator tokens, so the token cannot be guessed faster than this), and per-requester
//! overrides in a JSON file (`--quota-file`: `{"requesters": {"0x…": "50:100"}}`).

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use alloy_primitives::Address;

/// A token-bucket limit, or none.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Limit {
    /// No limit.
    #[default]
    Off,
    /// `rate` requests a second on average, `burst` at once.
    Rate {
        /// Tokens added per second.
        rate: f64,
        /// Bucket size.
        burst: f64,
    },
}

impl FromStr for Limit {
    type Err = String;

    /// `off`, `RATE` (burst = rate) or `RATE:BURST`; RATE in requests per second (> 0),
    /// BURST at least 1.
    fn from_str(text: &str) -> Result<Self, String> {
        if text.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        let (rate, burst) = text.split_once(':').unwrap_or((text, ""));
        let rate: f64 = rate
            .trim()
            .parse()
            .map_err(|_| format!("{text:?}: expected `off`, `RATE` or `RATE:BURST`"))?;
        let burst: f64 = if burst.is_empty() {
            rate.max(1.0).ceil()
        } else {
            burst
                .trim()
                .parse()
                .map_err(|_| format!("{text:?}: BURST must be a number"))?
        };
        if !(rate.is_finite() && rate > 0.0 && burst.is_finite() && burst >= 1.0) {
            return Err(format!(
                "{text:?}: RATE must be above 0 and BURST at least 1"
            ));
        }
        Ok(Self::Rate { rate, burst })
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::Rate { rate, burst } => write!(f, "{rate}:{burst}"),
        }
    }
}

/// Most keys a bucket table holds; past it, buckets that have refilled are forgotten, and
/// if none has, a new key is refused (under a flood from that many addresses at once).
pub const MAX_KEYS: usize = 1 << 18;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(&self, rate: f64, burst: f64, now: Instant) -> f64 {
        (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(burst)
    }
}

/// Token buckets per key.
#[derive(Debug)]
pub struct Buckets<K> {
    table: Mutex<HashMap<K, Bucket>>,
}

impl<K> Default for Buckets<K> {
    fn default() -> Self {
        Self {
            table: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Copy> Buckets<K> {
    /// Take a token for `key` under `limit` at `now`; when there is none, the time until
    /// there is.
    pub fn take(&self, key: K, limit: Limit, now: Instant) -> Result<(), Duration> {
        let Limit::Rate { rate, burst } = limit else {
            return Ok(());
        };
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.len() >= MAX_KEYS && !table.contains_key(&key) {
            table.retain(|_, b| b.refilled(rate, burst, now) < burst);
            if table.len() >= MAX_KEYS {
                return Err(Duration::from_secs(1));
            }
        }
        let bucket = table.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens = bucket.refilled(rate, burst, now);
        bucket.at = now;
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            Ok(())
        } else {
            bucket.tokens = tokens;
            Err(Duration::from_secs_f64((1.0 - tokens) / rate))
        }
    }

    /// Return a token taken for `key` (the bucket never holds more than its burst).
    pub fn give_back(&self, key: K, limit: Limit) {
        let Limit::Rate { burst, .. } = limit else {
            return;
        };
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bucket) = table.get_mut(&key) {
            bucket.tokens = (bucket.tokens + 1.0).min(burst);
        }
    }
}

/// Which quota a requester's request counts against: the role it asks in
/// ([`tkms_proto::requester::Action::role`]).
pub use tkms_registry::access::RoleKind as Role;

/// The quota settings, as `tkms manager run` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct QuotaArgs {
    /// Quota of each gateway: `RATE:BURST` requests per second and at once, or `off`.
    #[arg(long, default_value = "5000:10000")]
    pub quota_gateway: Limit,
    /// Quota of each runner (`RATE:BURST` or `off`).
    #[arg(long, default_value = "500:1000")]
    pub quota_runner: Limit,
    /// Quota of each client address (IPv4 address, IPv6 /64) over every route, checked
    /// before the request is read (`RATE:BURST` or `off`).
    #[arg(long, default_value = "10000:20000")]
    pub quota_client_address: Limit,
    /// Quota of wrong operator tokens on the admin endpoints per client address (`RATE:BURST`
    /// or `off`): how fast the token can be guessed. A request with the right token does not
    /// count; one from an address over its quota is refused unread. All addresses together
    /// get four times this.
    #[arg(long, default_value = "2:10")]
    pub quota_admin: Limit,
    /// JSON file of per-requester quotas that replace their role's:
    /// `{"requesters": {"0x…": "50:100", "0x…": "off"}}`.
    #[arg(long)]
    pub quota_file: Option<PathBuf>,
}

impl Default for QuotaArgs {
    /// Every quota off (a router built without settings, as in tests).
    fn default() -> Self {
        Self {
            quota_gateway: Limit::Off,
            quota_runner: Limit::Off,
            quota_client_address: Limit::Off,
            quota_admin: Limit::Off,
            quota_file: None,
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaFile {
    #[serde(default)]
    requesters: BTreeMap<Address, String>,
}

/// Every quota of a manager.
#[derive(Debug, Default)]
pub struct Quotas {
    gateway: Limit,
    runner: Limit,
    client_address: Limit,
    admin: Limit,
    overrides: HashMap<Address, Limit>,
    requesters: Buckets<(Role, Address)>,
    addresses: Buckets<IpAddr>,
    admin_addresses: Buckets<IpAddr>,
    admin_all: Buckets<()>,
}

impl Quotas {
    /// The quotas of `args`, with the overrides of its quota file.
    pub fn new(args: &QuotaArgs) -> Result<Self, String> {
        let overrides = match &args.quota_file {
            Some(path) => read_overrides(path)?,
            None => HashMap::new(),
        };
        Ok(Self {
            gateway: args.quota_gateway,
            runner: args.quota_runner,
            client_address: args.quota_client_address,
            admin: args.quota_admin,
            overrides,
            ..Self::default()
        })
    }

    /// The limit of `requester` in `role`.
    pub fn limit_of(&self, role: Role, requester: Address) -> Limit {
        self.overrides
            .get(&requester)
            .copied()
            .unwrap_or(match role {
                Role::Gateway => self.gateway,
                Role::Runner => self.runner,
            })
    }

    /// A request by `requester` (who holds `role`).
    pub fn requester(&self, role: Role, requester: Address) -> Result<(), Duration> {
        self.requesters.take(
            (role, requester),
            self.limit_of(role, requester),
            Instant::now(),
        )
    }

    /// A request from `address` (any route).
    pub fn client(&self, address: IpAddr) -> Result<(), Duration> {
        self.addresses.take(
            tkms_daemon::conn::address_key(address),
            self.client_address,
            Instant::now(),
        )
    }

    /// An admin request from `address`, refused when its address, or every address together,
    /// has used up its quota of wrong operator tokens. The token taken here is returned by
    /// [`Self::admin_authenticated`] once the request turns out to carry the right one, so
    /// only guesses count: an operator polling `/admin/nodes` during a reshare is not throttled
    /// by its own requests, and a guess beyond the quota is refused before its token is
    /// compared (as is the operator's request while its address is over the quota).
    pub fn admin(&self, address: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let key = tkms_daemon::conn::address_key(address);
        self.admin_addresses.take(key, self.admin, now)?;
        self.admin_all
            .take((), self.admin_all_limit(), now)
            .inspect_err(|_| self.admin_addresses.give_back(key, self.admin))
    }

    /// The admin request from `address` carried the right operator token: it does not count.
    pub fn admin_authenticated(&self, address: IpAddr) {
        let key = tkms_daemon::conn::address_key(address);
        self.admin_addresses.give_back(key, self.admin);
        self.admin_all.give_back((), self.admin_all_limit());
    }

    fn admin_all_limit(&self) -> Limit {
        match self.admin {
            Limit::Off => Limit::Off,
            Limit::Rate { rate, burst } => Limit::Rate {
                rate: rate * 4.0,
                burst: burst * 4.0,
            },
        }
    }
}

fn read_overrides(path: &Path) -> Result<HashMap<Address, Limit>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("quota file {}: {e}", path.display()))?;
    let file: QuotaFile = serde_json::from_slice(&bytes)
        .map_err(|e| format!("quota file {}: {e}", path.display()))?;
    file.requesters
        .into_iter()
        .map(|(address, limit)| {
            let limit = limit
                .parse()
                .map_err(|e| format!("quota file {}: {address}: {e}", path.display()))?;
            Ok((address, limit))
        })
        .collect()
}

/// Whole seconds a client should wait (`Retry-After`), at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn limits_parse() {
        assert_eq!("off".parse::<Limit>().unwrap(), Limit::Off);
        assert_eq!(
            "5:10".parse::<Limit>().unwrap(),
            Limit::Rate {
                rate: 5.0,
                burst: 10.0
            }
        );
        assert_eq!(
            "0.5".parse::<Limit>().unwrap(),
            Limit::Rate {
                rate: 0.5,
                burst: 1.0
            }
        );
        for bad in ["", "0", "-1:5", "5:0", "x", "5:y", "nan", "inf:3"] {
            assert!(bad.parse::<Limit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let buckets = Buckets::default();
        let limit = Limit::Rate {
            rate: 10.0,
            burst: 3.0,
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            buckets.take(1u8, limit, t0).unwrap();
        }
        let wait = buckets.take(1u8, limit, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        // Another key is unaffected.
        buckets.take(2u8, limit, t0).unwrap();
        // One token back after 100 ms.
        buckets
            .take(1u8, limit, t0 + Duration::from_millis(100))
            .unwrap();
        assert!(buckets
            .take(1u8, limit, t0 + Duration::from_millis(100))
            .is_err());
        assert_eq!(retry_after_secs(Duration::from_millis(100)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2100)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn overrides_replace_the_role_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quotas.json");
        let a = Address::repeat_byte(1);
        std::fs::write(
            &path,
            format!(r#"{{"requesters": {{"{a}": "1:1"}}}}"#).as_bytes(),
        )
        .unwrap();
        let quotas = Quotas::new(&QuotaArgs {
            quota_gateway: "100:100".parse().unwrap(),
            quota_file: Some(path),
            ..QuotaArgs::default()
        })
        .unwrap();
        quotas.requester(Role::Gateway, a).unwrap();
        assert!(quotas.requester(Role::Gateway, a).is_err());
        let b = Address::repeat_byte(2);
        for _ in 0..50 {
            quotas.requester(Role::Gateway, b).unwrap();
        }
        // Runners are off here.
        for _ in 0..500 {
            quotas.requester(Role::Runner, b).unwrap();
        }
    }

    #[test]
    fn only_wrong_operator_tokens_count_against_the_admin_quota() {
        let quotas = Quotas::new(&QuotaArgs {
            quota_admin: "0.001:2".parse().unwrap(),
            ..QuotaArgs::default()
        })
        .unwrap();
        let operator: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..100 {
            quotas.admin(operator).unwrap();
            quotas.admin_authenticated(operator);
        }
        // Two guesses, then refusals, from that address only.
        let guesser: IpAddr = "10.0.0.2".parse().unwrap();
        quotas.admin(guesser).unwrap();
        quotas.admin(guesser).unwrap();
        assert!(quotas.admin(guesser).is_err());
        quotas.admin(operator).unwrap();
        quotas.admin_authenticated(operator);
        // Every address together: four times the burst, then nobody until it refills.
        for last in 3..=8u8 {
            quotas.admin(IpAddr::from([10, 0, 1, last])).unwrap();
        }
        assert!(quotas.admin(operator).is_err());
    }
}
