//! `tkms`: the command-line tool. This binary only parses arguments; the work is in
//! [`tkms_cli`] so tests and other programs can call it.

use std::process::ExitCode;

fn main() -> ExitCode {
    // The daemons' options also come from `TKMS_*` variables and a `--config` file.
    let cli: tkms_cli::Cli = tkms_daemon::config::parse(tkms_cli::DAEMON_COMMANDS);
    match tkms_cli::run(
        cli,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tkms: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
