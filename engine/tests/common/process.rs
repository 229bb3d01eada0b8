//! The real `tkms engine serve` process, for the tests that drive it as a user would
//! (`crash.rs`, `sdk.rs`). Needs the `tkms` binary of the same target directory
//! (`cargo test --workspace` builds it; after `cargo test -p tkms-engine` alone, run
//! `cargo build -p tkms-cli`).
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The `tkms` binary next to this test's target directory.
pub fn tkms_bin() -> PathBuf {
    // target/<profile>/deps/<test>-<hash> → target/<profile>/tkms
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join(format!("tkms{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p tkms-cli` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// A running `tkms engine serve`, killed on drop.
pub struct Service {
    pub child: Child,
    /// `http://ADDR`, from the line the service prints when it listens.
    pub url: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tkms engine serve --storage disk --listen 127.0.0.1:0 --data-dir DATA
/// --api-key-file KEYS`, plus what `configure` adds, and waits until it listens.
pub fn serve_disk(
    data: &Path,
    api_key_file: &Path,
    configure: impl FnOnce(&mut Command),
) -> Service {
    let mut cmd = Command::new(tkms_bin());
    cmd.args([
        "engine",
        "serve",
        "--storage",
        "disk",
        "--listen",
        "127.0.0.1:0",
    ])
    .arg("--data-dir")
    .arg(data)
    .arg("--api-key-file")
    .arg(api_key_file)
    .env_remove("TKMS_ENGINE_API_KEY")
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    configure(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("tkms engine listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from the service: {line:?}"))
        .to_owned();
    Service { child, url }
}
