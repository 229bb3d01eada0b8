//! The share vault through its public API: round trips across restarts, no plaintext on disk,
//! wrong passwords, tampering, backups and password providers.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use aes_gcm::{
    aead::{Aead, Payload},
    Aes256Gcm, KeyInit, Nonce,
};
use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use subtle::ConstantTimeEq;
use tempfile::TempDir;
use tkms_crypto::{
    shamir, KeyShare, NodeIndex, PublicKeySet, Secp256k1, SecretScalar, Suite, P256,
};
use tkms_node::vault::{
    EnvPassword, FilePassword, KdfParams, PasswordProvider, StaticPassword, Vault, VaultError,
};

const PASSWORD: &[u8] = b"correct horse battery staple";
const SHARES: TableDefinition<u64, &[u8]> = TableDefinition::new("shares");

fn deal<S: Suite>(seed: u64, t: u16, n: u16) -> (Vec<KeyShare<S>>, PublicKeySet<S>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let secret = SecretScalar::<S>::random(&mut rng);
    shamir::deal(&secret, t, n, &mut rng).unwrap()
}

fn vault_path() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.redb");
    (dir, path)
}

fn open(path: &Path) -> Vault {
    Vault::open(
        path,
        &StaticPassword::new(PASSWORD),
        KdfParams::insecure_for_tests(),
    )
    .unwrap()
}

fn hash(byte: u8) -> [u8; 32] {
    [byte; 32]
}

fn assert_same<S: Suite>(
    got: &(KeyShare<S>, PublicKeySet<S>, [u8; 32]),
    share: &KeyShare<S>,
    keys: &PublicKeySet<S>,
    transcript_hash: [u8; 32],
) {
    assert_eq!(got.0.index(), share.index());
    assert!(bool::from(got.0.value().ct_eq(share.value())));
    assert_eq!(&got.1, keys);
    assert_eq!(got.2, transcript_hash);
}

fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return Vec::new();
    }
    (0..=haystack.len() - needle.len())
        .filter(|&i| &haystack[i..i + needle.len()] == needle)
        .collect()
}

/// The sealed value of `epoch` as redb stores it (read with redb directly, vault closed).
fn raw_record(path: &Path, epoch: u64) -> Vec<u8> {
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(SHARES).unwrap();
    let value = table.get(epoch).unwrap().unwrap().value().to_vec();
    value
}

#[test]
fn round_trip_both_suites_survives_restart() {
    let (_dir, path) = vault_path();
    let (k_shares, k_keys) = deal::<Secp256k1>(1, 2, 3);
    let (p_shares, p_keys) = deal::<P256>(2, 3, 5);
    {
        let vault = open(&path);
        assert_eq!(vault.latest_epoch().unwrap(), None);
        assert!(vault.list_epochs().unwrap().is_empty());
        vault.put_share(1, &k_shares[0], &k_keys, hash(1)).unwrap();
        vault.put_share(2, &p_shares[4], &p_keys, hash(2)).unwrap();
        let got = vault.get_share::<Secp256k1>(1).unwrap().unwrap();
        assert_same(&got, &k_shares[0], &k_keys, hash(1));
    }
    // Restart: a new process opens the same file with the same password. The parameters
    // passed at reopen are ignored; the stored ones are used.
    let vault = Vault::open(
        &path,
        &StaticPassword::new(PASSWORD),
        KdfParams::production(),
    )
    .unwrap();
    assert_eq!(vault.kdf_params(), KdfParams::insecure_for_tests());
    assert_eq!(vault.list_epochs().unwrap(), vec![1, 2]);
    assert_eq!(vault.latest_epoch().unwrap(), Some(2));
    let got = vault.get_share::<Secp256k1>(1).unwrap().unwrap();
    assert_same(&got, &k_shares[0], &k_keys, hash(1));
    let got = vault.get_share::<P256>(2).unwrap().unwrap();
    assert_same(&got, &p_shares[4], &p_keys, hash(2));

    let record = vault.get_record(2).unwrap().unwrap();
    assert_eq!(record.suite(), "P-256");
    assert_eq!(record.index(), NodeIndex::new(5).unwrap());
    assert_eq!(record.threshold(), 3);
    assert_eq!(record.committee().len(), 5);
    assert_eq!(record.commitment_bytes(), p_keys.commitment().to_bytes());

    // Wrong suite asked for, unknown epoch.
    assert!(matches!(
        vault.get_share::<P256>(1),
        Err(VaultError::SuiteMismatch { .. })
    ));
    assert!(vault.get_share::<Secp256k1>(3).unwrap().is_none());

    // Same record again: no-op. A different share or transcript for a stored epoch: refused.
    vault.put_share(1, &k_shares[0], &k_keys, hash(1)).unwrap();
    assert!(matches!(
        vault.put_share(1, &k_shares[1], &k_keys, hash(1)),
        Err(VaultError::EpochExists(1))
    ));
    assert!(matches!(
        vault.put_share(1, &k_shares[0], &k_keys, hash(9)),
        Err(VaultError::EpochExists(1))
    ));
    let got = vault.get_share::<Secp256k1>(1).unwrap().unwrap();
    assert_same(&got, &k_shares[0], &k_keys, hash(1));

    // A share that does not belong to the key set is refused.
    let (other_shares, _) = deal::<Secp256k1>(3, 2, 3);
    assert!(matches!(
        vault.put_share(7, &other_shares[0], &k_keys, hash(7)),
        Err(VaultError::InvalidShare(_))
    ));

    // Erase the old epoch after a reshare.
    assert!(vault.delete_epoch(1).unwrap());
    assert!(!vault.delete_epoch(1).unwrap());
    assert_eq!(vault.list_epochs().unwrap(), vec![2]);
    drop(vault);
    let vault = open(&path);
    assert!(vault.get_share::<Secp256k1>(1).unwrap().is_none());
    assert_eq!(vault.list_epochs().unwrap(), vec![2]);
}

#[test]
fn file_holds_no_plaintext_share_or_password() {
    let (_dir, path) = vault_path();
    let (shares, keys) = deal::<Secp256k1>(4, 2, 3);
    let share_bytes = shares[1].value().to_bytes();
    {
        let vault = open(&path);
        vault.put_share(1, &shares[1], &keys, hash(1)).unwrap();
        vault.put_share(2, &shares[1], &keys, hash(2)).unwrap();
        assert!(vault.delete_epoch(2).unwrap());
        let debug = format!("{vault:?} {:?}", vault.get_record(1).unwrap().unwrap());
        assert!(!debug.contains(&hex::encode(*share_bytes)));
        assert!(!debug.contains(std::str::from_utf8(PASSWORD).unwrap()));
    }
    let raw = std::fs::read(&path).unwrap();
    assert!(raw.len() > 1000);
    assert!(find_all(&raw, &*share_bytes).is_empty());
    assert!(find_all(&raw, hex::encode(*share_bytes).as_bytes()).is_empty());
    assert!(find_all(&raw, hex::encode_upper(*share_bytes).as_bytes()).is_empty());
    assert!(find_all(&raw, PASSWORD).is_empty());
}

#[test]
fn wrong_password_is_refused_and_changes_nothing() {
    let (_dir, path) = vault_path();
    let (shares, keys) = deal::<Secp256k1>(5, 2, 3);
    open(&path)
        .put_share(1, &shares[0], &keys, hash(1))
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = Vault::open(
        &path,
        &StaticPassword::new("not the password"),
        KdfParams::insecure_for_tests(),
    )
    .unwrap_err();
    assert!(matches!(err, VaultError::WrongPassword), "{err}");
    assert!(err.to_string().contains("wrong vault password"));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let got = open(&path).get_share::<Secp256k1>(1).unwrap().unwrap();
    assert_same(&got, &shares[0], &keys, hash(1));
}

#[test]
fn a_file_that_is_not_a_vault_is_refused() {
    let (_dir, path) = vault_path();
    std::fs::write(
        &path,
        b"definitely not a redb file, but long enough to look like one",
    )
    .unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = Vault::open(
        &path,
        &StaticPassword::new(PASSWORD),
        KdfParams::insecure_for_tests(),
    )
    .unwrap_err();
    assert!(
        matches!(err, VaultError::Storage(_) | VaultError::Corrupted(_)),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn a_flipped_ciphertext_byte_is_corruption_not_garbage() {
    let (_dir, path) = vault_path();
    let (shares, keys) = deal::<P256>(6, 2, 3);
    open(&path)
        .put_share(4, &shares[2], &keys, hash(4))
        .unwrap();
    let sealed = raw_record(&path, 4);
    let mut raw = std::fs::read(&path).unwrap();
    let hits = find_all(&raw, &sealed);
    assert!(!hits.is_empty(), "the sealed record is not in the file");
    // Flip a byte in the middle of the ciphertext (past the 12-byte nonce) of every copy.
    for at in hits {
        raw[at + sealed.len() / 2] ^= 0x01;
    }
    std::fs::write(&path, &raw).unwrap();

    let vault = open(&path);
    let err = vault.get_share::<P256>(4).unwrap_err();
    assert!(matches!(err, VaultError::Corrupted(_)), "{err}");
    assert!(matches!(vault.get_record(4), Err(VaultError::Corrupted(_))));
    assert!(matches!(
        vault.export_backup(
            4,
            &StaticPassword::new("backup"),
            KdfParams::insecure_for_tests()
        ),
        Err(VaultError::Corrupted(_))
    ));
}

#[test]
fn records_swapped_between_epochs_fail_authentication() {
    let (_dir, path) = vault_path();
    let (shares, keys) = deal::<Secp256k1>(7, 2, 3);
    {
        let vault = open(&path);
        vault.put_share(1, &shares[0], &keys, hash(1)).unwrap();
        vault.put_share(2, &shares[0], &keys, hash(2)).unwrap();
    }
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(SHARES).unwrap();
            let one = table.get(1).unwrap().unwrap().value().to_vec();
            let two = table.get(2).unwrap().unwrap().value().to_vec();
            table.insert(1, two.as_slice()).unwrap();
            table.insert(2, one.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let vault = open(&path);
    for epoch in [1, 2] {
        let err = vault.get_share::<Secp256k1>(epoch).unwrap_err();
        assert!(matches!(err, VaultError::Corrupted(_)), "{err}");
    }
}

#[test]
fn backup_restores_into_a_fresh_vault() {
    let (_dir_a, path_a) = vault_path();
    let (_dir_b, path_b) = vault_path();
    let (shares, keys) = deal::<Secp256k1>(8, 2, 3);
    let backup_password = StaticPassword::new("backup password");
    let source = open(&path_a);
    source.put_share(3, &shares[2], &keys, hash(3)).unwrap();
    let backup = source
        .export_backup(3, &backup_password, KdfParams::insecure_for_tests())
        .unwrap();
    assert_eq!(&backup[..8], b"TKMSBAK1");
    assert!(find_all(&backup, &*shares[2].value().to_bytes()).is_empty());
    assert!(matches!(
        source.export_backup(9, &backup_password, KdfParams::insecure_for_tests()),
        Err(VaultError::UnknownEpoch(9))
    ));

    // Another node's vault, under another vault password.
    let target = Vault::open(
        &path_b,
        &StaticPassword::new("another vault password"),
        KdfParams::insecure_for_tests(),
    )
    .unwrap();
    assert_eq!(target.import_backup(&backup, &backup_password).unwrap(), 3);
    let got = target.get_share::<Secp256k1>(3).unwrap().unwrap();
    assert_same(&got, &shares[2], &keys, hash(3));
    // Importing the same backup again is a no-op.
    assert_eq!(target.import_backup(&backup, &backup_password).unwrap(), 3);
    assert_eq!(target.list_epochs().unwrap(), vec![3]);
}

#[test]
fn bad_backups_are_refused_with_clear_errors() {
    let (_dir_a, path_a) = vault_path();
    let (_dir_b, path_b) = vault_path();
    let (shares, keys) = deal::<P256>(9, 2, 3);
    let backup_password = StaticPassword::new("backup password");
    let source = open(&path_a);
    source.put_share(5, &shares[0], &keys, hash(5)).unwrap();
    let backup = source
        .export_backup(5, &backup_password, KdfParams::insecure_for_tests())
        .unwrap();
    let target = open(&path_b);

    let err = target
        .import_backup(&backup, &StaticPassword::new("wrong"))
        .unwrap_err();
    assert!(matches!(err, VaultError::BackupDecryption), "{err}");
    assert!(err.to_string().contains("wrong backup password"));

    for len in [0, 7, 20, 64, backup.len() - 1] {
        let err = target
            .import_backup(&backup[..len], &backup_password)
            .unwrap_err();
        assert!(
            matches!(err, VaultError::Backup(_) | VaultError::BackupDecryption),
            "truncated to {len}: {err}"
        );
    }
    let err = target
        .import_backup(&backup[..20], &backup_password)
        .unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");

    let mut bad_magic = backup.clone();
    bad_magic[0] = b'X';
    let err = target
        .import_backup(&bad_magic, &backup_password)
        .unwrap_err();
    assert!(err.to_string().contains("bad magic"), "{err}");

    let mut bad_version = backup.clone();
    bad_version[8] = 2;
    let err = target
        .import_backup(&bad_version, &backup_password)
        .unwrap_err();
    assert!(err.to_string().contains("version"), "{err}");

    // A hostile header asking for 4 TiB of Argon2 memory is refused before any work.
    let mut greedy = backup.clone();
    greedy[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
    let err = target.import_backup(&greedy, &backup_password).unwrap_err();
    assert!(matches!(err, VaultError::Backup(_)), "{err}");

    // Any other flipped bit (salt, nonce, ciphertext, tag) fails authentication.
    for at in [25, 45, 60, backup.len() - 1] {
        let mut garbled = backup.clone();
        garbled[at] ^= 0x80;
        let err = target
            .import_backup(&garbled, &backup_password)
            .unwrap_err();
        assert!(
            matches!(err, VaultError::BackupDecryption),
            "byte {at}: {err}"
        );
    }
    assert!(target.list_epochs().unwrap().is_empty());

    // The epoch exists in the target with a different share: refused, target unchanged.
    target.put_share(5, &shares[1], &keys, hash(5)).unwrap();
    let err = target.import_backup(&backup, &backup_password).unwrap_err();
    assert!(matches!(err, VaultError::EpochExists(5)), "{err}");
    let got = target.get_share::<P256>(5).unwrap().unwrap();
    assert_same(&got, &shares[1], &keys, hash(5));
}

/// Build a backup by hand from the documented format (a known-format check independent of
/// the exporter) around an arbitrary record.
fn hand_built_backup(record: &[u8], password: &[u8]) -> Vec<u8> {
    let params = KdfParams::insecure_for_tests();
    let salt = [7u8; 16];
    let nonce = [9u8; 12];
    let mut out = b"TKMSBAK1".to_vec();
    out.push(1);
    out.extend_from_slice(&params.memory_kib.to_be_bytes());
    out.extend_from_slice(&params.iterations.to_be_bytes());
    out.extend_from_slice(&params.parallelism.to_be_bytes());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    let mut key = [0u8; 32];
    argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            Some(32),
        )
        .unwrap(),
    )
    .hash_password_into(password, &salt, &mut key)
    .unwrap();
    let ciphertext = Aes256Gcm::new_from_slice(&key)
        .unwrap()
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: record,
                aad: &out,
            },
        )
        .unwrap();
    out.extend_from_slice(&ciphertext);
    out
}

fn record_bytes<S: Suite>(
    suite: &str,
    epoch: u64,
    index: u16,
    share: &[u8; 32],
    keys: &PublicKeySet<S>,
) -> Vec<u8> {
    let commitment = keys.commitment().to_bytes();
    let mut out = vec![1u8];
    out.extend_from_slice(&epoch.to_be_bytes());
    out.push(u8::try_from(suite.len()).unwrap());
    out.extend_from_slice(suite.as_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(share);
    out.extend_from_slice(&keys.threshold().to_be_bytes());
    out.extend_from_slice(&u32::try_from(commitment.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&commitment);
    let committee: Vec<NodeIndex> = keys.public_shares().map(|(i, _)| i).collect();
    out.extend_from_slice(&u16::try_from(committee.len()).unwrap().to_be_bytes());
    for i in committee {
        out.extend_from_slice(&i.to_bytes());
    }
    out.extend_from_slice(&hash(6));
    out
}

#[test]
fn imported_backups_are_validated_against_the_commitment() {
    let (_dir, path) = vault_path();
    let vault = open(&path);
    let (shares, keys) = deal::<Secp256k1>(10, 2, 3);
    let password = b"hand-built";
    let provider = StaticPassword::new(password.to_vec());
    let share_of = |k: usize| *shares[k].value().to_bytes();

    // The documented format, built by hand, imports.
    let good = record_bytes("secp256k1", 6, 2, &share_of(1), &keys);
    assert_eq!(
        vault
            .import_backup(&hand_built_backup(&good, password), &provider)
            .unwrap(),
        6
    );
    let got = vault.get_share::<Secp256k1>(6).unwrap().unwrap();
    assert_same(&got, &shares[1], &keys, hash(6));

    // Node 3's share labelled as node 1's: share·G is not the public share.
    let wrong = record_bytes("secp256k1", 7, 1, &share_of(2), &keys);
    let err = vault
        .import_backup(&hand_built_backup(&wrong, password), &provider)
        .unwrap_err();
    assert!(matches!(err, VaultError::InvalidShare(_)), "{err}");

    // A secp256k1 share claimed to be P-256 does not match its commitment either (the
    // commitment's points are not P-256 points, or not the right ones).
    let mislabeled = record_bytes("P-256", 8, 2, &share_of(1), &keys);
    let err = vault
        .import_backup(&hand_built_backup(&mislabeled, password), &provider)
        .unwrap_err();
    assert!(matches!(err, VaultError::InvalidShare(_)), "{err}");

    let unknown = record_bytes("ed25519", 9, 2, &share_of(1), &keys);
    let err = vault
        .import_backup(&hand_built_backup(&unknown, password), &provider)
        .unwrap_err();
    assert!(
        matches!(err, VaultError::UnknownSuite(ref s) if s == "ed25519"),
        "{err}"
    );

    let mut trailing = good.clone();
    trailing.push(0);
    let err = vault
        .import_backup(&hand_built_backup(&trailing, password), &provider)
        .unwrap_err();
    assert!(matches!(err, VaultError::Backup(_)), "{err}");

    assert_eq!(vault.list_epochs().unwrap(), vec![6]);
}

#[test]
fn production_parameters_open_and_reopen() {
    let (_dir, path) = vault_path();
    let (shares, keys) = deal::<Secp256k1>(11, 2, 3);
    let start = Instant::now();
    let vault = Vault::open(
        &path,
        &StaticPassword::new(PASSWORD),
        KdfParams::production(),
    )
    .unwrap();
    let created = start.elapsed();
    vault.put_share(1, &shares[0], &keys, hash(1)).unwrap();
    drop(vault);
    let start = Instant::now();
    let vault = Vault::open(
        &path,
        &StaticPassword::new(PASSWORD),
        KdfParams::insecure_for_tests(),
    )
    .unwrap();
    let reopened = start.elapsed();
    assert_eq!(vault.kdf_params(), KdfParams::production());
    assert!(vault.get_share::<Secp256k1>(1).unwrap().is_some());
    eprintln!("production Argon2id: create {created:?}, reopen {reopened:?}");
}

#[test]
fn invalid_kdf_parameters_are_refused_at_creation() {
    let (_dir, path) = vault_path();
    let params = KdfParams {
        memory_kib: 1,
        iterations: 0,
        parallelism: 1,
    };
    let err = Vault::open(&path, &StaticPassword::new(PASSWORD), params).unwrap_err();
    assert!(matches!(err, VaultError::InvalidKdfParams(_)), "{err}");
}

#[test]
fn file_password_provider() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("password");

    let err = FilePassword::new(&path).password().unwrap_err();
    assert!(matches!(err, VaultError::Password(_)), "{err}");
    assert!(
        err.to_string().contains("cannot read password file"),
        "{err}"
    );

    for (contents, expected) in [
        (&b"s3cret\n"[..], &b"s3cret"[..]),
        (b"s3cret\r\n", b"s3cret"),
        (b"s3cret", b"s3cret"),
        (b"s3cret\n\n", b"s3cret\n"),
        (b" spaces kept ", b" spaces kept "),
    ] {
        std::fs::write(&path, contents).unwrap();
        let provider = FilePassword::new(&path);
        assert_eq!(provider.password().unwrap().as_slice(), expected);
        assert!(provider.describe().contains("password"));
        assert!(!provider.describe().contains("s3cret"));
    }

    for empty in [&b""[..], b"\n", b"\r\n"] {
        std::fs::write(&path, empty).unwrap();
        let err = FilePassword::new(&path).password().unwrap_err();
        assert!(err.to_string().contains("empty password"), "{err}");
    }

    // A group/world-readable file is accepted with a warning (Kubernetes' default 0644).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&path, b"s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            FilePassword::new(&path).password().unwrap().as_slice(),
            b"s3cret"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(
            FilePassword::new(&path).password().unwrap().as_slice(),
            b"s3cret"
        );
    }

    // A directory is not a password file.
    let err = FilePassword::new(dir.path()).password().unwrap_err();
    assert!(matches!(err, VaultError::Password(_)), "{err}");

    // The provider opens a vault.
    std::fs::write(&path, b"from a file\n").unwrap();
    let vault_file = dir.path().join("vault.redb");
    Vault::open(
        &vault_file,
        &FilePassword::new(&path),
        KdfParams::insecure_for_tests(),
    )
    .unwrap();
    Vault::open(
        &vault_file,
        &StaticPassword::new("from a file"),
        KdfParams::insecure_for_tests(),
    )
    .unwrap();
}

#[test]
fn env_password_provider_missing_variable() {
    let provider = EnvPassword::new("TKMS_VAULT_TEST_SURELY_UNSET_VARIABLE");
    let err = provider.password().unwrap_err();
    assert!(matches!(err, VaultError::Password(_)), "{err}");
    assert!(err.to_string().contains("is not set"), "{err}");
    assert!(provider.describe().contains("development only"));
}

/// Run in a child process by `env_password_provider_reads_the_variable`, which sets the
/// variables for the child only (no `set_var` in a multithreaded test process).
#[test]
#[ignore = "run in a child process by env_password_provider_reads_the_variable"]
fn env_password_provider_child() {
    let provider = EnvPassword::new("TKMS_VAULT_TEST_PASSWORD");
    assert_eq!(provider.password().unwrap().as_slice(), b"env secret");
    assert!(!provider.describe().contains("env secret"));
    let err = EnvPassword::new("TKMS_VAULT_TEST_EMPTY")
        .password()
        .unwrap_err();
    assert!(err.to_string().contains("empty password"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.redb");
    Vault::open(&path, &provider, KdfParams::insecure_for_tests()).unwrap();
    Vault::open(
        &path,
        &StaticPassword::new("env secret"),
        KdfParams::insecure_for_tests(),
    )
    .unwrap();
}

#[test]
fn env_password_provider_reads_the_variable() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["env_password_provider_child", "--exact", "--ignored"])
        .env("TKMS_VAULT_TEST_PASSWORD", "env secret")
        .env("TKMS_VAULT_TEST_EMPTY", "")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A superseded share is erased from the disk, not only unlinked from the table: the sealed
/// record (which the vault password would still open) is not left in the file's free pages.
#[test]
fn a_deleted_epoch_leaves_no_sealed_record_in_the_file() {
    let (_dir, path) = vault_path();
    let (shares, keys) = deal::<Secp256k1>(5, 2, 3);
    {
        let vault = open(&path);
        vault.put_share(1, &shares[0], &keys, hash(1)).unwrap();
        vault.put_share(2, &shares[1], &keys, hash(2)).unwrap();
    }
    let sealed = raw_record(&path, 1);
    assert_eq!(find_all(&std::fs::read(&path).unwrap(), &sealed).len(), 1);
    {
        let vault = open(&path);
        assert!(vault.delete_epoch(1).unwrap());
        assert_eq!(vault.list_epochs().unwrap(), vec![2]);
    }
    let raw = std::fs::read(&path).unwrap();
    assert!(
        find_all(&raw, &sealed).is_empty(),
        "the sealed record of the deleted epoch is still in the file"
    );
    // Nor any 16-byte window of it (a partial overwrite is not an erasure).
    for window in sealed.chunks(16).filter(|w| w.len() == 16) {
        assert!(find_all(&raw, window).is_empty());
    }
}
