//! The `tkms` binary as a shell user meets it: `--help` names every command, and a wrong
//! command line fails with an error on stderr and nothing on stdout.
//!
//! Being an integration test of this package, it also makes `cargo test` build the `tkms`
//! binary (`target/<profile>/tkms`), which the end-to-end tests in `tests/` (`tkms-e2e`) run.

use std::process::Command;

fn tkms(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tkms"))
        .args(args)
        .output()
        .expect("running tkms")
}

#[test]
fn help_names_every_command() {
    let out = tkms(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in [
        "encrypt",
        "delegate",
        "reencrypt",
        "decrypt",
        "bench",
        "engine",
        "ecies",
        "registry",
        "testnet",
        "node",
        "manager",
        "baseline",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "{command} missing from:\n{help}"
        );
    }
}

#[test]
fn a_wrong_command_line_fails_with_an_error_on_stderr() {
    for args in [
        &["no-such-command"][..],
        &["testnet", "up", "--nodes", "zero"],
    ] {
        let out = tkms(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("error:"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
