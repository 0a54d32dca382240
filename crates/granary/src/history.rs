//! The statistics history: one JSON line per `prog` run, appended at close
//! to `granary-stats.jsonl` in the cache directory, and `granary stats`,
//! which reads it.
//!
//! Many `go` processes share a cache, each with its own `prog`, so appends
//! and the occasional compaction (which keeps the file bounded) hold a lock
//! file; an append costs a few system calls.
// A command's report goes to stdout; only `prog` must keep stdout for the protocol.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bytesize::ByteSize;
use granary_store::TMP_DIR_NAME;
use serde::Serialize;

use crate::cli::StatsArgs;
use crate::prog::stats::Summary;

/// The history's file name in the cache directory.
pub const HISTORY_FILE: &str = "granary-stats.jsonl";
/// The history keeps at least this many runs...
const KEEP_RUNS: usize = 1000;
/// ...and is cut back to them when it grows beyond this size (a run's line
/// is about 300 bytes).
const COMPACT_ABOVE: u64 = 1024 * 1024;

/// Appends a run to the history of the cache in `dir`.
pub fn append(dir: &Path, summary: &Summary) -> anyhow::Result<()> {
    let path = dir.join(HISTORY_FILE);
    let lock = File::options()
        .create(true)
        .append(true)
        .open(dir.join(TMP_DIR_NAME).join("stats.lock"))
        .context("cannot open the history's lock file")?;
    lock.lock().context("cannot lock the history")?;
    let mut line = serde_json::to_vec(summary).context("encoding the statistics")?;
    line.push(b'\n');
    let mut file = File::options()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.write_all(&line)
        .with_context(|| format!("cannot write to {}", path.display()))?;
    if file.metadata().is_ok_and(|m| m.len() > COMPACT_ABOVE) {
        compact(dir, &path).with_context(|| format!("cannot compact {}", path.display()))?;
    }
    Ok(())
}

/// Keeps the last [`KEEP_RUNS`] lines, replacing the file atomically.
fn compact(dir: &Path, path: &Path) -> io::Result<()> {
    let lines: Vec<String> = BufReader::new(File::open(path)?)
        .lines()
        .collect::<Result<_, _>>()?;
    let keep = &lines[lines.len().saturating_sub(KEEP_RUNS)..];
    let mut temp = tempfile::NamedTempFile::new_in(dir.join(TMP_DIR_NAME))?;
    for line in keep {
        writeln!(temp, "{line}")?;
    }
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The runs recorded in the history, oldest first, and how many lines
/// could not be read (a torn write from a killed process, say).
fn read(dir: &Path) -> anyhow::Result<(Vec<Summary>, usize)> {
    let path = dir.join(HISTORY_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let (mut runs, mut unreadable) = (Vec::new(), 0);
    for line in BufReader::new(file).split(b'\n') {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        match serde_json::from_slice::<Summary>(&line) {
            Ok(run) => runs.push(run),
            Err(_) if line.iter().all(u8::is_ascii_whitespace) => {}
            Err(_) => unreadable += 1,
        }
    }
    Ok((runs, unreadable))
}

/// Sums of several runs.
#[derive(Debug, Default, Serialize)]
struct Totals {
    runs: u64,
    gets: u64,
    hits: u64,
    /// Hits per get, in percent.
    hit_rate: f64,
    hit_bytes: u64,
    puts: u64,
    put_bytes: u64,
    errors: u64,
    corrupt_entries: u64,
}

impl Totals {
    fn add(&mut self, run: &Summary) {
        self.runs += 1;
        self.gets += run.gets;
        self.hits += run.hits;
        self.hit_bytes += run.hit_bytes;
        self.puts += run.puts;
        self.put_bytes += run.put_bytes;
        self.errors += run.errors;
        self.corrupt_entries += run.corrupt_entries;
        self.hit_rate = if self.gets == 0 {
            0.0
        } else {
            100.0 * self.hits as f64 / self.gets as f64
        };
    }
}

/// `granary stats --json`.
#[derive(Debug, Serialize)]
struct Report {
    file: PathBuf,
    /// The last runs, oldest first.
    runs: Vec<Summary>,
    /// Every recorded run, by day (UTC).
    by_day: BTreeMap<String, Totals>,
    total: Totals,
    unreadable_lines: usize,
}

pub fn run(dir: &Path, args: &StatsArgs) -> anyhow::Result<ExitCode> {
    let (runs, unreadable) = read(dir)?;
    let mut by_day: BTreeMap<String, Totals> = BTreeMap::new();
    let mut total = Totals::default();
    for run in &runs {
        let day = run.started.get(..10).unwrap_or("unknown").to_owned();
        by_day.entry(day).or_default().add(run);
        total.add(run);
    }
    let report = Report {
        file: dir.join(HISTORY_FILE),
        runs: runs[runs.len().saturating_sub(args.last)..].to_vec(),
        by_day,
        total,
        unreadable_lines: unreadable,
    };
    if args.output.json {
        let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
        println!("{json}");
    } else {
        print_human(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn size(bytes: u64) -> String {
    ByteSize(bytes).display().iec().to_string()
}

fn print_human(report: &Report) {
    if report.total.runs == 0 {
        println!(
            "no runs recorded yet in {}; `granary prog` records each run at close",
            report.file.display()
        );
        return;
    }
    println!(
        "last {} of {} runs recorded in {}",
        report.runs.len(),
        report.total.runs,
        report.file.display()
    );
    println!(
        "{:<21} {:>9} {:>7} {:>7} {:>11} {:>6} {:>11} {:>6}",
        "started", "duration", "gets", "hits", "hit bytes", "puts", "put bytes", "errors"
    );
    for run in &report.runs {
        println!(
            "{:<21} {:>7.1} s {:>7} {:>6.1}% {:>11} {:>6} {:>11} {:>6}",
            run.started,
            run.duration_ms as f64 / 1000.0,
            run.gets,
            run.hit_rate(),
            size(run.hit_bytes),
            run.puts,
            size(run.put_bytes),
            run.errors
        );
    }
    println!();
    println!(
        "{:<21} {:>9} {:>7} {:>7} {:>11} {:>6} {:>11} {:>6}",
        "day (UTC)", "runs", "gets", "hits", "hit bytes", "puts", "put bytes", "errors"
    );
    let days = report.by_day.iter().map(|(d, t)| (d.as_str(), t));
    for (day, totals) in days.chain([("all", &report.total)]) {
        println!(
            "{:<21} {:>9} {:>7} {:>6.1}% {:>11} {:>6} {:>11} {:>6}",
            day,
            totals.runs,
            totals.gets,
            totals.hit_rate,
            size(totals.hit_bytes),
            totals.puts,
            size(totals.put_bytes),
            totals.errors
        );
    }
    if report.unreadable_lines > 0 {
        println!(
            "{} unreadable lines skipped (runs killed while writing)",
            report.unreadable_lines
        );
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn run(gets: u64, started: &str) -> Summary {
        Summary {
            started: started.to_owned(),
            gets,
            hits: gets / 2,
            ..Summary::default()
        }
    }

    #[test]
    fn history_is_appended_bounded_and_tolerates_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(TMP_DIR_NAME)).unwrap();
        append(dir.path(), &run(10, "2026-11-20T10:00:00Z")).unwrap();
        let path = dir.path().join(HISTORY_FILE);
        // A run killed in the middle of its line, and the next run's line.
        File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"gets\": 4\n")
            .unwrap();
        append(dir.path(), &run(20, "2026-11-21T10:00:00Z")).unwrap();
        let (runs, unreadable) = read(dir.path()).unwrap();
        assert_eq!(runs.iter().map(|r| r.gets).collect::<Vec<_>>(), [10, 20]);
        assert_eq!(unreadable, 1);

        let many = 3 * COMPACT_ABOVE as usize / 300;
        for i in 0..many {
            append(dir.path(), &run(i as u64, "2026-11-21T11:00:00Z")).unwrap();
        }
        assert!(fs::metadata(&path).unwrap().len() <= COMPACT_ABOVE + 1000);
        let (runs, unreadable) = read(dir.path()).unwrap();
        assert!(
            runs.len() >= KEEP_RUNS && runs.len() < many,
            "{}",
            runs.len()
        );
        assert_eq!(
            runs.last().unwrap().gets,
            many as u64 - 1,
            "the newest stay"
        );
        assert_eq!(unreadable, 0, "the torn line was compacted away");
    }
}
