//! Hashing to scalars with domain separation.
//!
//! `H(dst, parts) = hash_to_field(dst, suite || parts)` where every part (the suite name first)
//! is framed as `u32_be(len) || bytes`, and `hash_to_field` is RFC 9380 §5.2 with
//! expand_message_xmd(SHA-256), L = 48 (so the result is unbiased). The independent Python
//! implementation in `tests/vectors/reference.py` follows the same definition.

use crate::suite::Suite;

/// Hash framed `parts` under `dst`, binding the suite name.
pub fn hash_to_scalar<S: Suite>(dst: &[u8], parts: &[&[u8]]) -> S::Scalar {
    let suite = S::NAME.as_bytes();
    let mut lengths = Vec::with_capacity(parts.len() + 1);
    lengths.push(frame_len(suite));
    lengths.extend(parts.iter().map(|p| frame_len(p)));
    let mut msg: Vec<&[u8]> = Vec::with_capacity(2 * lengths.len());
    msg.push(&lengths[0]);
    msg.push(suite);
    for (len, part) in lengths[1..].iter().zip(parts) {
        msg.push(len);
        msg.push(part);
    }
    S::hash_to_field(dst, &msg)
}

fn frame_len(part: &[u8]) -> [u8; 4] {
    // Parts are protocol values far below 4 GiB; saturate rather than wrap if ever not.
    u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes()
}
