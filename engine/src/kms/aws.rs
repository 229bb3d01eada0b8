//! The `aws-kms` [`KeyProvider`]: the KEK is wrapped with AWS KMS `Encrypt` and unwrapped
//! with `Decrypt` (docs/ARCHITECTURE.md §4.4 "KMS envelopes"), through the official AWS SDK
//! (`aws-sdk-kms`, rustls over aws-lc-rs), against AWS or any KMS-compatible endpoint.
//!
//! Every call binds the index: the KMS *encryption context* is `{"tkms:index": <name>}`, so
//! a wrapped KEK copied into another index's envelope does not decrypt. `Decrypt` also names
//! the envelope's `key_id`, so a blob cannot be redirected to another key.
//!
//! The SDK is async and the engine API synchronous: requests run on a private one-thread tokio
//! runtime and the caller waits on a channel, so the provider can be used (and dropped) from
//! inside another tokio runtime (it blocks the calling thread, like [`S3Store`]).
//!
//! Secrets: the unwrapped KEK is moved out of the SDK's response buffer into a zeroized
//! [`IndexKey`]; the request/response buffers inside the SDK and its HTTP stack are not under
//! our control (the same holds for any KMS client).
//!
//! [`S3Store`]: crate::store::S3Store

use std::fmt;
use std::future::Future;

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::error::DisplayErrorContext;
use aws_sdk_kms::primitives::Blob;
use zeroize::Zeroizing;

use super::runtime::PrivateRuntime;
use super::{KeyProvider, KmsBlob, Wrapped, PROVIDER_AWS_KMS};
use crate::error::{Error, Result};
use crate::keys::IndexKey;

/// Encryption-context key naming the index a KEK belongs to.
pub const ENCRYPTION_CONTEXT_INDEX: &str = "tkms:index";

/// Static AWS credentials. Without them the provider uses the SDK's default chain
/// (environment, shared profile, web identity, ECS and EC2 instance roles).
#[derive(Clone)]
pub struct AwsCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (zeroized on drop, redacted in `Debug`).
    pub secret_access_key: Zeroizing<String>,
    /// Session token of temporary credentials.
    pub session_token: Option<Zeroizing<String>>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Settings of an [`AwsKmsProvider`].
#[derive(Clone, Debug)]
pub struct AwsKmsConfig {
    /// The KMS key new KEKs are wrapped under (key id, ARN, or `alias/...`).
    pub key_id: String,
    /// AWS region, e.g. `us-east-1`.
    pub region: String,
    /// Custom endpoint URL (e.g. a local KMS-compatible server); `None` for AWS.
    pub endpoint: Option<String>,
    /// Static credentials; `None` for the SDK's default credential chain.
    pub credentials: Option<AwsCredentials>,
}

/// AWS KMS as a [`KeyProvider`] (`provider = "aws-kms"`).
pub struct AwsKmsProvider {
    client: aws_sdk_kms::Client,
    key_id: String,
    region: String,
    runtime: PrivateRuntime,
}

impl fmt::Debug for AwsKmsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsProvider")
            .field("key_id", &self.key_id)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

fn kms_error(what: &str, index: &str, e: impl std::error::Error) -> Error {
    Error::Kms(format!(
        "{what} of the KEK of index `{index}` failed: {}",
        DisplayErrorContext(e)
    ))
}

impl AwsKmsProvider {
    /// Builds the client (no request is made until the first wrap or unwrap, except what the
    /// default credential chain does to find credentials).
    pub fn new(config: AwsKmsConfig) -> Result<Self> {
        if config.key_id.is_empty() {
            return Err(Error::InvalidArgument(
                "aws-kms: key_id (KMS key id, ARN or alias) is required".into(),
            ));
        }
        if config.region.is_empty() {
            return Err(Error::InvalidArgument("aws-kms: region is required".into()));
        }
        let runtime = PrivateRuntime::new("tkms-aws-kms")?;
        let key_id = config.key_id.clone();
        let region = config.region.clone();
        let client = runtime.run(async move {
            let region = Region::new(config.region);
            if let Some(c) = config.credentials {
                let creds = Credentials::new(
                    c.access_key_id,
                    c.secret_access_key.as_str(),
                    c.session_token.as_ref().map(|t| t.to_string()),
                    None,
                    "tkms-config",
                );
                let mut b = aws_sdk_kms::Config::builder()
                    .behavior_version(BehaviorVersion::latest())
                    .region(region)
                    .credentials_provider(creds);
                if let Some(ep) = config.endpoint {
                    b = b.endpoint_url(ep);
                }
                aws_sdk_kms::Client::from_conf(b.build())
            } else {
                let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(region);
                if let Some(ep) = config.endpoint {
                    loader = loader.endpoint_url(ep);
                }
                aws_sdk_kms::Client::new(&loader.load().await)
            }
        })?;
        Ok(Self {
            client,
            key_id,
            region,
            runtime,
        })
    }

    /// The KMS key new KEKs are wrapped under.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    fn run<F>(&self, fut: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.run(fut)
    }
}

impl KeyProvider for AwsKmsProvider {
    fn provider(&self) -> &str {
        PROVIDER_AWS_KMS
    }

    fn wrap(&self, index: &str, kek: &IndexKey) -> Result<Wrapped> {
        let request = self
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(kek.expose_secret().to_vec()))
            .encryption_context(ENCRYPTION_CONTEXT_INDEX, index);
        let out = self
            .run(request.send())?
            .map_err(|e| kms_error("wrapping (kms:Encrypt)", index, e))?;
        let wrapped_kek = out
            .ciphertext_blob
            .map(Blob::into_inner)
            .filter(|b| !b.is_empty())
            .ok_or_else(|| Error::Kms("kms:Encrypt returned no ciphertext".into()))?;
        Ok(Wrapped {
            // The key's ARN when the KMS reports it: an alias may later point elsewhere.
            key_id: out.key_id.unwrap_or_else(|| self.key_id.clone()),
            region: self.region.clone(),
            wrapped_kek,
        })
    }

    fn unwrap(&self, index: &str, blob: &KmsBlob) -> Result<IndexKey> {
        if blob.provider != PROVIDER_AWS_KMS {
            return Err(Error::InvalidEnvelope(format!(
                "the envelope of index `{index}` is for provider {:?}, not \"aws-kms\"",
                blob.provider
            )));
        }
        if !blob.region.is_empty() && blob.region != self.region {
            return Err(Error::InvalidEnvelope(format!(
                "the KEK of index `{index}` is wrapped in region {:?}; this provider is configured for {:?}",
                blob.region, self.region
            )));
        }
        let request = self
            .client
            .decrypt()
            .key_id(&blob.key_id)
            .ciphertext_blob(Blob::new(blob.wrapped_kek.clone()))
            .encryption_context(ENCRYPTION_CONTEXT_INDEX, index);
        let out = self
            .run(request.send())?
            .map_err(|e| kms_error("unwrapping (kms:Decrypt)", index, e))?;
        let plain = Zeroizing::new(
            out.plaintext
                .map(Blob::into_inner)
                .ok_or_else(|| Error::Kms("kms:Decrypt returned no plaintext".into()))?,
        );
        IndexKey::from_bytes(&plain).map_err(|_| {
            Error::Kms(format!(
                "kms:Decrypt for index `{index}` returned {} bytes, not a 32-byte KEK",
                plain.len()
            ))
        })
    }
}
