//! Variable-time multi-scalar multiplication `Σ s_i·P_i` for **public** scalars (Straus'
//! interleaved width-5 wNAF): proof verification and the Lagrange combination of public
//! partials. Its running time depends on the scalars; secret scalars go through
//! [`Suite::lincomb`] or libsecp256k1.

use elliptic_curve::{group::Group, PrimeField};

use crate::suite::Suite;

const WIDTH: u32 = 5;
// wnaf's digits, |d| < 2^(w-1), must fit an i8.
const _: () = assert!(WIDTH >= 2 && WIDTH <= 8);

/// `Σ s_i·P_i` over field scalars. Short scalars (the 128-bit weights of batch verification)
/// cost proportionally less.
pub fn msm_vartime<S: Suite>(terms: &[(S::Point, S::Scalar)]) -> S::Point {
    straus::<S>(
        terms
            .iter()
            .map(|(point, scalar)| (*point, wnaf(scalar.to_repr().as_ref(), WIDTH))),
    )
}

/// `Σ c_i·P_i` over small signed integers (the integer Lagrange weights of
/// [`crate::shamir::ZeroInterpolation`]): a few doublings and additions instead of 256.
pub fn msm_small<S: Suite>(terms: &[(S::Point, i128)]) -> S::Point {
    straus::<S>(terms.iter().map(|(point, c)| {
        let naf = wnaf(&c.unsigned_abs().to_be_bytes(), WIDTH);
        (if *c < 0 { -*point } else { *point }, naf)
    }))
}

/// Interleaved double-and-add over each term's wNAF digits; each point's table of odd
/// multiples `P, 3P, ...` only as long as its largest digit needs.
fn straus<S: Suite>(terms: impl Iterator<Item = (S::Point, Vec<i8>)>) -> S::Point {
    let mut digits = Vec::new();
    let mut tables = Vec::new();
    let mut length = 0;
    for (point, naf) in terms {
        let largest = naf.iter().map(|d| d.unsigned_abs()).max().unwrap_or(0);
        length = length.max(naf.len());
        let mut table = Vec::with_capacity(usize::from(largest / 2) + 1);
        table.push(point);
        if largest > 1 {
            let double = point.double();
            for k in 1..=usize::from(largest / 2) {
                table.push(table[k - 1] + double);
            }
        }
        digits.push(naf);
        tables.push(table);
    }
    let mut acc = S::Point::identity();
    for position in (0..length).rev() {
        acc = acc.double();
        for (naf, table) in digits.iter().zip(&tables) {
            match naf.get(position).copied().unwrap_or(0) {
                0 => {}
                d if d > 0 => acc += table[usize::from(d.unsigned_abs()) / 2],
                d => acc -= table[usize::from(d.unsigned_abs()) / 2],
            }
        }
    }
    acc
}

/// Width-`w` non-adjacent form of a big-endian integer, least significant digit first and
/// without trailing zeros; every non-zero digit is odd with `|d| < 2^(w-1)`. Reads a window
/// of `w` bits at a time (as curve25519-dalek's `non_adjacent_form`), carrying into the next.
fn wnaf(big_endian: &[u8], width: u32) -> Vec<i8> {
    // Little-endian limbs with one spare limb, so a window may read past the top.
    let mut limbs = vec![0u64; big_endian.len().div_ceil(8) + 1];
    for (k, byte) in big_endian.iter().rev().enumerate() {
        limbs[k / 8] |= u64::from(*byte) << (8 * (k % 8));
    }
    let bits = big_endian.len() * 8;
    let window = 1u64 << width;
    let mask = window - 1;
    let mut out = vec![0i8; bits + 1];
    let mut carry = 0u64;
    let mut position = 0;
    while position <= bits {
        let (limb, bit) = (position / 64, position % 64);
        let mut buffer = limbs[limb] >> bit;
        if bit + width as usize > 64 && limb + 1 < limbs.len() {
            buffer |= limbs[limb + 1] << (64 - bit);
        }
        let value = carry + (buffer & mask);
        if value & 1 == 0 {
            position += 1;
            continue;
        }
        // |digit| < 2^(w-1): it fits an i8 for every width used here.
        let (digit, next) = if value < window / 2 {
            (i64::try_from(value).unwrap_or(0), 0)
        } else {
            (
                i64::try_from(value).unwrap_or(0) - i64::try_from(window).unwrap_or(0),
                1,
            )
        };
        carry = next;
        out[position] = i8::try_from(digit).unwrap_or(0);
        position += width as usize;
    }
    let used = out.iter().rposition(|d| *d != 0).map_or(0, |top| top + 1);
    out.truncate(used);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use elliptic_curve::Field;
    use proptest::prelude::*;
    use rand_core::OsRng;

    use super::*;
    use crate::{Secp256k1, P256};

    /// A signed integer as a field scalar.
    pub(crate) fn signed<S: Suite>(c: i128) -> S::Scalar {
        let magnitude = S::Scalar::from_u128(c.unsigned_abs());
        if c < 0 {
            -magnitude
        } else {
            magnitude
        }
    }

    fn check<S: Suite>() {
        for n in [0usize, 1, 2, 3, 7, 12] {
            let terms: Vec<(S::Point, S::Scalar)> = (0..n)
                .map(|_| {
                    (
                        S::mul_by_generator(&S::Scalar::random(&mut OsRng)),
                        S::Scalar::random(&mut OsRng),
                    )
                })
                .collect();
            let expected = terms
                .iter()
                .fold(S::Point::identity(), |acc, (p, s)| acc + *p * s);
            assert_eq!(msm_vartime::<S>(&terms), expected);
            assert_eq!(S::lincomb(&terms), expected);
        }
        // Edge scalars: 0, 1, -1, 2^128, small.
        let p = S::mul_by_generator(&S::Scalar::from(5u64));
        for s in [
            S::Scalar::ZERO,
            S::Scalar::ONE,
            -S::Scalar::ONE,
            S::Scalar::from_u128(u128::MAX),
            S::Scalar::from(31u64),
        ] {
            assert_eq!(msm_vartime::<S>(&[(p, s)]), p * s);
        }
        // Small signed integers, as field scalars.
        let q = S::mul_by_generator(&S::Scalar::from(11u64));
        for (a, b) in [
            (0i128, 0i128),
            (1, -1),
            (3, -3),
            (-15, 16),
            (i128::MAX, i128::MIN + 1),
        ] {
            assert_eq!(
                msm_small::<S>(&[(p, a), (q, b)]),
                p * signed::<S>(a) + q * signed::<S>(b),
                "{a} {b}"
            );
        }
    }

    #[test]
    fn msm_matches_naive() {
        check::<Secp256k1>();
        check::<P256>();
    }

    /// The value the digits stand for, as little-endian 64-bit limbs (wrapping at 2^320).
    fn value_of(naf: &[i8]) -> [u64; 5] {
        let mut acc = [0u64; 5];
        for d in naf.iter().rev() {
            // acc = 2·acc + d
            let mut carry = 0u64;
            for limb in &mut acc {
                let next = *limb >> 63;
                *limb = (*limb << 1) | carry;
                carry = next;
            }
            let add = |acc: &mut [u64; 5], v: u64, neg: bool| {
                let mut borrow_or_carry = v;
                for limb in acc.iter_mut() {
                    let (r, o) = if neg {
                        limb.overflowing_sub(borrow_or_carry)
                    } else {
                        limb.overflowing_add(borrow_or_carry)
                    };
                    *limb = r;
                    borrow_or_carry = u64::from(o);
                    if borrow_or_carry == 0 {
                        break;
                    }
                }
            };
            add(&mut acc, u64::from(d.unsigned_abs()), *d < 0);
        }
        acc
    }

    fn limbs_of(big_endian: &[u8]) -> [u64; 5] {
        let mut limbs = [0u64; 5];
        for (k, byte) in big_endian.iter().rev().enumerate() {
            limbs[k / 8] |= u64::from(*byte) << (8 * (k % 8));
        }
        limbs
    }

    fn well_formed(naf: &[i8]) {
        assert!(naf.iter().all(|d| *d == 0 || (d % 2 != 0 && d.abs() < 16)));
        // Non-adjacent: after a non-zero digit, at least w - 1 zeros.
        for (k, d) in naf.iter().enumerate() {
            if *d != 0 {
                assert!(naf[k + 1..].iter().take(4).all(|e| *e == 0), "{naf:?}");
            }
        }
        assert!(naf.last().is_none_or(|d| *d != 0), "no trailing zeros");
    }

    #[test]
    fn wnaf_reconstructs() {
        for value in [0u128, 1, 15, 16, 17, 31, 0xdead_beef, u128::MAX] {
            let naf = wnaf(&value.to_be_bytes(), 5);
            assert_eq!(value_of(&naf), limbs_of(&value.to_be_bytes()), "{value}");
            well_formed(&naf);
        }
        let top = [0xffu8; 32];
        assert_eq!(value_of(&wnaf(&top, 5)), limbs_of(&top));
    }

    proptest! {
        #[test]
        fn wnaf_of_any_256_bit_number(bytes in proptest::array::uniform32(any::<u8>())) {
            let naf = wnaf(&bytes, 5);
            prop_assert_eq!(value_of(&naf), limbs_of(&bytes));
            well_formed(&naf);
        }
    }
}
