//! The statistics history: one JSON line per run that served a request,
//! appended at close to `granary-stats.jsonl` in the cache directory
//! (`granary stats` reads it).
//!
//! Many `go` processes share a cache, each with its own helper, so appends
//! and the occasional compaction (which keeps the file bounded) hold a lock
//! file; an append costs a few system calls.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

use granary_store::TMP_DIR_NAME;

use crate::stats::{FileError, Summary};

/// The history's file name in the cache directory.
pub const HISTORY_FILE: &str = "granary-stats.jsonl";
/// The history keeps at least this many runs...
const KEEP_RUNS: usize = 1000;
/// ...and is cut back to them when it grows beyond this size (a run's line
/// is about 300 bytes).
const COMPACT_ABOVE: u64 = 1024 * 1024;

/// Appends a run to the history of the cache in `dir`.
pub fn append(dir: &Path, summary: &Summary) -> Result<(), FileError> {
    let path = dir.join(HISTORY_FILE);
    let lock_path = dir.join(TMP_DIR_NAME).join("stats.lock");
    let lock = File::options()
        .create(true)
        .append(true)
        .open(&lock_path)
        .and_then(|lock| lock.lock().map(|()| lock))
        .map_err(|e| FileError::new("lock", &lock_path, e))?;
    let mut line = serde_json::to_vec(summary).expect("a summary always serializes");
    line.push(b'\n');
    // Closed before it is compacted: Windows renames over no open file.
    let grown = File::options()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(&line).and_then(|()| file.metadata()))
        .map_err(|e| FileError::new("append to", &path, e))?
        .len()
        > COMPACT_ABOVE;
    if grown {
        compact(dir, &path).map_err(|e| FileError::new("compact", &path, e))?;
    }
    drop(lock);
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

/// The runs recorded in the history of the cache in `dir`, oldest first,
/// and how many lines could not be read (a torn write from a killed
/// process, say).
pub fn read(dir: &Path) -> Result<(Vec<Summary>, usize), FileError> {
    let path = dir.join(HISTORY_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(FileError::new("read", &path, e)),
    };
    let (mut runs, mut unreadable) = (Vec::new(), 0);
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| FileError::new("read", &path, e))?;
        match serde_json::from_slice::<Summary>(&line) {
            Ok(run) => runs.push(run),
            Err(_) if line.iter().all(u8::is_ascii_whitespace) => {}
            Err(_) => unreadable += 1,
        }
    }
    Ok((runs, unreadable))
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
