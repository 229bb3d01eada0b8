//! # tkms-manager
//!
//! The manager (docs/ARCHITECTURE.md §4.1), meant to run in a TEE: authenticates gateways and
//! runners, fans requests out to the nodes, verifies every partial with its proof and combines `t`
//! of them. [`nox`] holds the wire format shared with the single-key Nox KMS (`/v0/delegate`);
//! [`cluster`] the fan-out to nodes.

#![forbid(unsafe_code)]

pub mod admin;
pub mod chain;
pub mod cluster;
pub mod daemon;
pub mod file_registry;
pub mod front;
pub mod http;
pub mod quota;
pub mod single;
pub use tkms_sdk::nox;
