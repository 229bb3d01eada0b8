//! DKG and reshare ceremonies: the signed start request to every committee member, the
//! members' answers, and the commit (or roll-back) of the epoch they produced.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use tkms_proto::{node::v1 as pb, SignedRequest};
use tokio::task::JoinSet;

use super::{
    reconcile::TIMED_OUT, record::node_key, Admin, AdminError, DroppedMember, EpochNode,
    EpochRecord, ManagerState, NodeView,
};

/// The members of a finished ceremony holding a share, per (commitment, transcript hash).
type Agreed = BTreeMap<(Vec<u8>, Vec<u8>), Vec<EpochNode>>;

/// A participant's answer to a start request: its index, URL and node key, and the answer
/// (unless it timed out).
type CeremonyAnswer = (
    u16,
    String,
    String,
    Result<
        Result<tonic::Response<pb::StartCeremonyResponse>, tonic::Status>,
        tokio::time::error::Elapsed,
    >,
);

/// Surveys again of members that failed at once, before a ceremony is refused for them.
const QUICK_RETRIES: usize = 3;

/// Longest wait for members told of the committed epoch to end a stale ceremony.
const CATCH_UP_WAIT: Duration = Duration::from_secs(3);

impl Admin {
    /// Every epoch committed so far, oldest first.
    pub fn epochs(&self) -> Result<Vec<EpochRecord>, AdminError> {
        match &self.state_file {
            Some(path) => Ok(ManagerState::load(path)?.epochs),
            None => Ok(self.served.record().into_iter().collect()),
        }
    }

    /// The committed epoch `epoch`'s record, if the manager recorded it.
    pub fn epoch(&self, epoch: u64) -> Result<Option<EpochRecord>, AdminError> {
        if let Some(record) = self.served.record().filter(|r| r.epoch == epoch) {
            return Ok(Some(record));
        }
        Ok(self.epochs()?.into_iter().find(|r| r.epoch == epoch))
    }

    /// Run a DKG among `urls` (default: every configured node) with threshold `t`. Node `k`
    /// of the list gets index `k + 1`.
    pub async fn dkg(
        &self,
        urls: Option<Vec<String>>,
        threshold: u16,
    ) -> Result<EpochRecord, AdminError> {
        let Ok(_busy) = self.busy.try_lock() else {
            return Err(AdminError::Busy);
        };
        let _settling = self.settling.lock().await;
        if let Some(current) = self.served.record() {
            return Err(AdminError::Invalid(format!(
                "the cluster already has a key (epoch {}); a new DKG would make every existing \
                 ciphertext unreadable. Reshare instead",
                current.epoch
            )));
        }
        let urls = urls.unwrap_or_else(|| self.nodes.clone());
        let views = self.reachable(&urls).await?;
        let epoch = self.next_epoch(&views);
        let members: Vec<(u16, &NodeView)> = views
            .iter()
            .enumerate()
            .map(|(k, v)| (u16::try_from(k + 1).unwrap_or(u16::MAX), v))
            .collect();
        let recipients = committee(&members)?;
        let request = pb::StartCeremonyRequest {
            kind: pb::CeremonyKind::Dkg.into(),
            epoch,
            threshold: u32::from(threshold),
            dealers: Vec::new(),
            recipients,
            round_timeout_ms: u64::try_from(self.round_timeout.as_millis()).unwrap_or(u64::MAX),
            ..Default::default()
        };
        self.ceremony(request, &members, threshold).await
    }

    /// Reshare the served key to `urls` with threshold `t`: nodes that hold a share of the
    /// current epoch keep their index and deal; a node that held an index before keeps it;
    /// new nodes get the next free indices.
    pub async fn reshare(
        &self,
        urls: Vec<String>,
        threshold: u16,
    ) -> Result<EpochRecord, AdminError> {
        let Ok(_busy) = self.busy.try_lock() else {
            return Err(AdminError::Busy);
        };
        let _settling = self.settling.lock().await;
        let current = self
            .served
            .record()
            .ok_or_else(|| AdminError::Invalid("no epoch to reshare: run a DKG first".into()))?;
        let views = self.reachable(&urls).await?;
        let views = self.catch_up(&urls, views, &current).await?;
        // Old holders that are reachable and hold the share deal; they need not all be in the
        // new committee.
        let old_views = self.old_views(&current, &views).await;
        let dealers: Vec<(u16, &NodeView)> = current
            .nodes
            .iter()
            .zip(&old_views)
            .filter(|(_, v)| v.reachable && v.holds(&current))
            .map(|(n, v)| (n.index, v))
            .collect();
        if dealers.len() < usize::from(current.threshold) {
            return Err(AdminError::Node(format!(
                "only {} of the {} old share holders needed to reshare are reachable",
                dealers.len(),
                current.threshold
            )));
        }
        let mut taken: BTreeSet<u16> = current.committee_indices().into_iter().collect();
        taken.extend(current.dropped.iter().map(|d| d.index));
        let mut next_free = taken.iter().max().copied().unwrap_or(0);
        let mut members: Vec<(u16, &NodeView)> = Vec::new();
        for v in &views {
            let known = current
                .nodes
                .iter()
                .map(|n| (n.index, &n.url))
                .chain(current.dropped.iter().map(|d| (d.index, &d.url)))
                .find(|(_, url)| **url == v.url)
                .map(|(i, _)| i);
            let index = if let Some(i) = known {
                i
            } else {
                next_free = next_free
                    .checked_add(1)
                    .ok_or_else(|| AdminError::Invalid("too many nodes".into()))?;
                next_free
            };
            if members.iter().any(|(i, _)| *i == index) {
                return Err(AdminError::Invalid(format!("{} is listed twice", v.url)));
            }
            members.push((index, v));
        }
        let request = pb::StartCeremonyRequest {
            kind: pb::CeremonyKind::Reshare.into(),
            epoch: self.next_epoch(&views).max(self.next_epoch(&old_views)),
            threshold: u32::from(threshold),
            dealers: committee(&dealers)?,
            recipients: committee(&members)?,
            previous_commitment: hex::decode(&current.commitment)
                .map_err(|e| AdminError::State(e.to_string()))?,
            previous_epoch: current.epoch,
            round_timeout_ms: u64::try_from(self.round_timeout.as_millis()).unwrap_or(u64::MAX),
            manager: None,
        };
        // Every participant (dealer or recipient) runs the ceremony.
        let mut everyone = members.clone();
        for d in &dealers {
            if !everyone.iter().any(|(i, _)| *i == d.0) {
                everyone.push(*d);
            }
        }
        self.ceremony(request, &everyone, threshold).await
    }

    /// The views of `current`'s holders, in its order: those of the new committee from
    /// `views` (just surveyed), the others surveyed now (one round trip less per reshare
    /// across a WAN than surveying them all again).
    async fn old_views(&self, current: &EpochRecord, views: &[NodeView]) -> Vec<NodeView> {
        let known = |url: &str| views.iter().find(|v| v.url == url);
        let missing: Vec<String> = current
            .nodes
            .iter()
            .filter(|n| known(&n.url).is_none())
            .map(|n| n.url.clone())
            .collect();
        let mut surveyed = self.survey(&missing).await.into_iter();
        current
            .nodes
            .iter()
            .filter_map(|n| known(&n.url).cloned().or_else(|| surveyed.next()))
            .collect()
    }

    pub(super) async fn reachable(&self, urls: &[String]) -> Result<Vec<NodeView>, AdminError> {
        if urls.is_empty() {
            return Err(AdminError::Invalid("no nodes given".into()));
        }
        let not_ready =
            |v: &NodeView| !v.reachable || v.node_key.is_empty() || v.p2p_addr.is_empty();
        let mut views = self.survey(urls).await;
        // A node that failed at once (not a timeout) is asked again, on a new channel: a
        // connection attempt begun while it was cut off fails after the heal (seen across 20 ms
        // links: "not ready: … (transport error)" right after a heal), and a ceremony needs
        // every member.
        for _ in 0..QUICK_RETRIES {
            let again: Vec<usize> = (0..views.len())
                .filter(|&k| views[k].error.as_deref().is_some_and(|e| e != TIMED_OUT))
                .collect();
            if again.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let urls_again: Vec<String> = again.iter().map(|&k| views[k].url.clone()).collect();
            for (k, view) in again.into_iter().zip(self.survey(&urls_again).await) {
                views[k] = view;
            }
        }
        let down: Vec<String> = views
            .iter()
            .filter(|v| not_ready(v))
            .map(|v| {
                format!(
                    "{} ({})",
                    v.url,
                    v.error
                        .clone()
                        .unwrap_or_else(|| "no ceremony channel".into())
                )
            })
            .collect();
        if !down.is_empty() {
            return Err(AdminError::Node(format!(
                "every committee member must be up to join a ceremony; not ready: {}",
                down.join(", ")
            )));
        }
        Ok(views)
    }

    /// Members still running a ceremony of an epoch the others committed without them (they
    /// were cut off from it) are told of the committed epoch first, which ends that ceremony at
    /// once (they check for it every half second), and the members are surveyed again; without
    /// this, a node healed just before a reshare stays busy until its ceremony times out and
    /// is dropped from the new committee too. Telling them waits for the old epoch's requests
    /// to drain (at most 3 node timeouts + 1 s after the last commit, the limit of
    /// `drained`); then it waits at most [`CATCH_UP_WAIT`] for their ceremonies to end.
    async fn catch_up(
        &self,
        urls: &[String],
        views: Vec<NodeView>,
        current: &EpochRecord,
    ) -> Result<Vec<NodeView>, AdminError> {
        let behind = |views: &[NodeView]| -> Vec<String> {
            views
                .iter()
                .filter(|v| {
                    !v.ceremony.is_empty()
                        && v.committed_epoch < current.epoch
                        && v.last_ceremony_epoch <= current.epoch
                })
                .map(|v| v.url.clone())
                .collect()
        };
        let stale = behind(&views);
        if stale.is_empty() {
            return Ok(views);
        }
        // Telling a node of the commit erases its superseded share, which waits until the old
        // epoch's requests have drained; `drained` gives up on them after its limit, so this
        // ends. (Skipping the catch-up instead left the member in its stale ceremony, and the
        // reshare dropped it: "another ceremony is in progress on this node", seen when the
        // reshare came soon after the commit, across 20 ms links.)
        while !self.drained() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for url in &stale {
            tracing::info!(url, epoch = current.epoch, "a member still runs a ceremony the others finished: telling it of the committed epoch");
            self.commit_at(url, current, &views).await;
        }
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let fresh = self.reachable(urls).await?;
            if behind(&fresh).is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(fresh);
            }
        }
    }

    /// An epoch number no node has seen (numbers are never reused, even after a roll-back).
    pub(super) fn next_epoch(&self, views: &[NodeView]) -> u64 {
        let seen = views.iter().map(NodeView::newest_seen).max().unwrap_or(0);
        let recorded = self
            .epochs()
            .ok()
            .and_then(|e| e.last().map(|r| r.epoch))
            .unwrap_or(0);
        let served = self.served.record().map_or(0, |r| r.epoch);
        seen.max(served).max(recorded) + 1
    }

    /// Send the signed start request to every participant, wait for all, check agreement,
    /// and commit the result: the members that hold a share, and every member that does not
    /// with the reason, are in the answer. With fewer than `t` holders the ceremony is rolled
    /// back at the nodes that finished it.
    pub(super) async fn ceremony(
        &self,
        mut request: pb::StartCeremonyRequest,
        participants: &[(u16, &NodeView)],
        threshold: u16,
    ) -> Result<EpochRecord, AdminError> {
        request.sign(&self.manager_key);
        let wait = self.round_timeout * 16 + Duration::from_secs(10);
        let mut calls = JoinSet::new();
        for (index, view) in participants {
            // Pinned to the key the node reported: the ceremony runs only with the node that
            // holds it, and the epoch records it for the cluster's connections.
            let key = node_key(&view.node_key)
                .map_err(|e| AdminError::Node(format!("{}: {e}", view.url)))?;
            let mut client = self.pinned_client(&view.url, &key)?;
            let (request, index, url) = (request.clone(), *index, view.url.clone());
            let node_key = view.node_key.clone();
            calls.spawn(async move {
                let answer = tokio::time::timeout(wait, client.start_ceremony(request)).await;
                (index, url, node_key, answer)
            });
        }
        let recipients: BTreeMap<u16, String> = request
            .recipients
            .iter()
            .filter_map(|m| {
                let index = u16::try_from(m.index).ok()?;
                let url = participants
                    .iter()
                    .find(|(i, _)| *i == index)
                    .map(|(_, v)| v.url.clone())?;
                Some((index, url))
            })
            .collect();
        let (agreed, failures) = Self::answers(calls, wait).await;
        if !failures.is_empty() {
            tracing::warn!(?failures, "ceremony members that did not finish");
        }
        let describe = |failures: &BTreeMap<u16, String>| {
            failures
                .iter()
                .map(|(i, f)| format!("node {i}: {f}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if agreed.len() > 1 {
            self.roll_back(request.epoch, &agreed).await;
            return Err(AdminError::Ceremony(format!(
                "nodes finished with {} different transcripts; the epoch is not committed",
                agreed.len()
            )));
        }
        let Some(((commitment, transcript), mut nodes)) = agreed.clone().into_iter().next() else {
            return Err(AdminError::Ceremony(format!(
                "no node finished the ceremony: {}",
                describe(&failures)
            )));
        };
        if nodes.len() < usize::from(threshold) {
            self.roll_back(request.epoch, &agreed).await;
            return Err(AdminError::Ceremony(format!(
                "only {} nodes hold a share of the new epoch, fewer than t = {threshold}; it is \
                 rolled back and the previous epoch is still served: {}",
                nodes.len(),
                describe(&failures)
            )));
        }
        nodes.sort_by_key(|n| n.index);
        let dropped = recipients
            .iter()
            .filter(|(i, _)| !nodes.iter().any(|n| n.index == **i))
            .map(|(i, url)| DroppedMember {
                index: *i,
                url: url.clone(),
                reason: failures
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| "finished without a share".into()),
            })
            .collect();
        let record = EpochRecord {
            epoch: request.epoch,
            threshold,
            commitment: hex::encode(commitment),
            transcript_hash: hex::encode(transcript),
            nodes,
            committee: recipients.keys().copied().collect(),
            dropped,
        };
        // Not committed on an error (a failed publication, a changed key): the nodes keep
        // serving the previous epoch, and the reconciliation retries a publication.
        self.commit(record.clone()).await?;
        Ok(record)
    }

    /// The participants' answers: the members holding a share per (commitment, transcript),
    /// and why the others did not finish.
    pub(super) async fn answers(
        mut calls: JoinSet<CeremonyAnswer>,
        wait: Duration,
    ) -> (Agreed, BTreeMap<u16, String>) {
        let mut agreed: Agreed = BTreeMap::new();
        let mut failures: BTreeMap<u16, String> = BTreeMap::new();
        while let Some(Ok((index, url, node_key, answer))) = calls.join_next().await {
            match answer {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    let entry = agreed.entry((r.commitment, r.transcript_hash)).or_default();
                    if r.holds_share {
                        entry.push(EpochNode {
                            index,
                            url,
                            node_key,
                        });
                    }
                }
                Ok(Err(status)) => {
                    failures.insert(index, status.message().to_string());
                }
                Err(_) => {
                    failures.insert(index, format!("no answer within {wait:?}"));
                }
            }
        }
        (agreed, failures)
    }

    /// Drop an uncommitted epoch at the nodes that finished it.
    pub(super) async fn roll_back(&self, epoch: u64, agreed: &Agreed) {
        for node in agreed.values().flatten() {
            self.abort_at(&node.url, epoch).await;
        }
    }
}

/// Committee members for a start request.
fn committee(members: &[(u16, &NodeView)]) -> Result<Vec<pb::CommitteeMember>, AdminError> {
    members
        .iter()
        .map(|(index, v)| {
            Ok(pb::CommitteeMember {
                index: u32::from(*index),
                node_key: hex::decode(&v.node_key)
                    .map_err(|e| AdminError::Node(format!("{}: node key: {e}", v.url)))?,
                p2p_addr: v.p2p_addr.clone(),
            })
        })
        .collect()
}
