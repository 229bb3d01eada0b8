//! A node's index in a committee (docs/PROTOCOL.md §4 "Shares": the non-zero Shamir
//! x-coordinate of its share), re-exported as [`crate::shamir::NodeIndex`] and
//! [`crate::NodeIndex`].
//!
//! Its own module, below [`crate::error`] (whose errors name the culprit node) and
//! [`crate::shamir`], so that neither imports the other in a circle.

use core::{fmt, num::NonZeroU16};

use crate::{codec::EncodingError, suite::Suite};

/// A node's index in a committee: a non-zero u16, the Shamir x-coordinate of its share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeIndex(NonZeroU16);

impl NodeIndex {
    /// `None` for zero.
    pub const fn new(index: u16) -> Option<Self> {
        match NonZeroU16::new(index) {
            Some(i) => Some(Self(i)),
            None => None,
        }
    }

    /// The index as a number.
    pub const fn get(self) -> u16 {
        self.0.get()
    }

    /// Big-endian bytes, as bound into hashes and messages.
    pub const fn to_bytes(self) -> [u8; 2] {
        self.0.get().to_be_bytes()
    }

    /// Decode two big-endian bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EncodingError> {
        let array = *crate::codec::exact::<2>(bytes)?;
        Self::new(u16::from_be_bytes(array)).ok_or(EncodingError::ZeroIndex)
    }

    /// The index as a scalar (the x-coordinate).
    pub fn to_scalar<S: Suite>(self) -> S::Scalar {
        S::Scalar::from(u64::from(self.get()))
    }
}

impl fmt::Display for NodeIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

impl TryFrom<u16> for NodeIndex {
    type Error = EncodingError;
    fn try_from(value: u16) -> Result<Self, Self::Error> {
        Self::new(value).ok_or(EncodingError::ZeroIndex)
    }
}
