//! The `triggerfish` binary: command-line parsing, logging, signals; no logic of its
//! own. Each subcommand calls into the library crates.

mod cli;
mod display;
mod dlq;
mod filter_cmd;
mod send;
mod serve;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            cli::Command::Serve(args) => serve::run(args).await,
            cli::Command::Send(args) => send::run(args).await,
            cli::Command::Display { listen } => display::run(listen).await,
            cli::Command::Dlq { command } => dlq::run(command).await,
            cli::Command::Config {
                command: cli::ConfigCommand::Check(args),
            } => serve::check(args),
            cli::Command::Filter { command } => filter_cmd::run(command),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
