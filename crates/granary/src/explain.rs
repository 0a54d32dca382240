//! `granary explain -- go ARGS...`: runs the go command with its cache-key
//! inputs printed (`granary_explain` reads them), and says, for every
//! action that missed, what differs from the last recorded run of it.
//!
//! The go command gets granary as its helper, with this run's settings, and
//! the helper lists the keys it answered as misses. The records of each
//! scope live in the cache: in the remote's namespace beside the manifests,
//! as an action entry under a name no go action has (signed and checked
//! like every record), and in the local tier too, for a run without a
//! remote and for the next command of a job that may not write the remote.
#![allow(clippy::print_stderr)] // the report goes to stderr, beside go's own

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use granary_explain::observe::MODULE_INDEX;
use granary_explain::record::{MAX_RECORD, short_id};
use granary_explain::{Base, Explained, Line, Observed, Record, Recorded, Source};
use granary_id::Id;
use granary_remote::{Fetched, Made, Namespace, RemoteCache};
use granary_store::{Lookup, Store};
use granary_trust::TrustedKeys;
use serde::{Deserialize, Serialize};

use crate::cli::ExplainArgs;
use crate::config;

/// Actions explained in full on the terminal; the rest are counted.
const SHOWN_ACTIONS: usize = 40;
/// Differences shown for one action.
const SHOWN_DIFFERENCES: usize = 12;
/// Explanations kept in the history for `granary stats --markdown`.
const KEPT_EXPLANATIONS: usize = 200;
/// The history of explained runs, beside the statistics history.
pub const EXPLAIN_HISTORY: &str = "granary-explain.jsonl";
/// Test logs read at most (go's are a few KB).
const MAX_TEST_LOG: u64 = 16 << 20;

pub fn run(dir: PathBuf, config: Option<&Path>, args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let started = SystemTime::now();
    let store = Store::open(&dir)
        .with_context(|| format!("cannot use {} as the cache directory", dir.display()))?;
    let remote = config::remote(&dir, config, &args.remote)?;
    let scope = match &remote {
        Some(remote) => remote.scopes.clone(),
        None => config::scopes_without_remote(&dir, config, &args.remote)?,
    };
    let places = Places::new(remote.as_ref(), &scope)?;

    // The records are read while the go command runs.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let reading = {
        let places = places.clone();
        runtime.spawn(async move { places.read().await })
    };

    // The helper makes the file, so its absence says no helper ran.
    let temp = tempfile::tempdir().context("cannot make a temporary folder")?;
    let misses = temp.path().join("misses");
    let (status, mut observed) = run_go(&args.command, &dir, config, &misses)?;
    observed.finish();

    let now = unix_seconds(SystemTime::now());
    let mut this = ThisRun::new(&observed, &store, &places.key_scope, now);
    let listed = fs::read_to_string(&misses).ok();
    this.name_misses(&observed, listed.as_deref());

    let mut read = runtime.block_on(reading).unwrap_or_else(|e| Found {
        sources: Vec::new(),
        own: None,
        trouble: vec![format!("reading the records failed: {e}")],
    });
    if let Some(local) = local_record(&store, &places.key_scope) {
        // A run that cannot write the remote builds on its own machine's.
        if !places.writes {
            read.own = Some(local.clone());
        }
        read.sources.push(Source {
            label: "this machine".to_owned(),
            record: local,
        });
    }
    let explained = granary_explain::explain(&this.missed, &read.sources);
    report(&explained, &this.counts, &read, now);

    let merged = match read.own {
        Some(own) => own.merge(this.record, now),
        None => this.record,
    };
    let bytes = merged.encode();
    for trouble in runtime.block_on(places.write(&store, bytes)) {
        eprintln!("granary explain: {trouble}");
    }
    let entry = History {
        started: humantime::format_rfc3339_seconds(started).to_string(),
        command: args
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        actions: this.counts.actions as u64,
        missed: this.missed.len() as u64,
        unnamed: this.counts.unnamed,
        explained: explained
            .iter()
            .take(KEPT_EXPLANATIONS)
            .map(HistoryAction::of)
            .collect(),
    };
    if let Err(e) = append_history(&dir, &entry) {
        tracing::warn!("cannot record the explanation for `granary stats`: {e}");
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// What this run made and missed.
#[derive(Debug)]
struct ThisRun {
    /// Every action's inputs, the scope's record as of this run.
    record: Record,
    /// The actions that missed, with their inputs.
    missed: Vec<(String, Recorded)>,
    counts: Counts,
}

impl ThisRun {
    /// The actions `observed` saw, and the test results that ran, with
    /// their inputs from their test logs in `store`.
    fn new(observed: &Observed, store: &Store, scope: &str, now: u64) -> ThisRun {
        let mut record = Record::new(scope);
        for (name, actions) in &observed.actions {
            let entries: Vec<Recorded> = actions
                .iter()
                .filter_map(|action| {
                    let id = action.id.as_deref()?;
                    Some(Recorded::new(now, id, action.inputs.iter().cloned()))
                })
                .collect();
            if !entries.is_empty() {
                record.actions.insert(name.clone(), entries);
            }
        }
        let mut missed = Vec::new();
        let dirs = package_dirs(observed);
        for (package, test) in &observed.tests {
            let Some(log) = test
                .test_ids
                .iter()
                .rev()
                .find_map(|id| test_log(store, id))
            else {
                continue; // a test that failed: go stored nothing
            };
            let mut inputs = granary_explain::test_inputs(
                &log,
                dirs.get(package).map(PathBuf::as_path),
                test.args.as_deref(),
                &user_variable,
            );
            if let Some(binary) = &test.binary {
                inputs.insert(format!("binary\t{binary}"));
            }
            let entry = Recorded::new(now, "", inputs);
            let name = format!("test {package}");
            if test.missed {
                missed.push((name.clone(), entry.clone()));
            }
            record.actions.insert(name, vec![entry]);
        }
        let counts = Counts {
            actions: record.actions.values().map(Vec::len).sum(),
            tests_run: missed.len(),
            index_misses: 0,
            unnamed: 0,
            helper_ran: false,
        };
        ThisRun {
            record,
            missed,
            counts,
        }
    }

    /// Adds the actions whose keys the helper `listed` as misses (`None`:
    /// no helper ran); test results come from go's own account.
    fn name_misses(&mut self, observed: &Observed, listed: Option<&str>) {
        self.counts.helper_ran = listed.is_some();
        for key in listed.unwrap_or_default().lines() {
            let (name, root) = match observed.action_of(key) {
                Some((MODULE_INDEX, _)) => {
                    self.counts.index_misses += 1;
                    continue;
                }
                Some((name, _)) if name.starts_with("test ") => continue,
                Some(action) => action,
                None => {
                    self.counts.unnamed += 1;
                    continue;
                }
            };
            let entry = self
                .record
                .actions
                .get(name)
                .and_then(|entries| entries.iter().find(|e| e.id == short_id(root)));
            if let Some(entry) = entry
                && !self
                    .missed
                    .iter()
                    .any(|(n, e)| n == name && e.id == entry.id)
            {
                self.missed.push((name.to_owned(), entry.clone()));
            }
        }
        self.missed.sort_by(|a, b| a.0.cmp(&b.0));
    }
}

/// Runs the go command with granary as its helper, its debug output read
/// and the rest of its stderr passed on.
fn run_go(
    command: &[OsString],
    dir: &Path,
    config: Option<&Path>,
    misses: &Path,
) -> anyhow::Result<(std::process::ExitStatus, Observed)> {
    let (program, args) = command.split_first().context(
        "name the go command to run after `--`, e.g. `granary explain -- go test ./...`",
    )?;
    let godebug = match std::env::var("GODEBUG") {
        Ok(set) if !set.is_empty() => format!("{set},gocachehash=1,gocachetest=1"),
        _ => "gocachehash=1,gocachetest=1".to_owned(),
    };
    let mut go = Command::new(program);
    go.args(args)
        .env("GODEBUG", godebug)
        .env("GOCACHEPROG", helper_command()?)
        .env("GRANARY_DIR", dir)
        .env("GRANARY_MISSES_FILE", misses)
        .stderr(Stdio::piped());
    if let Some(config) = config {
        go.env("GRANARY_CONFIG", std::path::absolute(config)?);
    }
    let mut child = go.spawn().with_context(|| {
        format!(
            "cannot run {}: is it on PATH?",
            Path::new(program).display()
        )
    })?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut observed = Observed::default();
    let mut reader = BufReader::with_capacity(256 * 1024, stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("cannot read the go command's output: {e}");
                break;
            }
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        if observed.line(text) == Line::PassOn {
            eprintln!("{text}");
        }
    }
    let status = child.wait().context("cannot wait for the go command")?;
    Ok((status, observed))
}

/// GOCACHEPROG for the go command: this granary's `prog`, with the flags
/// this command was given (every flag of `explain` is one of `prog`'s),
/// quoted as cmd/go splits the variable.
fn helper_command() -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot find granary's own executable")?;
    let argv: Vec<OsString> = std::env::args_os().collect();
    let start = argv
        .iter()
        .position(|a| a == "explain")
        .map_or(argv.len(), |i| i + 1);
    let end = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    let mut words = vec![exe.into_os_string(), "prog".into()];
    words.extend(argv[start.min(end)..end].iter().cloned());
    let quoted = words
        .iter()
        .map(|word| {
            let word = word.to_str().context(
                "granary's path and flags must be valid UTF-8 to pass them in GOCACHEPROG",
            )?;
            quote(word)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(quoted.join(" "))
}

/// `word` as one field of a variable that cmd/go splits (`quoted.Split`:
/// blanks separate fields, and a field may be wrapped in `'` or `"`, with
/// no escapes).
fn quote(word: &str) -> anyhow::Result<String> {
    Ok(
        if !word.is_empty() && !word.contains(char::is_whitespace) && !word.starts_with(['\'', '"'])
        {
            word.to_owned()
        } else if !word.contains('\'') {
            format!("'{word}'")
        } else if !word.contains('"') {
            format!("\"{word}\"")
        } else {
            anyhow::bail!("`{word}` holds both kinds of quote, which GOCACHEPROG cannot carry")
        },
    )
}

/// A variable as the go command saw it: GODEBUG without what explain
/// added, so that explained runs compare with each other.
fn user_variable(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Where each package's test ran: its build's `dir` line, else `go list`
/// (a build with -trimpath has none).
fn package_dirs(observed: &Observed) -> BTreeMap<String, PathBuf> {
    let mut dirs = BTreeMap::new();
    let mut unknown = Vec::new();
    for package in observed.tests.keys() {
        let dir = observed
            .actions
            .get(&format!("build {package}"))
            .into_iter()
            .flatten()
            .flat_map(|action| &action.inputs)
            .find_map(|input| input.strip_prefix("dir "));
        match dir {
            Some(dir) => {
                dirs.insert(package.clone(), PathBuf::from(dir));
            }
            None => unknown.push(package.clone()),
        }
    }
    if !unknown.is_empty()
        && let Ok(out) = Command::new("go")
            .args(["list", "-e", "-f", "{{.ImportPath}}\t{{.Dir}}"])
            .args(&unknown)
            .stderr(Stdio::null())
            .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((package, dir)) = line.split_once('\t') {
                dirs.insert(package.to_owned(), PathBuf::from(dir));
            }
        }
    }
    dirs
}

/// The test log stored under the test ID `key`, from the local tier.
fn test_log(store: &Store, key: &str) -> Option<Vec<u8>> {
    let id = Id::from_hex(key)?;
    let Lookup::Hit(hit) = store.get(&id) else {
        return None;
    };
    let mut log = Vec::new();
    fs::File::open(&hit.object)
        .ok()?
        .take(MAX_TEST_LOG)
        .read_to_end(&mut log)
        .ok()?;
    Some(log)
}

/// The scope's record in the local tier.
fn local_record(store: &Store, scope: &str) -> Option<Record> {
    let Lookup::Hit(hit) = store.get(&record_action(scope)) else {
        return None;
    };
    let bytes = fs::read(&hit.object).ok()?;
    Record::decode(&bytes)
        .inspect_err(|e| tracing::warn!("the local record of scope {scope} is damaged: {e}"))
        .ok()
}

/// The places that hold a scope's records.
#[derive(Debug, Clone)]
struct Places {
    /// The record's scope: the run's scope and platform, without the Go
    /// version, so that a new toolchain is named as a change, not a miss.
    key_scope: String,
    /// The scopes read: the run's own first, then its fallbacks.
    read_scopes: Vec<String>,
    /// The remote in the run's namespace, then those it reads.
    remotes: Vec<RemoteCache>,
    trusted: Option<Arc<TrustedKeys>>,
    writes: bool,
    timeout: Duration,
}

/// The records found.
#[derive(Debug)]
struct Found {
    sources: Vec<Source>,
    /// The run's own record in its own namespace, which this run updates.
    own: Option<Record>,
    trouble: Vec<String>,
}

impl Places {
    fn new(
        remote: Option<&config::Remote>,
        scopes: &granary_prog::Scopes,
    ) -> anyhow::Result<Places> {
        let unversioned = |scope: &str| match scope.rsplit_once(' ') {
            Some((rest, _toolchain)) => rest.to_owned(),
            None => scope.to_owned(),
        };
        let key_scope = unversioned(&scopes.scope);
        let mut read_scopes = vec![key_scope.clone()];
        read_scopes.extend(scopes.fallbacks.iter().map(|s| unversioned(s)));
        let (remotes, trusted, writes, timeout) = match remote {
            None => (Vec::new(), None, false, Duration::ZERO),
            Some(remote) => {
                let (own, trusted) = crate::prog::signed_cache(remote)?;
                let mut remotes = vec![own.clone()];
                remotes.extend(
                    remote
                        .read_namespaces
                        .iter()
                        .map(|ns: &Namespace| own.in_namespace(ns.clone())),
                );
                (remotes, trusted, !remote.read_only, remote.timeout)
            }
        };
        Ok(Places {
            key_scope,
            read_scopes,
            remotes,
            trusted,
            writes,
            timeout,
        })
    }

    /// Every record of the scopes read, trusted ones only, all asked at
    /// once: a silent remote costs one --remote-timeout, not one a record.
    async fn read(self) -> Found {
        let wanted: Vec<(usize, &RemoteCache, &String)> = self
            .remotes
            .iter()
            .enumerate()
            .flat_map(|(index, cache)| self.read_scopes.iter().map(move |s| (index, cache, s)))
            .collect();
        let answers = futures_util::future::join_all(
            wanted
                .iter()
                .map(|(_, cache, scope)| self.fetch(cache, scope)),
        )
        .await;
        let mut read = Found {
            sources: Vec::new(),
            own: None,
            trouble: Vec::new(),
        };
        for ((index, cache, scope), answer) in wanted.into_iter().zip(answers) {
            let label = match cache.namespace().as_str() {
                "" => "the remote".to_owned(),
                name => format!("namespace {name}"),
            };
            match answer {
                Ok(Some(record)) => {
                    if index == 0 && *scope == self.key_scope {
                        read.own = Some(record.clone());
                    }
                    read.sources.push(Source { label, record });
                }
                Ok(None) => {}
                Err(e) => read.trouble.push(format!("{label}, scope {scope}: {e}")),
            }
        }
        read
    }

    async fn fetch(&self, cache: &RemoteCache, scope: &str) -> Result<Option<Record>, String> {
        let action = record_action(scope);
        // Trust and size are judged on the record, before its body is asked for.
        let fetched = tokio::time::timeout(self.timeout, async {
            let Some(Fetched { record, inline, .. }) = cache.lookup(&action).await? else {
                return Ok(None);
            };
            if let Some(trusted) = &self.trusted {
                let claim = record.claim(cache.namespace().as_str());
                if let Err(why) = trusted.check(&claim, record.signature.as_ref()) {
                    return Ok(Some(Err(format!("an untrusted record ({why})"))));
                }
            }
            if record.size > MAX_RECORD {
                return Ok(Some(Err(format!(
                    "a record of {} bytes, more than a record may be",
                    record.size
                ))));
            }
            let body = match inline {
                Some(body) => body,
                None => {
                    let mut body = Vec::new();
                    cache.fetch_object(&record, &mut body).await?;
                    body
                }
            };
            Ok::<_, granary_remote::RemoteError>(Some(Ok((record, body))))
        })
        .await
        .map_err(|_| {
            format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            )
        })?
        .map_err(|e| e.to_string())?;
        let Some((record, body)) = fetched.transpose()? else {
            return Ok(None);
        };
        if Id::of(&body) != record.output {
            return Err("a record whose body does not match its hash".to_owned());
        }
        Record::decode(&body).map(Some).map_err(|e| e.to_string())
    }

    /// Stores `bytes` as the scope's record: in the local tier, and in the
    /// run's namespace unless the run may not write it.
    async fn write(&self, store: &Store, bytes: Vec<u8>) -> Vec<String> {
        let action = record_action(&self.key_scope);
        let mut trouble = Vec::new();
        if let Err(e) = store.put_bytes(&action, &bytes) {
            trouble.push(format!("cannot keep the record in the local cache: {e}"));
        }
        if let (true, Some(own)) = (self.writes, self.remotes.first()) {
            let made = Made {
                action,
                output: Id::of(&bytes),
                put_time: SystemTime::now(),
                build_time: None,
            };
            let upload = own.upload(&made, bytes.into());
            match tokio::time::timeout(self.timeout, upload).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => trouble.push(format!("cannot store the record in the remote: {e}")),
                Err(_) => trouble.push("storing the record in the remote timed out".to_owned()),
            }
        }
        trouble
    }
}

/// Where a scope's record lives: an action entry under a name no go
/// action has.
fn record_action(scope: &str) -> Id {
    Id::of(format!("granary-explain 1\n{scope}").as_bytes())
}

/// What a run made and missed, beside the explanations.
#[derive(Debug)]
struct Counts {
    actions: usize,
    tests_run: usize,
    index_misses: u64,
    unnamed: u64,
    helper_ran: bool,
}

/// Prints the explanations on stderr: the actions whose inputs changed in
/// full, the others by kind.
fn report(explained: &[Explained], counts: &Counts, read: &Found, now: u64) {
    for trouble in &read.trouble {
        eprintln!("granary explain: cannot read a record: {trouble}");
    }
    if !counts.helper_ran {
        eprintln!(
            "granary explain: the go command did not start its cache helper (it asked the \
             cache nothing); only test results are explained"
        );
    }
    let mut others = String::new();
    if counts.index_misses > 0 {
        others += &format!(", {} module index entries", counts.index_misses);
    }
    if counts.unnamed > 0 {
        others += &format!(", {} keys go printed no inputs for", counts.unnamed);
    }
    eprintln!(
        "granary explain: {} of {} actions missed ({} of them test results{others})",
        explained.len(),
        counts.actions,
        counts.tests_run,
    );
    let names = |base: fn(&Base) -> bool| {
        let names: Vec<&str> = explained
            .iter()
            .filter(|e| base(&e.base))
            .map(|e| e.action.as_str())
            .collect();
        let shown = names.iter().take(8).copied().collect::<Vec<_>>().join(", ");
        match names.len() {
            0 => None,
            n if n > 8 => Some(format!("{n} actions ({shown}, …)")),
            n => Some(format!("{n} actions ({shown})")),
        }
    };
    if let Some(names) = names(|b| matches!(b, Base::Unrecorded)) {
        eprintln!(
            "granary explain: {names} have no recorded run to compare with: their first \
             explained run, or their record was not read"
        );
    }
    if let Some(names) = names(|b| matches!(b, Base::Same { .. })) {
        eprintln!(
            "granary explain: {names} have the same inputs as a recorded run, so their \
             outputs were not in the cache: evicted, never stored, or in a namespace this run \
             does not read"
        );
    }
    let changed: Vec<&Explained> = explained
        .iter()
        .filter(|e| matches!(e.base, Base::Changed { .. }))
        .collect();
    for explanation in changed.iter().take(SHOWN_ACTIONS) {
        eprint!("{}", explanation.render(now, SHOWN_DIFFERENCES));
    }
    if changed.len() > SHOWN_ACTIONS {
        eprintln!(
            "granary explain: and {} more; `granary stats --markdown` lists up to \
             {KEPT_EXPLANATIONS}",
            changed.len() - SHOWN_ACTIONS
        );
    }
}

/// One explained run, a line of [`EXPLAIN_HISTORY`].
#[derive(Debug, Serialize, Deserialize)]
pub struct History {
    pub started: String,
    pub command: String,
    pub actions: u64,
    pub missed: u64,
    pub unnamed: u64,
    pub explained: Vec<HistoryAction>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HistoryAction {
    pub action: String,
    /// `changed`, `same` or `unrecorded`.
    pub base: String,
    pub from: String,
    pub differences: Vec<String>,
}

impl HistoryAction {
    fn of(explained: &Explained) -> HistoryAction {
        let (base, from) = match &explained.base {
            Base::Unrecorded => ("unrecorded", ""),
            Base::Same { from, .. } => ("same", from.as_str()),
            Base::Changed { from, .. } => ("changed", from.as_str()),
        };
        HistoryAction {
            action: explained.action.clone(),
            base: base.to_owned(),
            from: from.to_owned(),
            differences: explained
                .differences
                .iter()
                .map(|d| format!("{}: {}", d.what, d.change))
                .collect(),
        }
    }
}

/// Appends `entry` to the explain history, under the statistics lock, and
/// keeps the history to its last 100 runs.
fn append_history(dir: &Path, entry: &History) -> anyhow::Result<()> {
    use std::io::Write;
    let path = dir.join(EXPLAIN_HISTORY);
    let lock_path = dir.join(granary_store::TMP_DIR_NAME).join("stats.lock");
    let lock = fs::File::options()
        .create(true)
        .append(true)
        .open(&lock_path)?;
    lock.lock()?;
    let mut lines: Vec<String> = fs::read_to_string(&path)
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default();
    lines.push(serde_json::to_string(entry)?);
    let keep = &lines[lines.len().saturating_sub(100)..];
    let mut temp = tempfile::NamedTempFile::new_in(dir.join(granary_store::TMP_DIR_NAME))?;
    for line in keep {
        writeln!(temp, "{line}")?;
    }
    temp.persist(&path)?;
    drop(lock);
    Ok(())
}

/// The explained runs started at or after `since`, oldest first.
pub fn read_history(dir: &Path, since: Option<SystemTime>) -> Vec<History> {
    let Ok(text) = fs::read_to_string(dir.join(EXPLAIN_HISTORY)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| serde_json::from_str::<History>(line).ok())
        .filter(|run| {
            since.is_none_or(|since| {
                humantime::parse_rfc3339(&run.started).is_ok_and(|started| started >= since)
            })
        })
        .collect()
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_words_are_quoted_as_cmd_go_splits_them() {
        assert_eq!(quote("--remote=http://x").unwrap(), "--remote=http://x");
        assert_eq!(quote("/a dir/granary").unwrap(), "'/a dir/granary'");
        assert_eq!(quote("it's here").unwrap(), "\"it's here\"");
        assert_eq!(quote("").unwrap(), "''");
        assert!(quote("both ' and \"").is_err());
    }
}
