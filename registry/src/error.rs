//! The crate's one error type. Contract reverts arrive decoded to the custom error the
//! contract raised (`NotManager`, `InvalidThreshold`, ...), so a caller can match on them and
//! an operator reads the reason, not a hex blob.

use std::path::PathBuf;

use alloy::{
    primitives::{Address, Bytes, B256},
    sol_types::SolInterface,
};

use crate::bindings::TkmsRegistry::TkmsRegistryErrors;

/// Shorthand for this crate's results.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The contract refused the call with one of its custom errors (see
    /// `contracts/README.md`, "Errors").
    #[error("the registry contract refused the call: {0}")]
    Reverted(ContractRevert),
    /// The call reverted with data that is not one of the registry's custom errors (a wrong
    /// contract at this address, or a revert without reason).
    #[error("the call reverted without a registry error (revert data 0x{})", alloy::hex::encode(.0))]
    UnknownRevert(Bytes),
    /// A transaction was mined but failed.
    #[error("transaction {tx} was mined in block {block} but failed (status 0)")]
    TransactionFailed {
        /// Transaction hash.
        tx: B256,
        /// Block it was mined in.
        block: u64,
    },
    /// The JSON-RPC endpoint could not be reached or answered with an error.
    #[error("JSON-RPC request failed: {0}")]
    Rpc(String),
    /// The RPC URL does not parse.
    #[error("invalid RPC URL {url:?}: {reason}")]
    InvalidRpcUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A write was attempted through a read-only client.
    #[error("this registry client has no signing key; writes need one")]
    NoSigner,
    /// There is no contract code at the registry address.
    #[error("no contract is deployed at {address} on this chain")]
    NoContract {
        /// The address that was given.
        address: Address,
    },
    /// A deployment transaction's receipt names no contract address.
    #[error("deployment transaction {tx} created no contract")]
    NotDeployed {
        /// Transaction hash.
        tx: B256,
    },
    /// An argument was refused before anything was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The chain answered with data this client cannot use.
    #[error("unexpected answer from the chain: {0}")]
    Malformed(String),
    /// No anvil binary was found. The message is one line that says how to install it.
    #[error(
        "anvil is not installed{}: run `./test.sh --setup` or `bash contracts/install-anvil.sh` (the pinned npm package), or set TKMS_ANVIL to an anvil binary",
        tkms_anvil.as_ref().map(|p| format!(" (TKMS_ANVIL={} is not a file)", p.display())).unwrap_or_default()
    )]
    AnvilNotFound {
        /// `$TKMS_ANVIL`, when it was set to a path that is not a file.
        tkms_anvil: Option<PathBuf>,
    },
    /// anvil was found but did not start.
    #[error("anvil at {path} did not start: {reason}")]
    AnvilStart {
        /// The binary.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl RegistryError {
    /// The decoded custom error, if the contract refused the call.
    pub fn revert(&self) -> Option<&TkmsRegistryErrors> {
        match self {
            Self::Reverted(r) => Some(&r.error),
            _ => None,
        }
    }

    /// The Solidity name of the custom error (`"NotManager"`), if the contract refused the call.
    pub fn revert_name(&self) -> Option<&'static str> {
        match self {
            Self::Reverted(r) => Some(r.name()),
            _ => None,
        }
    }

    /// Decode revert data into the registry's custom errors.
    pub(crate) fn from_revert_data(data: &Bytes) -> Self {
        match TkmsRegistryErrors::abi_decode(data) {
            Ok(error) => Self::Reverted(ContractRevert { error }),
            Err(_) => Self::UnknownRevert(data.clone()),
        }
    }

    pub(crate) fn rpc(e: impl std::fmt::Display) -> Self {
        Self::Rpc(e.to_string())
    }
}

impl From<alloy::contract::Error> for RegistryError {
    fn from(e: alloy::contract::Error) -> Self {
        if let Some(data) = e.as_revert_data() {
            return Self::from_revert_data(&data);
        }
        match e {
            alloy::contract::Error::AbiError(e) => Self::Malformed(e.to_string()),
            alloy::contract::Error::ZeroData(name, _) => Self::Malformed(format!(
                "{name} returned no data (is the address a TkmsRegistry?)"
            )),
            other => Self::rpc(other),
        }
    }
}

impl From<alloy::transports::TransportError> for RegistryError {
    fn from(e: alloy::transports::TransportError) -> Self {
        if let Some(response) = e.as_error_resp() {
            if let Some(data) = response.as_revert_data() {
                return Self::from_revert_data(&data);
            }
        }
        Self::rpc(e)
    }
}

impl From<alloy::providers::PendingTransactionError> for RegistryError {
    fn from(e: alloy::providers::PendingTransactionError) -> Self {
        Self::rpc(e)
    }
}

/// A custom error raised by the registry contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractRevert {
    /// The decoded error, with its arguments.
    pub error: TkmsRegistryErrors,
}

impl ContractRevert {
    /// The Solidity name of the error, e.g. `"NotManager"`.
    pub fn name(&self) -> &'static str {
        TkmsRegistryErrors::name_by_selector(self.error.selector()).unwrap_or("unknown error")
    }
}

impl std::fmt::Display for ContractRevert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The generated Debug is `Name(Name { arg: value })`; show the inner `Name { arg: value }`.
        let debug = format!("{:?}", self.error);
        let inner = debug
            .split_once('(')
            .and_then(|(_, rest)| rest.strip_suffix(')'))
            .unwrap_or(&debug);
        f.write_str(inner)
    }
}
