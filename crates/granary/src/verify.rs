//! `granary verify`: checks every action record's format and every object's
//! hash; with `--repair`, removes exactly the damaged entries, which the go
//! command then rebuilds as misses.
// A command's report goes to stdout; only `prog` must keep stdout for the protocol.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytesize::ByteSize;
use granary_store::{EntryKind, Store};
use serde::Serialize;

use crate::cli::VerifyArgs;
use crate::progress;

/// The `--json` report.
#[derive(Debug, Serialize)]
struct Report {
    dir: PathBuf,
    action_records: u64,
    objects: u64,
    object_bytes: u64,
    damaged: Vec<Damaged>,
    /// How many damaged entries `--repair` removed.
    removed: u64,
}

#[derive(Debug, Serialize)]
struct Damaged {
    path: PathBuf,
    problem: String,
}

pub fn run(dir: &Path, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    if !dir.is_dir() {
        bail!(
            "{} is not a cache directory; choose one with --dir or GRANARY_DIR",
            dir.display()
        );
    }
    // Checking must not write to the cache, not even a directory.
    let store = Store::at(dir);
    let progress = progress::subdirectories("verifying", 1);
    let mut report = Report {
        dir: dir.to_owned(),
        action_records: 0,
        objects: 0,
        object_bytes: 0,
        damaged: Vec::new(),
        removed: 0,
    };
    let mut damaged_files = Vec::new();
    for prefix in 0..=255 {
        let files = store
            .entry_files_in(prefix)
            .with_context(|| format!("cannot list the entries of {}", dir.display()))?;
        for file in files {
            match file.kind {
                EntryKind::Action(_) => report.action_records += 1,
                EntryKind::Object(_) => {
                    report.objects += 1;
                    report.object_bytes += file.size;
                }
            }
            if let Err(problem) = store.check(&file) {
                report.damaged.push(Damaged {
                    path: file.path.clone(),
                    problem: problem.to_string(),
                });
                damaged_files.push(file);
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();

    if args.repair {
        for file in damaged_files {
            if store
                .remove_damaged(&file)
                .with_context(|| format!("cannot remove {}", file.path.display()))?
            {
                report.removed += 1;
            }
        }
    }

    if args.output.json {
        let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
        println!("{json}");
    } else {
        print_human(&report, args.repair);
    }
    let unrepaired = !report.damaged.is_empty() && !args.repair;
    Ok(if unrepaired {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_human(report: &Report, repair: bool) {
    println!(
        "checked {} action records and {} objects ({}) in {}",
        report.action_records,
        report.objects,
        ByteSize(report.object_bytes).display().iec(),
        report.dir.display()
    );
    if report.damaged.is_empty() {
        println!("no damaged entries");
        return;
    }
    println!("{} damaged entries:", report.damaged.len());
    for d in &report.damaged {
        println!("  {}: {}", d.path.display(), d.problem);
    }
    if repair {
        println!(
            "removed {} of them; the go command rebuilds them when it next needs them",
            report.removed
        );
    } else {
        println!(
            "run `granary verify --repair` to remove them; the go command rebuilds them when it \
             next needs them"
        );
    }
}
