//! `granary prog`: resolves the settings, opens the cache and hands stdin
//! and stdout to the engine (`granary_prog`), with the background trim as
//! its start-up work.

use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use granary_prog::{Options, RemoteOptions};
use granary_remote::{Format, GrpcBlobs, HttpBlobs, RemoteCache};
use granary_store::Store;
use granary_trust::{SigningKey, TrustedKeys};

use crate::chain;
use crate::cli::ProgArgs;
use crate::config::{self, Endpoint, Upkeep};

/// Read size on stdin; a decoded chunk of a put body is at most three
/// quarters of it.
const STDIN_BUFFER: usize = 256 * 1024;

pub fn run(
    dir: PathBuf,
    config: Option<&Path>,
    args: ProgArgs,
    verbose: bool,
) -> anyhow::Result<ExitCode> {
    // A broken config file must not break the build: it costs a warning.
    let upkeep = config::upkeep(&dir, config, &args.policy)
        .inspect_err(|e| {
            tracing::warn!(
                "{}; the cache will not be trimmed until this is fixed",
                chain(e)
            )
        })
        .ok();
    let remote = config::remote(&dir, config, &args.remote);
    let detach = match &remote {
        Ok(Some(remote)) if remote.detach => crate::detach::detacher(&dir),
        _ => None,
    };
    let remote = remote
        .and_then(|remote| remote.map(remote_options).transpose())
        .inspect_err(|e| {
            tracing::warn!("{}; the build goes on with the local cache only", chain(e))
        })
        .ok()
        .flatten();
    let store = Store::open(&dir).with_context(|| {
        format!(
            "cannot use {} as the cache directory; choose another with --dir or GRANARY_DIR",
            dir.display()
        )
    })?;
    // The background trim's stdin, held open until this process ends.
    let trim_start: Arc<Mutex<Option<ChildStdin>>> = Arc::default();
    let on_start = upkeep.map(|upkeep| {
        let (store, trim_start) = (store.clone(), trim_start.clone());
        Box::new(move || {
            if let Some(stdin) = trim_if_due(&store, &upkeep) {
                *trim_start.lock().unwrap_or_else(PoisonError::into_inner) = Some(stdin);
            }
        }) as Box<dyn FnOnce() + Send>
    });
    let options = Options {
        stats_file: args.stats_file,
        misses_file: args.misses_file,
        verbose,
        remote,
        on_start,
        detach,
    };
    let input = BufReader::with_capacity(STDIN_BUFFER, io::stdin().lock());
    let outcome = granary_prog::run(input, io::stdout(), store, options)?;
    Ok(match outcome.framing_error {
        None => ExitCode::SUCCESS,
        Some(e) => {
            eprintln!("granary: error: {e}; cannot follow the go command's requests any more");
            ExitCode::FAILURE
        }
    })
}

/// The client of the remote that `remote` describes, in its namespace.
/// Sends no request.
pub fn remote_cache(remote: &config::Remote) -> anyhow::Result<RemoteCache> {
    Ok(match &remote.endpoint {
        Endpoint::Object(object) => RemoteCache::new(object.client()?, Format::Granary),
        Endpoint::Http(http) => RemoteCache::new(Arc::new(HttpBlobs::new(http)?), Format::Reapi),
        Endpoint::Grpc(grpc) => RemoteCache::new(Arc::new(GrpcBlobs::new(grpc)?), Format::Reapi),
    }
    .in_namespace(remote.namespace.clone()))
}

/// The client of the remote that `remote` describes, signing with its
/// signing key, and the keys whose records it trusts: a signing run trusts
/// at least its own key, since signing what it built on unchecked entries
/// would launder them. Sends no request.
pub fn signed_cache(
    remote: &config::Remote,
) -> anyhow::Result<(RemoteCache, Option<Arc<TrustedKeys>>)> {
    let mut cache = remote_cache(remote)?;
    let signing_key = match &remote.signing_key {
        Some(path) => Some(Arc::new(SigningKey::read(path)?)),
        None => None,
    };
    let trusted = match (&remote.trusted_keys, &signing_key) {
        (Some(path), _) => Some(Arc::new(TrustedKeys::read(path)?)),
        (None, Some(key)) => Some(Arc::new(TrustedKeys::new([key.public()]))),
        (None, None) => None,
    };
    if let Some(key) = signing_key {
        cache = cache.signed_by(key);
    }
    Ok((cache, trusted))
}

/// The client of the remote that `remote` describes, with its keys read.
/// Sends no request.
fn remote_options(remote: config::Remote) -> anyhow::Result<RemoteOptions> {
    let (cache, trusted) = signed_cache(&remote)?;
    Ok(RemoteOptions {
        cache,
        read_namespaces: remote.read_namespaces,
        trusted,
        read_only: remote.read_only,
        timeout: remote.timeout,
        budget: remote.budget,
        upload_deadline: remote.upload_deadline,
        scopes: remote.scopes,
    })
}

/// Starts `granary trim --if-due` in the background when the last trim is
/// older than the interval; returns the child's stdin, whose closing (at
/// the end of this process) starts the trim. A process of its own, because
/// a trim of a large cache may outlast a short build, and after `close` the
/// go command waits for this one to close its stdout (or kills it); the
/// child inherits none of our pipes, so the go command never waits for it,
/// and it waits for the end of this process, so as not to take CPU from
/// the build.
fn trim_if_due(store: &Store, upkeep: &Upkeep) -> Option<ChildStdin> {
    if upkeep.trim_interval == Duration::MAX || !store.trim_due(upkeep.trim_interval) {
        return None;
    }
    let spawned = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .arg("--dir")
            .arg(store.dir())
            .args(["trim", "--if-due", "--after-stdin"])
            .args(policy_args(upkeep))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    });
    match spawned {
        Ok(mut child) => {
            tracing::info!(
                "trimming the cache in the background once this run ends (process {})",
                child.id()
            );
            child.stdin.take()
        }
        Err(e) => {
            tracing::warn!("cannot start a background trim: {e}");
            None
        }
    }
}

/// The flags that give a `granary trim` this upkeep policy.
fn policy_args(upkeep: &Upkeep) -> Vec<String> {
    let age = |d: Duration| {
        if d == Duration::MAX {
            "none".to_owned()
        } else {
            format!("{}ms", d.as_millis())
        }
    };
    let size = |n: u64| {
        if n == u64::MAX {
            "none".to_owned()
        } else {
            n.to_string()
        }
    };
    let p = &upkeep.policy;
    vec![
        format!("--max-age={}", age(p.max_age)),
        format!("--max-size={}", size(p.max_size)),
        format!("--min-free={}", p.min_free),
        format!("--grace={}", age(p.grace)),
        format!("--trim-interval={}", age(upkeep.trim_interval)),
    ]
}
