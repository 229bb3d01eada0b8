//! The vault's byte formats (see the [module docs](super)): the header with the KDF
//! parameters, and the share record, with the bounds-checked reader that decodes them.

use std::fmt;

use tkms_crypto::{
    shamir::Commitment, KeyShare, NodeIndex, PublicKeySet, Secp256k1, SecretScalar, Suite, P256,
};
use zeroize::Zeroizing;

use super::kdf::KdfParams;
use super::seal::aad;
use super::{labels, VaultError};

const FORMAT_VERSION: u8 = 1;
const RECORD_VERSION: u8 = 1;
pub(super) const SALT_LEN: usize = 16;
const SCALAR_LEN: usize = 32;
const POINT_LEN: usize = 33;
const HEADER_LEN: usize = 1 + 12 + SALT_LEN;

pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!(
                "truncated: {n} more bytes expected, {} left",
                self.bytes.len()
            ));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(super) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(super) fn finish(&self) -> Result<(), String> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(format!("{} trailing bytes", self.bytes.len()))
        }
    }
}

/// The vault header: the Argon2id parameters and salt of the vault key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) params: KdfParams,
    pub(super) salt: [u8; SALT_LEN],
}

impl Header {
    pub(super) fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = FORMAT_VERSION;
        out[1..13].copy_from_slice(&self.params.to_bytes());
        out[13..].copy_from_slice(&self.salt);
        out
    }

    pub(super) fn from_bytes(bytes: &[u8]) -> Result<Self, VaultError> {
        let parse = || -> Result<Self, String> {
            let mut reader = Reader { bytes };
            let version = reader.u8()?;
            if version != FORMAT_VERSION {
                return Err(format!("unsupported vault format version {version}"));
            }
            let params = KdfParams::from_reader(&mut reader)?;
            let salt = reader.array()?;
            reader.finish()?;
            Ok(Self { params, salt })
        };
        let header = parse().map_err(|e| VaultError::Corrupted(format!("vault header: {e}")))?;
        header
            .params
            .validate()
            .map_err(|e| VaultError::Corrupted(format!("vault header: {e}")))?;
        Ok(header)
    }

    pub(super) fn key_check_aad(self) -> Vec<u8> {
        let mut out = aad(labels::META_TABLE, labels::KEY_CHECK_KEY.as_bytes());
        out.extend_from_slice(&self.to_bytes());
        out
    }
}

/// One epoch's share as stored: the node's index and share, the epoch's public key set
/// (threshold, Feldman commitment, committee) and the DKG/reshare transcript hash.
///
/// Its `Debug` shows everything but the share.
pub struct StoredShare {
    pub(super) epoch: u64,
    pub(super) suite: String,
    pub(super) index: NodeIndex,
    pub(super) share: Zeroizing<[u8; SCALAR_LEN]>,
    pub(super) threshold: u16,
    pub(super) commitment: Vec<u8>,
    pub(super) committee: Vec<NodeIndex>,
    pub(super) transcript_hash: [u8; 32],
}

impl fmt::Debug for StoredShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredShare")
            .field("epoch", &self.epoch)
            .field("suite", &self.suite)
            .field("index", &self.index)
            .field("share", &"..")
            .field("threshold", &self.threshold)
            .field("commitment", &hex::encode(&self.commitment))
            .field("committee", &self.committee)
            .field("transcript_hash", &hex::encode(self.transcript_hash))
            .finish()
    }
}

impl StoredShare {
    /// Build a record from a share and its public key set, checking that they match.
    pub fn new<S: Suite>(
        epoch: u64,
        share: &KeyShare<S>,
        keys: &PublicKeySet<S>,
        transcript_hash: [u8; 32],
    ) -> Result<Self, VaultError> {
        let index = share.index();
        let expected = keys.public_share(index).map_err(|_| {
            VaultError::InvalidShare(format!("node {index} is not in the epoch's committee"))
        })?;
        if expected != share.public_share() {
            return Err(VaultError::InvalidShare(format!(
                "share of node {index} does not match its public share"
            )));
        }
        let committee: Vec<NodeIndex> = keys.public_shares().map(|(i, _)| i).collect();
        if committee.len() > usize::from(u16::MAX) {
            return Err(VaultError::InvalidShare("committee too large".to_owned()));
        }
        Ok(Self {
            epoch,
            suite: S::NAME.to_owned(),
            index,
            share: share.value().to_bytes(),
            threshold: keys.threshold(),
            commitment: keys.commitment().to_bytes(),
            committee,
            transcript_hash,
        })
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The suite's name (`"secp256k1"`, `"P-256"`).
    pub fn suite(&self) -> &str {
        &self.suite
    }

    /// This node's index.
    pub fn index(&self) -> NodeIndex {
        self.index
    }

    /// The threshold `t`.
    pub fn threshold(&self) -> u16 {
        self.threshold
    }

    /// The Feldman commitment, concatenated compressed points.
    pub fn commitment_bytes(&self) -> &[u8] {
        &self.commitment
    }

    /// The committee's indices.
    pub fn committee(&self) -> &[NodeIndex] {
        &self.committee
    }

    /// The DKG / reshare transcript hash the epoch was agreed on.
    pub fn transcript_hash(&self) -> [u8; 32] {
        self.transcript_hash
    }

    /// The typed share and public key set, after checking the suite and that `share·G` is the
    /// public share the commitment gives for this node.
    pub fn to_typed<S: Suite>(&self) -> Result<(KeyShare<S>, PublicKeySet<S>), VaultError> {
        if self.suite != S::NAME {
            return Err(VaultError::SuiteMismatch {
                stored: self.suite.clone(),
                requested: S::NAME,
            });
        }
        self.check_typed::<S>().map_err(VaultError::InvalidShare)
    }

    pub(super) fn check_typed<S: Suite>(&self) -> Result<(KeyShare<S>, PublicKeySet<S>), String> {
        let value = SecretScalar::<S>::from_bytes(&*self.share)
            .map_err(|_| "the share is not a valid non-zero scalar".to_owned())?;
        let commitment = Commitment::<S>::from_bytes(&self.commitment)
            .map_err(|e| format!("Feldman commitment: {e}"))?;
        if commitment.threshold() != self.threshold {
            return Err(format!(
                "threshold {} but {} commitments",
                self.threshold,
                commitment.threshold()
            ));
        }
        if usize::from(self.threshold) > self.committee.len() {
            return Err(format!(
                "threshold {} above committee size {}",
                self.threshold,
                self.committee.len()
            ));
        }
        if !self.committee.windows(2).all(|w| w[0] < w[1]) {
            return Err("committee indices are not strictly increasing".to_owned());
        }
        let keys = PublicKeySet::new(commitment, self.committee.iter().copied());
        let expected = keys
            .public_share(self.index)
            .map_err(|_| format!("node {} is not in the committee", self.index))?;
        let share = KeyShare::new(self.index, value);
        if expected != share.public_share() {
            return Err(format!(
                "share·G of node {} does not equal its public share from the commitment",
                self.index
            ));
        }
        Ok((share, keys))
    }

    /// Check the record whatever its suite.
    pub(super) fn validate(&self) -> Result<(), VaultError> {
        let checked = match self.suite.as_str() {
            Secp256k1::NAME => self.check_typed::<Secp256k1>().map(drop),
            P256::NAME => self.check_typed::<P256>().map(drop),
            other => return Err(VaultError::UnknownSuite(other.to_owned())),
        };
        checked.map_err(VaultError::InvalidShare)
    }

    pub(super) fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(
            1 + 8
                + 1
                + self.suite.len()
                + 2
                + SCALAR_LEN
                + 2
                + 4
                + self.commitment.len()
                + 2
                + 2 * self.committee.len()
                + 32,
        ));
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.push(u8::try_from(self.suite.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.suite.as_bytes());
        out.extend_from_slice(&self.index.to_bytes());
        out.extend_from_slice(&*self.share);
        out.extend_from_slice(&self.threshold.to_be_bytes());
        out.extend_from_slice(
            &u32::try_from(self.commitment.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&self.commitment);
        out.extend_from_slice(
            &u16::try_from(self.committee.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        for i in &self.committee {
            out.extend_from_slice(&i.to_bytes());
        }
        out.extend_from_slice(&self.transcript_hash);
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut reader = Reader { bytes };
        let version = reader.u8()?;
        if version != RECORD_VERSION {
            return Err(format!("unsupported record version {version}"));
        }
        let epoch = reader.u64()?;
        let suite_len = usize::from(reader.u8()?);
        let suite = std::str::from_utf8(reader.take(suite_len)?)
            .map_err(|_| "suite name is not UTF-8".to_owned())?
            .to_owned();
        let index = NodeIndex::from_bytes(reader.take(2)?).map_err(|e| format!("index: {e}"))?;
        let share = Zeroizing::new(reader.array::<SCALAR_LEN>()?);
        let threshold = reader.u16()?;
        let commitment_len = usize::try_from(reader.u32()?).unwrap_or(usize::MAX);
        if commitment_len != usize::from(threshold) * POINT_LEN {
            return Err(format!(
                "commitment of {commitment_len} bytes for threshold {threshold}"
            ));
        }
        let commitment = reader.take(commitment_len)?.to_vec();
        let n = reader.u16()?;
        let committee = (0..n)
            .map(|_| NodeIndex::from_bytes(reader.take(2)?).map_err(|e| format!("committee: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let transcript_hash = reader.array()?;
        reader.finish()?;
        Ok(Self {
            epoch,
            suite,
            index,
            share,
            threshold,
            commitment,
            committee,
            transcript_hash,
        })
    }
}
