//! The redb file: sealed shares by epoch, the node's identity keys, the epoch markers, and
//! erasure of a share by rewriting the file.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableError,
};
use subtle::ConstantTimeEq;
use tkms_crypto::{KeyShare, PublicKeySet, Secp256k1, SecretScalar, Suite};
use zeroize::Zeroizing;

use super::format::{Header, StoredShare};
use super::kdf::{derive_key, KdfParams};
use super::password::PasswordProvider;
use super::seal::{aad, random_array, seal, unseal, KEY_LEN};
use super::{labels, storage, VaultError};

/// A sealed epoch number the vault keeps beside the shares (not secret, but authenticated
/// under the vault key so that nobody without the password can move it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// The newest epoch the manager committed (older shares are erased).
    CommittedEpoch,
    /// The newest epoch a ceremony was started for (epoch numbers are never reused).
    LastCeremonyEpoch,
}

impl Marker {
    fn key(self) -> &'static str {
        match self {
            Self::CommittedEpoch => labels::COMMITTED_EPOCH_KEY,
            Self::LastCeremonyEpoch => labels::LAST_CEREMONY_KEY,
        }
    }
}

const META: TableDefinition<&str, &[u8]> = TableDefinition::new(labels::META_TABLE);
const SHARES: TableDefinition<u64, &[u8]> = TableDefinition::new(labels::SHARES_TABLE);
const IDENTITY: TableDefinition<&str, &[u8]> = TableDefinition::new(labels::IDENTITY_TABLE);

/// A node's long-term keys, kept in the vault.
pub struct NodeIdentity {
    /// The secp256k1 node key: signs ceremony messages, receives encrypted shares.
    pub node_key: SecretScalar<Secp256k1>,
    /// The ed25519 seed of the libp2p identity (peer id).
    pub p2p_seed: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeIdentity(..)")
    }
}

/// Overwrite `file` with zeros, durably.
fn wipe(mut file: std::fs::File) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    let len = file.metadata()?.len();
    file.seek(std::io::SeekFrom::Start(0))?;
    let zeros = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

/// One epoch's share as [`Vault::get_share`] returns it: this node's share, the epoch's public
/// key set and the transcript hash the epoch was agreed on.
pub type EpochShare<S> = (KeyShare<S>, PublicKeySet<S>, [u8; 32]);

/// The encrypted share vault: one redb file, values AES-256-GCM-encrypted under an Argon2id key.
pub struct Vault {
    /// Behind a lock so that [`Vault::delete_epoch`] can swap in a rewritten file.
    db: std::sync::RwLock<Database>,
    key: Zeroizing<[u8; KEY_LEN]>,
    path: PathBuf,
    params: KdfParams,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.path)
            .field("kdf", &self.params)
            .finish_non_exhaustive()
    }
}

/// The header and sealed key-check value, if the vault was initialized.
fn read_meta(db: &impl ReadableDatabase) -> Result<Option<(Header, Vec<u8>)>, VaultError> {
    let txn = db.begin_read().map_err(storage)?;
    let table = match txn.open_table(META) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(storage(e)),
    };
    let header = table.get(labels::HEADER_KEY).map_err(storage)?;
    let check = table.get(labels::KEY_CHECK_KEY).map_err(storage)?;
    match (header, check) {
        (None, None) => Ok(None),
        (Some(header), Some(check)) => Ok(Some((
            Header::from_bytes(header.value())?,
            check.value().to_vec(),
        ))),
        _ => Err(VaultError::Corrupted(
            "vault header or key-check value missing".to_owned(),
        )),
    }
}

fn unlock(
    password: &[u8],
    header: Header,
    check: &[u8],
) -> Result<Zeroizing<[u8; KEY_LEN]>, VaultError> {
    let key = derive_key(password, &header.salt, header.params)?;
    let plaintext =
        unseal(&key, &header.key_check_aad(), check).ok_or(VaultError::WrongPassword)?;
    if !bool::from(plaintext.as_slice().ct_eq(labels::KEY_CHECK_PLAINTEXT)) {
        return Err(VaultError::WrongPassword);
    }
    Ok(key)
}

impl Vault {
    /// Open the vault at `path`, creating it if the file does not exist (or is empty).
    ///
    /// At creation, a random salt is drawn, the key is derived with `params` and the parameters
    /// are stored; at reopen the stored parameters are used and `params` is ignored. A wrong
    /// password is [`VaultError::WrongPassword`] and the file is left untouched: it is checked
    /// on a read-only open before the file is opened for writing.
    pub fn open(
        path: impl AsRef<Path>,
        provider: &dyn PasswordProvider,
        params: KdfParams,
    ) -> Result<Self, VaultError> {
        let path = path.as_ref();
        let password = provider.password()?;
        let source = provider.describe();

        // Check the password without opening the file for writing.
        let mut unlocked: Option<(Header, Zeroizing<[u8; KEY_LEN]>)> = None;
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            // A file that needs crash recovery cannot be opened read-only; the read-write open
            // below recovers it and checks the password then.
            if let Ok(read_only) = redb::ReadOnlyDatabase::open(path) {
                if let Some((header, check)) = read_meta(&read_only)? {
                    let key = unlock(&password, header, &check)?;
                    unlocked = Some((header, key));
                }
            }
        }

        let db = Database::create(path).map_err(storage)?;
        let (header, key) = match (read_meta(&db)?, unlocked) {
            (Some((header, _)), Some((checked, key))) if header == checked => (header, key),
            (Some((header, check)), _) => (header, unlock(&password, header, &check)?),
            (None, _) => Self::initialize(&db, &password, params)?,
        };
        tracing::info!(
            path = %path.display(),
            password = %source,
            kdf = ?header.params,
            "share vault opened"
        );
        Ok(Self {
            db: std::sync::RwLock::new(db),
            key,
            path: path.to_owned(),
            params: header.params,
        })
    }

    fn initialize(
        db: &Database,
        password: &[u8],
        params: KdfParams,
    ) -> Result<(Header, Zeroizing<[u8; KEY_LEN]>), VaultError> {
        params.validate()?;
        if params.memory_kib < KdfParams::PRODUCTION_FLOOR_KIB {
            tracing::warn!(
                kdf = ?params,
                "creating a share vault with Argon2id parameters below the production floor \
                 (19 MiB): acceptable for tests only"
            );
        }
        let header = Header {
            params,
            salt: random_array(),
        };
        let key = derive_key(password, &header.salt, params)?;
        let check = seal(&key, &header.key_check_aad(), labels::KEY_CHECK_PLAINTEXT)?;
        let txn = db.begin_write().map_err(storage)?;
        {
            let shares = txn.open_table(SHARES).map_err(storage)?;
            if !shares.is_empty().map_err(storage)? {
                return Err(VaultError::Corrupted(
                    "share records present but the vault header is missing".to_owned(),
                ));
            }
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(labels::HEADER_KEY, header.to_bytes().as_slice())
                .map_err(storage)?;
            meta.insert(labels::KEY_CHECK_KEY, check.as_slice())
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok((header, key))
    }

    /// The vault file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The Argon2id parameters the vault key was derived with.
    pub fn kdf_params(&self) -> KdfParams {
        self.params
    }

    /// Store the share of `epoch`. Storing the identical record again is a no-op; a different
    /// record for a stored epoch is [`VaultError::EpochExists`] (delete it first).
    pub fn put_share<S: Suite>(
        &self,
        epoch: u64,
        share: &KeyShare<S>,
        keys: &PublicKeySet<S>,
        transcript_hash: [u8; 32],
    ) -> Result<(), VaultError> {
        let record = StoredShare::new(epoch, share, keys, transcript_hash)?;
        self.put_record(&record)
    }

    /// The share of `epoch`, its public key set and transcript hash, checked (suite, and
    /// `share·G` against the commitment).
    pub fn get_share<S: Suite>(&self, epoch: u64) -> Result<Option<EpochShare<S>>, VaultError> {
        let Some(record) = self.get_record(epoch)? else {
            return Ok(None);
        };
        let (share, keys) = record.to_typed::<S>().map_err(|e| match e {
            VaultError::InvalidShare(what) => {
                VaultError::Corrupted(format!("epoch {epoch}: {what}"))
            }
            other => other,
        })?;
        Ok(Some((share, keys, record.transcript_hash)))
    }

    /// The record of `epoch`, decrypted, whatever its suite (to learn the suite at start).
    pub fn get_record(&self, epoch: u64) -> Result<Option<StoredShare>, VaultError> {
        let txn = self.db().begin_read().map_err(storage)?;
        let table = match txn.open_table(SHARES) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage(e)),
        };
        let Some(sealed) = table.get(epoch).map_err(storage)? else {
            return Ok(None);
        };
        self.open_record(epoch, sealed.value()).map(Some)
    }

    fn open_record(&self, epoch: u64, sealed: &[u8]) -> Result<StoredShare, VaultError> {
        let plaintext = unseal(
            &self.key,
            &aad(labels::SHARES_TABLE, &epoch.to_be_bytes()),
            sealed,
        )
        .ok_or_else(|| {
            VaultError::Corrupted(format!("the record of epoch {epoch} failed authentication"))
        })?;
        let record = StoredShare::decode(&plaintext)
            .map_err(|e| VaultError::Corrupted(format!("the record of epoch {epoch}: {e}")))?;
        if record.epoch != epoch {
            return Err(VaultError::Corrupted(format!(
                "the record stored under epoch {epoch} is for epoch {}",
                record.epoch
            )));
        }
        Ok(record)
    }

    pub(super) fn put_record(&self, record: &StoredShare) -> Result<(), VaultError> {
        let epoch = record.epoch;
        let plaintext = record.encode();
        let record_aad = aad(labels::SHARES_TABLE, &epoch.to_be_bytes());
        let txn = self.db().begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(SHARES).map_err(storage)?;
            if let Some(existing) = table.get(epoch).map_err(storage)? {
                let stored = self.open_record(epoch, existing.value())?.encode();
                if bool::from(stored.as_slice().ct_eq(plaintext.as_slice())) {
                    return Ok(());
                }
                return Err(VaultError::EpochExists(epoch));
            }
            let sealed = seal(&self.key, &record_aad, &plaintext)?;
            table.insert(epoch, sealed.as_slice()).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        tracing::info!(epoch, suite = %record.suite, index = %record.index, "share stored");
        Ok(())
    }

    /// The node's long-term keys, created (from the OS RNG) and stored on first use.
    pub fn identity(&self) -> Result<NodeIdentity, VaultError> {
        let node_key = self.identity_secret(labels::NODE_KEY, |bytes| {
            SecretScalar::<Secp256k1>::from_bytes(bytes).is_ok()
        })?;
        let p2p_seed = self.identity_secret(labels::P2P_KEY, |_| true)?;
        let node_key = SecretScalar::from_bytes(node_key.as_slice()).map_err(|e| {
            VaultError::Corrupted(format!("the stored node key does not decode: {e}"))
        })?;
        Ok(NodeIdentity { node_key, p2p_seed })
    }

    /// The 32-byte secret `name` of the identity table, drawn until `valid` and stored if absent.
    fn identity_secret(
        &self,
        name: &str,
        valid: impl Fn(&[u8]) -> bool,
    ) -> Result<Zeroizing<[u8; 32]>, VaultError> {
        let secret_aad = aad(labels::IDENTITY_TABLE, name.as_bytes());
        let txn = self.db().begin_write().map_err(storage)?;
        let secret = {
            let mut table = txn.open_table(IDENTITY).map_err(storage)?;
            let existing = table
                .get(name)
                .map_err(storage)?
                .map(|v| v.value().to_vec());
            if let Some(sealed) = existing {
                let plain = unseal(&self.key, &secret_aad, &sealed).ok_or_else(|| {
                    VaultError::Corrupted(format!("the stored {name} failed authentication"))
                })?;
                let mut out = Zeroizing::new([0u8; 32]);
                if plain.len() != 32 || !valid(plain.as_slice()) {
                    return Err(VaultError::Corrupted(format!(
                        "the stored {name} is invalid"
                    )));
                }
                out.copy_from_slice(&plain);
                return Ok(out);
            }
            let mut fresh = Zeroizing::new(random_array::<32>());
            while !valid(fresh.as_slice()) {
                *fresh = random_array();
            }
            let sealed = seal(&self.key, &secret_aad, fresh.as_slice())?;
            table.insert(name, sealed.as_slice()).map_err(storage)?;
            fresh
        };
        txn.commit().map_err(storage)?;
        tracing::info!(key = name, "node identity key created in the vault");
        Ok(secret)
    }

    /// The highest stored epoch.
    pub fn latest_epoch(&self) -> Result<Option<u64>, VaultError> {
        let txn = self.db().begin_read().map_err(storage)?;
        let table = match txn.open_table(SHARES) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage(e)),
        };
        let last = table.last().map_err(storage)?;
        Ok(last.map(|(epoch, _)| epoch.value()))
    }

    /// Every stored epoch, ascending.
    pub fn list_epochs(&self) -> Result<Vec<u64>, VaultError> {
        let txn = self.db().begin_read().map_err(storage)?;
        let table = match txn.open_table(SHARES) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        table
            .iter()
            .map_err(storage)?
            .map(|entry| entry.map(|(epoch, _)| epoch.value()).map_err(storage))
            .collect()
    }

    /// The value of `marker` (0 when it was never set).
    pub fn marker(&self, marker: Marker) -> Result<u64, VaultError> {
        let txn = self.db().begin_read().map_err(storage)?;
        let table = match txn.open_table(META) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(storage(e)),
        };
        let Some(sealed) = table.get(marker.key()).map_err(storage)? else {
            return Ok(0);
        };
        let plain = unseal(
            &self.key,
            &aad(labels::META_TABLE, marker.key().as_bytes()),
            sealed.value(),
        )
        .ok_or_else(|| {
            VaultError::Corrupted(format!("the {} failed authentication", marker.key()))
        })?;
        let bytes: [u8; 8] = plain
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::Corrupted(format!("the {} is not 8 bytes", marker.key())))?;
        Ok(u64::from_be_bytes(bytes))
    }

    /// Set `marker` to `value`, durably.
    pub fn set_marker(&self, marker: Marker, value: u64) -> Result<(), VaultError> {
        let sealed = seal(
            &self.key,
            &aad(labels::META_TABLE, marker.key().as_bytes()),
            &value.to_be_bytes(),
        )?;
        let txn = self.db().begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(META).map_err(storage)?;
            table
                .insert(marker.key(), sealed.as_slice())
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    fn db(&self) -> std::sync::RwLockReadGuard<'_, Database> {
        self.db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Delete the share of `epoch` (once a reshare to a later epoch is committed). Returns
    /// whether it was stored.
    ///
    /// redb is copy-on-write: a removed value stays in the file's free pages, where the vault
    /// password would still open it. So the vault is rewritten without it: every other record
    /// is copied (still sealed) into a new file, which is synced and renamed over the old one;
    /// then the old file's bytes are overwritten with zeros and synced. (On a copy-on-write
    /// file system or a flash device that remaps blocks, overwriting is best effort.)
    pub fn delete_epoch(&self, epoch: u64) -> Result<bool, VaultError> {
        let mut db = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let existed = {
            let txn = db.begin_read().map_err(storage)?;
            match txn.open_table(SHARES) {
                Ok(table) => table.get(epoch).map_err(storage)?.is_some(),
                Err(TableError::TableDoesNotExist(_)) => false,
                Err(e) => return Err(storage(e)),
            }
        };
        if !existed {
            return Ok(false);
        }
        let fresh = self.path.with_extension("redb.rewrite");
        let _ = std::fs::remove_file(&fresh);
        {
            let copy = Database::create(&fresh).map_err(storage)?;
            let read = db.begin_read().map_err(storage)?;
            let write = copy.begin_write().map_err(storage)?;
            for table in [META, IDENTITY] {
                let from = match read.open_table(table) {
                    Ok(t) => t,
                    Err(TableError::TableDoesNotExist(_)) => continue,
                    Err(e) => return Err(storage(e)),
                };
                let mut to = write.open_table(table).map_err(storage)?;
                for entry in from.iter().map_err(storage)? {
                    let (k, v) = entry.map_err(storage)?;
                    to.insert(k.value(), v.value()).map_err(storage)?;
                }
            }
            if let Ok(from) = read.open_table(SHARES) {
                let mut to = write.open_table(SHARES).map_err(storage)?;
                for entry in from.iter().map_err(storage)? {
                    let (k, v) = entry.map_err(storage)?;
                    if k.value() != epoch {
                        to.insert(k.value(), v.value()).map_err(storage)?;
                    }
                }
            }
            write.commit().map_err(storage)?;
        }
        let io = |e: std::io::Error| VaultError::Storage(format!("{}: {e}", self.path.display()));
        std::fs::File::open(&fresh)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        // Keep a handle on the old file, atomically put the rewritten one in its place (a
        // crash leaves one complete vault or the other), then zero the old file's bytes through
        // the handle.
        let old = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(io)?;
        std::fs::rename(&fresh, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        drop(std::mem::replace(
            &mut *db,
            Database::create(&self.path).map_err(storage)?,
        ));
        wipe(old).map_err(io)?;
        tracing::info!(epoch, "share erased from the vault");
        Ok(true)
    }
}
