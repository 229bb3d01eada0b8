//! The reconciliation of the served epoch with what the nodes hold
//! ([`tkms_crypto::handover::decide`]), and the two-phase commit of an epoch.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tkms_crypto::{
    collect::Liveness,
    handover::{self, Candidate, Known, Report},
    NodeIndex, Suite,
};
use tkms_proto::{
    node::v1::{self as pb, node_client::NodeClient},
    SignedRequest,
};
use tkms_registry::access::{Published, Registry};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::cluster::{Cluster, ClusterError, NodeEndpoint};
use tkms_proto::ClusterSuite as S;

use super::{
    lock, record::node_key, Admin, AdminError, ClusterHealth, DroppedMember, EpochNode,
    EpochRecord, ManagerState, NodeView, RECONCILE_INTERVAL,
};

/// A survey's error when a node did not answer within the node timeout.
pub(super) const TIMED_OUT: &str = "timed out";

impl Admin {
    /// Ask every node in `urls` for its status, concurrently.
    pub async fn survey(&self, urls: &[String]) -> Vec<NodeView> {
        let mut calls = JoinSet::new();
        for (k, url) in urls.iter().enumerate() {
            let client = self.client(url);
            let (url, timeout) = (url.clone(), self.timeout);
            calls.spawn(async move {
                let answer = match client {
                    Err(e) => Err(e.to_string()),
                    Ok(mut c) => {
                        match tokio::time::timeout(timeout, c.status(pb::StatusRequest {})).await {
                            Err(_) => Err(TIMED_OUT.to_string()),
                            Ok(Err(s)) => Err(s.message().to_string()),
                            Ok(Ok(r)) => Ok(r.into_inner()),
                        }
                    }
                };
                (k, url, answer)
            });
        }
        let mut views: Vec<(usize, NodeView)> = Vec::new();
        while let Some(Ok((k, url, answer))) = calls.join_next().await {
            let view = match answer {
                Ok(s) => NodeView::from_status(url, s),
                Err(e) => NodeView::unreachable(url, e),
            };
            views.push((k, view));
        }
        views.sort_by_key(|(k, _)| *k);
        // A channel whose call failed at once is dialed anew next time (a reconnection begun
        // during a partition can fail after the heal).
        for (_, v) in &views {
            if v.error.as_deref().is_some_and(|e| e != TIMED_OUT) {
                lock(&self.clients).remove(&v.url);
            }
        }
        views.into_iter().map(|(_, v)| v).collect()
    }

    /// Every node URL the manager knows: configured, serving, or recorded in an epoch.
    pub fn known_urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = self.nodes.clone();
        let mut add = |url: &str| {
            if !urls.iter().any(|u| u == url) {
                urls.push(url.to_string());
            }
        };
        if let Some(record) = self.served.record() {
            for n in &record.nodes {
                add(&n.url);
            }
        }
        if let Ok(epochs) = self.epochs() {
            for r in &epochs {
                for n in &r.nodes {
                    add(&n.url);
                }
            }
        }
        urls
    }

    /// Serve the last committed epoch of the state file at once (the nodes may not answer
    /// yet), then reconcile with what the nodes hold. `Ok(None)` before any DKG.
    pub async fn recover(&self) -> Result<Option<EpochRecord>, AdminError> {
        if let Some(path) = &self.state_file {
            if let Some(record) = ManagerState::load(path)?.epochs.pop() {
                self.serve(record)?;
            }
        }
        if let Err(e) = self.reconcile().await {
            tracing::warn!(error = %e, "could not reconcile with the nodes yet; retrying");
        }
        Ok(self.served.record())
    }

    /// Reconcile every [`RECONCILE_INTERVAL`] until the task is dropped.
    pub async fn reconcile_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e, "reconciling the epochs with the nodes");
            }
        }
    }

    /// The published epoch of the chain, when one is configured (`Err` while it cannot be
    /// read: nothing is decided then).
    pub(super) fn published(&self) -> Result<Option<u64>, AdminError> {
        let Some(chain) = &self.chain else {
            return Ok(None);
        };
        match chain.published_epoch() {
            Published::NotTracked => Ok(None),
            Published::Nothing => Ok(Some(0)),
            Published::Epoch(p) => Ok(Some(p.epoch)),
            Published::Unknown => Err(AdminError::Node(
                "the registry's published epoch cannot be read".into(),
            )),
        }
    }

    /// Bring the served epoch in line with the nodes ([`handover::decide`]): serve the newest
    /// committed epoch enough nodes hold, commit a finished ceremony nobody committed, roll
    /// back one too few finished, and tell the nodes that still hold superseded shares (once
    /// the requests on the old epoch have drained). Skipped while a ceremony runs.
    pub async fn reconcile(&self) -> Result<(), AdminError> {
        let Ok(_settling) = self.settling.try_lock() else {
            return Ok(());
        };
        let views = self.survey(&self.known_urls()).await;
        self.observe(&views);
        let reports: Vec<Report<String>> = views
            .iter()
            .filter(|v| v.reachable)
            .map(NodeView::report)
            .collect();
        let known = Known {
            recorded: self.epochs()?.last().map_or(0, |r| r.epoch),
            published: self.published()?,
            ceremony_running: false,
        };
        let decision = handover::decide(known, &reports);
        if let Some(commit) = &decision.commit {
            let record = record_of(commit, &views);
            tracing::warn!(
                epoch = record.epoch,
                holders = record.nodes.len(),
                "a finished ceremony was never committed (the manager stopped): committing it"
            );
            self.commit(record).await?;
            self.update_health(&views);
            return Ok(());
        }
        if let Some(serve) = &decision.serve {
            let record = record_of(serve, &views);
            let current = self.served.record();
            let servable = |r: &EpochRecord| {
                views.iter().filter(|v| v.holds(r)).count() >= usize::from(r.threshold)
            };
            let same = |c: &EpochRecord| {
                (c.epoch, &c.transcript_hash) == (record.epoch, &record.transcript_hash)
            };
            let switch = match &current {
                None => true,
                Some(c) => !same(c) && (record.epoch > c.epoch || !servable(c)),
            };
            // Holders that were down when the epoch was committed are added when they answer.
            let grown = current.as_ref().filter(|c| same(c)).and_then(|c| {
                let missing: Vec<&EpochNode> = record
                    .nodes
                    .iter()
                    .filter(|n| !c.nodes.iter().any(|m| m.index == n.index))
                    .collect();
                (!missing.is_empty()).then(|| {
                    let mut merged = c.clone();
                    merged.nodes.extend(missing.into_iter().cloned());
                    merged.nodes.sort_by_key(|n| n.index);
                    merged
                        .dropped
                        .retain(|d| !merged.nodes.iter().any(|n| n.index == d.index));
                    merged
                })
            });
            if let Some(merged) = grown {
                tracing::info!(
                    epoch = merged.epoch,
                    holders = merged.nodes.len(),
                    "a holder of the served epoch answers again: asking it too"
                );
                self.persist(&merged)?;
                self.serve(merged)?;
            } else if switch {
                tracing::warn!(
                    epoch = record.epoch,
                    was = current.as_ref().map(|c| c.epoch),
                    "the nodes hold a newer committed epoch than the one served: serving it"
                );
                self.persist(&record)?;
                self.serve(record)?;
            }
        }
        for (url, epoch) in &decision.abort {
            self.abort_at(url, *epoch).await;
        }
        if !decision.settle.is_empty() && self.drained() {
            if let Some(record) = self.served.record() {
                // All at once: one after another, the last node of a committee across a WAN
                // learnt of the epoch n round trips after the first.
                futures::future::join_all(
                    decision
                        .settle
                        .iter()
                        .map(|url| self.commit_at(url, &record, &views)),
                )
                .await;
            }
        }
        self.update_health(&views);
        Ok(())
    }

    /// Tell the served cluster's breakers what the survey showed.
    pub(super) fn observe(&self, views: &[NodeView]) {
        let (Some(cluster), Some(record)) = (self.served.cluster(), self.served.record()) else {
            return;
        };
        for n in &record.nodes {
            let Some(index) = NodeIndex::new(n.index) else {
                continue;
            };
            if let Some(v) = views.iter().find(|v| v.url == n.url) {
                let liveness = if v.reachable && v.holds(&record) {
                    Liveness::Answered
                } else {
                    Liveness::Down
                };
                cluster.observe(index, liveness);
            }
        }
    }

    pub(super) fn update_health(&self, views: &[NodeView]) {
        let record = self.served.record();
        let holders = record
            .as_ref()
            .map_or(0, |r| views.iter().filter(|v| v.holds(r)).count());
        let health = ClusterHealth {
            reachable: views.iter().filter(|v| v.reachable).count(),
            holders,
            servable: record
                .as_ref()
                .is_some_and(|r| holders >= usize::from(r.threshold)),
            at: Some(Instant::now()),
        };
        *lock(&self.health) = Some(health);
    }

    /// Whether the manager can serve, as seen within the last seconds (surveyed now if not).
    pub async fn health(&self) -> ClusterHealth {
        let fresh = lock(&self.health)
            .clone()
            .filter(|h| h.at.is_some_and(|at| at.elapsed() < RECONCILE_INTERVAL * 2));
        if let Some(health) = fresh {
            return health;
        }
        let urls: Vec<String> = self
            .served
            .record()
            .map(|r| r.nodes.into_iter().map(|n| n.url).collect())
            .unwrap_or_default();
        let views = self.survey(&urls).await;
        self.update_health(&views);
        lock(&self.health).clone().unwrap_or(ClusterHealth {
            reachable: 0,
            holders: 0,
            servable: false,
            at: None,
        })
    }

    /// Whether the clusters replaced by commits have no request left at their nodes (or have
    /// had every chance to finish).
    pub(super) fn drained(&self) -> bool {
        let limit = self.timeout * 3 + Duration::from_secs(1);
        let mut retiring = lock(&self.retiring);
        retiring.retain(|(cluster, since)| cluster.in_use() && since.elapsed() < limit);
        retiring.is_empty()
    }

    /// Commit `record`: publish it (with a chain: the commit point), record it durably, and
    /// serve it. The nodes are told (and erase the superseded shares) by the next
    /// reconciliation, once the old epoch's requests have drained.
    pub(super) async fn commit(&self, record: EpochRecord) -> Result<(), AdminError> {
        let keys = record.keys()?;
        if let Some(previous) = self.served.record() {
            if previous.keys()?.public_key_encoded() != keys.public_key_encoded() {
                return Err(AdminError::Ceremony(
                    "the new epoch has another public key than the served one; it is not committed"
                        .into(),
                ));
            }
        }
        self.publish(&record).await?;
        self.persist(&record)?;
        self.serve(record.clone())?;
        tracing::info!(
            epoch = record.epoch,
            holders = record.nodes.len(),
            dropped = record.dropped.len(),
            public_key = %hex::encode(S::encode_point(&keys.public_key())),
            "epoch committed"
        );
        Ok(())
    }

    /// Tell the node at `url` that `record` is committed.
    pub(super) async fn commit_at(&self, url: &str, record: &EpochRecord, views: &[NodeView]) {
        let mut request = pb::CommitEpochRequest {
            epoch: record.epoch,
            transcript_hash: hex::decode(&record.transcript_hash).unwrap_or_default(),
            manager: None,
        };
        request.sign(&self.manager_key);
        let Some(mut client) = self.client_for(url, views) else {
            return;
        };
        match tokio::time::timeout(self.timeout, client.commit_epoch(request)).await {
            Ok(Ok(answer)) => {
                let answer = answer.into_inner();
                tracing::info!(
                    url,
                    epoch = record.epoch,
                    erased = ?answer.erased,
                    retired = !answer.holds_share,
                    "node told of the committed epoch"
                );
            }
            Ok(Err(status)) => {
                tracing::warn!(url, epoch = record.epoch, error = %status.message(), "a node refused the commit; retried later");
            }
            Err(_) => tracing::warn!(url, "commit: no answer; retried later"),
        }
    }

    /// Tell the node at `url` to drop its uncommitted share of `epoch`.
    pub(super) async fn abort_at(&self, url: &str, epoch: u64) {
        let mut request = pb::AbortEpochRequest {
            epoch,
            manager: None,
        };
        request.sign(&self.manager_key);
        let Ok(mut client) = self.client(url) else {
            return;
        };
        match tokio::time::timeout(self.timeout, client.abort_epoch(request)).await {
            Ok(Ok(_)) => tracing::warn!(url, epoch, "uncommitted epoch rolled back at the node"),
            Ok(Err(status)) => {
                tracing::warn!(url, epoch, error = %status.message(), "roll-back refused");
            }
            Err(_) => tracing::warn!(url, epoch, "roll-back: no answer"),
        }
    }

    /// A client pinned to the node key `views` report for `url` (unpinned if unknown).
    pub(super) fn client_for(&self, url: &str, views: &[NodeView]) -> Option<NodeClient<Channel>> {
        let key = views
            .iter()
            .find(|v| v.url == url)
            .and_then(|v| node_key(&v.node_key).ok());
        match key {
            Some(key) => self.pinned_client(url, &key).ok(),
            None => self.client(url).ok(),
        }
    }

    pub(super) fn serve(&self, record: EpochRecord) -> Result<(), AdminError> {
        let keys = record.keys()?;
        let mut endpoints = Vec::with_capacity(record.nodes.len());
        for n in &record.nodes {
            let index = NodeIndex::new(n.index)
                .ok_or_else(|| AdminError::State("a served node has index 0".into()))?;
            endpoints.push(NodeEndpoint {
                index,
                url: n.url.clone(),
                key: n.key()?,
            });
        }
        let cluster = Cluster::new(
            &endpoints,
            keys,
            record.epoch,
            &self.manager_key,
            self.timeout,
        )
        .map_err(|e: ClusterError| AdminError::State(e.to_string()))?
        .with_fanout(self.fanout)
        .with_batching(self.batching);
        tracing::info!(
            epoch = record.epoch,
            threshold = record.threshold,
            n = record.nodes.len(),
            "serving epoch"
        );
        if let Some(old) = self.served.set(cluster, record) {
            lock(&self.retiring).push((old, Instant::now()));
        }
        Ok(())
    }

    pub(super) fn persist(&self, record: &EpochRecord) -> Result<(), AdminError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let mut state = ManagerState::load(path)?;
        state.epochs.retain(|e| e.epoch != record.epoch);
        state.epochs.push(record.clone());
        state.epochs.sort_by_key(|e| e.epoch);
        state.save(path)
    }
}

/// The record of a candidate epoch, with the URLs and node keys the survey found.
pub(super) fn record_of(candidate: &Candidate<String>, views: &[NodeView]) -> EpochRecord {
    let nodes: Vec<EpochNode> = candidate
        .holders
        .iter()
        .map(|(index, url)| EpochNode {
            index: *index,
            url: url.clone(),
            node_key: views
                .iter()
                .find(|v| v.url == *url)
                .map(|v| v.node_key.clone())
                .unwrap_or_default(),
        })
        .collect();
    let dropped = candidate
        .committee
        .iter()
        .filter(|i| !nodes.iter().any(|n| n.index == **i))
        .map(|i| DroppedMember {
            index: *i,
            url: String::new(),
            reason: "no reachable node reports a share of this epoch".into(),
        })
        .collect();
    EpochRecord {
        epoch: candidate.id.epoch,
        threshold: candidate.threshold,
        commitment: hex::encode(&candidate.id.commitment),
        transcript_hash: hex::encode(&candidate.id.transcript_hash),
        nodes,
        committee: candidate.committee.clone(),
        dropped,
    }
}
