//! `tkms-manager`: the cluster's front door. This binary only parses its configuration and
//! calls [`tkms_manager::daemon::run`].

use std::process::ExitCode;

use clap::Parser;

/// The tkms manager: authenticates gateways and runners, fans requests out to the nodes,
/// verifies and combines their partials.
#[derive(Debug, Parser)]
#[command(name = "tkms-manager", version, about)]
struct Cli {
    #[command(flatten)]
    config: tkms_manager::daemon::ManagerConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    tkms_daemon::init_tracing();
    // The command line, over `TKMS_*` variables, over the `--config` file (docs/DEPLOY.md).
    let cli: Cli = tkms_daemon::config::parse(&[(&[], tkms_daemon::config::UnknownKeys::Refuse)]);
    match tkms_manager::daemon::run(cli.config, tkms_daemon::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tkms-manager: error: {e}");
            ExitCode::FAILURE
        }
    }
}
