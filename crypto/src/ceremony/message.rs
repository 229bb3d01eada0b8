//! The messages participants exchange, and their wire format.

use crate::{
    dkg::{Confirmation, Dealing, Response},
    EncodingError, Error, NodeIndex, Suite,
};

/// The payload of a ceremony message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body<S: Suite> {
    /// Round 1: a dealer's signed dealing.
    Dealing(Dealing<S>),
    /// Round 2: a recipient's signed acknowledgements and complaints.
    Response(Response<S>),
    /// Round 3 output, checked in round 4.
    Confirmation(Confirmation<S>),
    /// "Send me dealer i's dealing."
    RelayRequest(NodeIndex),
    /// A relayed dealing.
    Relay(Dealing<S>),
    /// "I restarted: resend what you sent in this attempt."
    SyncRequest,
}

/// A ceremony message: the sender's attempt and the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message<S: Suite> {
    /// [`CeremonyConfig::attempt`] of the sender.
    pub attempt: u32,
    /// The payload.
    pub body: Body<S>,
}

const TAG_DEALING: u8 = 1;
const TAG_RESPONSE: u8 = 2;
const TAG_CONFIRMATION: u8 = 3;
const TAG_RELAY_REQUEST: u8 = 4;
const TAG_RELAY: u8 = 5;
const TAG_SYNC_REQUEST: u8 = 6;

impl<S: Suite> Message<S> {
    /// A message of `attempt`.
    pub fn new(attempt: u32, body: Body<S>) -> Self {
        Self { attempt, body }
    }

    /// `attempt (u32 BE) || tag (u8) || the payload's own encoding`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.attempt.to_be_bytes().to_vec();
        match &self.body {
            Body::Dealing(d) => {
                out.push(TAG_DEALING);
                out.extend_from_slice(&d.to_bytes());
            }
            Body::Response(r) => {
                out.push(TAG_RESPONSE);
                out.extend_from_slice(&r.to_bytes());
            }
            Body::Confirmation(c) => {
                out.push(TAG_CONFIRMATION);
                out.extend_from_slice(&c.to_bytes());
            }
            Body::RelayRequest(i) => {
                out.push(TAG_RELAY_REQUEST);
                out.extend_from_slice(&i.to_bytes());
            }
            Body::Relay(d) => {
                out.push(TAG_RELAY);
                out.extend_from_slice(&d.to_bytes());
            }
            Body::SyncRequest => out.push(TAG_SYNC_REQUEST),
        }
        out
    }

    /// Decode untrusted bytes; the inverse of [`Self::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let (Some(attempt), Some(tag)) = (bytes.get(..4), bytes.get(4)) else {
            return Err(EncodingError::Length {
                expected: 5,
                actual: bytes.len(),
            }
            .into());
        };
        let mut a = [0u8; 4];
        a.copy_from_slice(attempt);
        let attempt = u32::from_be_bytes(a);
        let rest = &bytes[5..];
        let body = match *tag {
            TAG_DEALING => Body::Dealing(Dealing::from_bytes(rest)?),
            TAG_RESPONSE => Body::Response(Response::from_bytes(rest)?),
            TAG_CONFIRMATION => Body::Confirmation(Confirmation::from_bytes(rest)?),
            TAG_RELAY_REQUEST => Body::RelayRequest(NodeIndex::from_bytes(rest)?),
            TAG_RELAY => Body::Relay(Dealing::from_bytes(rest)?),
            TAG_SYNC_REQUEST if rest.is_empty() => Body::SyncRequest,
            TAG_SYNC_REQUEST => {
                return Err(EncodingError::Length {
                    expected: 5,
                    actual: bytes.len(),
                }
                .into())
            }
            tag => return Err(EncodingError::UnknownTag(tag).into()),
        };
        Ok(Self { attempt, body })
    }

    /// A short label for per-kind statistics and logs.
    pub fn kind(&self) -> &'static str {
        match self.body {
            Body::Dealing(_) => "dealing",
            Body::Response(_) => "response",
            Body::Confirmation(_) => "confirmation",
            Body::RelayRequest(_) => "relay-request",
            Body::Relay(_) => "relay",
            Body::SyncRequest => "sync-request",
        }
    }
}
