//! granary: a build cache for the Go toolchain. See README.md for use and
//! ARCHITECTURE.md for the map of the code.
//!
//! The binary is thin: it parses the command line, finds the cache directory
//! and hands over to the command's module.

mod cli;
mod config;
mod detach;
mod doctor;
mod explain;
mod gocache;
mod history;
mod key;
mod prog;
mod progress;
mod scope;
mod serve;
mod units;
mod upkeep;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use cli::{Cli, Command, GlobalArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("granary: error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if !matches!(
        cli.command,
        Command::Prog(_) | Command::Serve(_) | Command::Explain(_)
    ) {
        // A report piped into `head` ends quietly when its reader goes, as
        // `ls` does, instead of panicking in println!. Not in prog, whose
        // stdout is go's, nor in serve, whose sockets must fail with EPIPE
        // rather than kill the server.
        sigpipe::reset();
    }
    let global = &cli.global;
    let config = global.config.as_deref();
    match &cli.command {
        Command::Serve(args) => {
            let Some(dir) = &global.dir else {
                anyhow::bail!(
                    "granary serve needs its own directory: set --dir or GRANARY_DIR \
                     (never the go command's GOCACHE)"
                );
            };
            let dir = std::path::absolute(dir)
                .with_context(|| format!("cannot make {} absolute", dir.display()))?;
            return serve::run(&dir, config, args);
        }
        Command::ServeToken(args) => return serve::token(args),
        Command::Mtimes(args) => return mtimes(args),
        Command::Key(command) => return key::run(command),
        _ => {}
    }
    let dir = cache_dir(global)?;
    match cli.command {
        Command::Prog(args) => prog::run(dir, config, args, global.verbose),
        Command::Explain(args) => explain::run(dir, config, args),
        Command::Du(args) => {
            let upkeep = config::upkeep(&dir, config, &args.policy)?;
            upkeep::du(&dir, &upkeep, &args, global.verbose)
        }
        Command::Trim(args) => {
            let upkeep = config::upkeep(&dir, config, &args.policy)?;
            upkeep::trim(&dir, &upkeep, &args)
        }
        Command::Prune(args) => {
            let upkeep = config::upkeep(&dir, config, &Default::default())?;
            upkeep::prune(&dir, &upkeep, &args)
        }
        Command::Stats(args) => history::run(&dir, &args),
        Command::Doctor(args) => doctor::run(&dir, config, &args),
        Command::Verify(args) => verify::run(&dir, &args),
        Command::Serve(_) | Command::ServeToken(_) | Command::Key(_) | Command::Mtimes(_) => {
            unreachable!("handled above")
        }
    }
}

/// `granary mtimes`: see `granary_mtimes`.
#[allow(clippy::print_stdout)] // the command's report
fn mtimes(args: &cli::MtimesArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let report = granary_mtimes::canonicalise(&args.dir)?;
    let took = started.elapsed();
    if args.output.json {
        let json = serde_json::json!({
            "dir": args.dir,
            "files": report.files,
            "hashed": report.hashed,
            "dirs": report.dirs,
            "skipped": report.skipped,
            "took_ms": took.as_millis() as u64,
        });
        println!("{json:#}");
    } else {
        println!(
            "gave {} files ({} changed since the commit, hashed) and {} folders the times of \
             their content in {} ms; left {} links, submodules or missing files alone",
            report.files,
            report.hashed,
            report.dirs,
            took.as_millis(),
            report.skipped
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The cache directory: `--dir`, else the go command's own GOCACHE. Always
/// absolute, since paths inside it are handed to the go command.
fn cache_dir(global: &GlobalArgs) -> anyhow::Result<PathBuf> {
    let dir = match &global.dir {
        Some(dir) => std::path::absolute(dir)
            .with_context(|| format!("cannot make {} absolute", dir.display()))?,
        None => gocache::go_cache_dir()?,
    };
    anyhow::ensure!(
        !dir.exists() || dir.is_dir(),
        "the cache directory {} is not a directory; choose another with --dir or GRANARY_DIR",
        dir.display()
    );
    Ok(dir)
}

/// An error and its causes, each said once: many messages already end
/// with their cause, which the chain then repeats.
pub fn chain(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

/// Logs go to stderr, which is the user's terminal during a build: warnings
/// only by default, more with `--verbose`; `GRANARY_LOG=debug` (or `trace`,
/// `info`, `warn`, `error`) chooses the level outright.
fn init_logging(verbose: bool) {
    let level = std::env::var("GRANARY_LOG")
        .ok()
        .and_then(|level| level.parse().ok())
        .unwrap_or(if verbose {
            tracing::Level::INFO
        } else {
            tracing::Level::WARN
        });
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    if level >= tracing::Level::DEBUG {
        // Whoever asks for debug logs is finding out where time goes: each
        // line says when it happened, counted from the start.
        logs.with_timer(tracing_subscriber::fmt::time::uptime())
            .init();
    } else {
        logs.without_time().init();
    }
}
