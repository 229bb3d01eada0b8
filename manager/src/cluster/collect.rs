//! The fan-out loop: one [`Collector`] run over gRPC calls with a per-node timeout, and the
//! per-node circuit breakers that order the nodes.

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use tkms_crypto::{
    collect::{BreakerChange, Breakers, Collector, Liveness, Plan},
    NodeIndex, PublicKeySet, SecretScalar,
};
use tkms_proto::{node::v1::node_client::NodeClient, tls::ManagerTls, ClusterSuite as S};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::{
    requests::failure_of, ClusterError, Core, Fanout, Gather, Health, Hedge, NodeEndpoint,
    NodeFailure, ProofCounts, INITIAL_HEDGE,
};

impl Health {
    fn new(nodes: impl IntoIterator<Item = NodeIndex>) -> Self {
        Self {
            breakers: Mutex::new(Breakers::new(nodes)),
            clock: Instant::now(),
        }
    }

    fn breakers(&self) -> std::sync::MutexGuard<'_, Breakers> {
        self.breakers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whom a request asks, and its hedge delay (at most `ceiling`, the node timeout).
    fn plan(
        &self,
        fanout: Fanout,
        threshold: usize,
        nodes: usize,
        ceiling: Duration,
    ) -> (Plan, Option<Duration>) {
        let now = self.clock.elapsed();
        let mut breakers = self.breakers();
        match fanout {
            Fanout::All => (breakers.plan(now, nodes, false), None),
            Fanout::Hedged { extra, hedge } => {
                let delay = match hedge {
                    Hedge::After(delay) => delay,
                    Hedge::Auto => breakers.hedge_delay(now, threshold, INITIAL_HEDGE, ceiling),
                };
                (
                    breakers.plan(now, threshold + usize::from(extra), true),
                    Some(delay),
                )
            }
        }
    }

    /// What a call to `node` showed; `took` is its answer time when it answered in full.
    pub(super) fn record(&self, node: NodeIndex, liveness: Liveness, took: Option<Duration>) {
        let now = self.clock.elapsed();
        let mut breakers = self.breakers();
        if let Some(took) = took {
            breakers.answered_in(node, took);
        }
        match breakers.record(node, now, liveness) {
            Some(BreakerChange::Opened { cooldown }) => tracing::warn!(
                %node,
                cooldown_ms = u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX),
                "node keeps failing: asked last until its cool-down passes"
            ),
            Some(BreakerChange::Closed) => tracing::info!(%node, "node answers again"),
            None => {}
        }
    }
}

/// What a node's call returned, as the collector sees it.
fn liveness<T>(answer: &Result<T, NodeFailure>) -> Liveness {
    match answer {
        Err(NodeFailure::Timeout | NodeFailure::Unreachable(_)) => Liveness::Down,
        _ => Liveness::Answered,
    }
}

impl Core {
    pub(super) fn new(
        endpoints: &[NodeEndpoint],
        keys: PublicKeySet<S>,
        epoch: u64,
        manager_key: &SecretScalar<S>,
        timeout: Duration,
    ) -> Result<Self, ClusterError> {
        let mut nodes = BTreeMap::new();
        let tls = ManagerTls::new(manager_key)
            .map_err(|e| ClusterError::Invalid(format!("TLS identity: {e}")))?;
        for e in endpoints {
            keys.public_share(e.index).map_err(|_| {
                ClusterError::Invalid(format!("node {} is not in the key set", e.index))
            })?;
            let pinned;
            let tls = match &e.key {
                Some(key) => {
                    pinned = ManagerTls::pinned(manager_key, key).map_err(|err| {
                        ClusterError::Invalid(format!("node {} key: {err}", e.index))
                    })?;
                    &pinned
                }
                None => &tls,
            };
            let endpoint = tls
                .endpoint(&e.url)
                .map_err(|err| ClusterError::Invalid(format!("node {}: {err}", e.index)))?
                .connect_timeout(timeout)
                .timeout(timeout);
            let channel = tls.channel(&endpoint);
            nodes.insert(e.index, NodeClient::new(channel));
        }
        Ok(Self {
            health: Health::new(nodes.keys().copied()),
            nodes,
            keys,
            epoch,
            timeout,
            proofs: ProofCounts::default(),
        })
    }

    /// Run one fan-out of `items` items to its end: ask the nodes the [`Collector`] names
    /// (calling `call` with each node's client and `request`), hand every answer to `gather`,
    /// verify when the collector says so, and report each item once it is decided.
    pub(super) async fn collect<Req, Resp, F, Fut, G>(
        &self,
        fanout: Fanout,
        items: usize,
        request: Req,
        call: F,
        gather: &mut G,
    ) where
        Req: Clone + Send + 'static,
        Resp: Send + 'static,
        F: Fn(NodeClient<Channel>, Req) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>
            + Send
            + 'static,
        G: Gather<Response = Resp>,
    {
        let threshold = usize::from(self.keys.threshold());
        let (plan, hedge) = self
            .health
            .plan(fanout, threshold, self.nodes.len(), self.timeout);
        let mut collector: Collector<NodeFailure> =
            Collector::new(plan, self.keys.threshold(), items);
        let mut calls: JoinSet<(NodeIndex, Result<Resp, NodeFailure>, Duration)> = JoinSet::new();
        let launch = |calls: &mut JoinSet<_>, nodes: Vec<NodeIndex>| {
            for node in nodes {
                let Some(client) = self.nodes.get(&node) else {
                    continue;
                };
                let pending = call(client.clone(), request.clone());
                let timeout = self.timeout;
                calls.spawn(async move {
                    let asked = Instant::now();
                    let answer = match tokio::time::timeout(timeout, pending).await {
                        Err(_) => Err(NodeFailure::Timeout),
                        Ok(Err(status)) => Err(failure_of(&status)),
                        Ok(Ok(response)) => Ok(response.into_inner()),
                    };
                    (node, answer, asked.elapsed())
                });
            }
        };
        launch(&mut calls, collector.start());
        // One more node each time the hedge delay passes without the answers (not reset by
        // each answer: the first answers coming in time says nothing of the last).
        let mut hedge_at = hedge.map(|delay| tokio::time::Instant::now() + delay);
        let mut linger_until: Option<tokio::time::Instant> = None;
        loop {
            let ready = collector.to_verify();
            if !ready.is_empty() {
                gather.verify(&mut collector, ready);
            }
            for (item, outcome) in collector.settle() {
                gather.decided(&collector, item, outcome);
            }
            if collector.is_done() && linger_until.is_none() {
                match gather.linger() {
                    Some(grace) if !calls.is_empty() => {
                        linger_until = Some(tokio::time::Instant::now() + grace);
                    }
                    _ => break,
                }
            }
            let replacements = collector.more();
            if !replacements.is_empty() {
                // A replacement gets its own hedge delay before a hedge asks past it.
                if let (Some(at), Some(delay)) = (&mut hedge_at, hedge) {
                    *at = (*at).max(tokio::time::Instant::now() + delay);
                }
            }
            launch(&mut calls, replacements);
            let joined = if let Some(until) = linger_until {
                match tokio::time::timeout_at(until, calls.join_next()).await {
                    Ok(Some(joined)) => joined,
                    Ok(None) | Err(_) => break,
                }
            } else if let (Some(at), Some(delay)) =
                (hedge_at.filter(|_| collector.waiting() > 0), hedge)
            {
                match tokio::time::timeout_at(at, calls.join_next()).await {
                    Ok(Some(joined)) => joined,
                    Ok(None) => break,
                    Err(_) => {
                        if let Some(node) = collector.hedge() {
                            launch(&mut calls, vec![node]);
                        }
                        hedge_at = Some(tokio::time::Instant::now() + delay);
                        continue;
                    }
                }
            } else {
                match calls.join_next().await {
                    Some(joined) => joined,
                    None => break,
                }
            };
            // A call task only ends early when aborted.
            let Ok((node, answer, took)) = joined else {
                continue;
            };
            self.health
                .record(node, liveness(&answer), answer.is_ok().then_some(took));
            match answer {
                Ok(response) => {
                    collector.answered(node);
                    if let Err(failure) = gather.answer(&mut collector, node, response) {
                        collector.node_failed(node, &failure);
                    }
                }
                Err(failure) => collector.node_failed(node, &failure),
            }
        }
        calls.abort_all();
    }
}
