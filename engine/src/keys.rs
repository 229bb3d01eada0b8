//! Key material and key derivation (docs/PROTOCOL.md §13 "Engine key hierarchy", §10
//! "Secrets").
//!
//! The caller holds a 32-byte KEK ([`IndexKey`]). Each index gets a random DEK, stored only
//! wrapped under the KEK (AES-256-GCM, AAD binding the index name and uid), so a wrong KEK
//! fails authentication and is refused with [`Error::WrongKey`].
//! Everything else derives from the DEK with the labelled HKDF/HMAC/SHA-3 steps listed in
//! [`labels`]. Per-user keys ([`UserKey`]) are minted from the KEK and carry a
//! [`Scope`]; each one wraps its own copy of the DEK.
//!
//! Every secret here is a newtype without a value-printing `Debug`, zeroized on drop and
//! compared in constant time.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;
use sha3::{Digest, Sha3_256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};
use crate::labels;

/// Length of every symmetric key in the engine.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Length of the random per-segment salt mixed into the node key.
pub(crate) const SEGMENT_SALT_LEN: usize = 16;
/// Length of a user key id.
pub const USER_KEY_ID_LEN: usize = 16;
/// Length of a serialized [`UserKey`].
pub const USER_KEY_LEN: usize = 2 + USER_KEY_ID_LEN + KEY_LEN;

type HmacSha256 = Hmac<Sha256>;

/// The 32-byte index key-encryption key (CyborgDB's `index_key`).
///
/// ```
/// use tkms_engine::IndexKey;
/// let key = IndexKey::generate();
/// let same = IndexKey::from_bytes(key.expose_secret()).unwrap();
/// assert_eq!(key, same); // constant-time comparison
/// assert!(IndexKey::from_bytes(&[0u8; 31]).is_err());
/// assert_eq!(format!("{key:?}"), "IndexKey(..)");
/// ```
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct IndexKey([u8; KEY_LEN]);

impl IndexKey {
    /// A fresh random key from the operating system's CSPRNG (for development; in production
    /// the KEK comes from a KMS).
    pub fn generate() -> Self {
        let mut k = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut k);
        Self(k)
    }

    /// Wraps exactly 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let k: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            Error::InvalidKey(format!(
                "an index key must be exactly {KEY_LEN} bytes, got {}",
                bytes.len()
            ))
        })?;
        Ok(Self(k))
    }

    /// The raw key bytes, e.g. to hand to a KMS for wrapping. Handle with care.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IndexKey(..)")
    }
}

impl ConstantTimeEq for IndexKey {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.0.ct_eq(&other.0)
    }
}

impl PartialEq for IndexKey {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for IndexKey {}

/// What a [`UserKey`] may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Query, get and list ids; every write is refused.
    ReadOnly,
    /// Everything a read-only key may do, plus upsert, delete, train and compact.
    ReadWrite,
}

impl Scope {
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Scope::ReadOnly => 1,
            Scope::ReadWrite => 2,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Scope::ReadOnly),
            2 => Some(Scope::ReadWrite),
            _ => None,
        }
    }
}

/// A per-user key minted from the index key with
/// [`Index::mint_user_key`](crate::Index::mint_user_key).
///
/// It names itself (a random key id), carries its [`Scope`], and holds a 32-byte secret that
/// unwraps the user's own copy of the index DEK. Serialize it with [`UserKey::to_bytes`] to
/// hand it to the user.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct UserKey {
    #[zeroize(skip)]
    scope: Scope,
    key_id: [u8; USER_KEY_ID_LEN],
    secret: [u8; KEY_LEN],
}

impl UserKey {
    /// The scope this key grants.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The public key id (random, not secret), used to revoke the key.
    pub fn key_id(&self) -> [u8; USER_KEY_ID_LEN] {
        self.key_id
    }

    /// Serialized form: `version(1) ‖ scope(1) ‖ key_id(16) ‖ secret(32)`.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut v = Zeroizing::new(Vec::with_capacity(USER_KEY_LEN));
        v.push(labels::USER_KEY_VERSION);
        v.push(self.scope.to_byte());
        v.extend_from_slice(&self.key_id);
        v.extend_from_slice(&self.secret);
        v
    }

    /// Parses the form written by [`UserKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != USER_KEY_LEN {
            return Err(Error::InvalidKey(format!(
                "a user key must be {USER_KEY_LEN} bytes, got {}",
                bytes.len()
            )));
        }
        if bytes[0] != labels::USER_KEY_VERSION {
            return Err(Error::InvalidKey(format!(
                "unsupported user key version {}",
                bytes[0]
            )));
        }
        let scope = Scope::from_byte(bytes[1])
            .ok_or_else(|| Error::InvalidKey(format!("unknown user key scope {}", bytes[1])))?;
        let mut key_id = [0u8; USER_KEY_ID_LEN];
        key_id.copy_from_slice(&bytes[2..2 + USER_KEY_ID_LEN]);
        let mut secret = [0u8; KEY_LEN];
        secret.copy_from_slice(&bytes[2 + USER_KEY_ID_LEN..]);
        Ok(Self {
            scope,
            key_id,
            secret,
        })
    }

    /// Mints the key `key_id` with `scope` from the KEK:
    /// `secret = HMAC(HKDF(KEK, USER_MINT), key_id ‖ scope)`.
    pub(crate) fn mint(kek: &IndexKey, key_id: [u8; USER_KEY_ID_LEN], scope: Scope) -> Self {
        let mint_key = hkdf32(&kek.0, labels::USER_MINT);
        let mut mac = hmac(&mint_key[..]);
        mac.update(&key_id);
        mac.update(&[scope.to_byte()]);
        let secret = hmac_finish(mac);
        Self {
            scope,
            key_id,
            secret,
        }
    }

    /// The AES key wrapping this user's copy of the DEK.
    pub(crate) fn wrap_cipher(&self) -> Cipher {
        Cipher::new(&hkdf32(&self.secret, labels::USER_WRAP))
    }
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserKey")
            .field("scope", &self.scope)
            .field("key_id", &hex(&self.key_id))
            .finish_non_exhaustive()
    }
}

impl ConstantTimeEq for UserKey {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.key_id.ct_eq(&other.key_id)
            & self.secret.ct_eq(&other.secret)
            & self.scope.to_byte().ct_eq(&other.scope.to_byte())
    }
}

impl PartialEq for UserKey {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for UserKey {}

/// The per-index data-encryption key. Never leaves the process unwrapped.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct Dek([u8; KEY_LEN]);

impl Dek {
    pub(crate) fn generate() -> Self {
        let mut k = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut k);
        Self(k)
    }

    pub(crate) fn from_plaintext(bytes: &[u8]) -> Option<Self> {
        let k: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(Self(k))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The cipher wrapping the DEK under the KEK.
pub(crate) fn kek_wrap_cipher(kek: &IndexKey) -> Cipher {
    Cipher::new(&hkdf32(&kek.0, labels::KEK_WRAP))
}

/// Keys derived from the DEK that an open index keeps in memory.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct IndexKeys {
    cluster_seed_key: Zeroizing<[u8; KEY_LEN]>,
    state_key: Zeroizing<[u8; KEY_LEN]>,
}

impl IndexKeys {
    pub(crate) fn derive(dek: &Dek) -> Self {
        Self {
            cluster_seed_key: hkdf32(&dek.0, labels::CLUSTER_SEED),
            state_key: hkdf32(&dek.0, labels::STATE),
        }
    }

    /// `seed_c = HMAC(cluster_seed_key, CLUSTER_SEED_MSG ‖ generation ‖ cluster)` (docs/PROTOCOL.md
    /// §13 "Per-cluster seeds").
    pub(crate) fn cluster_seed(&self, generation: u32, cluster: u32) -> ClusterSeed {
        let mut mac = hmac(&self.cluster_seed_key[..]);
        mac.update(labels::CLUSTER_SEED_MSG);
        mac.update(&generation.to_be_bytes());
        mac.update(&cluster.to_be_bytes());
        ClusterSeed(Zeroizing::new(hmac_finish(mac)))
    }

    pub(crate) fn state_cipher(&self) -> Cipher {
        Cipher::new(&self.state_key)
    }
}

/// A per-cluster seed: the root of that cluster's forward-private key chain.
pub(crate) struct ClusterSeed(Zeroizing<[u8; KEY_LEN]>);

impl ClusterSeed {
    /// Keys of segment `(cluster, counter, salt)`: `node = SHA3(NODE ‖ seed ‖ counter ‖
    /// salt)`, then the "left" storage lookup token and the "right" encryption key
    /// (docs/PROTOCOL.md §13 "Forward privacy"). The random per-segment
    /// `salt` (kept in the encrypted state) makes a client that is fed a replayed old state
    /// derive fresh tokens and keys instead of reusing those of the segments written after it.
    pub(crate) fn segment(&self, counter: u64, salt: &[u8; SEGMENT_SALT_LEN]) -> SegmentKeys {
        let node = Zeroizing::new(sha3(&[
            labels::NODE,
            &self.0[..],
            &counter.to_be_bytes(),
            salt,
        ]));
        let lookup = Zeroizing::new(sha3(&[labels::LOOKUP, &node[..]]));
        let enc = Zeroizing::new(sha3(&[labels::ENCRYPT, &node[..]]));
        SegmentKeys {
            lookup,
            cipher: Cipher::new(&enc),
        }
    }
}

/// The two keys of one (cluster, counter) segment.
pub(crate) struct SegmentKeys {
    lookup: Zeroizing<[u8; KEY_LEN]>,
    pub(crate) cipher: Cipher,
}

impl SegmentKeys {
    /// Storage key of record `(kind, slot)` of this segment:
    /// `SHA3(RECORD ‖ lookup ‖ kind ‖ slot)`.
    pub(crate) fn record_key(&self, kind: u8, slot: u32) -> [u8; KEY_LEN] {
        sha3(&[
            labels::RECORD,
            &self.lookup[..],
            &[kind],
            &slot.to_be_bytes(),
        ])
    }
}

/// AES-256-GCM with a fresh random 96-bit nonce per message.
///
/// Sealed form: `nonce(12) ‖ ciphertext ‖ tag(16)`. The AAD binds every record to where it is
/// stored, so records cannot be swapped.
#[derive(Clone)]
pub(crate) struct Cipher(Aes256Gcm);

/// Authentication failed (wrong key, or tampered/corrupted data).
#[derive(Debug)]
pub(crate) struct AuthFailure;

impl Cipher {
    pub(crate) fn new(key: &[u8; KEY_LEN]) -> Self {
        Self(Aes256Gcm::new(key.into()))
    }

    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = self
            .0
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption fails only for messages over 64 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    pub(crate) fn open(
        &self,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, AuthFailure> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(AuthFailure);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| AuthFailure)?;
        self.0
            .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad })
            .map(Zeroizing::new)
            .map_err(|_| AuthFailure)
    }
}

fn hkdf32(ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    Hkdf::<Sha256>::new(None, ikm)
        .expand(info, &mut out[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// The 32-byte HMAC output; the intermediate output buffer is wiped.
fn hmac_finish(mac: HmacSha256) -> [u8; KEY_LEN] {
    let mut tag = mac.finalize().into_bytes();
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(&tag);
    AsMut::<[u8]>::as_mut(&mut tag).zeroize();
    out
}

fn hmac(key: &[u8]) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

fn sha3(parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut h = Sha3_256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_aad_binding() {
        let c = Cipher::new(&[7u8; 32]);
        let sealed = c.seal(b"where", b"hello");
        assert_eq!(&c.open(b"where", &sealed).unwrap()[..], b"hello");
        assert!(c.open(b"elsewhere", &sealed).is_err());
        assert!(Cipher::new(&[8u8; 32]).open(b"where", &sealed).is_err());
        assert!(c.open(b"where", &sealed[..10]).is_err());
        // Unique nonces: same plaintext, different ciphertexts.
        assert_ne!(c.seal(b"where", b"hello"), sealed);
    }

    #[test]
    fn derivations_are_labelled_and_distinct() {
        let dek = Dek([1u8; 32]);
        let keys = IndexKeys::derive(&dek);
        assert_ne!(*keys.cluster_seed_key, *keys.state_key);
        let s0 = keys.cluster_seed(0, 0);
        let s1 = keys.cluster_seed(0, 1);
        let g1 = keys.cluster_seed(1, 0);
        assert_ne!(*s0.0, *s1.0);
        assert_ne!(*s0.0, *g1.0);
        let a = s0.segment(0, &[0; 16]);
        let b = s0.segment(1, &[0; 16]);
        let salted = s0.segment(0, &[1; 16]);
        assert_ne!(*a.lookup, *b.lookup);
        assert_ne!(*a.lookup, *salted.lookup);
        assert_ne!(a.record_key(0, 0), a.record_key(0, 1));
        assert_ne!(a.record_key(0, 0), a.record_key(1, 0));
        // Deterministic: a query re-derives the same tokens.
        assert_eq!(
            a.record_key(2, 5),
            keys.cluster_seed(0, 0)
                .segment(0, &[0; 16])
                .record_key(2, 5)
        );
    }

    #[test]
    fn derivation_known_answer() {
        // Pins the KDF chain so an accidental change of a label or an order is caught.
        let keys = IndexKeys::derive(&Dek([0u8; 32]));
        let seg = keys.cluster_seed(0, 0).segment(0, &[0x5a; 16]);
        let rk = hex(&seg.record_key(0, 0));
        assert_eq!(rk.len(), 64);
        assert_eq!(rk, KAT_RECORD_KEY, "KDF chain changed: {rk}");
    }

    // Computed independently with Python (hashlib: HKDF-SHA256, HMAC-SHA256, SHA3-256):
    // DEK = 0^32, generation 0, cluster 0, counter 0, salt = 0x5a^16, kind 0, slot 0.
    // (Before the per-segment salt, i.e. with an empty salt, the same chain gave
    // e93bd4508e6a8d1b501562ec3442c28b9848ea7ded3963f08dea151d88f73647.)
    const KAT_RECORD_KEY: &str = "75046c0fe5d676203135b769b5fffb21e22465203cbbd2db2cb27422d8a272f8";

    #[test]
    fn aes_round_keys_are_wiped_on_drop() {
        // Compiles only with the `zeroize` feature of `aes`: the expanded key schedule inside
        // every `Cipher` (Aes256Gcm<Aes256>) is then zeroized when it is dropped.
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<aes::Aes256>();
        let _ = Cipher::new(&[1u8; 32]);
    }

    #[test]
    fn hmac_output_is_copied_out() {
        let mut mac = hmac(b"k");
        mac.update(b"m");
        let expected: [u8; KEY_LEN] = {
            let mut m = hmac(b"k");
            m.update(b"m");
            m.finalize().into_bytes().into()
        };
        assert_eq!(hmac_finish(mac), expected);
    }

    #[test]
    fn user_key_roundtrip_and_debug() {
        let kek = IndexKey::from_bytes(&[9u8; 32]).unwrap();
        let uk = UserKey::mint(&kek, [3u8; 16], Scope::ReadOnly);
        let parsed = UserKey::from_bytes(&uk.to_bytes()).unwrap();
        assert_eq!(parsed, uk);
        assert_eq!(parsed.scope(), Scope::ReadOnly);
        let rw = UserKey::mint(&kek, [3u8; 16], Scope::ReadWrite);
        assert_ne!(rw, uk);
        let dbg = format!("{uk:?}");
        assert!(!dbg.contains(&hex(&uk.secret)));
        assert!(UserKey::from_bytes(&[0u8; 5]).is_err());
        let mut bad = uk.to_bytes().to_vec();
        bad[1] = 9;
        assert!(UserKey::from_bytes(&bad).is_err());
    }
}
