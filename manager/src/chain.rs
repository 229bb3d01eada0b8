//! The on-chain [`tkms_registry::access::Registry`] (moved to [`tkms_registry::access`],
//! where the nodes use it too).

pub use tkms_registry::access::{ChainRegistry, DEFAULT_MAX_STALENESS};
