//! The embedded registry of a testnet: a JSON file the operator edits (moved to
//! [`tkms_registry::access`], where the nodes use it too).

pub use tkms_registry::access::{FileRegistry, RegistryFile};
