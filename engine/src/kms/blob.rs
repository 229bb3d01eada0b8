//! The [`KmsBlob`] envelope and its FlatBuffer encoding (`engine/schema/kms_blob.fbs`).
//!
//! Writing uses `flatbuffers::FlatBufferBuilder`; reading first runs the `flatbuffers`
//! verifier over the whole buffer (bounds, alignment, UTF-8, depth) and then reads the seven
//! fields with bounds-checked safe code. flatc's generated Rust readers need `unsafe`, which
//! the workspace forbids; a known-answer test pins a buffer produced by `flatc -b` so the two
//! stay byte-compatible.

use std::fmt;

use flatbuffers::{
    FlatBufferBuilder, ForwardsUOffset, InvalidFlatbuffer, Vector, Verifiable, Verifier,
    VerifierOptions, WIPOffset,
};

use crate::error::{Error, Result};

/// FlatBuffer file identifier of a serialized [`KmsBlob`] (`file_identifier` in the schema).
pub const KMS_BLOB_IDENTIFIER: &str = "TKMB";

/// Provider name: no external wrapping, the caller supplies the KEK (nothing key-derived is
/// stored).
pub const PROVIDER_NONE: &str = "none";
/// Provider name: the KEK is wrapped with AWS KMS `Encrypt` and unwrapped with `Decrypt`.
pub const PROVIDER_AWS_KMS: &str = "aws-kms";
/// Provider name: the KEK is ECIES-encrypted to the tkms cluster key (docs/ARCHITECTURE.md §4.4).
pub const PROVIDER_TKMS: &str = "tkms";

/// Longest accepted `kms_name`, `provider`, `key_id` or `region`, in bytes.
pub const MAX_KMS_FIELD_LEN: usize = 2048;
/// Longest accepted `wrapped_kek`, in bytes (an AWS KMS ciphertext blob is at most 6 KiB).
pub const MAX_WRAPPED_KEK_LEN: usize = 8192;
/// Largest accepted serialized envelope, in bytes.
pub const MAX_KMS_BLOB_LEN: usize = 64 * 1024;

// vtable slots of the fields, in schema order (4 + 2·field id).
const VT_KMS_NAME: u16 = 4;
const VT_PROVIDER: u16 = 6;
const VT_KEY_ID: u16 = 8;
const VT_REGION: u16 = 10;
const VT_WRAPPED_KEK: u16 = 12;
const VT_VERSION: u16 = 14;
const VT_CREATED_AT: u16 = 16;

/// How an index's 32-byte KEK is wrapped by an external KMS (docs/ARCHITECTURE.md §4.4 "KMS
/// envelopes").
///
/// The envelope holds only the *wrapped* KEK, never the KEK: it is not secret, and is stored
/// in plaintext beside the index keystore.
///
/// ```
/// use tkms_engine::kms::{KmsBlob, PROVIDER_AWS_KMS};
/// let blob = KmsBlob {
///     kms_name: "prod-kms".into(),
///     provider: PROVIDER_AWS_KMS.into(),
///     key_id: "arn:aws:kms:us-east-1:123456789012:key/abcd".into(),
///     region: "us-east-1".into(),
///     wrapped_kek: vec![1, 2, 3],
///     version: 1,
///     created_at: 1_700_000_000,
/// };
/// let bytes = blob.to_flatbuffer()?;
/// assert_eq!(KmsBlob::from_flatbuffer(&bytes)?, blob);
/// # Ok::<(), tkms_engine::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct KmsBlob {
    /// The operator's name for the KMS instance (e.g. `prod-kms`).
    pub kms_name: String,
    /// `none`, `aws-kms` or `tkms`.
    pub provider: String,
    /// KMS key id or ARN (`aws-kms`); the cluster key id (`tkms`); empty for `none`.
    pub key_id: String,
    /// AWS region (`aws-kms`); empty otherwise.
    pub region: String,
    /// The KEK as wrapped by the provider; empty for `none`.
    pub wrapped_kek: Vec<u8>,
    /// Caller-chosen envelope version (e.g. a rotation counter).
    pub version: i32,
    /// Creation time, unix epoch seconds.
    pub created_at: i64,
}

impl fmt::Debug for KmsBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsBlob")
            .field("kms_name", &self.kms_name)
            .field("provider", &self.provider)
            .field("key_id", &self.key_id)
            .field("region", &self.region)
            .field("wrapped_kek_len", &self.wrapped_kek.len())
            .field("version", &self.version)
            .field("created_at", &self.created_at)
            .finish()
    }
}

impl KmsBlob {
    /// An envelope for `provider = "none"`: nothing key-derived is stored, the caller supplies
    /// the KEK on every load.
    pub fn none(kms_name: impl Into<String>) -> Self {
        Self {
            kms_name: kms_name.into(),
            provider: PROVIDER_NONE.into(),
            key_id: String::new(),
            region: String::new(),
            wrapped_kek: Vec::new(),
            version: 1,
            created_at: now_unix(),
        }
    }

    /// Checks the fields: known provider, lengths, and `wrapped_kek` empty exactly for `none`.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidEnvelope(m));
        for (name, value) in [
            ("kms_name", &self.kms_name),
            ("provider", &self.provider),
            ("key_id", &self.key_id),
            ("region", &self.region),
        ] {
            if value.len() > MAX_KMS_FIELD_LEN {
                return bad(format!(
                    "{name} is {} bytes, at most {MAX_KMS_FIELD_LEN} are allowed",
                    value.len()
                ));
            }
        }
        if self.wrapped_kek.len() > MAX_WRAPPED_KEK_LEN {
            return bad(format!(
                "wrapped_kek is {} bytes, at most {MAX_WRAPPED_KEK_LEN} are allowed",
                self.wrapped_kek.len()
            ));
        }
        match self.provider.as_str() {
            PROVIDER_NONE if !self.wrapped_kek.is_empty() => bad(
                "provider \"none\" stores nothing key-derived: wrapped_kek must be empty".into(),
            ),
            PROVIDER_AWS_KMS | PROVIDER_TKMS if self.wrapped_kek.is_empty() => bad(format!(
                "provider \"{}\" needs a non-empty wrapped_kek",
                self.provider
            )),
            PROVIDER_AWS_KMS if self.key_id.is_empty() => {
                bad("provider \"aws-kms\" needs the KMS key id or ARN in key_id".into())
            }
            PROVIDER_NONE | PROVIDER_AWS_KMS | PROVIDER_TKMS => Ok(()),
            other => bad(format!(
                "unknown provider {other:?}: use \"{PROVIDER_NONE}\", \"{PROVIDER_AWS_KMS}\" or \"{PROVIDER_TKMS}\""
            )),
        }
    }

    /// Serializes the envelope as a `KMSBlob` FlatBuffer (after [`KmsBlob::validate`]).
    pub fn to_flatbuffer(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let mut fbb = FlatBufferBuilder::with_capacity(256 + self.wrapped_kek.len());
        let kms_name = fbb.create_string(&self.kms_name);
        let provider = fbb.create_string(&self.provider);
        let key_id = fbb.create_string(&self.key_id);
        let region = fbb.create_string(&self.region);
        let wrapped_kek = fbb.create_vector(&self.wrapped_kek);
        // Fields are pushed largest-first, as flatc's generated builders do.
        let table = fbb.start_table();
        fbb.push_slot::<i64>(VT_CREATED_AT, self.created_at, 0);
        fbb.push_slot_always::<WIPOffset<_>>(VT_WRAPPED_KEK, wrapped_kek);
        fbb.push_slot_always::<WIPOffset<_>>(VT_REGION, region);
        fbb.push_slot_always::<WIPOffset<_>>(VT_KEY_ID, key_id);
        fbb.push_slot_always::<WIPOffset<_>>(VT_PROVIDER, provider);
        fbb.push_slot_always::<WIPOffset<_>>(VT_KMS_NAME, kms_name);
        fbb.push_slot::<i32>(VT_VERSION, self.version, 0);
        let root = fbb.end_table(table);
        fbb.finish(root, Some(KMS_BLOB_IDENTIFIER));
        Ok(fbb.finished_data().to_vec())
    }

    /// Parses and verifies a `KMSBlob` FlatBuffer. Absent string/vector fields read as empty,
    /// absent scalars as 0 (FlatBuffer defaults). Refuses a buffer without the `TKMB`
    /// identifier, one that fails verification, and one whose fields fail
    /// [`KmsBlob::validate`].
    pub fn from_flatbuffer(bytes: &[u8]) -> Result<Self> {
        let corrupt = |m: String| Error::Corrupted(format!("KMS envelope: {m}"));
        if bytes.len() > MAX_KMS_BLOB_LEN {
            return Err(corrupt(format!("{} bytes is too large", bytes.len())));
        }
        // (`flatbuffers::buffer_has_identifier` panics on buffers shorter than 8 bytes.)
        if bytes.get(4..8) != Some(KMS_BLOB_IDENTIFIER.as_bytes()) {
            return Err(corrupt(format!(
                "not a KMSBlob FlatBuffer (file identifier {KMS_BLOB_IDENTIFIER:?} missing)"
            )));
        }
        let opts = VerifierOptions::default();
        let mut verifier = Verifier::new(&opts, bytes);
        <ForwardsUOffset<KmsBlobTable>>::run_verifier(&mut verifier, 0)
            .map_err(|e| corrupt(format!("invalid FlatBuffer: {e}")))?;
        let reader = Reader::new(bytes).map_err(|()| corrupt("truncated table".into()))?;
        let blob = Self {
            kms_name: reader.string(VT_KMS_NAME)?,
            provider: reader.string(VT_PROVIDER)?,
            key_id: reader.string(VT_KEY_ID)?,
            region: reader.string(VT_REGION)?,
            wrapped_kek: reader.bytes(VT_WRAPPED_KEK)?.to_vec(),
            version: i32::from_le_bytes(reader.scalar::<4>(VT_VERSION)?),
            created_at: i64::from_le_bytes(reader.scalar::<8>(VT_CREATED_AT)?),
        };
        blob.validate()
            .map_err(|e| corrupt(format!("stored envelope is invalid: {e}")))?;
        Ok(blob)
    }
}

/// Current time in unix epoch seconds (0 if the clock is before 1970).
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Verifier of the `KMSBlob` table (what flatc generates as `impl Verifiable`).
struct KmsBlobTable;

impl Verifiable for KmsBlobTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<&str>>("kms_name", VT_KMS_NAME, false)?
            .visit_field::<ForwardsUOffset<&str>>("provider", VT_PROVIDER, false)?
            .visit_field::<ForwardsUOffset<&str>>("key_id", VT_KEY_ID, false)?
            .visit_field::<ForwardsUOffset<&str>>("region", VT_REGION, false)?
            .visit_field::<ForwardsUOffset<Vector<'_, u8>>>("wrapped_kek", VT_WRAPPED_KEK, false)?
            .visit_field::<i32>("version", VT_VERSION, false)?
            .visit_field::<i64>("created_at", VT_CREATED_AT, false)?
            .finish();
        Ok(())
    }
}

/// Bounds-checked reads of the root table's fields (run after the verifier).
struct Reader<'a> {
    buf: &'a [u8],
    table: usize,
    vtable: usize,
    vtable_len: usize,
}

fn read<const N: usize>(buf: &[u8], pos: usize) -> Option<[u8; N]> {
    buf.get(pos..pos.checked_add(N)?)?.try_into().ok()
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> std::result::Result<Self, ()> {
        let table = u32::from_le_bytes(read(buf, 0).ok_or(())?) as usize;
        let soffset = i64::from(i32::from_le_bytes(read(buf, table).ok_or(())?));
        let vtable =
            usize::try_from(i64::try_from(table).map_err(|_| ())? - soffset).map_err(|_| ())?;
        let vtable_len = u16::from_le_bytes(read(buf, vtable).ok_or(())?) as usize;
        Ok(Self {
            buf,
            table,
            vtable,
            vtable_len,
        })
    }

    fn corrupt() -> Error {
        Error::Corrupted("KMS envelope: field out of bounds".into())
    }

    /// Absolute position of a field, `None` when absent.
    fn field(&self, slot: u16) -> Result<Option<usize>> {
        let slot = usize::from(slot);
        if slot + 2 > self.vtable_len {
            return Ok(None);
        }
        let off = u16::from_le_bytes(read(self.buf, self.vtable + slot).ok_or_else(Self::corrupt)?);
        Ok((off != 0).then(|| self.table + usize::from(off)))
    }

    fn scalar<const N: usize>(&self, slot: u16) -> Result<[u8; N]> {
        match self.field(slot)? {
            None => Ok([0; N]),
            Some(pos) => read(self.buf, pos).ok_or_else(Self::corrupt),
        }
    }

    fn bytes(&self, slot: u16) -> Result<&'a [u8]> {
        let Some(pos) = self.field(slot)? else {
            return Ok(&[]);
        };
        let rel = u32::from_le_bytes(read(self.buf, pos).ok_or_else(Self::corrupt)?) as usize;
        let start = pos.checked_add(rel).ok_or_else(Self::corrupt)?;
        let len = u32::from_le_bytes(read(self.buf, start).ok_or_else(Self::corrupt)?) as usize;
        let data = start + 4;
        self.buf
            .get(data..data.checked_add(len).ok_or_else(Self::corrupt)?)
            .ok_or_else(Self::corrupt)
    }

    fn string(&self, slot: u16) -> Result<String> {
        let bytes = self.bytes(slot)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::Corrupted("KMS envelope: a string field is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KmsBlob {
        KmsBlob {
            kms_name: "prod-kms".into(),
            provider: PROVIDER_AWS_KMS.into(),
            key_id: "arn:aws:kms:us-east-1:123456789012:key/abcd".into(),
            region: "us-east-1".into(),
            wrapped_kek: (0u8..40).collect(),
            version: 7,
            created_at: 1_767_225_600,
        }
    }

    #[test]
    fn round_trip() {
        let blob = sample();
        let bytes = blob.to_flatbuffer().unwrap();
        assert_eq!(&bytes[4..8], KMS_BLOB_IDENTIFIER.as_bytes());
        assert_eq!(KmsBlob::from_flatbuffer(&bytes).unwrap(), blob);
        let none = KmsBlob::none("local");
        let bytes = none.to_flatbuffer().unwrap();
        assert_eq!(KmsBlob::from_flatbuffer(&bytes).unwrap(), none);
    }

    /// `flatc -b engine/schema/kms_blob.fbs sample.json` (flatc 2.0.8) with the fields of
    /// [`sample`]: our reader parses flatc's layout (and `flatc --json --raw-binary` reads
    /// ours, checked when this vector was made).
    const FLATC_SAMPLE: &str =
        "1c000000544b4d42000012002400040008000c001000140018001c00120000009800\
        0000880000005400000040000000100000000700000000b955690000000028000000000102030405060708\
        090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223242526270900000075732d656173742d\
        310000002b00000061726e3a6177733a6b6d733a75732d656173742d313a3132333435363738393031323a\
        6b65792f6162636400070000006177732d6b6d73000800000070726f642d6b6d7300000000";

    #[test]
    fn flatc_known_answer() {
        let hex: String = FLATC_SAMPLE.split_whitespace().collect();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(KmsBlob::from_flatbuffer(&bytes).unwrap(), sample());
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error_or_a_valid_blob() {
        let blob = sample();
        let bytes = blob.to_flatbuffer().unwrap();
        for n in 0..bytes.len() {
            // Only trailing alignment padding may be cut without an error.
            match KmsBlob::from_flatbuffer(&bytes[..n]) {
                Ok(b) => assert!(
                    b == blob && bytes[n..].iter().all(|x| *x == 0),
                    "prefix {n}"
                ),
                Err(e) => assert!(matches!(e, Error::Corrupted(_)), "prefix {n}: {e}"),
            }
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                // Must not panic; a flip inside a string or the KEK may still parse.
                let _ = KmsBlob::from_flatbuffer(&b);
            }
        }
    }

    #[test]
    fn validation() {
        let mut b = sample();
        b.provider = "gcp".into();
        assert!(matches!(b.to_flatbuffer(), Err(Error::InvalidEnvelope(_))));
        let mut b = KmsBlob::none("x");
        b.wrapped_kek = vec![1];
        assert!(matches!(b.validate(), Err(Error::InvalidEnvelope(_))));
        let mut b = sample();
        b.wrapped_kek.clear();
        assert!(matches!(b.validate(), Err(Error::InvalidEnvelope(_))));
        let mut b = sample();
        b.key_id.clear();
        assert!(matches!(b.validate(), Err(Error::InvalidEnvelope(_))));
        let mut b = sample();
        b.region = "x".repeat(MAX_KMS_FIELD_LEN + 1);
        assert!(matches!(b.validate(), Err(Error::InvalidEnvelope(_))));
        assert!(matches!(
            KmsBlob::from_flatbuffer(b"not a flatbuffer at all"),
            Err(Error::Corrupted(_))
        ));
    }

    #[test]
    fn debug_hides_nothing_secret_but_omits_the_wrapped_kek_bytes() {
        let s = format!("{:?}", sample());
        assert!(s.contains("wrapped_kek_len: 40"));
    }
}
