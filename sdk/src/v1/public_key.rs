//! The cluster key as `GET /v0/public-key` publishes it, checked against its commitment, and
//! the client's check of which manager answered.

use std::collections::BTreeMap;

use alloy_primitives::Address;
use serde::{Deserialize, Serialize};
use tkms_crypto::{suite::Encoded, ClusterSuite as S, NodeIndex, PublicKeySet, SecretScalar};

use super::{point, V1Error};

/// `GET /v0/public-key`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicKeyResponse {
    /// `PK`, compressed `0x` hex.
    pub public_key: String,
    /// Key epoch.
    pub epoch: u64,
    /// Threshold.
    pub threshold: u16,
    /// Committee size.
    pub n: usize,
    /// `PK_i` by node index.
    pub public_shares: BTreeMap<String, String>,
    /// The Feldman commitment `A_0..A_{t-1}`, compressed `0x` hex.
    #[serde(default)]
    pub commitment: Vec<String>,
}

impl PublicKeyResponse {
    /// The public key set, derived from the commitment and checked against `publicKey` and
    /// every listed public share.
    pub fn key_set(&self) -> Result<PublicKeySet<S>, V1Error> {
        let bad = |m: String| V1Error::InvalidResponse(m);
        let points = self
            .commitment
            .iter()
            .map(|p| point(p, "commitment").map(|e| *e.point()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let commitment = tkms_crypto::shamir::Commitment::new(points)
            .map_err(|e| bad(format!("commitment: {e}")))?;
        let committee = self
            .public_shares
            .keys()
            .map(|i| {
                i.parse::<u16>()
                    .ok()
                    .and_then(NodeIndex::new)
                    .ok_or_else(|| bad(format!("bad node index {i:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = PublicKeySet::new(commitment, committee);
        if keys.threshold() != self.threshold {
            return Err(bad("threshold differs from the commitment's".into()));
        }
        let pk = point(&self.public_key, "publicKey").map_err(|e| bad(e.to_string()))?;
        if keys.public_key_encoded() != &pk {
            return Err(bad("publicKey differs from the commitment's".into()));
        }
        for (i, share) in &self.public_shares {
            let share = point(share, "publicShare").map_err(|e| bad(e.to_string()))?;
            let index = i
                .parse::<u16>()
                .ok()
                .and_then(NodeIndex::new)
                .ok_or_else(|| bad(format!("bad node index {i:?}")))?;
            if keys.public_share(index).ok() != Some(*share.point()) {
                return Err(bad(format!(
                    "public share {i} differs from the commitment's"
                )));
            }
        }
        Ok(keys)
    }
}

/// Check the manager's answer came from `expected` (the manager wallet the client trusts).
pub fn check_manager(signer: Address, expected: Address) -> Result<(), V1Error> {
    if signer == expected {
        Ok(())
    } else {
        Err(V1Error::InvalidResponse(format!(
            "signed by {signer}, not the manager {expected}"
        )))
    }
}

/// A fresh target key pair for `/v1/reencrypt`.
pub fn target_key() -> (SecretScalar<S>, Encoded<S>) {
    let b = SecretScalar::<S>::random(&mut rand_core::OsRng);
    let public = Encoded::new(b.public_point());
    (b, public)
}
