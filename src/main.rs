//! The `triggerfish` binary: command-line parsing, logging, signals; no logic of its
//! own. Each subcommand calls into the library crates.

mod cli;
mod display;
mod dlq;
mod filter_cmd;
mod send;
mod sender_args;
mod serve;
mod status_cmd;

use std::process::ExitCode;

use clap::Parser;

/// glibc's allocator settings for the servers: large blocks (event bodies) always
/// come from mmap and go back to the system when freed, and one arena instead of
/// one per thread. With glibc's defaults the threshold for mmap rises with every
/// large block freed, after which 1 MiB bodies come from arenas that keep their
/// memory: under an overload of 1 MiB events the process held 230 MiB for a 64 MiB
/// `--memory-budget` (120 MiB with these; tests/e2e_overload.rs). One arena rather
/// than two: idle RSS with 10,000 triggers 2.7 instead of 3.1-3.4 KiB per trigger
/// (a second arena holds its own free memory), R1 and R3 unchanged within noise
/// (docs/benchmarks.md, "Config scale").
const MALLOC_TUNABLES: &str = "glibc.malloc.mmap_threshold=262144:glibc.malloc.arena_max=1";

/// glibc reads `GLIBC_TUNABLES` only when a process starts, and setting it needs no
/// `unsafe` only before exec: a server command without it set re-executes itself
/// once with it (same pid, same arguments). A `GLIBC_TUNABLES` already set, by the
/// user or by this, is left as it is. Only on glibc; if the exec fails the server
/// runs with the defaults.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator(cli: &cli::Cli) {
    use std::os::unix::process::CommandExt;
    if !matches!(cli.command, cli::Command::Serve(_))
        || std::env::var_os("GLIBC_TUNABLES").is_some()
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", MALLOC_TUNABLES)
        .exec();
    eprintln!("warning: cannot re-execute with GLIBC_TUNABLES={MALLOC_TUNABLES}: {err}");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator(_: &cli::Cli) {}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tune_allocator(&cli);
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
            cli::Command::Status(args) => status_cmd::run(args).await,
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
