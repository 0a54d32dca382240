//! `granary du`, `granary trim` and `granary prune`: how much the cache
//! holds, and making it hold less. The work is the store's
//! ([`Store::scan_subdirectory`], [`Usage::plan`], [`Store::remove_unused_in`]); this
//! module chooses the policy, spreads the walks over threads, asks, shows
//! progress and reports.
// A command's report goes to stdout; only `prog` must keep stdout for the protocol.
#![allow(clippy::print_stdout)]

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use bytesize::ByteSize;
use granary_store::{AGE_BRACKETS, Plan, Policy, Store, Tally, Usage};
use indicatif::ProgressBar;
use serde::Serialize;

use crate::cli::{DuArgs, PruneArgs, TrimArgs};
use crate::config::{Upkeep, show_age, show_size};
use crate::progress;

/// How many of the largest objects `du --verbose` lists.
const LARGEST: usize = 10;

/// Subdirectories walked at once. Removing a file costs these VMs about
/// 50 µs of kernel time and as long again waiting for the disk, so a few
/// walkers per CPU keep both busy.
const WALKERS: usize = 8;

/// Runs `work` on each of the 256 subdirectories, spread over [`WALKERS`]
/// threads, each with its own `state`; returns the states, or the first error.
fn per_subdirectory<S: Send, E: Send>(
    state: impl Fn() -> S + Sync,
    work: impl Fn(u8, &mut S) -> Result<(), E> + Sync,
    bar: &ProgressBar,
) -> Result<Vec<S>, E> {
    let next = AtomicUsize::new(0);
    thread::scope(|scope| {
        let walkers: Vec<_> = (0..WALKERS)
            .map(|_| {
                scope.spawn(|| {
                    let mut own = state();
                    while let Ok(prefix) = u8::try_from(next.fetch_add(1, Ordering::Relaxed)) {
                        work(prefix, &mut own)?;
                        bar.inc(1);
                    }
                    Ok(own)
                })
            })
            .collect();
        walkers
            .into_iter()
            .map(|w| w.join().expect("a walker thread panicked"))
            .collect()
    })
}

/// Tallies the cache on several threads.
fn scan(
    store: &Store,
    policy: &Policy,
    largest: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Usage> {
    let parts = per_subdirectory(
        || store.usage(policy, largest),
        |prefix, usage| store.scan_subdirectory(prefix, usage),
        bar,
    )
    .with_context(|| format!("cannot measure {}", store.dir().display()))?;
    let mut usage = store.usage(policy, largest);
    parts.into_iter().for_each(|part| usage.merge(part));
    Ok(usage)
}

/// Removes what `plan` removes, on several threads.
fn remove(store: &Store, plan: &Plan, bar: &ProgressBar) -> anyhow::Result<Tally> {
    let parts = per_subdirectory(
        Tally::default,
        |prefix, removed| {
            *removed += store.remove_unused_in(prefix, plan)?;
            Ok::<_, granary_store::StoreError>(())
        },
        bar,
    )?;
    Ok(parts.into_iter().fold(Tally::default(), |mut sum, part| {
        sum += part;
        sum
    }))
}

pub fn du(dir: &Path, upkeep: &Upkeep, args: &DuArgs, verbose: bool) -> anyhow::Result<ExitCode> {
    let store = existing_cache(dir)?;
    let bar = progress::subdirectories("measuring", 1);
    let usage = scan(
        &store,
        &upkeep.policy,
        if verbose { LARGEST } else { 0 },
        &bar,
    )?;
    bar.finish_and_clear();
    let plan = usage.plan(store.available_space_for(&upkeep.policy)?);
    let report = DuReport::new(dir, &store, upkeep, &usage, &plan, verbose);
    if args.output.json {
        print_json(&report)?;
    } else {
        report.print();
    }
    Ok(ExitCode::SUCCESS)
}

pub fn trim(dir: &Path, upkeep: &Upkeep, args: &TrimArgs) -> anyhow::Result<ExitCode> {
    let store = existing_cache(dir)?;
    if args.after_stdin {
        io::copy(&mut io::stdin().lock(), &mut io::sink()).context("cannot read stdin")?;
    }
    // With `--if-due`, the automatic trimmer's lock, held to the end.
    let _trimmer = match args.if_due {
        false => None,
        true => match store.try_lock_trimmer()? {
            Some(lock) if store.trim_due(upkeep.trim_interval) => Some(lock),
            _ => {
                tracing::info!("no trim due in {}", dir.display());
                if args.output.json {
                    print_json(&serde_json::json!({ "dir": dir, "due": false }))?;
                }
                return Ok(ExitCode::SUCCESS);
            }
        },
    };
    let started = Instant::now();
    let bar = progress::subdirectories("trimming", if args.dry_run { 1 } else { 2 });
    let policy = upkeep.policy;
    let usage = scan(&store, &policy, 0, &bar)?;
    let plan = usage.plan(store.available_space_for(&policy)?);
    let (removed, temporaries) = if args.dry_run {
        (Tally::default(), Tally::default())
    } else {
        let removed = remove(&store, &plan, &bar)?;
        // Best effort: leftovers only cost space until the next trim.
        let temporaries = store
            .remove_stale_temporaries(granary_store::STALE_TEMPORARY_AGE)
            .unwrap_or_default();
        store.mark_trimmed()?;
        (removed, temporaries)
    };
    bar.finish_and_clear();
    let report = RemovalReport::new(dir, &usage, &plan, removed, temporaries, args.dry_run);
    if args.output.json {
        print_json(&report)?;
    } else {
        report.print(started.elapsed(), policy.grace);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn prune(dir: &Path, upkeep: &Upkeep, args: &PruneArgs) -> anyhow::Result<ExitCode> {
    let store = existing_cache(dir)?;
    let policy = Policy {
        max_age: args.older_than.unwrap_or(Duration::ZERO),
        max_size: u64::MAX,
        min_free: 0,
        grace: args.grace.unwrap_or(upkeep.policy.grace),
    };
    let bar = progress::subdirectories("pruning", 2);
    let usage = scan(&store, &policy, 0, &bar)?;
    let plan = usage.plan(None);
    let ask = !args.force && io::stdin().is_terminal() && plan.remove.files > 0;
    if ask {
        bar.suspend(|| confirm(dir, &plan))?;
    }
    let started = Instant::now();
    let removed = remove(&store, &plan, &bar)?;
    bar.finish_and_clear();
    let report = RemovalReport::new(dir, &usage, &plan, removed, Tally::default(), false);
    if args.output.json {
        print_json(&report)?;
    } else {
        report.print(started.elapsed(), policy.grace);
        if args.all && report.kept.files > 0 {
            println!(
                "kept {} files used within the grace window ({}); `--grace 0s` removes them \
                 too, which is safe only when no build is running",
                report.kept.files,
                show_age(policy.grace)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks on the terminal; anything but yes is no.
fn confirm(dir: &Path, plan: &Plan) -> anyhow::Result<()> {
    eprint!(
        "Remove {} files ({}) from {}? [y/N] ",
        plan.remove.files,
        size(plan.remove.bytes),
        dir.display()
    );
    io::stderr().flush().ok();
    let mut answer = String::new();
    io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    if !matches!(answer.trim(), "y" | "Y" | "yes" | "Yes") {
        bail!("nothing removed (add --force to skip this question)");
    }
    Ok(())
}

/// A store for a command that reads the cache: it must exist, and opening
/// it must create nothing.
fn existing_cache(dir: &Path) -> anyhow::Result<Store> {
    if !dir.is_dir() {
        bail!(
            "{} is not a cache directory; choose one with --dir or GRANARY_DIR",
            dir.display()
        );
    }
    Ok(Store::at(dir))
}

fn print_json(report: &impl Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report).context("encoding the report")?;
    println!("{json}");
    Ok(())
}

fn size(bytes: u64) -> String {
    ByteSize(bytes).display().iec().to_string()
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Files and their disk space, as reports show them.
#[derive(Debug, Clone, Copy, Serialize)]
struct Count {
    files: u64,
    bytes: u64,
}

impl From<Tally> for Count {
    fn from(t: Tally) -> Count {
        Count {
            files: t.files,
            bytes: t.bytes,
        }
    }
}

/// `granary du`'s report; its `--json` form.
#[derive(Debug, Serialize)]
struct DuReport {
    dir: PathBuf,
    /// Disk space of the action records and objects, in whole blocks.
    actions: Count,
    objects: Count,
    total: Count,
    by_age: Vec<AgeBracket>,
    policy: PolicyReport,
    /// What `granary trim` would remove now.
    would_free: Count,
    /// Bytes the limits want removed that the grace window protects.
    shortfall_bytes: u64,
    last_trim: Option<String>,
    /// With --verbose.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    largest: Vec<LargeObject>,
}

#[derive(Debug, Serialize)]
struct AgeBracket {
    /// Last used at least this long ago (seconds)...
    min_age_secs: u64,
    /// ...and less than this long ago (`null`: no bound).
    max_age_secs: Option<u64>,
    files: u64,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct LargeObject {
    path: PathBuf,
    size: u64,
}

/// The policy in effect; `null` means no limit.
#[derive(Debug, Serialize)]
struct PolicyReport {
    max_age_secs: Option<u64>,
    max_size: Option<u64>,
    min_free: Option<u64>,
    grace_secs: u64,
    trim_interval_secs: Option<u64>,
}

impl PolicyReport {
    fn new(upkeep: &Upkeep) -> PolicyReport {
        let p = &upkeep.policy;
        let secs = |d: Duration| (d != Duration::MAX).then_some(d.as_secs());
        PolicyReport {
            max_age_secs: secs(p.max_age),
            max_size: (p.max_size != u64::MAX).then_some(p.max_size),
            min_free: (p.min_free != 0).then_some(p.min_free),
            grace_secs: p.grace.as_secs(),
            trim_interval_secs: secs(upkeep.trim_interval),
        }
    }
}

impl DuReport {
    fn new(
        dir: &Path,
        store: &Store,
        upkeep: &Upkeep,
        usage: &Usage,
        plan: &Plan,
        verbose: bool,
    ) -> DuReport {
        let bounds = std::iter::once(Duration::ZERO).chain(AGE_BRACKETS);
        let by_age = bounds
            .zip(AGE_BRACKETS.iter().map(|b| Some(b.as_secs())).chain([None]))
            .zip(usage.by_age)
            .map(|((min, max), tally)| AgeBracket {
                min_age_secs: min.as_secs(),
                max_age_secs: max,
                files: tally.files,
                bytes: tally.bytes,
            })
            .collect();
        DuReport {
            dir: dir.to_owned(),
            actions: usage.actions.into(),
            objects: usage.objects.into(),
            total: usage.total().into(),
            by_age,
            policy: PolicyReport::new(upkeep),
            would_free: plan.remove.into(),
            shortfall_bytes: plan.shortfall,
            last_trim: store.last_trim().map(rfc3339),
            largest: if verbose {
                usage
                    .largest()
                    .into_iter()
                    .map(|(size, path)| LargeObject { path, size })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    fn print(&self) {
        println!("{}", self.dir.display());
        println!(
            "  {:>10} action records  {:>11}",
            self.actions.files,
            size(self.actions.bytes)
        );
        println!(
            "  {:>10} objects         {:>11}",
            self.objects.files,
            size(self.objects.bytes)
        );
        println!(
            "  {:>10} files in all    {:>11} on disk",
            self.total.files,
            size(self.total.bytes)
        );
        println!("last used");
        for bracket in &self.by_age {
            let min = show_age(Duration::from_secs(bracket.min_age_secs));
            let label = match bracket.max_age_secs {
                Some(max) if bracket.min_age_secs == 0 => {
                    format!("within {}", show_age(Duration::from_secs(max)))
                }
                Some(max) => format!("{min} to {}", show_age(Duration::from_secs(max))),
                None => format!("over {min} ago"),
            };
            println!(
                "  {label:<16} {:>10} files {:>11}",
                bracket.files,
                size(bracket.bytes)
            );
        }
        let p = &self.policy;
        let or_none = |v: Option<u64>, show: fn(u64) -> String| v.map_or("none".into(), show);
        println!(
            "policy: max-age {}, max-size {}, min-free {}, grace {}",
            or_none(p.max_age_secs, |s| show_age(Duration::from_secs(s))),
            or_none(p.max_size, show_size),
            or_none(p.min_free, show_size),
            show_age(Duration::from_secs(p.grace_secs)),
        );
        println!(
            "a trim now would free {} ({} files)",
            size(self.would_free.bytes),
            self.would_free.files
        );
        if self.shortfall_bytes > 0 {
            println!(
                "the limits want {} more, but it was used within the grace window",
                size(self.shortfall_bytes)
            );
        }
        let every = or_none(p.trim_interval_secs, |s| {
            format!("every {}", show_age(Duration::from_secs(s)))
        });
        match &self.last_trim {
            Some(at) => println!("last trim: {at}; automatic trims: {every}"),
            None => println!("never trimmed by granary; automatic trims: {every}"),
        }
        if !self.largest.is_empty() {
            println!("largest objects");
            for object in &self.largest {
                println!("  {:>11}  {}", size(object.size), object.path.display());
            }
        }
    }
}

/// The report of `trim` and `prune`; their `--json` form.
#[derive(Debug, Serialize)]
struct RemovalReport {
    dir: PathBuf,
    dry_run: bool,
    before: Count,
    /// What the policy selected.
    selected: Count,
    /// What this run removed: less than selected when other processes
    /// removed or used some of it meanwhile; nothing in a dry run.
    removed: Count,
    /// Temporary files of killed processes, removed.
    temporaries: Count,
    /// Bytes the limits wanted removed that the grace window protects.
    shortfall_bytes: u64,
    /// Files kept because they were used within the grace window.
    kept: Count,
}

impl RemovalReport {
    fn new(
        dir: &Path,
        usage: &Usage,
        plan: &Plan,
        removed: Tally,
        temporaries: Tally,
        dry_run: bool,
    ) -> RemovalReport {
        let before = usage.total();
        RemovalReport {
            dir: dir.to_owned(),
            dry_run,
            before: before.into(),
            selected: plan.remove.into(),
            removed: removed.into(),
            temporaries: temporaries.into(),
            shortfall_bytes: plan.shortfall,
            kept: Count {
                files: before.files - plan.remove.files,
                bytes: before.bytes - plan.remove.bytes,
            },
        }
    }

    fn print(&self, took: Duration, grace: Duration) {
        if self.dry_run {
            println!(
                "would remove {} files ({}) of {} ({}) in {}",
                self.selected.files,
                size(self.selected.bytes),
                self.before.files,
                size(self.before.bytes),
                self.dir.display()
            );
        } else {
            println!(
                "removed {} files ({}) in {:.1} s; {} files ({}) remain in {}",
                self.removed.files,
                size(self.removed.bytes),
                took.as_secs_f64(),
                self.before.files - self.removed.files,
                size(self.before.bytes - self.removed.bytes),
                self.dir.display()
            );
        }
        if self.temporaries.files > 0 {
            println!(
                "removed {} temporary files ({}) left by killed processes",
                self.temporaries.files,
                size(self.temporaries.bytes)
            );
        }
        if self.shortfall_bytes > 0 {
            println!(
                "the limits want {} more, but it was used within the grace window ({}); \
                 `--grace 0s` removes it too, which is safe only when no build is running",
                size(self.shortfall_bytes),
                show_age(grace)
            );
        }
    }
}
