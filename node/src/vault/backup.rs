//! Share backups: one epoch's record in a self-describing file sealed under a key derived
//! from a backup password (format in the [module docs](super)).

use super::format::{Reader, StoredShare, SALT_LEN};
use super::kdf::{derive_key, KdfParams};
use super::password::PasswordProvider;
use super::seal::{decrypt_with_nonce, encrypt_with_nonce, random_array, NONCE_LEN, TAG_LEN};
use super::store::Vault;
use super::{labels, VaultError};

const BACKUP_VERSION: u8 = 1;
const BACKUP_HEADER_LEN: usize = 8 + 1 + 12 + SALT_LEN + NONCE_LEN;

impl Vault {
    /// Export the share of `epoch` as an encrypted backup file under a backup password (see
    /// the module docs for the format).
    pub fn export_backup(
        &self,
        epoch: u64,
        backup_password: &dyn PasswordProvider,
        params: KdfParams,
    ) -> Result<Vec<u8>, VaultError> {
        let record = self
            .get_record(epoch)?
            .ok_or(VaultError::UnknownEpoch(epoch))?;
        params.validate()?;
        let password = backup_password.password()?;
        let salt = random_array::<SALT_LEN>();
        let nonce = random_array::<NONCE_LEN>();
        let mut out = Vec::with_capacity(BACKUP_HEADER_LEN + 256);
        out.extend_from_slice(labels::BACKUP_MAGIC);
        out.push(BACKUP_VERSION);
        out.extend_from_slice(&params.to_bytes());
        out.extend_from_slice(&salt);
        out.extend_from_slice(&nonce);
        let key = derive_key(&password, &salt, params)?;
        let ciphertext = encrypt_with_nonce(&key, &nonce, &out, &record.encode())?;
        out.extend_from_slice(&ciphertext);
        tracing::info!(
            epoch,
            password = %backup_password.describe(),
            "share backup exported"
        );
        Ok(out)
    }

    /// Decrypt a backup, validate the share against its commitment and store it. Returns the
    /// epoch. An epoch already stored with a different share is [`VaultError::EpochExists`];
    /// on any error nothing is changed.
    pub fn import_backup(
        &self,
        backup: &[u8],
        backup_password: &dyn PasswordProvider,
    ) -> Result<u64, VaultError> {
        if backup.len() < BACKUP_HEADER_LEN + TAG_LEN {
            return Err(VaultError::Backup(format!(
                "truncated: {} bytes, a backup has at least {}",
                backup.len(),
                BACKUP_HEADER_LEN + TAG_LEN
            )));
        }
        let (header, ciphertext) = backup.split_at(BACKUP_HEADER_LEN);
        let mut reader = Reader { bytes: header };
        let magic = reader.take(8).map_err(VaultError::Backup)?;
        if magic != labels::BACKUP_MAGIC {
            return Err(VaultError::Backup(
                "not a tkms share backup (bad magic)".to_owned(),
            ));
        }
        let version = reader.u8().map_err(VaultError::Backup)?;
        if version != BACKUP_VERSION {
            return Err(VaultError::Backup(format!(
                "unsupported backup version {version}"
            )));
        }
        let params = KdfParams::from_reader(&mut reader).map_err(VaultError::Backup)?;
        params
            .validate()
            .map_err(|e| VaultError::Backup(e.to_string()))?;
        let salt = reader.array::<SALT_LEN>().map_err(VaultError::Backup)?;
        let nonce = reader.array::<NONCE_LEN>().map_err(VaultError::Backup)?;
        let password = backup_password.password()?;
        let key = derive_key(&password, &salt, params)?;
        let plaintext = decrypt_with_nonce(&key, &nonce, header, ciphertext)
            .ok_or(VaultError::BackupDecryption)?;
        let record = StoredShare::decode(&plaintext)
            .map_err(|e| VaultError::Backup(format!("the decrypted record: {e}")))?;
        record.validate()?;
        self.put_record(&record)?;
        tracing::info!(epoch = record.epoch, "share backup imported");
        Ok(record.epoch)
    }
}
