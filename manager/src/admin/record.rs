//! The committed epochs as the manager records them (all public) and the state file that
//! keeps them across restarts.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tkms_crypto::{shamir::Commitment, suite::Encoded, NodeIndex, PublicKeySet, Suite};
use tkms_registry::{access::public_shares_hash, Bytes, EpochPublication, B256};

use super::AdminError;
use tkms_proto::ClusterSuite as S;

/// One served node of an epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct EpochNode {
    /// Its index.
    pub index: u16,
    /// Its gRPC URL.
    pub url: String,
    /// Its node key (compressed, hex), which the manager pins its TLS connections to. Empty in
    /// state files written before pinning; such a node is reached unpinned.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_key: String,
}

impl EpochNode {
    /// The pinned node key, if recorded.
    pub(super) fn key(&self) -> Result<Option<Encoded<S>>, AdminError> {
        if self.node_key.is_empty() {
            return Ok(None);
        }
        node_key(&self.node_key)
            .map(Some)
            .map_err(|e| AdminError::State(format!("node {}: {e}", self.index)))
    }
}

/// A node key from its hex form.
pub(super) fn node_key(hex_key: &str) -> Result<Encoded<S>, String> {
    let bytes = hex::decode(hex_key).map_err(|e| format!("node key hex: {e}"))?;
    Encoded::from_bytes(&bytes).map_err(|e| format!("node key: {e}"))
}

/// A key epoch as the manager serves it (all public).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct EpochRecord {
    /// The epoch.
    pub epoch: u64,
    /// Threshold.
    pub threshold: u16,
    /// The Feldman commitment, hex (first point: the public key).
    pub commitment: String,
    /// The agreed transcript hash, hex.
    pub transcript_hash: String,
    /// The nodes holding shares.
    pub nodes: Vec<EpochNode>,
    /// Every index the ceremony dealt a share to (empty in state files written before it was
    /// recorded: the holders then).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub committee: Vec<u16>,
    /// Members of the committee that hold no share, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<DroppedMember>,
}

/// A committee member without a share of the epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DroppedMember {
    /// Its index.
    pub index: u16,
    /// Its gRPC URL, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Why it holds no share.
    pub reason: String,
}

impl EpochRecord {
    /// The committee's indices: recorded, or else the holders'.
    pub fn committee_indices(&self) -> Vec<u16> {
        if self.committee.is_empty() {
            self.nodes.iter().map(|n| n.index).collect()
        } else {
            self.committee.clone()
        }
    }

    /// The key set of the epoch.
    pub fn keys(&self) -> Result<PublicKeySet<S>, AdminError> {
        let bytes = hex::decode(&self.commitment)
            .map_err(|e| AdminError::State(format!("commitment hex: {e}")))?;
        let commitment = Commitment::<S>::from_bytes(&bytes)
            .map_err(|e| AdminError::State(format!("commitment: {e}")))?;
        let committee = self
            .committee_indices()
            .into_iter()
            .map(|i| NodeIndex::new(i).ok_or_else(|| AdminError::State("index 0".into())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PublicKeySet::new(commitment, committee))
    }

    /// The compressed public key, hex.
    pub fn public_key_hex(&self) -> Result<String, AdminError> {
        Ok(hex::encode(self.keys()?.public_key_encoded().bytes()))
    }

    /// What the manager publishes on chain for this epoch (`publishEpoch`), for the key set
    /// of its committee (every index the ceremony dealt a share to, which may include members
    /// that did not finish). The public-shares hash is [`public_shares_hash`], the one a node
    /// recomputes before serving.
    pub fn publication(&self) -> Result<EpochPublication, AdminError> {
        let indices = self.committee_indices();
        let bytes = hex::decode(&self.commitment)
            .map_err(|e| AdminError::State(format!("commitment hex: {e}")))?;
        let commitment = Commitment::<S>::from_bytes(&bytes)
            .map_err(|e| AdminError::State(format!("commitment: {e}")))?;
        let members = indices
            .iter()
            .map(|&i| NodeIndex::new(i).ok_or_else(|| AdminError::State("index 0".into())))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = PublicKeySet::new(commitment, members);
        let shares: Vec<(u16, Vec<u8>)> = keys
            .public_shares()
            .map(|(i, p)| (i.get(), S::encode_point(p).to_vec()))
            .collect();
        let transcript: [u8; 32] = hex::decode(&self.transcript_hash)
            .ok()
            .and_then(|t| t.try_into().ok())
            .ok_or_else(|| {
                AdminError::State(format!(
                    "epoch {}: the transcript hash is not 32 bytes of hex",
                    self.epoch
                ))
            })?;
        Ok(EpochPublication {
            epoch: self.epoch,
            t: self.threshold,
            n: u16::try_from(shares.len())
                .map_err(|_| AdminError::State("committee too large".into()))?,
            public_key: Bytes::from(keys.public_key_encoded().bytes().to_vec()),
            public_shares_hash: public_shares_hash(shares.iter().map(|(i, p)| (*i, p.as_slice()))),
            transcript_hash: B256::from(transcript),
        })
    }
}

/// What the manager keeps across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ManagerState {
    /// Committed epochs in the order they were committed; the last is served.
    pub epochs: Vec<EpochRecord>,
}

impl ManagerState {
    /// Load `path`, or an empty state if it does not exist.
    pub fn load(path: &Path) -> Result<Self, AdminError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| AdminError::State(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(AdminError::State(format!("{}: {e}", path.display()))),
        }
    }

    /// Write atomically and durably (the commit of an epoch is recorded here).
    pub fn save(&self, path: &Path) -> Result<(), AdminError> {
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_vec_pretty(self).map_err(|e| AdminError::State(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&json)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| AdminError::State(format!("{}: {e}", path.display())))
    }
}
