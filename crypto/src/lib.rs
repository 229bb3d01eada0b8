//! # tkms-crypto
//!
//! The sans-IO protocol math of tkms (docs/PROTOCOL.md): no network, no files, no async. The node,
//! the manager, the simulator and the tests all drive these same functions.
//!
//! - [`suite`]: curve suites ([`Secp256k1`], the default, and [`P256`]) behind one trait, with
//!   strict encodings.
//! - [`ecies`]: ECIES byte-compatible with the Nox KMS.
//! - [`shamir`]: Shamir sharing, Feldman commitments, Lagrange coefficients.
//! - [`dleq`], [`schnorr`]: Chaum–Pedersen and Schnorr proofs.
//! - [`delegation`]: partials `D_i = share_i·K` with proofs; verify; combine into `x(S)`.
//! - [`aggregate`]: one proof for a node's whole batch of delegation partials; verify the
//!   batches of several nodes at once.
//! - [`pre`]: proxy re-encryption partials to a target key; verify; combine; open.
//! - [`dkg`]: distributed key generation and resharing as round functions.
//! - [`collect`]: the fan-out that collects `t` verified partials (whom to ask, when to ask
//!   more, when a request is served or unavailable), and the per-node circuit breakers.
//! - [`handover`]: the epoch life cycle: which epoch to serve, commit, roll back or retire,
//!   decided from what the nodes hold.
//! - [`secret`]: secret types (zeroized, no `Debug` of values, constant-time equality).
//!
//! ```
//! use rand_core::OsRng;
//! use tkms_crypto::{delegation, ecies, shamir, SecretScalar, Secp256k1};
//!
//! // A 2-of-3 key (dealt here for brevity; the cluster runs a DKG).
//! let sk = SecretScalar::<Secp256k1>::random(&mut OsRng);
//! let (shares, keys) = shamir::deal(&sk, 2, 3, &mut OsRng).unwrap();
//!
//! // Someone encrypts to the cluster key.
//! let ct = ecies::encrypt::<Secp256k1>(&keys.public_key(), b"hello", &mut OsRng).unwrap();
//!
//! // Two nodes answer a delegation request for K; the combiner verifies and combines.
//! let request = delegation::DelegationRequest::new(1, b"req-1".to_vec(), *ct.ephemeral());
//! let partials: Vec<_> = shares[1..]
//!     .iter()
//!     .map(|s| delegation::PartialDelegation::create(s, &request, &mut OsRng))
//!     .collect();
//! let (verified, errors) = delegation::verify_all(partials, &keys, &request, &mut OsRng);
//! assert!(errors.is_empty());
//! let secret = delegation::combine(&verified, &keys).unwrap();
//! assert_eq!(&*ecies::open_with_shared_secret(&secret, &ct).unwrap(), b"hello");
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod aggregate;
pub mod ceremony;
mod codec;
pub mod collect;
pub mod delegation;
pub mod dkg;
pub mod dleq;
pub mod dst;
pub mod ecies;
pub mod error;
pub mod handover;
pub mod hash;
mod index;
mod libsecp;
pub mod msm;
pub mod pre;
pub mod schnorr;
pub mod secret;
pub mod shamir;
pub mod suite;

pub use error::{EncodingError, Error};
pub use secret::{SecretScalar, SharedSecret};
pub use shamir::{KeyShare, NodeIndex, PublicKeySet};
pub use suite::{ClusterSuite, Secp256k1, Suite, P256};
