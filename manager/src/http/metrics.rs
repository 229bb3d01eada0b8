//! The manager's Prometheus counters: requests by route and outcome (the error code, or `ok`),
//! and the partials each node failed to contribute.

use std::{collections::BTreeMap, fmt::Write as _, sync::Mutex};

use crate::cluster::NodeFailure;

/// Prometheus counters.
#[derive(Debug, Default)]
pub struct Metrics {
    v0_requests: Mutex<BTreeMap<&'static str, u64>>,
    node_failures: Mutex<BTreeMap<(u16, &'static str), u64>>,
    v1_requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    /// A partial node `node` did not contribute.
    pub(crate) fn node_failed(&self, node: u16, failure: &NodeFailure) {
        let kind = crate::front::failure_kind(failure);
        if let Ok(mut map) = self.node_failures.lock() {
            *map.entry((node, kind)).or_default() += 1;
        }
    }

    /// A `/v0/delegate` answer: `ok`, or the outcome class of its error code.
    pub(crate) fn v0(&self, outcome: &'static str) {
        if let Ok(mut map) = self.v0_requests.lock() {
            *map.entry(outcome).or_default() += 1;
        }
    }

    /// A `/v1` answer on `route`: `ok`, or its error code.
    pub(crate) fn v1(&self, route: &'static str, outcome: &'static str) {
        if let Ok(mut map) = self.v1_requests.lock() {
            *map.entry((route, outcome)).or_default() += 1;
        }
    }

    /// The Prometheus text of every counter.
    pub(crate) fn render(&self) -> String {
        let mut out = String::from(
            "# HELP tkms_delegate_requests_total /v0/delegate requests by outcome.\n\
             # TYPE tkms_delegate_requests_total counter\n",
        );
        if let Ok(map) = self.v0_requests.lock() {
            for outcome in ["ok", "bad_request", "unauthorized", "unavailable"] {
                let count = map.get(outcome).copied().unwrap_or_default();
                let _ = writeln!(
                    out,
                    "tkms_delegate_requests_total{{outcome=\"{outcome}\"}} {count}"
                );
            }
            for (outcome, count) in map.iter() {
                if !matches!(
                    *outcome,
                    "ok" | "bad_request" | "unauthorized" | "unavailable"
                ) {
                    let _ = writeln!(
                        out,
                        "tkms_delegate_requests_total{{outcome=\"{outcome}\"}} {count}"
                    );
                }
            }
        }
        out.push_str(
            "# HELP tkms_v1_requests_total /v1 requests by route and outcome.\n\
             # TYPE tkms_v1_requests_total counter\n",
        );
        if let Ok(map) = self.v1_requests.lock() {
            for ((route, outcome), count) in map.iter() {
                let _ = writeln!(
                    out,
                    "tkms_v1_requests_total{{route=\"{route}\",outcome=\"{outcome}\"}} {count}"
                );
            }
        }
        out.push_str(
            "# HELP tkms_node_failures_total Partials a node failed to contribute, by reason.\n\
             # TYPE tkms_node_failures_total counter\n",
        );
        if let Ok(map) = self.node_failures.lock() {
            for ((node, kind), count) in map.iter() {
                let _ = writeln!(
                    out,
                    "tkms_node_failures_total{{node=\"{node}\",reason=\"{kind}\"}} {count}"
                );
            }
        }
        out
    }
}
