//! Per-user keys: minted from the index key with a scope, listed and revoked by id.

use rand::rngs::OsRng;
use rand::RngCore;

use super::{user_wrap_aad, Index};
use crate::error::{Error, Result};
use crate::keys::{Scope, UserKey, USER_KEY_ID_LEN};
use crate::records::{decode, encode, state_key, user_key, UserRecord};
use crate::store::{Applied, Precondition, WriteBatch};

impl Index {
    /// Mints a per-user key with `scope`. Needs a handle opened with the index key.
    ///
    /// ```
    /// use tkms_engine::{Client, IndexConfig, IndexKey, Item, Scope, StorageConfig};
    /// let client = Client::new(StorageConfig::memory())?;
    /// let key = IndexKey::generate();
    /// let admin = client.create_index("shared", &key, IndexConfig::new(2))?;
    /// let reader = admin.mint_user_key(Scope::ReadOnly)?;
    /// let as_reader = client.load_index_with_user_key("shared", &reader)?;
    /// assert!(as_reader.upsert(vec![Item::new("x", vec![1.0, 2.0])]).is_err());
    /// # Ok::<(), tkms_engine::Error>(())
    /// ```
    pub fn mint_user_key(&self, scope: Scope) -> Result<UserKey> {
        let kek = self.require_admin("mint_user_key")?;
        let mut key_id = [0u8; USER_KEY_ID_LEN];
        OsRng.fill_bytes(&mut key_id);
        let uk = UserKey::mint(kek, key_id, scope);
        let record = UserRecord {
            scope: scope.to_byte(),
            wrapped_dek: uk.wrap_cipher().seal(
                &user_wrap_aad(&self.uid, &key_id, scope),
                self.dek.as_bytes(),
            ),
        };
        let mut b = WriteBatch::new();
        b.require(Precondition::Digest(
            state_key(&self.uid),
            self.read().digest,
        ));
        b.put(user_key(&self.uid, &key_id), encode(&record));
        match self.store.apply(b)? {
            Applied::Committed => Ok(uk),
            Applied::PreconditionFailed => Err(Error::Conflict(self.name.clone())),
        }
    }

    /// The user keys minted for this index and not revoked: `(key id, scope)`, sorted by key
    /// id. Needs the index key.
    pub fn list_user_keys(&self) -> Result<Vec<([u8; USER_KEY_ID_LEN], Scope)>> {
        self.require_admin("list_user_keys")?;
        let prefix = user_key(&self.uid, &[]);
        let mut out = Vec::new();
        for (k, v) in self.store.scan_prefix(&prefix)? {
            let id: [u8; USER_KEY_ID_LEN] = k[prefix.len()..]
                .try_into()
                .map_err(|_| Error::Corrupted("a user key record has a malformed name".into()))?;
            let record: UserRecord = decode(&v, "user key record")?;
            let scope = Scope::from_byte(record.scope)
                .ok_or_else(|| Error::Corrupted("a user key record has an unknown scope".into()))?;
            out.push((id, scope));
        }
        out.sort_unstable_by_key(|a| a.0);
        Ok(out)
    }

    /// Revokes a user key by id; returns whether it existed. Needs the index key.
    pub fn revoke_user_key(&self, key_id: &[u8; USER_KEY_ID_LEN]) -> Result<bool> {
        self.require_admin("revoke_user_key")?;
        let k = user_key(&self.uid, key_id);
        let existed = self.store.get(&k)?.is_some();
        let mut b = WriteBatch::new();
        b.delete(k);
        self.store.apply(b)?;
        Ok(existed)
    }
}
