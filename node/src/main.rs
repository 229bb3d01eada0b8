//! `tkms-node`: a KMS node. This binary only parses its configuration and calls
//! [`tkms_node::daemon::run`].

use std::process::ExitCode;

use clap::Parser;

/// A tkms KMS node: holds one key share, runs ceremonies with its peers, serves the manager.
#[derive(Debug, Parser)]
#[command(name = "tkms-node", version, about)]
struct Cli {
    #[command(flatten)]
    config: tkms_node::daemon::NodeConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    tkms_daemon::init_tracing();
    // The command line, over `TKMS_*` variables, over the `--config` file (docs/DEPLOY.md).
    let cli: Cli = tkms_daemon::config::parse(&[(&[], tkms_daemon::config::UnknownKeys::Refuse)]);
    match tkms_node::daemon::run(cli.config, tkms_daemon::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tkms-node: error: {e}");
            ExitCode::FAILURE
        }
    }
}
