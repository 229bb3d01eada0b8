//! Wire types of tkms: the gRPC schema between the manager and the nodes
//! (`proto/tkms/node/v1/node.proto`), generated with tonic and prost. Conversions to the
//! domain types of `tkms-crypto` are explicit and validating, in the crates that use them.

#![allow(clippy::pedantic, missing_docs)] // generated code

/// `tkms.node.v1`: the node service.
pub mod node {
    /// Version 1 of the node service.
    pub mod v1 {
        tonic::include_proto!("tkms.node.v1");
    }
}
