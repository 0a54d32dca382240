//! The command line. Every flag can also be set by a `GRANARY_*` variable,
//! so that `GOCACHEPROG="granary prog"` stays short and no secret ever needs
//! to be in argv.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "granary",
    version,
    about = "A fast, safe build cache for the Go toolchain (a GOCACHEPROG helper)",
    long_about = "A fast, safe build cache for the Go toolchain.\n\n\
        The go command starts granary as its cache helper:\n\n    \
        go env -w GOCACHEPROG=\"granary prog\"\n\n\
        granary keeps the cache in Go's own directory and format (GOCACHE), so switching \
        between granary and Go's native cache loses nothing.",
    after_help = "Every flag can also be set with the GRANARY_* variable named in its help."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Cache directory [default: the go command's GOCACHE, resolved as go resolves it,
    /// including `go env -w GOCACHE=...`]
    #[arg(long, global = true, env = "GRANARY_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Report what granary does on stderr; in `prog`, one summary line at close
    #[arg(
        short,
        long,
        global = true,
        env = "GRANARY_VERBOSE",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the go command as its GOCACHEPROG helper over stdin and stdout
    ///
    /// Not run by hand: set GOCACHEPROG="granary prog" and the go command starts it.
    /// stdout carries the protocol; stderr stays silent unless something fails or
    /// --verbose is set.
    Prog(ProgArgs),

    /// Check every action record's format and every object's hash
    ///
    /// Lists the damaged entries and exits with status 1 if there are any, unless
    /// --repair is given: then it removes exactly those entries (the go command rebuilds
    /// them as misses) and exits with status 0.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct ProgArgs {
    /// At close, write this run's statistics as a JSON object to PATH (see README)
    #[arg(long, env = "GRANARY_STATS_FILE", value_name = "PATH")]
    pub stats_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Remove the damaged entries
    #[arg(
        long,
        env = "GRANARY_VERIFY_REPAIR",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub repair: bool,

    /// Print the report as JSON on stdout
    #[arg(
        long,
        env = "GRANARY_JSON",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_an_environment_variable() {
        fn check(cmd: &clap::Command) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && !arg.is_positional() {
                    let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                    assert!(
                        env.as_deref().is_some_and(|e| e.starts_with("GRANARY_")),
                        "--{} of `{}` has no GRANARY_* variable",
                        arg.get_id(),
                        cmd.get_name()
                    );
                }
            }
            cmd.get_subcommands().for_each(check);
        }
        check(&Cli::command());
    }
}
