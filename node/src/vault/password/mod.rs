//! Where the vault password comes from (docs/ARCHITECTURE.md §4.2 "Share vault"): a file,
//! an environment variable, memory, or a ciphertext that AWS KMS decrypts ([`aws_kms`]).

pub mod aws_kms;

use std::{fmt, fs::File, io::Read, path::PathBuf};

use zeroize::Zeroizing;

use super::VaultError;

/// Largest password a provider may return (a password file larger than this is refused).
const MAX_PASSWORD_LEN: usize = 64 * 1024;

/// Where the vault password comes from (docs/ARCHITECTURE.md §4.2 "Share vault").
///
/// Implementations here: [`FilePassword`] (a Kubernetes secret mounted as a file),
/// [`EnvPassword`] (development only) and [`StaticPassword`] (a password already in memory);
/// and [`AwsKmsPassword`](aws_kms::AwsKmsPassword), which keeps the password as a
/// KMS-encrypted ciphertext in the configuration and calls `kms:Decrypt` at start. Since the
/// AWS SDK is async and this trait is not, it decrypts once in an async constructor and
/// implements this trait over the result.
pub trait PasswordProvider: Send + Sync {
    /// The password. Never empty.
    fn password(&self) -> Result<Zeroizing<Vec<u8>>, VaultError>;

    /// A description for logs and errors, without the secret (`"file /etc/tkms/password"`).
    fn describe(&self) -> String;
}

/// The password from an environment variable.
///
/// **Development only.** Environment variables leak through `/proc/<pid>/environ`, crash
/// dumps, `docker inspect` and child processes; every use logs a loud warning. Production uses
/// [`FilePassword`] (Kubernetes secret) or the `aws-kms` provider
/// ([`AwsKmsPassword`](aws_kms::AwsKmsPassword)).
#[derive(Clone, Debug)]
pub struct EnvPassword {
    /// The variable's name.
    pub var: String,
}

impl EnvPassword {
    /// Read the password from the variable `var` (development only).
    pub fn new(var: impl Into<String>) -> Self {
        Self { var: var.into() }
    }
}

impl PasswordProvider for EnvPassword {
    fn password(&self) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        tracing::warn!(
            var = %self.var,
            "vault password taken from an environment variable: DEVELOPMENT ONLY, never in \
             production (environment variables leak through /proc, crash dumps and container \
             inspection); use a password file or aws-kms"
        );
        let value = match std::env::var(&self.var) {
            Ok(value) => Zeroizing::new(value.into_bytes()),
            Err(std::env::VarError::NotPresent) => {
                return Err(VaultError::Password(format!(
                    "environment variable {} is not set",
                    self.var
                )))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(VaultError::Password(format!(
                    "environment variable {} is not valid UTF-8",
                    self.var
                )))
            }
        };
        non_empty(value, &self.describe())
    }

    fn describe(&self) -> String {
        format!("environment variable {} (development only)", self.var)
    }
}

/// The password from a file, typically a Kubernetes secret mounted into the pod.
///
/// One trailing newline (`\n` or `\r\n`) is removed; an empty password is refused. A file
/// readable by group or others is accepted with a warning, since Kubernetes mounts secrets
/// `0644` unless the volume sets `defaultMode: 0400`, which it should.
#[derive(Clone, Debug)]
pub struct FilePassword {
    /// The file's path.
    pub path: PathBuf,
}

impl FilePassword {
    /// Read the password from the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl PasswordProvider for FilePassword {
    fn password(&self) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let unreadable = |e: std::io::Error| {
            VaultError::Password(format!(
                "cannot read password file {}: {e}",
                self.path.display()
            ))
        };
        let file = File::open(&self.path).map_err(unreadable)?;
        let metadata = file.metadata().map_err(unreadable)?;
        if !metadata.is_file() {
            return Err(VaultError::Password(format!(
                "password file {} is not a regular file",
                self.path.display()
            )));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %self.path.display(),
                    mode = format_args!("{mode:o}"),
                    "vault password file is readable beyond its owner; make it 0400 or 0600 \
                     (Kubernetes: defaultMode: 0400 on the secret volume)"
                );
            }
        }
        let capacity = usize::try_from(metadata.len())
            .unwrap_or(MAX_PASSWORD_LEN)
            .min(MAX_PASSWORD_LEN)
            + 1;
        let mut value = Zeroizing::new(Vec::with_capacity(capacity));
        file.take(MAX_PASSWORD_LEN as u64 + 1)
            .read_to_end(&mut value)
            .map_err(unreadable)?;
        if value.len() > MAX_PASSWORD_LEN {
            return Err(VaultError::Password(format!(
                "password file {} is larger than {MAX_PASSWORD_LEN} bytes",
                self.path.display()
            )));
        }
        if value.last() == Some(&b'\n') {
            value.pop();
            if value.last() == Some(&b'\r') {
                value.pop();
            }
        }
        non_empty(value, &self.describe())
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// A password already in memory: one fetched by an async provider (such as `kms:Decrypt`) before
/// the vault is opened, or a test's.
pub struct StaticPassword(Zeroizing<Vec<u8>>);

impl StaticPassword {
    /// Wrap a password.
    pub fn new(password: impl Into<Vec<u8>>) -> Self {
        Self(Zeroizing::new(password.into()))
    }
}

impl fmt::Debug for StaticPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticPassword(..)")
    }
}

impl PasswordProvider for StaticPassword {
    fn password(&self) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        non_empty(self.0.clone(), &self.describe())
    }

    fn describe(&self) -> String {
        "in-memory password".to_owned()
    }
}

fn non_empty(value: Zeroizing<Vec<u8>>, source: &str) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    if value.is_empty() {
        return Err(VaultError::Password(format!(
            "{source} gave an empty password"
        )));
    }
    Ok(value)
}
