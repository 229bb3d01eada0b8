//! # tkms-daemon
//!
//! What every tkms service process shares (docs/ARCHITECTURE.md §4.6, "front door and audit"), so that
//! the manager, the nodes and the engine service keep one definition of each and the manager
//! links nothing of a node (no vault, no redb, no libp2p):
//!
//! - [`init_tracing`] and [`shutdown_signal`], the start and end of every daemon;
//! - [`config`]: settings from a TOML file and `TKMS_*` variables beneath the command line;
//! - [`conn`]: a bound on open connections, in total and per client address;
//! - [`http`]: an HTTP/1.1 server for an axum router with header, idle and body deadlines,
//!   over [`conn`] (axum's own `serve` has none of these);
//! - [`journal`]: an append-only file whose writes reach the kernel before the call returns
//!   and are made durable by a background `fdatasync`, one for many writes (group commit);
//! - [`audit`]: a hash-chained, append-only log of key uses and admin actions, with the
//!   checker behind `tkms audit verify`;
//! - [`nonces`]: the persistent store behind the `/v1` replay check, so a nonce once used is
//!   refused until it expires, across restarts.

#![forbid(unsafe_code)]

pub mod audit;
pub mod config;
pub mod conn;
pub mod http;
pub mod journal;
pub mod nonces;

/// Log to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called (inside a
/// runtime), not when the future is first polled: a service polls it only once it serves,
/// and a SIGTERM in between (a supervisor that saw `node.json` appear) must stop it cleanly,
/// not kill it with the signal's default action.
#[cfg(unix)]
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    async fn received(signal: Option<Signal>) {
        match signal {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    let term = signal(SignalKind::terminate()).ok();
    let interrupt = signal(SignalKind::interrupt()).ok();
    async move {
        tokio::select! {
            () = received(term) => {}
            () = received(interrupt) => {}
        }
    }
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
