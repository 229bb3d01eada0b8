//! Distributed key generation and resharing as pure round functions (docs/PROTOCOL.md §7
//! "DKG", §8 "Resharing"): Pedersen's joint-Feldman DKG (Pedersen, EUROCRYPT '91; Gennaro et al.,
//! J. Cryptology 2007) with Schnorr proofs of possession, ECIES-encrypted signed shares, a
//! complaint round with verifiable reveals, and agreement on a signed transcript hash.
//! Resharing (Desmedt–Jajodia; Wong–Wang–Wing) deals `g_i` with `g_i(0) = share_i` to a new
//! committee and threshold, keeping the public key.
//!
//! The rounds, one module each as frost keeps `round1`/`round2` (the driver — node, simulator
//! or test — moves messages and enforces timeouts):
//!
//! 1. [`deal`] (`round1.rs`): each dealer `i` draws `f_i` of degree `t-1` (reshare:
//!    `f_i(0) = share_i`), and broadcasts one signed [`Dealing`]: Feldman commitments
//!    `A_{i,k}`, a proof of possession of `f_i(0)` bound to `(epoch, i)`, and
//!    `s_{i→j} = f_i(j)` ECIES-encrypted to every recipient's registered node key. (The
//!    design's steps 1 and 2 travel together: the encrypted shares are broadcast anyway so
//!    that the transcript can be relayed and complaints checked by anyone, and one message
//!    less is one timeout less.)
//! 2. [`respond`] (`round2.rs`): each recipient `j` checks every dealing, decrypts `s_{i→j}`
//!    and checks `s_{i→j}·G = Σ_k j^k·A_{i,k}`; it broadcasts a signed [`Response`] that
//!    acknowledges the dealings it holds (digest + the dealer's signature, so two conflicting
//!    acknowledgements prove equivocation) and accuses each bad dealer with a DLEQ-proven
//!    reveal of the ECIES shared point, so anyone can decrypt that one share and judge the
//!    accusation.
//! 3. [`finalize`] (`round3.rs`): from the dealings and responses, every node computes the
//!    same QUAL (dealings acknowledged by at least `t` recipients, not convicted, not
//!    equivocating), the joint commitment, its own share, and the transcript hash, which it
//!    signs in a [`Confirmation`].
//! 4. [`confirm`] (`round4.rs`): the epoch is final when `t` recipients signed the same
//!    transcript hash; a signed different hash is a
//!    [`Error::TranscriptMismatch`](crate::Error::TranscriptMismatch) and the driver restarts
//!    with [`CeremonyConfig::restart`].
//!
//! Silent dealers simply do not reach QUAL; a DKG with up to `n - t` silent or faulty dealers
//! completes, and with more it fails with
//! [`Error::NotEnoughDealers`](crate::Error::NotEnoughDealers).
//!
//! What every round agrees on first, the [`CeremonyConfig`], is in `config.rs`; what a
//! ceremony leaves a node with ([`CeremonyOutput`], [`Fault`]) in `output.rs`. Every type and
//! function is re-exported here, so callers name them `dkg::deal`, `dkg::Dealing`, ….

use sha2::{Digest, Sha256};

mod config;
mod output;
mod round1;
mod round2;
mod round3;
mod round4;

pub use config::{CeremonyConfig, CeremonyKind};
pub use output::{CeremonyOutput, Fault};
pub use round1::{deal, Dealing};
pub use round2::{respond, Ack, Complaint, ReceivedShares, Response};
pub use round3::finalize;
pub use round4::{confirm, Confirmation, CONFIRMATION_LEN};

/// A 32-byte digest (config, dealing, transcript).
pub type Digest32 = [u8; 32];

/// `len (u32 BE) || bytes` into a transcript hash.
fn frame(h: &mut Sha256, bytes: &[u8]) {
    h.update(u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    h.update(bytes);
}

/// What a node signs: `kind || config digest || body`.
fn signed_message(kind: &[u8], config: &Digest32, body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(kind.len() + 32 + body.len());
    msg.extend_from_slice(kind);
    msg.extend_from_slice(config);
    msg.extend_from_slice(body);
    msg
}

/// Fault injection for tests and simulations (feature `byzantine`): messages an attacker
/// holding a node key could produce. Never enabled in the node or the manager.
#[cfg(feature = "byzantine")]
pub mod byzantine;
