//! A DKG/reshare participant as a sans-IO state machine over the round functions of [`crate::dkg`]
//! (docs/PROTOCOL.md §7 "DKG", §8 "Resharing"): it reacts to messages and timers and emits
//! [`Action`]s for its runtime to carry out. The real node (libp2p, wall-clock timers) and the
//! simulator (virtual network, virtual time) drive this same type, as openraft's engine is driven
//! by its runtime.
//!
//! A round ends when every expected message is in, or when its timeout fires; the participant
//! then proceeds with what it has (the round functions treat absent dealers as silent). On
//! `MissingDealing` it asks its peers to relay that dealing (dealings are signed, so anyone
//! may relay them); on `TranscriptMismatch` it restarts with [`CeremonyConfig::restart`](crate::dkg::CeremonyConfig::restart),
//! excluding the dealers it saw equivocate.
//!
//! Messages are bound to the sender the transport authenticated: a response or confirmation
//! is accepted only from the node that signed it, and a dealing only from its dealer unless it
//! arrives as a relay (a relayed dealing still has to pass [`Dealing::validate`](crate::dkg::Dealing::validate) in the round
//! functions).

use std::time::Duration;

use crate::{NodeIndex, Suite};

mod message;
mod participant;

pub use message::{Body, Message};
pub use participant::Participant;

/// How a participant misbehaves (fault injection for tests and simulations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Follows the protocol.
    Honest,
    /// Sends nothing at all.
    Silent,
    /// Deals shares that do not match its commitments to two recipients.
    BadShares,
    /// Deals undecodable share plaintext to one recipient.
    GarbageShares,
    /// Deals with an invalid proof of possession.
    BadProofOfPossession,
    /// Sends one dealing to even recipients and another to odd ones.
    Equivocate,
    /// Deals honestly but falsely accuses the lowest other dealer.
    FalseAccuser,
}

impl Behaviour {
    /// Every behaviour.
    pub const ALL: [Self; 7] = [
        Self::Honest,
        Self::Silent,
        Self::BadShares,
        Self::GarbageShares,
        Self::BadProofOfPossession,
        Self::Equivocate,
        Self::FalseAccuser,
    ];

    /// A short name (command lines, CSV).
    pub fn name(self) -> &'static str {
        match self {
            Self::Honest => "honest",
            Self::Silent => "silent",
            Self::BadShares => "bad-shares",
            Self::GarbageShares => "garbage-shares",
            Self::BadProofOfPossession => "bad-pop",
            Self::Equivocate => "equivocate",
            Self::FalseAccuser => "false-accuser",
        }
    }
}

/// Round timeouts and retry limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// How long each round waits for missing messages.
    pub round: Duration,
    /// How long to wait for a relayed dealing before retrying.
    pub relay: Duration,
    /// Relay requests per attempt before giving up.
    pub max_relays: u32,
    /// Ceremony attempts (restarts after a transcript mismatch) before giving up.
    pub max_attempts: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            round: Duration::from_secs(2),
            relay: Duration::from_millis(500),
            max_relays: 4,
            max_attempts: 3,
        }
    }
}

/// What the runtime must do for the participant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<S: Suite> {
    /// Send `msg` to node `to`.
    Send {
        /// Destination.
        to: NodeIndex,
        /// The message.
        msg: Message<S>,
    },
    /// Call [`Participant::on_timer`] with `timer` after `after`.
    SetTimer {
        /// Delay.
        after: Duration,
        /// Which round of which attempt it ends.
        timer: Timer,
    },
}

/// A timer the participant armed ([`Action::SetTimer`]): the end of one round of one attempt.
/// The runtime hands it back to [`Participant::on_timer`] as it got it; a timer of an earlier
/// attempt or relay, or of a round the participant has left, does nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timer {
    attempt: u32,
    round: Round,
}

impl Timer {
    /// The attempt whose round it ends.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// The rounds a participant times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Round {
    /// Round 1: waiting for dealings.
    Dealing,
    /// Round 2: waiting for responses.
    Responses,
    /// Waiting for the dealings asked for in the attempt's `n`th relay request.
    Relay(u32),
    /// Round 3: waiting for confirmations.
    Confirmations,
}
