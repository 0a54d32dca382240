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
use crate::explain::{History as ExplainedRun, read_history as read_explained};

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
    if !crate::detach::wait_for_detached(dir, args.wait) {
        eprintln!(
            "granary: runs of {} still publishing in the background after {} are not counted \
             (--wait sets how long to wait)",
            dir.display(),
            humantime::format_duration(args.wait)
        );
    }
    let (mut runs, unreadable) = read(dir)?;
    if let Some(since) = args.since {
        runs.retain(|run| {
            humantime::parse_rfc3339(&run.started).is_ok_and(|started| started >= since)
        });
    }
    if args.markdown {
        let selected = &runs[runs.len().saturating_sub(args.last)..];
        let selected = if args.since.is_some() {
            &runs[..]
        } else {
            selected
        };
        print!("{}", markdown(selected));
        let since = args.since.or_else(|| {
            selected
                .first()
                .and_then(|run| humantime::parse_rfc3339(&run.started).ok())
        });
        print!("{}", explained_markdown(&read_explained(dir, since)));
        return Ok(ExitCode::SUCCESS);
    }
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

/// What the hits of `runs` saved: the build times their records and
/// manifests carried, as measured where they were built, and for the other
/// hits an estimate from what the misses rebuilt in these runs cost.
fn saved_line(runs: &[Summary]) -> String {
    use std::time::Duration;
    let sum = |field: fn(&Summary) -> u64| runs.iter().map(field).sum::<u64>();
    let (hits, rebuilds, rebuild_ms) =
        (sum(|r| r.hits), sum(|r| r.rebuilds), sum(|r| r.rebuild_ms));
    let (measured, measured_ms) = (sum(|r| r.saved_hits), sum(|r| r.saved_ms));
    let others = hits.saturating_sub(measured);
    let seconds = |ms: f64| humantime::format_duration(Duration::from_secs((ms / 1000.0) as u64));
    let average_ms = match rebuilds {
        0 => None,
        n => Some(rebuild_ms as f64 / n as f64),
    };
    let mut parts = Vec::new();
    if measured > 0 {
        parts.push(format!(
            "{} for {measured} hits, as measured where they were built",
            seconds(measured_ms as f64)
        ));
    }
    match average_ms {
        Some(average) if others > 0 => parts.push(format!(
            "about {} estimated for the other {others} hits ({:.2} s each, the average of \
             the {rebuilds} misses rebuilt in these runs)",
            seconds(average * others as f64),
            average / 1000.0
        )),
        None if others > 0 && measured > 0 => parts.push(format!(
            "the other {others} hits carry no build time (what go keeps beside an \
             output, such as a compiler's messages, takes none of its own)"
        )),
        _ => {}
    }
    if parts.is_empty() {
        return "- **Saved**: no estimate: no hit carried its build time and no miss was \
                rebuilt in these runs, so what a hit saves is unknown."
            .to_owned();
    }
    let total = measured_ms as f64 + average_ms.map_or(0.0, |a| a * others as f64);
    format!(
        "- **Saved**: about {} of compile time: {}.",
        seconds(total),
        parts.join("; ")
    )
}

/// The Markdown summary of `runs`, for a CI job's page: what the cache
/// answered and from where, what moved, what went wrong, and what the hits
/// saved.
fn markdown(runs: &[Summary]) -> String {
    use std::fmt::Write;
    let sum = |field: fn(&Summary) -> u64| runs.iter().map(field).sum::<u64>();
    let (gets, hits, misses) = (sum(|r| r.gets), sum(|r| r.hits), sum(|r| r.misses));
    let prefetched = sum(|r| r.prefetch_used);
    let local = sum(|r| r.local_hits).saturating_sub(prefetched);
    let remote = sum(|r| r.remote_hits);
    let percent = |n: u64| match gets {
        0 => 0.0,
        _ => 100.0 * n as f64 / gets as f64,
    };
    let mut out = String::new();
    if runs.is_empty() {
        out.push_str("### granary\n\nNo runs recorded in this period.\n");
        return out;
    }
    let _ = writeln!(
        out,
        "### granary: {:.1}% of {gets} gets answered from the cache, in {} runs\n",
        percent(hits),
        runs.len()
    );
    let _ = writeln!(
        out,
        "| gets | hits | local | prefetched | fetched from the remote | misses |\n\
         |---:|---:|---:|---:|---:|---:|\n\
         | {gets} | {hits} ({:.1}%) | {local} ({:.1}%) | {prefetched} ({:.1}%) | {remote} ({:.1}%) | {misses} |\n",
        percent(hits),
        percent(local),
        percent(prefetched),
        percent(remote)
    );
    let _ = writeln!(out, "{}", saved_line(runs));
    let remotes: std::collections::BTreeSet<&str> = runs
        .iter()
        .map(|r| r.remote.as_str())
        .filter(|r| !r.is_empty())
        .collect();
    let _ = write!(
        out,
        "- **Bytes**: {} served from the cache, {} stored",
        size(sum(|r| r.hit_bytes)),
        size(sum(|r| r.put_bytes)),
    );
    let _ = match remotes.is_empty() {
        true => writeln!(out, "."),
        false => writeln!(
            out,
            "; the remote sent {} and received {} ({} uploads, {} dropped).",
            size(sum(|r| r.remote_bytes_down)),
            size(sum(|r| r.remote_bytes_up)),
            sum(|r| r.uploads),
            sum(|r| r.uploads_dropped)
        ),
    };
    if remotes.is_empty() {
        let _ = writeln!(out, "- **Remote**: none set.");
    } else {
        let off: Vec<&Summary> = runs.iter().filter(|r| !r.remote_off.is_empty()).collect();
        let _ = writeln!(
            out,
            "- **Remote** {}: {} errors, {} damaged entries refused{}",
            remotes.into_iter().collect::<Vec<_>>().join(", "),
            sum(|r| r.remote_errors),
            sum(|r| r.remote_damaged),
            match off.first() {
                None => ", never switched off.".to_owned(),
                Some(first) => format!(
                    "; switched off in {} of {} runs, first because: {}",
                    off.len(),
                    runs.len(),
                    inline(&first.remote_off)
                ),
            }
        );
    }
    let skipped = sum(|r| r.lookups_skipped);
    if skipped > 0 {
        let _ = writeln!(
            out,
            "- **Not looked up**: {skipped} misses of actions no manifest named \
             (`--lookups named`); {} lookups hit.",
            sum(|r| r.remote_hits)
        );
    }
    let untrusted = sum(|r| r.untrusted);
    let _ = writeln!(
        out,
        "- **Untrusted records**: {}",
        match untrusted {
            0 => "none.".to_owned(),
            n => format!(
                "{n} refused: not signed by a key in --trusted-keys (a poisoning attempt, \
                 or a writer without --signing-key)."
            ),
        }
    );
    let errors = sum(|r| r.errors) + sum(|r| r.corrupt_entries);
    if errors > 0 {
        let _ = writeln!(
            out,
            "- **Local errors**: {} failed requests, {} damaged entries (run `granary verify`).",
            sum(|r| r.errors),
            sum(|r| r.corrupt_entries)
        );
    }
    let _ = writeln!(
        out,
        "\n<details><summary>Runs</summary>\n\n\
         | started | duration | gets | hits | local | prefetched | remote | misses |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for run in runs {
        let _ = writeln!(
            out,
            "| {} | {:.1} s | {} | {:.1}% | {} | {} | {} | {} |",
            run.started,
            run.duration_ms as f64 / 1000.0,
            run.gets,
            run.hit_rate(),
            run.local_hits.saturating_sub(run.prefetch_used),
            run.prefetch_used,
            run.remote_hits,
            run.misses
        );
    }
    out.push_str("\n</details>\n");
    out
}

/// Actions listed for one explained command, at most.
const LISTED_EXPLANATIONS: usize = 30;

/// The explained misses of `runs` (`granary explain`), for the summary;
/// empty if explain did not run.
fn explained_markdown(runs: &[ExplainedRun]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if runs.is_empty() {
        return out;
    }
    let _ = writeln!(out, "\n#### Why actions missed (`granary explain`)\n");
    for run in runs {
        let count = |base: &str| run.explained.iter().filter(|a| a.base == base).count();
        let _ = writeln!(
            out,
            "- `{}`: {} of {} actions missed: {} with no recorded run to compare with, {} with \
             the same inputs as a recorded run (so not in the cache), {} with other inputs",
            inline(&run.command).replace('`', "'"),
            run.missed,
            run.actions,
            count("unrecorded"),
            count("same"),
            count("changed"),
        );
        let changed: Vec<_> = run
            .explained
            .iter()
            .filter(|a| a.base == "changed")
            .collect();
        for action in changed.iter().take(LISTED_EXPLANATIONS) {
            let why = format!("against {}: {}", action.from, action.differences.join("; "));
            let _ = writeln!(out, "  - `{}`: {}", action.action, inline(&why));
        }
        if changed.len() > LISTED_EXPLANATIONS {
            let _ = writeln!(out, "  - and {} more", changed.len() - LISTED_EXPLANATIONS);
        }
    }
    out
}

/// `text` on one line of a Markdown table or list.
fn inline(text: &str) -> String {
    text.replace(['\n', '\r'], " ").replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(hits: u64, saved: (u64, u64), rebuilds: (u64, u64)) -> Summary {
        Summary {
            hits,
            saved_hits: saved.0,
            saved_ms: saved.1,
            rebuilds: rebuilds.0,
            rebuild_ms: rebuilds.1,
            ..Summary::default()
        }
    }

    #[test]
    fn the_time_saved_is_measured_where_known_and_estimated_elsewhere() {
        // A fresh runner that hit everything: the builders' times alone.
        let fresh = saved_line(&[run(100, (100, 250_000), (0, 0))]);
        assert!(fresh.contains("about 4m 10s of compile time"), "{fresh}");
        assert!(fresh.contains("100 hits, as measured where"), "{fresh}");
        assert!(!fresh.contains("estimated"), "{fresh}");
        // A laptop's local hits carry nothing: the misses' average.
        let laptop = saved_line(&[run(10, (0, 0), (2, 3_000))]);
        assert!(laptop.contains("about 15s"), "{laptop}");
        assert!(laptop.contains("other 10 hits (1.50 s each"), "{laptop}");
        // Both, summed over a job's runs.
        let job = saved_line(&[run(8, (6, 60_000), (0, 0)), run(4, (0, 0), (4, 8_000))]);
        assert!(job.contains("about 1m 12s"), "{job}");
        assert!(
            job.contains("1m for 6 hits") && job.contains("other 6 hits"),
            "{job}"
        );
        let unknown = saved_line(&[run(5, (3, 3_000), (0, 0))]);
        assert!(
            unknown.contains("the other 2 hits carry no build time"),
            "{unknown}"
        );
        let none = saved_line(&[run(5, (0, 0), (0, 0))]);
        assert!(none.contains("no estimate"), "{none}");
    }

    #[test]
    fn misses_not_looked_up_are_reported_with_the_lookups_that_hit() {
        let runs = [
            Summary {
                remote: "s3://ci".into(),
                lookups_skipped: 7,
                ..run(3, (0, 0), (0, 0))
            },
            Summary {
                remote: "s3://ci".into(),
                remote_hits: 2,
                ..run(3, (0, 0), (0, 0))
            },
        ];
        let text = markdown(&runs);
        assert!(
            text.contains("**Not looked up**: 7 misses of actions no manifest named")
                && text.contains("2 lookups hit"),
            "{text}"
        );
        assert!(!markdown(&runs[1..]).contains("Not looked up"));
    }
}
