//! `granary stats`: the last runs of `granary prog`, from the history the
//! engine appends to at every close (`granary_prog::history`), by run and
//! by day.
// A command's report goes to stdout; only `prog` must keep stdout for the protocol.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bytesize::ByteSize;
use granary_prog::Summary;
use granary_prog::history::{HISTORY_FILE, read};
use serde::Serialize;

use crate::cli::StatsArgs;

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
    /// Remote records refused as not signed by a trusted key.
    untrusted: u64,
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
        self.untrusted += run.untrusted;
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
    if report.total.untrusted > 0 {
        println!(
            "{} remote records refused as untrusted: not signed by a key in --trusted-keys \
             (a poisoning attempt, or a writer without --signing-key)",
            report.total.untrusted
        );
    }
    if report.unreadable_lines > 0 {
        println!(
            "{} unreadable lines skipped (runs killed while writing)",
            report.unreadable_lines
        );
    }
}
