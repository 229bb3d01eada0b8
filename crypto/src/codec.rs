//! Strict decoding: [`EncodingError`], what every decoder of this crate returns (re-exported
//! as [`crate::error::EncodingError`]), and a minimal binary framing for ceremony messages:
//! fixed-size fields back to back, variable lists prefixed by a u16 count. Decoding rejects
//! trailing bytes.
//!
//! This module depends on no other module of the crate, so that every module that decodes
//! (the suites, node indices, secrets) can use it without an import circle.

/// Why bytes could not be decoded into a protocol value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodingError {
    /// The input has the wrong length.
    #[error("expected {expected} bytes, got {actual}")]
    Length {
        /// The length the encoding must have.
        expected: usize,
        /// The length that was given.
        actual: usize,
    },
    /// A point is not a 33-byte SEC1 compressed encoding (prefix 0x02 or 0x03).
    #[error("point is not SEC1 compressed (prefix must be 0x02 or 0x03)")]
    NotCompressed,
    /// A point is not a 65-byte SEC1 uncompressed encoding (prefix 0x04) where one is
    /// expected.
    #[error("point is not SEC1 uncompressed (prefix must be 0x04)")]
    NotUncompressed,
    /// A point's x-coordinate is not canonical or not on the curve.
    #[error("point is not on the curve or its encoding is not canonical")]
    NotOnCurve,
    /// The point at infinity, which no protocol value may be.
    #[error("point is the identity")]
    Identity,
    /// A scalar is not canonical (its big-endian value is not below the group order).
    #[error("scalar is not below the group order")]
    ScalarOutOfRange,
    /// A scalar that must be non-zero (a secret key, a share) is zero.
    #[error("scalar is zero")]
    ZeroScalar,
    /// A node index is zero; indices are non-zero Shamir x-coordinates.
    #[error("node index is zero")]
    ZeroIndex,
    /// Hex text could not be decoded.
    #[error("invalid hex")]
    Hex,
    /// A message starts with a type tag this version does not know.
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
}

/// `bytes`, if it is exactly `N` long: the length check of every fixed-size decoding.
pub(crate) fn exact<const N: usize>(bytes: &[u8]) -> Result<&[u8; N], EncodingError> {
    bytes.try_into().map_err(|_| EncodingError::Length {
        expected: N,
        actual: bytes.len(),
    })
}

/// `parts` back to back in `N` bytes: every fixed-size encoding (the parts' lengths add up
/// to `N`, which each caller's length constant states).
pub(crate) fn concat<const N: usize>(parts: &[&[u8]]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut at = 0;
    for part in parts {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    assert_eq!(at, N, "the parts fill the encoding");
    out
}

pub(crate) struct Writer(Vec<u8>);

impl Writer {
    pub(crate) fn new() -> Self {
        Self(Vec::new())
    }
    pub(crate) fn put(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
    pub(crate) fn put_u16(&mut self, v: u16) -> &mut Self {
        self.put(&v.to_be_bytes())
    }
    pub(crate) fn put_u32(&mut self, v: u32) -> &mut Self {
        self.put(&v.to_be_bytes())
    }
    /// A u32 length prefix then the bytes.
    pub(crate) fn put_var(&mut self, bytes: &[u8]) -> &mut Self {
        self.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX))
            .put(bytes)
    }
    pub(crate) fn finish(self) -> Vec<u8> {
        self.0
    }
}

pub(crate) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], EncodingError> {
        if self.0.len() < n {
            return Err(EncodingError::Length {
                expected: n,
                actual: self.0.len(),
            });
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    pub(crate) fn u16(&mut self) -> Result<u16, EncodingError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, EncodingError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn var(&mut self) -> Result<&'a [u8], EncodingError> {
        let n = self.u32()?;
        self.take(usize::try_from(n).unwrap_or(usize::MAX))
    }
    pub(crate) fn end(self) -> Result<(), EncodingError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(EncodingError::Length {
                expected: 0,
                actual: self.0.len(),
            })
        }
    }
}
