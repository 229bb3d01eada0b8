//! The requests the cluster serves: coalesced `/v0` delegation batches, encrypted `/v1`
//! delegations and re-encryptions, each with the [`Gather`] that decodes, verifies and keeps
//! the nodes' answers.

use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use rand_core::OsRng;
use tkms_crypto::{
    aggregate::{self, AggregateProof, BatchPartials},
    collect::{Collector, Outcome},
    delegation::{self, DelegationRequest, PartialDelegation},
    pre::{self, PartialReencryption, ReencryptionRequest},
    suite::Encoded,
    NodeIndex, PublicKeySet,
};
use tkms_proto::{
    node::v1::{self as pb, node_client::NodeClient},
    ClusterSuite as S,
};
use tonic::transport::Channel;

use super::{
    ClusterError, Core, Fanout, Gather, NodeFailure, Open, ProofCounts, Queued, Reencrypted,
    Served, STRAGGLER_GRACE,
};

impl Core {
    /// Serve `batch`'s delegations with one call per node: per request, `t` verified
    /// partials combined. Every request gets its own answer; a node that fails the whole call
    /// is named in every request still open, one that refuses a single item only in that one.
    pub(super) async fn delegate_batch(&self, fanout: Fanout, batch: Vec<Queued>, aggregate: bool) {
        let request = Arc::new(pb::PartialDelegationBatchRequest {
            requests: batch
                .iter()
                .map(|q| pb::PartialDelegationRequest {
                    epoch: self.epoch,
                    request_id: q.request_id.clone(),
                    ephemeral: q.ephemeral.bytes().to_vec(),
                    authorization: q.authorization.clone(),
                    target_rsa_spki: Vec::new(),
                })
                .collect(),
            aggregate_proof: aggregate,
        });
        let items = batch.len();
        let mut gather = DelegationBatch {
            keys: &self.keys,
            proofs: &self.proofs,
            open: batch
                .into_iter()
                .map(|q| Open {
                    domain: DelegationRequest::with_encoded(self.epoch, q.request_id, q.ephemeral),
                    reply: Some(q.reply),
                })
                .collect(),
            pending: vec![BTreeMap::new(); items],
            aggregates: BTreeMap::new(),
            verified: vec![Vec::new(); items],
        };
        // Shared by the calls; each copies it once into its message.
        self.collect(
            fanout,
            items,
            request,
            |mut client, request| async move {
                match client.partial_delegation_batch((*request).clone()).await {
                    Err(status) if status.code() == tonic::Code::Unimplemented => {
                        one_by_one(client, request).await
                    }
                    answer => answer,
                }
            },
            &mut gather,
        )
        .await;
    }

    pub(super) async fn delegate_encrypted(
        &self,
        fanout: Fanout,
        ephemeral: Encoded<S>,
        request_id: Vec<u8>,
        target_rsa_spki: Vec<u8>,
        authorization: pb::RequesterAuthorization,
    ) -> Result<Served<Vec<(u16, Vec<u8>)>>, ClusterError> {
        let request = pb::PartialDelegationRequest {
            epoch: self.epoch,
            request_id,
            ephemeral: ephemeral.bytes().to_vec(),
            authorization: Some(authorization),
            target_rsa_spki,
        };
        let mut gather = EncryptedPartials::default();
        self.collect(
            fanout,
            1,
            request,
            |mut client, request| async move { client.partial_delegation(request).await },
            &mut gather,
        )
        .await;
        for (node, failure) in &gather.failures {
            tracing::warn!(node = %node, %failure, "node did not contribute an encrypted partial delegation");
        }
        let threshold = self.keys.threshold();
        if gather.partials.len() < usize::from(threshold) {
            return Err(ClusterError::Unavailable {
                threshold,
                verified: gather.partials.len(),
                failures: gather.failures,
            });
        }
        Ok(Served {
            value: gather
                .partials
                .into_iter()
                .map(|(node, bytes)| (node.get(), bytes))
                .collect(),
            failures: gather.failures,
        })
    }

    pub(super) async fn reencrypt(
        &self,
        fanout: Fanout,
        target: Encoded<S>,
        capsules: Vec<(Vec<u8>, Encoded<S>)>,
        authorization: Option<pb::RequesterAuthorization>,
    ) -> Result<Served<Reencrypted>, ClusterError> {
        if capsules.is_empty() {
            return Err(ClusterError::Invalid("no capsules".into()));
        }
        let request = pb::PartialReencryptionRequest {
            epoch: self.epoch,
            target: target.bytes().to_vec(),
            capsules: capsules
                .iter()
                .map(|(id, k)| pb::Capsule {
                    request_id: id.clone(),
                    ephemeral: k.bytes().to_vec(),
                })
                .collect(),
            authorization,
        };
        let domains: Vec<ReencryptionRequest<S>> = capsules
            .into_iter()
            .map(|(id, k)| ReencryptionRequest::with_encoded(self.epoch, id, k, target))
            .collect();
        let mut gather = Reencryptions {
            keys: &self.keys,
            domains: &domains,
            verified: BTreeMap::new(),
            raw: BTreeMap::new(),
            failures: Vec::new(),
        };
        self.collect(
            fanout,
            1,
            request,
            |mut client, request| async move { client.partial_reencryption(request).await },
            &mut gather,
        )
        .await;
        let threshold = self.keys.threshold();
        if gather.verified.len() < usize::from(threshold) {
            return Err(ClusterError::Unavailable {
                threshold,
                verified: gather.verified.len(),
                failures: gather.failures,
            });
        }
        // The first t verified nodes, by index.
        let chosen: Vec<NodeIndex> = gather
            .verified
            .keys()
            .copied()
            .take(usize::from(threshold))
            .collect();
        let mut value = Vec::with_capacity(domains.len());
        for k in 0..domains.len() {
            let column: Vec<_> = chosen
                .iter()
                .filter_map(|n| gather.verified.get(n).and_then(|v| v.get(k)).cloned())
                .collect();
            value.push(
                pre::combine(&column, &self.keys)
                    .map_err(|e| ClusterError::Invalid(e.to_string()))?,
            );
        }
        let partials = chosen
            .iter()
            .filter_map(|n| Some((n.get(), gather.raw.remove(n)?)))
            .collect();
        Ok(Served {
            value: Reencrypted {
                capsules: value,
                partials,
            },
            failures: gather.failures,
        })
    }
}

/// A batch of `/v0` delegations: partials kept per item until verified in one batch, each
/// item answered as soon as it is decided. A node's answer comes with one aggregated proof
/// for all its partials (docs/PROTOCOL.md §5.1), or, from a node of an earlier version, with
/// one proof per partial; both kinds are verified together.
struct DelegationBatch<'a> {
    keys: &'a PublicKeySet<S>,
    proofs: &'a ProofCounts,
    open: Vec<Open>,
    /// Partials with their own proof, per item.
    pending: Vec<BTreeMap<NodeIndex, PartialDelegation<S>>>,
    /// Partials under one aggregate proof, per node: the items they answer, in order.
    aggregates: BTreeMap<NodeIndex, (Vec<usize>, BatchPartials<S>)>,
    verified: Vec<Vec<delegation::VerifiedPartialDelegation<S>>>,
}

/// One item of a node's batch answer, decoded.
enum Answered {
    /// A partial with its own proof (boxed: the enum stays small for the aggregated kind).
    Proved(Box<PartialDelegation<S>>),
    /// `D_i` alone, under the answer's aggregate proof.
    Aggregated(Encoded<S>),
    /// The node refused the item, or its partial does not decode.
    Failed(NodeFailure),
}

impl Gather for DelegationBatch<'_> {
    type Response = pb::PartialDelegationBatchResponse;

    fn answer(
        &mut self,
        collector: &mut Collector<NodeFailure>,
        node: NodeIndex,
        response: Self::Response,
    ) -> Result<(), NodeFailure> {
        if response.results.len() != self.open.len() {
            return Err(NodeFailure::Malformed(format!(
                "{} results for {} requests",
                response.results.len(),
                self.open.len()
            )));
        }
        // The whole answer is decoded before anything is taken from it: a malformed
        // aggregate fails the node as a whole.
        let answered: Vec<Answered> = response
            .results
            .into_iter()
            .map(|result| decode_item(node, result))
            .collect();
        let aggregated: Vec<(usize, Encoded<S>)> = answered
            .iter()
            .enumerate()
            .filter_map(|(item, a)| match a {
                Answered::Aggregated(d) => Some((item, *d)),
                _ => None,
            })
            .collect();
        if aggregated.is_empty() {
            if !response.aggregate_proof.is_empty() {
                return Err(NodeFailure::Malformed(
                    "an aggregate proof of nothing".into(),
                ));
            }
        } else {
            let proof = AggregateProof::<S>::from_bytes(&response.aggregate_proof)
                .map_err(|e| NodeFailure::Malformed(format!("aggregate proof: {e}")))?;
            if proof.index() != node {
                return Err(NodeFailure::Malformed(format!(
                    "answered as node {}",
                    proof.index()
                )));
            }
            let (items, partials) = aggregated.into_iter().unzip();
            self.aggregates
                .insert(node, (items, BatchPartials::new(proof, partials)));
        }
        for (item, answered) in answered.into_iter().enumerate() {
            if collector.is_decided(item) {
                continue;
            }
            match answered {
                Answered::Proved(partial) => {
                    self.pending[item].insert(node, *partial);
                    collector.candidate(item, node);
                }
                Answered::Aggregated(_) => collector.candidate(item, node),
                Answered::Failed(failure) => collector.item_failed(item, node, failure),
            }
        }
        Ok(())
    }

    fn verify(&mut self, collector: &mut Collector<NodeFailure>, items: Vec<usize>) {
        // Every node that is a candidate of these items with an aggregate proof: its whole
        // batch is checked at once (all of them in one multi-scalar multiplication).
        let nodes: Vec<NodeIndex> = self
            .aggregates
            .keys()
            .copied()
            .filter(|node| {
                items
                    .iter()
                    .any(|&i| collector.candidates(i).any(|c| c == *node))
            })
            .collect();
        if !nodes.is_empty() {
            let (answered, batches): (Vec<Vec<usize>>, Vec<BatchPartials<S>>) = nodes
                .iter()
                .filter_map(|node| self.aggregates.remove(node))
                .unzip();
            let domains: Vec<Vec<&DelegationRequest<S>>> = answered
                .iter()
                .map(|items| items.iter().map(|&i| &self.open[i].domain).collect())
                .collect();
            let batches = batches
                .into_iter()
                .zip(&domains)
                .map(|(batch, domains)| (batch, domains.as_slice()))
                .collect();
            let results = aggregate::verify_batches(batches, self.keys, &mut OsRng);
            for ((answered, &node), result) in answered.iter().zip(&nodes).zip(results) {
                match result {
                    Ok(verified) => {
                        self.proofs.aggregated.fetch_add(1, Ordering::Relaxed);
                        for (&item, v) in answered.iter().zip(verified) {
                            collector.verified(item, node);
                            self.verified[item].push(v);
                        }
                    }
                    // A failed aggregate names the node in every item it answered: an honest
                    // node's aggregate always holds, so the node is faulty, and the collector
                    // asks another node for each of them.
                    Err(e) => {
                        let failure = match e {
                            tkms_crypto::Error::InvalidProof { .. } => NodeFailure::InvalidProof,
                            other => NodeFailure::Malformed(other.to_string()),
                        };
                        for &item in answered {
                            collector.rejected(item, node, failure.clone());
                        }
                    }
                }
            }
        }
        let items: Vec<usize> = items
            .into_iter()
            .filter(|&item| !self.pending[item].is_empty())
            .collect();
        let (open, pending) = (&self.open, &mut self.pending);
        let requests: Vec<_> = items
            .iter()
            .map(|&item| {
                let partials = std::mem::take(&mut pending[item]).into_values().collect();
                (item, (&open[item].domain, partials))
            })
            .collect();
        if requests.is_empty() {
            return;
        }
        let (items, requests): (Vec<usize>, Vec<_>) = requests.into_iter().unzip();
        let results = delegation::verify_requests(requests, self.keys, &mut OsRng);
        for (item, (ok, bad)) in items.into_iter().zip(results) {
            self.proofs
                .per_item
                .fetch_add(ok.len() as u64, Ordering::Relaxed);
            for v in ok {
                collector.verified(item, v.index());
                self.verified[item].push(v);
            }
            for e in bad {
                match e {
                    tkms_crypto::Error::InvalidProof { culprit } => {
                        collector.rejected(item, culprit, NodeFailure::InvalidProof);
                    }
                    tkms_crypto::Error::UnknownNode(node) => collector.rejected(
                        item,
                        node,
                        NodeFailure::Malformed("not in the key set".into()),
                    ),
                    other => tracing::error!(error = %other, "verifying a batch"),
                }
            }
        }
    }

    fn decided(&mut self, collector: &Collector<NodeFailure>, item: usize, outcome: Outcome) {
        let Some(reply) = self.open[item].reply.take() else {
            return;
        };
        let failures = collector.failures(item).to_vec();
        for (node, failure) in &failures {
            tracing::warn!(node = %node, %failure, "node did not contribute a valid partial delegation");
        }
        let threshold = self.keys.threshold();
        let verified = std::mem::take(&mut self.verified[item]);
        let answer = match outcome {
            Outcome::Served => delegation::combine(&verified, self.keys)
                .map(|value| Served { value, failures })
                .map_err(|e| ClusterError::Invalid(e.to_string())),
            Outcome::Unavailable => Err(ClusterError::Unavailable {
                threshold,
                verified: verified.len(),
                failures,
            }),
        };
        // The caller may have gone (its connection closed); nothing is left to do then.
        let _ = reply.send(answer);
    }
}

/// `/v1/delegate`'s encrypted partials: taken as they come (only the client can check them),
/// with [`STRAGGLER_GRACE`] for more once `t` are in.
#[derive(Default)]
struct EncryptedPartials {
    partials: BTreeMap<NodeIndex, Vec<u8>>,
    failures: Vec<(NodeIndex, NodeFailure)>,
}

impl Gather for EncryptedPartials {
    type Response = pb::PartialDelegationResponse;

    fn answer(
        &mut self,
        collector: &mut Collector<NodeFailure>,
        node: NodeIndex,
        response: Self::Response,
    ) -> Result<(), NodeFailure> {
        if response.encrypted_partial.is_empty() {
            return Err(NodeFailure::Malformed("no encrypted partial".into()));
        }
        self.partials.insert(node, response.encrypted_partial);
        collector.accepted(0, node);
        Ok(())
    }

    fn decided(&mut self, collector: &Collector<NodeFailure>, _item: usize, _outcome: Outcome) {
        self.failures = collector.failures(0).to_vec();
    }

    fn linger(&self) -> Option<Duration> {
        Some(STRAGGLER_GRACE)
    }
}

/// `/v1/reencrypt`: a node's partials for every capsule, verified when they arrive (a node
/// counts only if all of its partials pass).
struct Reencryptions<'a> {
    keys: &'a PublicKeySet<S>,
    domains: &'a [ReencryptionRequest<S>],
    verified: BTreeMap<NodeIndex, Vec<pre::VerifiedPartialReencryption<S>>>,
    raw: BTreeMap<NodeIndex, Vec<Vec<u8>>>,
    failures: Vec<(NodeIndex, NodeFailure)>,
}

impl Gather for Reencryptions<'_> {
    type Response = pb::PartialReencryptionResponse;

    fn answer(
        &mut self,
        collector: &mut Collector<NodeFailure>,
        node: NodeIndex,
        response: Self::Response,
    ) -> Result<(), NodeFailure> {
        if collector.is_decided(0) {
            return Ok(());
        }
        let verified = check_reencryption(node, &response.partials, self.keys, self.domains)?;
        self.verified.insert(node, verified);
        self.raw.insert(node, response.partials);
        collector.accepted(0, node);
        Ok(())
    }

    fn decided(&mut self, collector: &Collector<NodeFailure>, _item: usize, _outcome: Outcome) {
        self.failures = collector.failures(0).to_vec();
        for (node, failure) in &self.failures {
            tracing::warn!(node = %node, %failure, "node did not contribute valid partial re-encryptions");
        }
    }
}

/// A node without `PartialDelegationBatch` (an older version, during a rolling upgrade): the
/// batch's delegations as concurrent single calls, answered in the batch's shape. A transport
/// failure fails the whole node, as for a batch call.
async fn one_by_one(
    client: NodeClient<Channel>,
    batch: Arc<pb::PartialDelegationBatchRequest>,
) -> Result<tonic::Response<pb::PartialDelegationBatchResponse>, tonic::Status> {
    let calls = batch.requests.iter().map(|request| {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.partial_delegation(request).await }
    });
    let mut results = Vec::new();
    for answer in futures::future::join_all(calls).await {
        let outcome = match answer {
            Ok(response) => {
                pb::partial_delegation_result::Outcome::Partial(response.into_inner().partial)
            }
            Err(status) if status.code() == tonic::Code::Unavailable => return Err(status),
            Err(status) => {
                pb::partial_delegation_result::Outcome::Error(pb::ItemError::from_status(&status))
            }
        };
        results.push(pb::PartialDelegationResult {
            outcome: Some(outcome),
        });
    }
    Ok(tonic::Response::new(pb::PartialDelegationBatchResponse {
        results,
        aggregate_proof: Vec::new(),
    }))
}

/// `UNAVAILABLE` is what the transport reports for a node it cannot reach; nodes themselves
/// answer with other codes.
pub(super) fn failure_of(status: &tonic::Status) -> NodeFailure {
    match status.code() {
        tonic::Code::Unavailable => NodeFailure::Unreachable(status.message().to_string()),
        tonic::Code::PermissionDenied => NodeFailure::Denied(status.message().to_string()),
        _ => NodeFailure::Refused(status.message().to_string()),
    }
}

/// One item of a node's batch answer: its partial (decoded, index checked), its `D_i` under
/// the answer's aggregate proof, or its refusal.
fn decode_item(index: NodeIndex, result: pb::PartialDelegationResult) -> Answered {
    use pb::partial_delegation_result::Outcome as Item;
    match result.outcome {
        Some(Item::Partial(bytes)) => match decode_delegation(index, &bytes) {
            Ok(partial) => Answered::Proved(Box::new(partial)),
            Err(failure) => Answered::Failed(failure),
        },
        // On the curve by its equation: no square root.
        Some(Item::Delegation(bytes)) => match Encoded::from_uncompressed(&bytes) {
            Ok(partial) => Answered::Aggregated(partial),
            Err(e) => Answered::Failed(NodeFailure::Malformed(e.to_string())),
        },
        Some(Item::Error(e)) => Answered::Failed(failure_of(&e.to_status())),
        None => Answered::Failed(NodeFailure::Malformed("an empty result".into())),
    }
}

/// Decode a node's answer and check it claims the right index (its proof is checked with the
/// rest of the batch).
fn decode_delegation(index: NodeIndex, bytes: &[u8]) -> Result<PartialDelegation<S>, NodeFailure> {
    let partial = PartialDelegation::<S>::from_bytes(bytes)
        .map_err(|e| NodeFailure::Malformed(e.to_string()))?;
    if partial.index() != index {
        return Err(NodeFailure::Malformed(format!(
            "answered as node {}",
            partial.index()
        )));
    }
    Ok(partial)
}

fn check_reencryption(
    index: NodeIndex,
    partials: &[Vec<u8>],
    keys: &PublicKeySet<S>,
    requests: &[ReencryptionRequest<S>],
) -> Result<Vec<pre::VerifiedPartialReencryption<S>>, NodeFailure> {
    if partials.len() != requests.len() {
        return Err(NodeFailure::Malformed(format!(
            "{} partials for {} capsules",
            partials.len(),
            requests.len()
        )));
    }
    partials
        .iter()
        .zip(requests)
        .map(|(bytes, request)| {
            let partial = PartialReencryption::<S>::from_bytes(bytes)
                .map_err(|e| NodeFailure::Malformed(e.to_string()))?;
            if partial.index() != index {
                return Err(NodeFailure::Malformed(format!(
                    "answered as node {}",
                    partial.index()
                )));
            }
            partial
                .verify(keys, request, &mut OsRng)
                .map_err(|_| NodeFailure::InvalidProof)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::failure_of;
    use crate::cluster::{ClusterError, NodeFailure};
    use tkms_crypto::NodeIndex;

    #[test]
    fn a_cluster_whose_nodes_all_refuse_the_requester_denies_it() {
        let node = |i: u16| NodeIndex::new(i).unwrap();
        let denied = || failure_of(&tonic::Status::permission_denied("0xab is not a gateway"));
        assert!(matches!(denied(), NodeFailure::Denied(_)));
        let unavailable = |failures| ClusterError::Unavailable {
            threshold: 3,
            verified: 0,
            failures,
        };
        assert!(unavailable(vec![(node(1), denied()), (node(2), denied())]).requester_denied());
        // One node down or failing otherwise: the cluster is unavailable, not refusing.
        assert!(
            !unavailable(vec![(node(1), denied()), (node(2), NodeFailure::Timeout)])
                .requester_denied()
        );
        assert!(!unavailable(Vec::new()).requester_denied());
        // A refused manager connection is not a refused requester.
        let unauthenticated = failure_of(&tonic::Status::unauthenticated("not a manager"));
        assert!(!unavailable(vec![(node(1), unauthenticated)]).requester_denied());
    }
}
