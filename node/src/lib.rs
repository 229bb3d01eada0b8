//! # tkms-node
//!
//! A KMS node (docs/ARCHITECTURE.md §4.2): it holds one Shamir share of the cluster key in an
//! encrypted vault ([`vault`]) and serves partial delegations and re-encryptions, with proofs, to
//! the manager over gRPC ([`service`]). The protocol math is `tkms-crypto`'s.

#![forbid(unsafe_code)]

pub mod ceremony;
pub mod daemon;
pub mod epochs;
pub mod front;
pub mod kms_password;
pub mod p2p;
pub mod service;
pub mod vault;
