//! Partial delegations: each request validated (the epoch first, then the fields and the
//! requester), answered with `D_i = share_i·K` and its proof, alone or in a batch under one
//! aggregated proof, split over the blocking pool.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, LazyLock, Mutex, PoisonError,
};

use tokio::sync::oneshot;

use rand_core::OsRng;
use tkms_crypto::{
    aggregate::{self, BatchPartials},
    delegation::{DelegationRequest, PartialDelegation},
    suite::{Encoded, UNCOMPRESSED_POINT_LEN},
};
use tkms_proto::node::v1 as pb;

use crate::epochs::ActiveShare;
use tonic::Status;

use tkms_proto::ClusterSuite;

use super::{point, request_id, NodeService, Operation};

impl NodeService {
    /// One delegation request, validated and its requester re-checked, answered with
    /// `D_i = share_i·K` and its proof.
    pub(super) fn delegation_item(
        &self,
        share: &ActiveShare,
        request: &pb::PartialDelegationRequest,
    ) -> Result<PartialDelegation<ClusterSuite>, Status> {
        let delegation = self.delegation_domain(share, request)?;
        Ok(PartialDelegation::create(
            &share.share,
            &delegation,
            &mut OsRng,
        ))
    }

    /// One delegation request, validated and its requester re-checked: what its partial is
    /// bound to.
    fn delegation_domain(
        &self,
        share: &ActiveShare,
        request: &pb::PartialDelegationRequest,
    ) -> Result<DelegationRequest<ClusterSuite>, Status> {
        epoch_matches(share.epoch, request.epoch)?;
        let ephemeral = point(&request.ephemeral, "ephemeral key")?;
        let id = request_id(&request.request_id)?;
        self.check_requester(
            request.authorization.as_ref(),
            &Operation::Delegate {
                ephemeral: &ephemeral,
                request_id: &id,
                target_rsa_spki: &request.target_rsa_spki,
            },
        )?;
        Ok(DelegationRequest::with_encoded(share.epoch, id, ephemeral))
    }

    /// Answer each of `requests` on its own: its partial, or why it is refused.
    pub(super) fn delegation_results(
        &self,
        share: &ActiveShare,
        requests: &[pb::PartialDelegationRequest],
    ) -> Vec<pb::PartialDelegationResult> {
        requests
            .iter()
            .map(|request| {
                let outcome = if request.target_rsa_spki.is_empty() {
                    self.delegation_item(share, request)
                } else {
                    Err(Status::invalid_argument(
                        "an encrypted (/v1) delegation is not batched",
                    ))
                };
                let outcome = match outcome {
                    Ok(partial) => {
                        pb::partial_delegation_result::Outcome::Partial(partial.to_bytes().to_vec())
                    }
                    Err(status) => pb::partial_delegation_result::Outcome::Error(
                        pb::ItemError::from_status(&status),
                    ),
                };
                pb::PartialDelegationResult {
                    outcome: Some(outcome),
                }
            })
            .collect()
    }

    /// Each of `requests` validated and its requester re-checked on its own, with its
    /// `D_i = share_i·K` (no proof yet: the batch's aggregate proof covers it), or why it is
    /// refused.
    fn batch_partials(
        &self,
        share: &ActiveShare,
        requests: &[pb::PartialDelegationRequest],
    ) -> Vec<Result<BatchItem, Status>> {
        requests
            .iter()
            .map(|request| {
                if !request.target_rsa_spki.is_empty() {
                    return Err(Status::invalid_argument(
                        "an encrypted (/v1) delegation is not batched",
                    ));
                }
                let domain = self.delegation_domain(share, request)?;
                let (partial, wire) = aggregate::partial_uncompressed(&share.share, &domain);
                Ok(BatchItem {
                    domain,
                    partial,
                    wire,
                })
            })
            .collect()
    }
}

fn epoch_matches(served: u64, requested: u64) -> Result<(), Status> {
    if requested == served {
        Ok(())
    } else {
        Err(Status::failed_precondition(format!(
            "this node serves epoch {served}, not {requested}"
        )))
    }
}

/// One answered item of an aggregated batch: what it is bound to, `D_i`, and `D_i` as sent.
struct BatchItem {
    domain: DelegationRequest<ClusterSuite>,
    partial: Encoded<ClusterSuite>,
    wire: [u8; UNCOMPRESSED_POINT_LEN],
}

/// The cores a batch is split over, read once for the life of the process (a CPU quota
/// changed while it runs is not seen): `available_parallelism` reads the cgroup's CPU quota
/// files on every call (an `openat`, a `read` and a `statx` each).
pub(super) fn cores() -> usize {
    static CORES: LazyLock<usize> =
        LazyLock::new(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    *CORES
}

/// `work` over `items` split into at most `count` parts (one per core: [`cores`]; at least
/// one, even if `items` is empty), then `finish` over the results in item order, all on the
/// blocking pool so no runtime worker is held. The part that ends last runs `finish` on its
/// own thread: a batch costs one hand-off per part and one back, and no thread ever waits for
/// another (so no order of the pool's queue can starve a part). If the caller is gone by
/// then, `finish` is skipped; if a part panics, the call fails.
pub(super) async fn in_parts<T, R, F, Finish>(
    count: usize,
    items: Vec<T>,
    work: impl Fn(&[T]) -> Vec<R> + Clone + Send + 'static,
    finish: Finish,
) -> Result<F, Status>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Send + 'static,
    Finish: FnOnce(Vec<R>) -> F + Send + 'static,
{
    let per_part = items.len().div_ceil(count.max(1)).max(1);
    let mut parts = Vec::new();
    let mut items = items.into_iter();
    loop {
        let part: Vec<T> = items.by_ref().take(per_part).collect();
        if part.is_empty() {
            break;
        }
        parts.push(part);
    }
    if parts.is_empty() {
        parts.push(Vec::new());
    }
    let (answer, answered) = oneshot::channel();
    let shared = Arc::new(Parts {
        results: Mutex::new(parts.iter().map(|_| None).collect()),
        remaining: AtomicUsize::new(parts.len()),
        finish: Mutex::new(Some((finish, answer))),
    });
    for (k, part) in parts.into_iter().enumerate() {
        let (work, shared) = (work.clone(), Arc::clone(&shared));
        tokio::task::spawn_blocking(move || shared.done(k, work(&part)));
    }
    // The parts alone hold the sender now: if one panics, it is dropped unsent.
    drop(shared);
    answered
        .await
        .map_err(|_| Status::internal("a delegation task failed"))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The parts of one [`in_parts`] call: their results as they end, and what the last
/// one runs.
struct Parts<R, F, Finish> {
    results: Mutex<Vec<Option<Vec<R>>>>,
    remaining: AtomicUsize,
    finish: Mutex<Option<(Finish, oneshot::Sender<F>)>>,
}

impl<R, F, Finish: FnOnce(Vec<R>) -> F> Parts<R, F, Finish> {
    /// Part `k` ended with `results`; the last part to end runs `finish` over all of them.
    fn done(&self, k: usize, results: Vec<R>) {
        lock(&self.results)[k] = Some(results);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let Some((finish, answer)) = lock(&self.finish).take() else {
            return;
        };
        if answer.is_closed() {
            return;
        }
        let all = std::mem::take(&mut *lock(&self.results))
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        // The caller may have gone since: then nobody needs the answer.
        let _ = answer.send(finish(all));
    }
}

/// A batch answered with one aggregated proof (docs/PROTOCOL.md §5.1): every item is checked
/// and its `D_i` computed on its own (split over the blocking pool, one part per core), then
/// one proof covers every answered item. In the unlikely case the batch is degenerate
/// ([`tkms_crypto::Error::DegenerateBatch`]), each answered item gets its own proof instead.
pub(super) async fn aggregated_batch(
    service: &NodeService,
    share: Arc<ActiveShare>,
    requests: Vec<pb::PartialDelegationRequest>,
) -> Result<pb::PartialDelegationBatchResponse, Status> {
    let (service, proving) = (service.clone(), Arc::clone(&share));
    in_parts(
        cores(),
        requests,
        move |part| service.batch_partials(&share, part),
        move |items| prove_batch(&proving, &items),
    )
    .await
}

/// The answer to an aggregated batch: every answered item's `D_i` under one proof (each with
/// its own proof if the batch is degenerate), every refused one with its status.
fn prove_batch(
    share: &ActiveShare,
    items: &[Result<BatchItem, Status>],
) -> pb::PartialDelegationBatchResponse {
    let answered: Vec<&BatchItem> = items.iter().filter_map(|i| i.as_ref().ok()).collect();
    let proof = if answered.is_empty() {
        None
    } else {
        let domains: Vec<_> = answered.iter().map(|i| &i.domain).collect();
        let partials = answered.iter().map(|i| i.partial).collect();
        BatchPartials::prove(&share.share, &domains, partials, &mut OsRng).ok()
    };
    let results = items
        .iter()
        .map(|item| {
            let outcome = match (item, &proof) {
                (Ok(i), Some(_)) => {
                    pb::partial_delegation_result::Outcome::Delegation(i.wire.to_vec())
                }
                (Ok(i), None) => pb::partial_delegation_result::Outcome::Partial(
                    PartialDelegation::create(&share.share, &i.domain, &mut OsRng)
                        .to_bytes()
                        .to_vec(),
                ),
                (Err(status), _) => pb::partial_delegation_result::Outcome::Error(
                    pb::ItemError::from_status(status),
                ),
            };
            pb::PartialDelegationResult {
                outcome: Some(outcome),
            }
        })
        .collect();
    pb::PartialDelegationBatchResponse {
        results,
        aggregate_proof: proof
            .map(|p| p.proof().to_bytes().to_vec())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// `in_parts` with a deadline, so a call that never answers fails instead of hanging.
    async fn bounded<F>(
        call: impl std::future::Future<Output = Result<F, Status>>,
    ) -> Result<F, Status> {
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the call answers")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_keep_item_order_whatever_order_the_parts_end_in() {
        for count in 1..=4 {
            for n in 0..=9u64 {
                // Earlier parts take longer, so the parts end in reverse order.
                let out = bounded(in_parts(
                    count,
                    (0..n).collect(),
                    move |part: &[u64]| {
                        let first = part.first().copied().unwrap_or(0);
                        std::thread::sleep(Duration::from_millis(5 * (10 - first)));
                        part.iter().map(|x| x * 10).collect()
                    },
                    |all: Vec<u64>| all,
                ))
                .await
                .unwrap();
                assert_eq!(
                    out,
                    (0..n).map(|x| x * 10).collect::<Vec<_>>(),
                    "{count} parts"
                );
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_in_a_part_or_in_finish_fails_the_call() {
        let part_fails = bounded(in_parts(
            2,
            (0..8).collect::<Vec<u32>>(),
            |part| {
                assert!(!part.contains(&7), "a part fails");
                part.to_vec()
            },
            |all: Vec<u32>| all,
        ))
        .await;
        assert_eq!(part_fails.unwrap_err().code(), tonic::Code::Internal);
        let finish_fails = bounded(in_parts(
            2,
            (0..8).collect::<Vec<u32>>(),
            <[u32]>::to_vec,
            |_: Vec<u32>| -> Vec<u32> { panic!("finish fails") },
        ))
        .await;
        assert_eq!(finish_fails.unwrap_err().code(), tonic::Code::Internal);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn finish_is_skipped_once_the_caller_is_gone() {
        let finished = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&finished);
        let call = in_parts(
            2,
            (0..4).collect::<Vec<u32>>(),
            |part| {
                std::thread::sleep(Duration::from_millis(200));
                part.to_vec()
            },
            move |all: Vec<u32>| {
                count.fetch_add(1, Ordering::SeqCst);
                all
            },
        );
        // The caller gives up while the parts still run.
        assert!(tokio::time::timeout(Duration::from_millis(50), call)
            .await
            .is_err());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(finished.load(Ordering::SeqCst), 0);
    }
}
