//! `tkms`: the command-line tool. This binary only parses arguments; the work is in
//! [`tkms_cli`] so tests and other programs can call it.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tkms_cli::Cli::parse();
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
