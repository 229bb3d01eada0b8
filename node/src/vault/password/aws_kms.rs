//! The `aws-kms` vault password provider (docs/ARCHITECTURE.md §4.2 "Share vault":
//! "`aws-kms` (ciphertext in configuration, `kms:Decrypt` once at start)").
//!
//! The node's configuration holds the vault password encrypted under an AWS KMS key: a file
//! with the `CiphertextBlob` of `kms:Encrypt`, raw bytes or base64 (what
//! `aws kms encrypt --output text --query CiphertextBlob` prints). At start the node calls
//! `kms:Decrypt` once, through the official AWS SDK, against AWS or any KMS-compatible endpoint;
//! credentials come from the SDK's default chain (environment, shared profile, web identity,
//! ECS and EC2 instance roles). The plaintext is the password: it is moved into a
//! [`Zeroizing`] buffer, never logged and never written to disk.
//!
//! # Why decrypt once, before the vault opens
//!
//! [`PasswordProvider`] is synchronous (the vault calls it from a blocking thread) and the
//! SDK is async. [`AwsKmsPassword::decrypt`] is therefore an async constructor that the
//! node's async start-up awaits; the provider it returns only holds the plaintext. The other
//! shapes are worse: decrypting inside [`PasswordProvider::password`] would need a private
//! runtime per call (as `tkms-engine`'s KMS key provider has) or a `block_on` that panics
//! inside the daemon's runtime, and it would reach the network again at every call. Decrypting
//! up front also means that every KMS failure (no credentials, no network, wrong key, a
//! ciphertext that does not decrypt) is reported before the vault file is touched.
//!
//! Every step is bounded by [`AwsKmsPasswordConfig::timeout`] (credential and region look-up,
//! connection, retries), so an unreachable endpoint is an error, not a hang.
//!
//! Secrets: the request/response buffers inside the SDK and its HTTP stack are not under our
//! control (the same holds for any KMS client).

use std::{fmt, path::PathBuf, time::Duration};

use aws_sdk_kms::{
    config::{timeout::TimeoutConfig, BehaviorVersion, Region},
    error::{ProvideErrorMetadata, SdkError},
    primitives::Blob,
};
use base64::Engine as _;
use zeroize::Zeroizing;

use super::PasswordProvider;
use crate::vault::VaultError;

/// The time [`AwsKmsPassword::decrypt`] may take by default, retries included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest wait for one TCP/TLS connection to the KMS endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest ciphertext file accepted (a KMS ciphertext is at most 6 KiB, 8 KiB in base64).
const MAX_CIPHERTEXT_FILE_LEN: u64 = 64 * 1024;
/// Largest password accepted (KMS plaintexts are at most 4 KiB).
const MAX_PASSWORD_LEN: usize = 4096;

/// Where the KMS-encrypted vault password is and how to reach KMS.
#[derive(Clone, Debug)]
pub struct AwsKmsPasswordConfig {
    /// File with the `CiphertextBlob` of `kms:Encrypt` of the password: raw, or base64 (line
    /// breaks and surrounding whitespace allowed).
    pub ciphertext_file: PathBuf,
    /// The KMS key (id, ARN or alias) the ciphertext is under. Optional: KMS finds the key from
    /// the ciphertext; when given, KMS refuses a ciphertext under any other key.
    pub key_id: Option<String>,
    /// AWS region; `None` for the SDK's region chain (`AWS_REGION`, profile, instance metadata).
    pub region: Option<String>,
    /// Endpoint URL of a KMS-compatible server; `None` for AWS's.
    pub endpoint: Option<String>,
    /// Bound on the whole decryption, retries included.
    pub timeout: Duration,
}

impl AwsKmsPasswordConfig {
    /// The ciphertext in `ciphertext_file`, default region, endpoint and timeout, no key id.
    pub fn new(ciphertext_file: impl Into<PathBuf>) -> Self {
        Self {
            ciphertext_file: ciphertext_file.into(),
            key_id: None,
            region: None,
            endpoint: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Where the request goes, for errors: `endpoint http://…, region …, key …`.
    fn target(&self, region: Option<&str>) -> String {
        format!(
            "endpoint {}, region {}, key {}",
            self.endpoint.as_deref().unwrap_or("AWS"),
            region.unwrap_or("unset"),
            self.key_id.as_deref().unwrap_or("from the ciphertext"),
        )
    }
}

/// The vault password decrypted with `kms:Decrypt` at start (see the module docs).
pub struct AwsKmsPassword {
    password: Zeroizing<Vec<u8>>,
    description: String,
}

impl fmt::Debug for AwsKmsPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsPassword")
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

fn error(message: impl fmt::Display) -> VaultError {
    VaultError::Password(format!("aws-kms: {message}"))
}

impl AwsKmsPassword {
    /// Read the ciphertext file and decrypt it with `kms:Decrypt`.
    ///
    /// One trailing newline (`\n` or `\r\n`) of the plaintext is removed, as
    /// [`FilePassword`](super::FilePassword) does, so a password file encrypted as is
    /// (`--plaintext fileb://password`) gives the same password. Errors are
    /// [`VaultError::Password`]: an unreadable, empty or malformed file, `KMS Decrypt failed`
    /// (with the SDK's reason, including a timeout), or an empty plaintext.
    pub async fn decrypt(config: &AwsKmsPasswordConfig) -> Result<Self, VaultError> {
        let ciphertext = read_ciphertext(config).await?;
        let decrypt = async {
            let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT.min(config.timeout))
                    .operation_timeout(config.timeout)
                    .build(),
            );
            if let Some(region) = non_empty(config.region.as_ref()) {
                loader = loader.region(Region::new(region.to_owned()));
            }
            if let Some(endpoint) = non_empty(config.endpoint.as_ref()) {
                loader = loader.endpoint_url(endpoint);
            }
            let sdk = loader.load().await;
            let region = sdk.region().map(ToString::to_string);
            let Some(region) = region else {
                return Err(error(
                    "no AWS region: pass --password-kms-region or set AWS_REGION",
                ));
            };
            let client = aws_sdk_kms::Client::new(&sdk);
            let mut request = client.decrypt().ciphertext_blob(Blob::new(ciphertext));
            if let Some(key_id) = non_empty(config.key_id.as_ref()) {
                request = request.key_id(key_id);
            }
            request.send().await.map_err(|e| {
                error(format_args!(
                    "KMS Decrypt failed ({}): {}",
                    config.target(Some(&region)),
                    sdk_error(&e)
                ))
            })
        };
        let out = tokio::time::timeout(config.timeout, decrypt)
            .await
            .map_err(|_| {
                error(format_args!(
                    "KMS Decrypt failed ({}): no answer within {:?}",
                    config.target(config.region.as_deref()),
                    config.timeout
                ))
            })??;
        let key = out.key_id.unwrap_or_else(|| {
            config
                .key_id
                .clone()
                .unwrap_or_else(|| "unknown key".to_owned())
        });
        let mut password =
            Zeroizing::new(out.plaintext.map(Blob::into_inner).ok_or_else(|| {
                error(format_args!(
                    "KMS Decrypt (key {key}) returned no plaintext"
                ))
            })?);
        if password.last() == Some(&b'\n') {
            password.pop();
            if password.last() == Some(&b'\r') {
                password.pop();
            }
        }
        if password.is_empty() {
            return Err(error(format_args!(
                "KMS Decrypt (key {key}) of {} returned an empty password",
                config.ciphertext_file.display()
            )));
        }
        if password.len() > MAX_PASSWORD_LEN {
            return Err(error(format_args!(
                "KMS Decrypt (key {key}) returned a password longer than {MAX_PASSWORD_LEN} bytes"
            )));
        }
        let description = format!(
            "aws-kms (key {key}, ciphertext {})",
            config.ciphertext_file.display()
        );
        tracing::info!(password = %description, "vault password decrypted with KMS");
        Ok(Self {
            password,
            description,
        })
    }
}

impl PasswordProvider for AwsKmsPassword {
    fn password(&self) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        // Never empty: checked by `decrypt`.
        Ok(self.password.clone())
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

/// The KMS error code and message of a service error (`AccessDeniedException: ...`), else the
/// error's chain of causes (`dispatch failure: io error: ...: Connection refused`).
fn sdk_error<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    if let Some(code) = e.code() {
        return format!("{code}: {}", e.message().unwrap_or("no message from KMS"));
    }
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

fn non_empty(value: Option<&String>) -> Option<&str> {
    value.map(String::as_str).filter(|v| !v.is_empty())
}

/// The ciphertext of the file: base64 if every byte is of the base64 alphabet or whitespace,
/// raw otherwise. A raw KMS ciphertext is never all base64 characters: AWS's starts with the
/// binary bytes `01 02 02 00`, and random bytes would have to avoid 190 of 256 values.
async fn read_ciphertext(config: &AwsKmsPasswordConfig) -> Result<Vec<u8>, VaultError> {
    let path = &config.ciphertext_file;
    let unreadable = |e: std::io::Error| {
        error(format_args!(
            "cannot read the KMS ciphertext file {}: {e}",
            path.display()
        ))
    };
    let metadata = tokio::fs::metadata(path).await.map_err(unreadable)?;
    if !metadata.is_file() {
        return Err(error(format_args!(
            "the KMS ciphertext file {} is not a regular file",
            path.display()
        )));
    }
    if metadata.len() > MAX_CIPHERTEXT_FILE_LEN {
        return Err(error(format_args!(
            "the KMS ciphertext file {} is larger than {MAX_CIPHERTEXT_FILE_LEN} bytes; a KMS \
             ciphertext is at most 6 KiB",
            path.display()
        )));
    }
    let bytes = tokio::fs::read(path).await.map_err(unreadable)?;
    decode_ciphertext(bytes).map_err(|what| {
        error(format_args!(
            "the KMS ciphertext file {} {what}",
            path.display()
        ))
    })
}

fn decode_ciphertext(bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    if bytes.trim_ascii().is_empty() {
        return Err("is empty".to_owned());
    }
    let is_base64 = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b.is_ascii_whitespace() || b"+/=".contains(b));
    if !is_base64 {
        return Ok(bytes);
    }
    let compact: Vec<u8> = bytes
        .into_iter()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| format!("looks like base64 but does not decode: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::decode_ciphertext;

    #[test]
    fn ciphertext_is_base64_with_line_breaks_or_raw() {
        assert_eq!(
            decode_ciphertext(b"AQICAP8Q\nIA==\n".to_vec()).unwrap(),
            [1, 2, 2, 0, 0xff, 0x10, 0x20]
        );
        let raw = vec![1, 2, 2, 0, b'\n', 0xff];
        assert_eq!(decode_ciphertext(raw.clone()).unwrap(), raw);
        assert!(decode_ciphertext(b" \n".to_vec())
            .unwrap_err()
            .contains("empty"));
        assert!(decode_ciphertext(b"AQI".to_vec())
            .unwrap_err()
            .contains("base64"));
    }
}
