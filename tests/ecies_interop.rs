//! The `tkms ecies` commands round-trip with an independent implementation
//! (`crypto/tests/vectors/reference.py`, Python `cryptography`), and fail cleanly on bad input.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

fn tkms(args: &[&str], stdin: &[u8]) -> Output {
    pipe(tkms_e2e::tkms().args(args), stdin)
}

/// `reference.py` under the tests' Python (`tkms_testkit::python`: the repository's `.venv`
/// that `./test.sh` sets up), which needs the `cryptography` package.
fn reference(args: &[&str], stdin: &[u8]) -> Output {
    tkms_testkit::require_python_module("cryptography", "cryptography");
    let script = tkms_testkit::repo_root().join("crypto/tests/vectors/reference.py");
    let output = pipe(
        Command::new(tkms_testkit::python()).arg(script).args(args),
        stdin,
    );
    assert!(
        output.status.success(),
        "reference.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn pipe(command: &mut Command, stdin: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The program may exit before reading its input (e.g. on a bad key): a closed pipe is fine.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

fn keygen(curve: &str) -> (String, String) {
    let out = tkms(&["ecies", "keygen", "--curve", curve], b"");
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sk = json["secret_key"].as_str().unwrap().to_string();
    let pk = json["public_key"].as_str().unwrap().to_string();
    assert!(sk.starts_with("0x") && sk.len() == 66 && pk.starts_with("0x") && pk.len() == 68);
    (sk, pk)
}

fn key_file(secret: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "{secret}").unwrap();
    file
}

#[test]
fn round_trips_with_the_independent_implementation() {
    for (curve, py_curve) in [("secp256k1", "secp256k1"), ("p256", "P-256")] {
        let (sk, pk) = keygen(curve);
        let file = key_file(&sk);
        let path = file.path().to_str().unwrap();
        for message in [&b""[..], b"x", b"hello tkms", &[0xa5; 1000][..]] {
            // tkms encrypts, Python decrypts.
            let ct = tkms(
                &["ecies", "encrypt", "--curve", curve, "--public-key", &pk],
                message,
            );
            assert!(
                ct.status.success(),
                "{}",
                String::from_utf8_lossy(&ct.stderr)
            );
            let pt = reference(&["decrypt", "--curve", py_curve, &sk], &ct.stdout);
            assert_eq!(pt.stdout, message);
            // Python encrypts, tkms decrypts.
            let ct = reference(&["encrypt", "--curve", py_curve, &pk], message);
            let pt = tkms(
                &[
                    "ecies",
                    "decrypt",
                    "--curve",
                    curve,
                    "--secret-key-file",
                    path,
                ],
                &ct.stdout,
            );
            assert!(
                pt.status.success(),
                "{}",
                String::from_utf8_lossy(&pt.stderr)
            );
            assert_eq!(pt.stdout, message);
        }
    }
}

#[test]
fn bad_input_fails_with_a_message_and_no_output() {
    let (sk, pk) = keygen("secp256k1");
    let file = key_file(&sk);
    let path = file.path().to_str().unwrap();
    let ct = tkms(&["ecies", "encrypt", "--public-key", &pk], b"secret");
    let mut tampered = String::from_utf8(ct.stdout).unwrap().trim().to_string();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    let (_, other_pk) = keygen("secp256k1");
    let other_ct = tkms(&["ecies", "encrypt", "--public-key", &other_pk], b"secret").stdout;
    let cases: Vec<(Vec<&str>, Vec<u8>, &str)> = vec![
        (
            vec!["ecies", "encrypt", "--public-key", "0x04"],
            b"m".to_vec(),
            "invalid public key",
        ),
        (
            vec!["ecies", "encrypt", "--public-key", "zz"],
            b"m".to_vec(),
            "not hex",
        ),
        (
            vec!["ecies", "decrypt", "--secret-key-file", path],
            b"0x1234".to_vec(),
            "too short",
        ),
        (
            vec!["ecies", "decrypt", "--secret-key-file", path],
            b"nothex".to_vec(),
            "not hex",
        ),
        (
            vec!["ecies", "decrypt", "--secret-key-file", path],
            tampered.into_bytes(),
            "decryption failed",
        ),
        (
            vec!["ecies", "decrypt", "--secret-key-file", path],
            other_ct,
            "decryption failed",
        ),
        (
            vec!["ecies", "decrypt", "--secret-key-file", "/nonexistent/key"],
            b"00".to_vec(),
            "reading secret key file",
        ),
    ];
    for (args, stdin, expected) in cases {
        let out = tkms(&args, &stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} wrote output");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // A zero key in the file is refused.
    let zero = key_file(&"00".repeat(32));
    let out = tkms(
        &[
            "ecies",
            "decrypt",
            "--secret-key-file",
            zero.path().to_str().unwrap(),
        ],
        b"00",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid secret key"));
}
