//! Every domain-separation label and KDF `info` string of the engine, in one place
//! (docs/STYLE.md: "All domain-separation tags and KDF labels live in one module").
//!
//! Key hierarchy (docs/PROTOCOL.md §13):
//!
//! ```text
//! KEK (index_key, 32 B, caller-held)
//!  ├─ HKDF(KEK, KEK_WRAP)        -> AES-256-GCM key wrapping the DEK (AAD: DEK_WRAP_AAD ‖ name ‖ uid)
//!  └─ HKDF(KEK, USER_MINT)       -> HMAC key minting per-user secrets
//! user secret -> HKDF(secret, USER_WRAP) -> AES-256-GCM key wrapping the DEK for that user
//! DEK (random per index, 32 B)
//!  ├─ HKDF(DEK, CLUSTER_SEED)    -> HMAC key: seed_c = HMAC(key, CLUSTER_SEED_MSG ‖ generation ‖ c)
//!  └─ HKDF(DEK, STATE)           -> AES-256-GCM key of the encrypted index state (counters, id map)
//! node   = SHA3-256(NODE ‖ seed_c ‖ counter ‖ salt)   (salt: random 16 B per segment)
//! lookup = SHA3-256(LOOKUP ‖ node)            ("left" key: storage lookup token)
//! enc    = SHA3-256(ENCRYPT ‖ node)           ("right" key: AES-256-GCM key of the segment)
//! record storage key = SHA3-256(RECORD ‖ lookup ‖ kind ‖ slot)
//! ```

/// HKDF info: key that wraps the DEK under the KEK.
pub const KEK_WRAP: &[u8] = b"tkms/engine/v1/kek-wrap";
/// AAD prefix of the wrapped DEK (followed by index name and uid).
pub const DEK_WRAP_AAD: &[u8] = b"tkms/engine/v1/dek";
/// HKDF info: HMAC key minting per-user secrets from the KEK.
pub const USER_MINT: &[u8] = b"tkms/engine/v1/user-mint";
/// HKDF info: key that wraps the DEK under a user secret.
pub const USER_WRAP: &[u8] = b"tkms/engine/v1/user-wrap";
/// AAD prefix of a user's wrapped DEK (followed by uid, key id and scope).
pub const USER_WRAP_AAD: &[u8] = b"tkms/engine/v1/user-dek";
/// HKDF info: HMAC key of the per-cluster seeds.
pub const CLUSTER_SEED: &[u8] = b"tkms/engine/v1/cluster-seed";
/// HMAC message prefix of a cluster seed (followed by generation and cluster id).
pub const CLUSTER_SEED_MSG: &[u8] = b"tkms/engine/v1/cluster";
/// HKDF info: key of the encrypted index state.
pub const STATE: &[u8] = b"tkms/engine/v1/state";
/// AAD prefix of the encrypted index state (followed by uid).
pub const STATE_AAD: &[u8] = b"tkms/engine/v1/state-record";
/// SHA-3 prefix of a (cluster, counter) node key.
pub const NODE: &[u8] = b"tkms/engine/v1/node";
/// SHA-3 prefix turning a node key into the storage lookup token ("left").
pub const LOOKUP: &[u8] = b"tkms/engine/v1/lookup";
/// SHA-3 prefix turning a node key into the segment encryption key ("right").
pub const ENCRYPT: &[u8] = b"tkms/engine/v1/encrypt";
/// SHA-3 prefix of a record's storage key inside a segment.
pub const RECORD: &[u8] = b"tkms/engine/v1/record";
/// Version byte of a serialized user key.
pub const USER_KEY_VERSION: u8 = 1;
