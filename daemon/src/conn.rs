//! Connection admission (docs/ARCHITECTURE.md §4.6, "every listener bounds connections, total and per
//! client address").
//!
//! A listener asks [`ConnectionGate::admit`] for every accepted socket; a refused one is
//! closed at once, so a client holding thousands of idle sockets holds at most
//! `max_per_address` of this process's file descriptors and slots, and the others are free
//! for everybody else. Addresses are counted per IPv4 address and per IPv6 `/64` (one
//! machine usually owns a whole `/64`). The [`Admitted`] guard gives the slot back when the
//! connection ends.

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bounds on open connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once (0: no bound).
    pub max_connections: usize,
    /// Most connections open at once from one client address (0: no bound).
    pub max_per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_address: DEFAULT_MAX_PER_ADDRESS,
        }
    }
}

/// Default bound on open connections: well under the usual file-descriptor limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default bound per client address: a gateway or a load balancer keeps a pool of tens.
pub const DEFAULT_MAX_PER_ADDRESS: usize = 128;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds `max_connections` already.
    Total,
    /// This client address holds `max_per_address` already.
    Address,
}

/// Why the server closed a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// A request head did not arrive in time.
    HeaderTimeout,
    /// A request body did not arrive in time.
    BodyTimeout,
    /// Nothing happened on a connection between requests for too long.
    IdleTimeout,
    /// A TLS handshake did not finish in time (or failed).
    Handshake,
}

/// Connection counters, rendered into a service's `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    open: AtomicU64,
    accepted: AtomicU64,
    refused_total: AtomicU64,
    refused_address: AtomicU64,
    header_timeout: AtomicU64,
    body_timeout: AtomicU64,
    idle_timeout: AtomicU64,
    handshake: AtomicU64,
}

impl ConnectionStats {
    fn closed_counter(&self, why: Closed) -> &AtomicU64 {
        match why {
            Closed::HeaderTimeout => &self.header_timeout,
            Closed::BodyTimeout => &self.body_timeout,
            Closed::IdleTimeout => &self.idle_timeout,
            Closed::Handshake => &self.handshake,
        }
    }

    /// Count a connection the server closed.
    pub fn closed(&self, why: Closed) {
        self.closed_counter(why).fetch_add(1, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections refused so far, for either reason.
    pub fn refused(&self) -> u64 {
        self.refused_total.load(Ordering::Relaxed) + self.refused_address.load(Ordering::Relaxed)
    }

    /// Connections closed so far for `why`.
    pub fn closed_count(&self, why: Closed) -> u64 {
        self.closed_counter(why).load(Ordering::Relaxed)
    }

    /// Prometheus text, metric names starting with `prefix` (e.g. `tkms`).
    pub fn render(&self, prefix: &str) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP {prefix}_connections_open Connections open now.\n\
             # TYPE {prefix}_connections_open gauge\n\
             {prefix}_connections_open {}",
            get(&self.open)
        );
        let _ = writeln!(
            out,
            "# HELP {prefix}_connections_accepted_total Connections admitted.\n\
             # TYPE {prefix}_connections_accepted_total counter\n\
             {prefix}_connections_accepted_total {}",
            get(&self.accepted)
        );
        let _ = writeln!(
            out,
            "# HELP {prefix}_connections_refused_total Connections closed on accept, by bound.\n\
             # TYPE {prefix}_connections_refused_total counter\n\
             {prefix}_connections_refused_total{{reason=\"total\"}} {}\n\
             {prefix}_connections_refused_total{{reason=\"per_address\"}} {}",
            get(&self.refused_total),
            get(&self.refused_address)
        );
        let _ = writeln!(
            out,
            "# HELP {prefix}_connections_timed_out_total Connections the server closed, by reason.\n\
             # TYPE {prefix}_connections_timed_out_total counter\n\
             {prefix}_connections_timed_out_total{{reason=\"header\"}} {}\n\
             {prefix}_connections_timed_out_total{{reason=\"body\"}} {}\n\
             {prefix}_connections_timed_out_total{{reason=\"idle\"}} {}\n\
             {prefix}_connections_timed_out_total{{reason=\"handshake\"}} {}",
            get(&self.header_timeout),
            get(&self.body_timeout),
            get(&self.idle_timeout),
            get(&self.handshake)
        );
        out
    }
}

/// The address a connection is counted under: the IPv4 address (also for an IPv4-mapped
/// IPv6 address), or the IPv6 `/64`.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                IpAddr::V4(v4)
            } else {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        }
    }
}

struct GateInner {
    limits: ConnectionLimits,
    total: Option<Arc<Semaphore>>,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    stats: Arc<ConnectionStats>,
}

/// Admits connections within [`ConnectionLimits`]. Cheap to clone.
#[derive(Clone)]
pub struct ConnectionGate {
    inner: Arc<GateInner>,
}

impl std::fmt::Debug for ConnectionGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionGate")
            .field("limits", &self.inner.limits)
            .field("open", &self.inner.stats.open())
            .finish()
    }
}

impl ConnectionGate {
    /// A gate with these limits, counting into `stats`.
    pub fn new(limits: ConnectionLimits, stats: Arc<ConnectionStats>) -> Self {
        let total = (limits.max_connections > 0).then(|| {
            Arc::new(Semaphore::new(
                limits.max_connections.min(Semaphore::MAX_PERMITS),
            ))
        });
        Self {
            inner: Arc::new(GateInner {
                limits,
                total,
                per_address: Mutex::new(HashMap::new()),
                stats,
            }),
        }
    }

    /// The counters this gate updates.
    pub fn stats(&self) -> &Arc<ConnectionStats> {
        &self.inner.stats
    }

    /// Admit a connection from `peer`, or say which bound refuses it.
    pub fn admit(&self, peer: SocketAddr) -> Result<Admitted, Refused> {
        let inner = &self.inner;
        let permit = match &inner.total {
            Some(total) => {
                let Ok(permit) = Arc::clone(total).try_acquire_owned() else {
                    inner.stats.refused_total.fetch_add(1, Ordering::Relaxed);
                    return Err(Refused::Total);
                };
                Some(permit)
            }
            None => None,
        };
        let key = address_key(peer.ip());
        {
            let mut map = inner
                .per_address
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let count = map.entry(key).or_insert(0);
            if inner.limits.max_per_address > 0 && *count >= inner.limits.max_per_address {
                if *count == 0 {
                    map.remove(&key);
                }
                inner.stats.refused_address.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Address);
            }
            *count += 1;
        }
        inner.stats.open.fetch_add(1, Ordering::Relaxed);
        inner.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted {
            _permit: permit,
            key,
            gate: Arc::clone(inner),
        })
    }

    /// Wait until every admitted connection has ended, for at most `limit`; whether they
    /// all did.
    pub async fn drained(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.inner.stats.open() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An admitted connection's slot; dropping it gives the slot back.
pub struct Admitted {
    _permit: Option<OwnedSemaphorePermit>,
    key: IpAddr,
    gate: Arc<GateInner>,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("address", &self.key)
            .finish_non_exhaustive()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut map = self
            .gate
            .per_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.key);
            }
        }
        drop(map);
        self.gate.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bounds_per_address_and_in_total_and_gives_slots_back() {
        let stats = Arc::new(ConnectionStats::default());
        let gate = ConnectionGate::new(
            ConnectionLimits {
                max_connections: 3,
                max_per_address: 2,
            },
            Arc::clone(&stats),
        );
        let a1 = gate.admit(addr("10.0.0.1:1")).unwrap();
        let a2 = gate.admit(addr("10.0.0.1:2")).unwrap();
        assert_eq!(
            gate.admit(addr("10.0.0.1:3")).unwrap_err(),
            Refused::Address
        );
        let b1 = gate.admit(addr("10.0.0.2:1")).unwrap();
        assert_eq!(gate.admit(addr("10.0.0.3:1")).unwrap_err(), Refused::Total);
        assert_eq!(stats.open(), 3);
        assert_eq!(stats.refused(), 2);
        drop(a1);
        let a3 = gate.admit(addr("10.0.0.1:4")).unwrap();
        drop((a2, a3, b1));
        assert_eq!(stats.open(), 0);
        assert!(gate.inner.per_address.lock().unwrap().is_empty());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            address_key("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            address_key("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
