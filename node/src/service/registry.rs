//! What the node checks against its own view of the registry: the members of a ceremony,
//! and the epoch it serves against the one the registry publishes.

use tkms_crypto::Suite;
use tkms_proto::node::v1 as pb;
use tkms_registry::access::{self, Published, Registered, Registry};

use crate::epochs::ActiveShare;
use tonic::Status;

use tkms_proto::ClusterSuite;

use super::{denied, NodeService};

impl NodeService {
    /// Every ceremony member must be a node the registry lists with that node key (when the
    /// registry lists nodes): the manager alone cannot choose who receives shares.
    pub(super) fn check_members(&self, request: &pb::StartCeremonyRequest) -> Result<(), Status> {
        let Some(registry) = &self.registry else {
            return Ok(());
        };
        for m in request.dealers.iter().chain(&request.recipients) {
            let index = u16::try_from(m.index).map_err(|_| {
                Status::invalid_argument(format!("node index {} too large", m.index))
            })?;
            match registry.registered_node_key(index) {
                Registered::NotTracked => return Ok(()),
                Registered::Key(key) if key == m.node_key => {}
                Registered::Key(_) => {
                    return Err(denied(format!(
                        "ceremony member {index} has another node key than the registry's"
                    )))
                }
                Registered::Absent => {
                    return Err(denied(format!(
                        "ceremony member {index} is not a registered node"
                    )))
                }
                Registered::Unknown => {
                    return Err(Status::failed_precondition(
                        "the registry cannot be read; no ceremony until it can",
                    ))
                }
            }
        }
        Ok(())
    }

    /// With a registry that publishes epochs (the chain), serve a share only if it matches the
    /// published epoch, or belongs to an older epoch of the same key whose shares the
    /// manager's commit has not erased yet (requests in flight across a switch) while this
    /// node took part in the published epoch's ceremony (a publication it knows nothing of is
    /// not its committee's: refused); an epoch newer than the published one is not served
    /// before its publication.
    pub(super) fn check_published(&self, share: &ActiveShare) -> Result<(), Status> {
        let Some(registry) = &self.registry else {
            return Ok(());
        };
        match registry.published_epoch() {
            Published::NotTracked => Ok(()),
            Published::Nothing => Err(Status::failed_precondition(
                "the registry publishes no key epoch yet; this node does not serve until it does",
            )),
            Published::Unknown => Err(Status::failed_precondition(
                "the registry cannot be read; this node does not serve until it can",
            )),
            Published::Epoch(published) if published.epoch > share.epoch => {
                if published.public_key.as_ref() != share.keys.public_key_encoded().bytes() {
                    tracing::error!(
                        epoch = share.epoch,
                        published = published.epoch,
                        "the registry publishes another public key; refusing to serve"
                    );
                    return Err(Status::failed_precondition(
                        "the registry publishes another public key than this node's share's",
                    ));
                }
                // The published epoch must be one this node knows: the share it holds of it
                // matches the publication, or it took part in its ceremony (a leaver).
                match self.epochs.get(published.epoch) {
                    Ok(newer) => matches_publication(&newer, &published),
                    Err(_) if self.epochs.took_part_in(published.epoch) => Ok(()),
                    Err(_) => {
                        tracing::error!(
                            epoch = share.epoch,
                            published = published.epoch,
                            "this node's share does not match the published epoch: it took no part in that epoch's ceremony; refusing to serve"
                        );
                        Err(Status::failed_precondition(format!(
                            "the registry publishes epoch {}, which this node took no part in; it does not serve epoch {}",
                            published.epoch, share.epoch
                        )))
                    }
                }
            }
            Published::Epoch(published) if published.epoch < share.epoch => {
                Err(Status::failed_precondition(format!(
                    "epoch {} is not published on the registry yet (it publishes {})",
                    share.epoch, published.epoch
                )))
            }
            Published::Epoch(published) => matches_publication(share, &published),
        }
    }

    /// With a registry that publishes epochs, a commit of `epoch` must be confirmed there
    /// (the published epoch is the commit point): old shares are erased only then.
    pub(super) fn check_commit_published(&self, epoch: u64) -> Result<(), Status> {
        let Some(registry) = &self.registry else {
            return Ok(());
        };
        match registry.published_epoch() {
            Published::NotTracked => Ok(()),
            Published::Epoch(published) if published.epoch >= epoch => Ok(()),
            Published::Epoch(published) => Err(Status::failed_precondition(format!(
                "epoch {epoch} is not published on the registry yet (it publishes {}); old shares are kept until it is",
                published.epoch
            ))),
            Published::Nothing | Published::Unknown => Err(Status::failed_precondition(
                "the registry's published epoch cannot be read; old shares are kept until it can",
            )),
        }
    }
}

/// Whether `share` is the epoch `published` describes (number, threshold, key, public shares).
fn matches_publication(
    share: &ActiveShare,
    published: &tkms_registry::EpochPublication,
) -> Result<(), Status> {
    let shares: Vec<(u16, [u8; 33])> = share
        .keys
        .public_shares()
        .map(|(i, p)| (i.get(), ClusterSuite::encode_point(p)))
        .collect();
    access::check_publication(
        published,
        share.epoch,
        share.keys.threshold(),
        share.keys.public_key_encoded().bytes(),
        shares.iter().map(|(i, p)| (*i, p.as_slice())),
    )
    .map_err(|e| {
        tracing::error!(reason = %e, "this node's share does not match the published epoch; refusing to serve");
        Status::failed_precondition(format!("share does not match the registry: {e}"))
    })
}
