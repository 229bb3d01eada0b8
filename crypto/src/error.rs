//! The one error type of `tkms-crypto`.
//!
//! Protocol errors name the culprit node (as frost's `InvalidSecretShare { culprit }` does), so
//! a driver can exclude it and ask another node.

pub use crate::codec::EncodingError;
use crate::index::NodeIndex;

/// Errors of the protocol functions in this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bytes could not be decoded.
    #[error("invalid encoding: {0}")]
    Encoding(#[from] EncodingError),
    /// AEAD decryption failed: wrong key, or the ciphertext was altered.
    #[error("decryption failed: wrong key or tampered ciphertext")]
    Decryption,
    /// An ECIES container is shorter than `K(33) || nonce(12) || tag(16)`.
    #[error("ciphertext too short: {actual} bytes, at least {minimum} required")]
    CiphertextTooShort {
        /// The minimum container length.
        minimum: usize,
        /// The given length.
        actual: usize,
    },
    /// A node's proof did not verify.
    #[error("invalid proof from node {culprit}")]
    InvalidProof {
        /// The node whose partial or message was wrong.
        culprit: NodeIndex,
    },
    /// Fewer distinct partials than the threshold.
    #[error("not enough partials: {got} distinct, threshold {threshold}")]
    NotEnoughPartials {
        /// Distinct partials available.
        got: usize,
        /// Partials required.
        threshold: u16,
    },
    /// Partials for different requests were mixed in one combination, or requests of
    /// different epochs in one batch.
    #[error("partials belong to different requests")]
    MixedRequests,
    /// Points to interpolate were not one per index of the set their weights were made for.
    #[error("{points} points to interpolate over {indices} indices")]
    InterpolationShape {
        /// Points given.
        points: usize,
        /// Indices of the set.
        indices: usize,
    },
    /// A batch of partials does not match its requests: not one partial per request, or none.
    #[error("a batch of {partials} partials for {requests} requests")]
    BatchShape {
        /// Partials in the batch.
        partials: usize,
        /// Requests they answer.
        requests: usize,
    },
    /// The weighted sum of a batch's ephemeral keys is the identity (probability about
    /// `2^-128` for keys nobody chose against the weights): its partials are proved one by
    /// one instead.
    #[error("degenerate batch: prove its partials one by one")]
    DegenerateBatch,
    /// A node index is unknown to the key set or committee.
    #[error("unknown node {0}")]
    UnknownNode(NodeIndex),
    /// Two inputs carry the same node index where indices must be distinct.
    #[error("duplicate node index {0}")]
    DuplicateIndex(NodeIndex),
    /// Threshold and committee size are inconsistent (`1 <= t <= n`).
    #[error("invalid threshold {threshold} for a committee of {n}")]
    InvalidThreshold {
        /// The threshold.
        threshold: u16,
        /// The committee size.
        n: usize,
    },
    /// A DKG or reshare message is malformed or inconsistent with the ceremony.
    #[error("invalid message from node {culprit}: {reason}")]
    InvalidMessage {
        /// The sender of the message.
        culprit: NodeIndex,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Too few dealers remain qualified for the ceremony to be secure.
    #[error("ceremony failed: {qualified} qualified dealers, at least {required} required (disqualified: {disqualified:?})")]
    NotEnoughDealers {
        /// Dealers that remain qualified.
        qualified: usize,
        /// Dealers required.
        required: usize,
        /// Dealers that were excluded, for the operator's log.
        disqualified: Vec<NodeIndex>,
    },
    /// Signed transcript hashes disagree: the ceremony must restart.
    #[error("transcript hashes disagree with nodes {disagreeing:?}")]
    TranscriptMismatch {
        /// Nodes whose signed hash differs from ours.
        disagreeing: Vec<NodeIndex>,
    },
    /// A qualified dealer's dealing (or this node's share from it) is not at hand: the driver
    /// must fetch the dealing from a peer (dealings are signed, so anyone may relay them).
    #[error("missing the dealing of qualified dealer {dealer}")]
    MissingDealing {
        /// The dealer whose dealing is needed.
        dealer: NodeIndex,
    },
    /// This node is not a member of the ceremony in the role it tried to play.
    #[error("node {0} is not a participant in this role")]
    NotAParticipant(NodeIndex),
    /// Too few nodes confirmed the transcript hash.
    #[error("only {got} confirmations of the transcript, {required} required")]
    NotEnoughConfirmations {
        /// Valid confirmations received.
        got: usize,
        /// Confirmations required.
        required: usize,
    },
}
