//! The index state held by a handle and kept fresh against storage: the version record every
//! read checks first, reloads, and the commit that writes state and version together (the
//! freshness protocol of the [module docs](super)).

use zeroize::Zeroizing;

use super::{Index, Loaded};
use crate::error::{Error, Result};
use crate::keys::IndexKeys;
use crate::labels;
use crate::records::{decode, encode, state_key, version_key, State, UID_LEN};
use crate::store::{value_digest, Applied, Precondition, Store, WriteBatch};

pub(super) fn state_aad(uid: &[u8; UID_LEN]) -> Vec<u8> {
    [labels::STATE_AAD, uid].concat()
}

impl Index {
    /// Re-reads the stored state if it differs from the one this handle holds; returns
    /// whether it was replaced.
    pub(super) fn refresh_if_changed(&self) -> Result<bool> {
        let Some(sealed) = self.store.get(&state_key(&self.uid))? else {
            return Ok(false);
        };
        self.replace_if_changed(&sealed)
    }

    /// Replaces the handle's state with the stored `sealed` one if it differs; returns
    /// whether it was replaced.
    pub(super) fn replace_if_changed(&self, sealed: &[u8]) -> Result<bool> {
        let digest = value_digest(sealed);
        if digest == self.read().digest {
            return Ok(false);
        }
        let fresh = open_state(&self.uid, &self.keys, sealed, digest)?;
        *self.write() = fresh;
        Ok(true)
    }

    /// Makes the handle's state the stored one before a read (see the module docs): one read
    /// of the version record when nothing changed; the state itself otherwise, or when the
    /// version record is missing (an index written before version records existed, until its
    /// next write). A deleted index gives [`Error::IndexNotFound`].
    pub(super) fn ensure_fresh(&self) -> Result<()> {
        let digest = self.read().digest;
        if let Some(v) = self.store.get(&version_key(&self.uid))? {
            if v.as_slice() == digest.as_slice() {
                return Ok(());
            }
        }
        let sealed = self
            .store
            .get(&state_key(&self.uid))?
            .ok_or_else(|| Error::IndexNotFound(self.name.clone()))?;
        self.replace_if_changed(&sealed)?;
        Ok(())
    }

    /// Runs a read against the handle's state, made fresh first ([`Index::ensure_fresh`]); if
    /// a record was missing or failed authentication because another handle changed the
    /// index during the read, reloads the state and runs it once more.
    pub(super) fn read_fresh<T>(&self, f: impl Fn(&Loaded) -> Result<T>) -> Result<T> {
        self.ensure_fresh()?;
        let first = f(&self.read());
        match first {
            Err(Error::Corrupted(_)) => {
                if self.refresh_if_changed()? {
                    f(&self.read())
                } else {
                    first
                }
            }
            other => other,
        }
    }

    /// Brings this handle up to date with what is stored (one 32-byte read when nothing
    /// changed), so [`Index::len`], [`Index::is_trained`] and [`Index::config`] answer for
    /// the stored index.
    pub fn refresh(&self) -> Result<()> {
        self.ensure_fresh()
    }

    /// Re-reads the index state from storage (after [`Error::Conflict`]).
    pub fn reload(&self) -> Result<()> {
        let fresh = load_state(self.store.as_ref(), &self.uid, &self.keys)?;
        *self.write() = fresh;
        Ok(())
    }

    /// Persists `state` and the batch atomically, if nobody changed the index meanwhile.
    pub(super) fn commit(
        &self,
        loaded: &mut Loaded,
        state: State,
        mut b: WriteBatch,
    ) -> Result<()> {
        let plain = Zeroizing::new(encode(&state));
        let sealed = self.keys.state_cipher().seal(&state_aad(&self.uid), &plain);
        let digest = value_digest(&sealed);
        let key = state_key(&self.uid);
        b.require(Precondition::Digest(key.clone(), loaded.digest));
        // The version record goes with the state in the same batch. Memory and disk apply a
        // batch atomically; S3 writes unguarded keys before the state's conditional put (its
        // commit point), so a reader may see a version naming a state not yet (or never)
        // committed, which only makes it fetch the state itself: the version record is a
        // hint that can say "unchanged" only for the state it was written with.
        b.put(version_key(&self.uid), digest.to_vec());
        b.put(key, sealed);
        match self.store.apply(b)? {
            Applied::Committed => {
                *loaded = Loaded::new(state, digest);
                Ok(())
            }
            Applied::PreconditionFailed => Err(Error::Conflict(self.name.clone())),
        }
    }
}

pub(super) fn load_state(
    store: &dyn Store,
    uid: &[u8; UID_LEN],
    keys: &IndexKeys,
) -> Result<Loaded> {
    let sealed = store
        .get(&state_key(uid))?
        .ok_or_else(|| Error::Corrupted("the index state record is missing".into()))?;
    open_state(uid, keys, &sealed, value_digest(&sealed))
}

/// Decrypts and checks a stored state ciphertext whose [`value_digest`] is `digest`.
fn open_state(
    uid: &[u8; UID_LEN],
    keys: &IndexKeys,
    sealed: &[u8],
    digest: [u8; 32],
) -> Result<Loaded> {
    let plain = keys
        .state_cipher()
        .open(&state_aad(uid), sealed)
        .map_err(|_| Error::Corrupted("the index state failed authentication".into()))?;
    let state: State = decode(&plain, "index state")?;
    let lists_ok = match &state.centroids {
        None => state.lists.len() == 1,
        Some(c) => {
            state.lists.len() == state.config.n_lists
                && c.len() == state.config.n_lists * state.config.dimension
        }
    };
    if !lists_ok {
        return Err(Error::Corrupted("index state is inconsistent".into()));
    }
    Ok(Loaded::new(state, digest))
}
