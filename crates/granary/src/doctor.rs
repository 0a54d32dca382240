//! `granary doctor`: checks a setup the way a build would use it, and says
//! what to fix. Each check stands alone, so one failure hides no other.
// A command's report goes to stdout; only `prog` must keep stdout for the protocol.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use bytesize::ByteSize;
use granary_remote::RemoteError;
use granary_store::Store;
use granary_trust::{SigningKey, TrustedKeys};
use serde::Serialize;

use crate::cli::DoctorArgs;
use crate::config;

/// The first Go release with GOCACHEPROG (cmd/go's cache helper protocol).
const GO_WITH_CACHEPROG: (u32, u32) = (1, 24);
/// A clock this far from the remote's is worth a warning: entries' and
/// manifests' ages are judged by the remote's times.
const CLOCK_SKEW_WARNING_MS: i64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    /// Works, but not as well as it could.
    Warn,
    /// Will not work: the exit status is 1.
    Fail,
    /// Does not apply to this setup.
    Skip,
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    status: Status,
    /// What was found.
    detail: String,
    /// What to do about it, when something is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

impl Check {
    fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
        Check {
            name,
            status,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// `granary doctor --json`.
#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    checks: Vec<Check>,
}

pub fn run(dir: &Path, config: Option<&Path>, args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let go = go_version();
    let mut checks = vec![platform(), go.0];
    checks.push(gocacheprog(go.1));
    checks.push(cache_dir(dir, config, args));
    checks.extend(remote(dir, config, args));
    let report = Report {
        ok: checks.iter().all(|c| c.status != Status::Fail),
        checks,
    };
    if args.output.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for check in &report.checks {
            let status = match check.status {
                Status::Ok => "ok",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
                Status::Skip => "-",
            };
            println!("{status:<5} {:<14} {}", check.name, check.detail);
            if let Some(fix) = &check.fix {
                println!("{:<20} fix: {fix}", "");
            }
        }
        println!(
            "{}",
            match report.ok {
                true => "granary doctor: all well",
                false => "granary doctor: fix what FAIL says, then run it again",
            }
        );
    }
    Ok(match report.ok {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    })
}

/// What this platform's build does differently, so that the report says
/// what is checked and what is left to the system.
fn platform() -> Check {
    let detail = if cfg!(windows) {
        "windows: a put that replaces a file go holds open is retried for 2 s, as go's own \
         cache does; secret key and token files are not checked for who may read them (the \
         ACLs of the folder they are in decide)"
    } else if cfg!(target_os = "macos") {
        "macos: TLS trusts the keychain's roots; durable writes use F_FULLFSYNC; secret key \
         and token files must be readable by their owner alone (mode 600)"
    } else {
        "unix: secret key and token files must be readable by their owner alone (mode 600)"
    };
    Check::new("platform", Status::Ok, detail)
}

/// The go command's version, and the go command if it runs.
fn go_version() -> (Check, Option<PathBuf>) {
    let go = PathBuf::from("go");
    let output = match Command::new(&go).arg("version").output() {
        Ok(output) if output.status.success() => output,
        _ => {
            let check = Check::new("go", Status::Fail, "no go command on PATH")
                .fix("install Go 1.24 or later (https://go.dev/dl/) and put it on PATH");
            return (check, None);
        }
    };
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let check = match parse_go_version(&text) {
        Some(version) if version >= GO_WITH_CACHEPROG => Check::new("go", Status::Ok, text),
        Some(_) => Check::new(
            "go",
            Status::Fail,
            format!("{text}: too old for GOCACHEPROG"),
        )
        .fix("use Go 1.24 or later (GOTOOLCHAIN=go1.24.0 or later also works)"),
        // A development build, or a form not known: say so, fail nothing.
        None => Check::new(
            "go",
            Status::Warn,
            format!("{text}: version not recognised"),
        ),
    };
    (check, Some(go))
}

/// `go version go1.26.8 linux/amd64` -> (1, 26).
fn parse_go_version(text: &str) -> Option<(u32, u32)> {
    let version = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix("go1."))?;
    let minor: String = version.chars().take_while(char::is_ascii_digit).collect();
    Some((1, minor.parse().ok()?))
}

/// Whether the go command runs this binary as its cache helper.
fn gocacheprog(go: Option<PathBuf>) -> Check {
    let value = go
        .and_then(|go| Command::new(go).args(["env", "GOCACHEPROG"]).output().ok())
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .or_else(|| std::env::var("GOCACHEPROG").ok())
        .unwrap_or_default();
    let this = std::env::current_exe().ok();
    let wanted = format!(
        "export GOCACHEPROG=\"{} prog\"",
        this.as_deref().unwrap_or(Path::new("granary")).display()
    );
    let Some(program) = value.split_whitespace().next() else {
        return Check::new(
            "GOCACHEPROG",
            Status::Fail,
            "not set: the go command uses its own cache",
        )
        .fix(wanted);
    };
    let resolved = which(program);
    let same = |a: &Path, b: &Path| {
        std::fs::canonicalize(a)
            .ok()
            .zip(std::fs::canonicalize(b).ok())
            .is_some_and(|(a, b)| a == b)
    };
    match (&resolved, &this) {
        (Some(program), Some(this)) if same(program, this) => {
            match value.split_whitespace().nth(1) {
                Some("prog") => Check::new("GOCACHEPROG", Status::Ok, value),
                _ => Check::new(
                    "GOCACHEPROG",
                    Status::Fail,
                    format!("`{value}` runs granary without `prog`"),
                )
                .fix(wanted),
            }
        }
        (None, _) => Check::new(
            "GOCACHEPROG",
            Status::Fail,
            format!("`{value}`: {program} is not found"),
        )
        .fix(wanted),
        _ => Check::new(
            "GOCACHEPROG",
            Status::Warn,
            format!(
                "`{value}` runs {}, not this granary ({})",
                resolved.as_deref().unwrap_or(Path::new(program)).display(),
                this.as_deref().unwrap_or(Path::new("?")).display()
            ),
        )
        .fix(format!("if this granary is the one to use: {wanted}")),
    }
}

/// `program` as the go command would start it: a path, or a name on PATH
/// (on Windows, with `.exe` when it has no extension).
fn which(program: &str) -> Option<PathBuf> {
    let path = Path::new(program);
    let candidates = |path: PathBuf| {
        let exe = (cfg!(windows) && path.extension().is_none()).then(|| path.with_extension("exe"));
        [Some(path), exe].into_iter().flatten()
    };
    if path.components().count() > 1 {
        return candidates(path.to_owned()).find(|c| c.is_file());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .flat_map(|dir| candidates(dir.join(program)))
        .find(|candidate| candidate.is_file())
}

/// The cache directory: writable, and the free space against the policy.
fn cache_dir(dir: &Path, config: Option<&Path>, args: &DoctorArgs) -> Check {
    let name = "cache";
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Check::new(
            name,
            Status::Fail,
            format!("cannot create {}: {e}", dir.display()),
        )
        .fix("choose a writable directory with --dir or GRANARY_DIR (or GOCACHE)");
    }
    if let Err(e) = tempfile::tempfile_in(dir) {
        return Check::new(
            name,
            Status::Fail,
            format!("cannot write in {}: {e}", dir.display()),
        )
        .fix("make it writable by this user, or choose another with --dir or GRANARY_DIR");
    }
    let policy = match config::upkeep(dir, config, &args.policy) {
        Ok(upkeep) => upkeep.policy,
        Err(e) => {
            return Check::new(name, Status::Fail, format!("{e:#}"))
                .fix("correct the setting it names");
        }
    };
    let free = match Store::at(dir).available_space_for(&granary_store::Policy {
        min_free: policy.min_free.max(1),
        ..policy
    }) {
        Ok(Some(free)) => free,
        Ok(None) | Err(_) => {
            return Check::new(name, Status::Ok, format!("{} is writable", dir.display()));
        }
    };
    let detail = format!(
        "{} is writable; {} free on its file system",
        dir.display(),
        ByteSize(free)
    );
    if free < policy.min_free {
        Check::new(
            name,
            Status::Warn,
            format!(
                "{detail}, below --min-free ({}): every trim will remove entries",
                ByteSize(policy.min_free)
            ),
        )
        .fix("free space on that file system, or lower --min-free")
    } else {
        Check::new(name, Status::Ok, detail)
    }
}

/// The remote (a probe that reads, and writes unless read-only, leaving
/// nothing behind), its clock, and the key files.
fn remote(dir: &Path, config: Option<&Path>, args: &DoctorArgs) -> Vec<Check> {
    let settings = match config::remote(dir, config, &args.remote) {
        Ok(Some(settings)) => settings,
        Ok(None) => {
            return vec![Check::new(
                "remote",
                Status::Skip,
                "none set: the cache stays on this machine",
            )];
        }
        Err(e) => {
            return vec![
                Check::new("remote", Status::Fail, format!("{e:#}"))
                    .fix("correct the setting it names"),
            ];
        }
    };
    let mut checks = Vec::new();
    let write = !settings.read_only;
    let probed = crate::prog::remote_cache(&settings).and_then(|cache| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Connecting, a read, and a write of a few bytes: a few deadlines.
        let deadline = settings.timeout * 3;
        let probe = runtime.block_on(async {
            tokio::time::timeout(deadline, cache.probe(write))
                .await
                .unwrap_or_else(|_| {
                    Err(RemoteError::Failed(format!(
                        "no answer within {}",
                        humantime::format_duration(deadline)
                    )))
                })
        });
        Ok((cache, probe))
    });
    let (cache, probe) = match probed {
        Ok(probed) => probed,
        Err(e) => {
            checks.push(
                Check::new("remote", Status::Fail, format!("{e:#}"))
                    .fix("correct the setting it names"),
            );
            return checks;
        }
    };
    let location = cache.location().to_string();
    let clock = match probe {
        Ok(probe) => {
            let what = match write {
                true => "reads and writes (the probe left nothing behind)",
                false => "reads (read-only: no write tried)",
            };
            checks.push(Check::new(
                "remote",
                Status::Ok,
                format!("{location}: {what}, in {}", cache.namespace()),
            ));
            probe.clock_skew_ms
        }
        Err(RemoteError::Denied(why)) => {
            checks.push(
                Check::new(
                    "remote",
                    Status::Fail,
                    format!("{location} refused our credentials: {why}"),
                )
                .fix(cache.credentials_advice(write)),
            );
            None
        }
        Err(e) => {
            checks.push(
                Check::new("remote", Status::Fail, format!("{location}: {e}")).fix(
                    "check that the remote runs and that the URL and endpoint settings are right",
                ),
            );
            None
        }
    };
    checks.push(match clock {
        None => Check::new("clock", Status::Skip, "not measured: the remote did not say its time"),
        Some(ms) if ms.abs() > CLOCK_SKEW_WARNING_MS => Check::new(
            "clock",
            Status::Warn,
            format!("{:.0} s {} the remote's", ms.abs() as f64 / 1000.0, if ms > 0 { "behind" } else { "ahead of" }),
        )
        .fix("synchronise this machine's clock (NTP): entries' and manifests' ages are judged by the remote's times"),
        Some(ms) => Check::new("clock", Status::Ok, format!("within {:.1} s of the remote's", ms.abs() as f64 / 1000.0)),
    });
    checks.push(match &settings.signing_key {
        None => Check::new(
            "signing key",
            Status::Skip,
            "none: records are written unsigned",
        ),
        Some(path) => match SigningKey::read(path) {
            Ok(key) => Check::new(
                "signing key",
                Status::Ok,
                format!("{} signs as {}", path.display(), key.public()),
            ),
            Err(e) => Check::new("signing key", Status::Fail, e.to_string()).fix(
                "make one with `granary key generate FILE` (mode 600), or correct --signing-key",
            ),
        },
    });
    checks.push(match &settings.trusted_keys {
        None => Check::new("trusted keys", Status::Skip, "none: remote records are used whoever wrote them"),
        Some(path) => match TrustedKeys::read(path) {
            Ok(keys) => Check::new("trusted keys", Status::Ok, format!("{}: {} keys", path.display(), keys.len())),
            Err(e) => Check::new("trusted keys", Status::Fail, e.to_string())
                .fix("list one `ed25519:...` public key per line (`granary key public FILE` prints one), or correct --trusted-keys"),
        },
    });
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_versions_are_read_from_go_version() {
        assert_eq!(
            parse_go_version("go version go1.26.8 linux/amd64"),
            Some((1, 26))
        );
        assert_eq!(
            parse_go_version("go version go1.24rc1 linux/amd64"),
            Some((1, 24))
        );
        assert_eq!(
            parse_go_version("go version go1.9 linux/amd64"),
            Some((1, 9))
        );
        assert_eq!(parse_go_version("go version devel +abc linux/amd64"), None);
    }
}
