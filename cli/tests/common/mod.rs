//! Helpers shared by the end-to-end tests.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::{
    process::Command,
    time::{Duration, Instant},
};

/// `kill -9 pid`, returning once the process is gone (or a zombie): `kill` only sends the
/// signal, and a node still running for a few milliseconds on a loaded machine could answer
/// the next request or still hold its vault.
pub fn kill(pid: u32) {
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let stat = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + Duration::from_secs(5);
    // The state is the field after the command name, which is in parentheses.
    while let Ok(text) = std::fs::read_to_string(&stat) {
        let state = text
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if matches!(state, Some('Z' | 'X')) {
            break;
        }
        assert!(Instant::now() < deadline, "process {pid} survived kill -9");
        std::thread::sleep(Duration::from_millis(10));
    }
}
