//! Modification times derived from content, for go's test cache.
//!
//! go keys a cached test result on the size and modification time of every
//! file and directory the test opened inside its module
//! (`cmd/go/internal/test/test.go`, `hashOpen`), and caches nothing that
//! read a file younger than two seconds. A fresh checkout gives every file
//! a new time, so on CI, where every checkout is fresh, a test that reads
//! testdata never hits, whatever the cache holds.
//!
//! [`canonicalise`] gives every file git tracks in a work tree a time
//! derived from its content, and every directory holding such files a time
//! derived from its tracked entries' names and contents: the same content
//! has the same time on every checkout, different content a different one
//! (59 bits of a SHA-256 or a git object ID: one collision in 2^29 pairs is
//! the odds, not a rule). Files git already knows unchanged take their
//! object ID from git's index; files changed since (`git diff-files`, after
//! git refreshed its stat cache) are hashed here. So a file changed in
//! place, even to the same size, gets another time: the invariant of this
//! crate, and what keeps a test result from being reused when its input
//! changed. Times fall in 2001-2020, never within go's two-second window.
//!
//! Untracked and ignored files keep their times: they are not part of the
//! commit, a fresh checkout has none, and a file a build or a test writes
//! must keep the time of its writing to be seen as new. Links and
//! submodules are left alone.
//!
//! Architecture invariant: this crate knows git's command line and the
//! file system, nothing of go, caches or the network.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use filetime::FileTime;
use sha2::{Digest, Sha256};

/// 2001-09-09, where the canonical times start.
const EPOCH_SECONDS: u64 = 1_000_000_000;
/// Canonical times spread over 2^29 seconds (17 years) and every
/// nanosecond of each.
const SPAN_SECONDS: u64 = 1 << 29;

/// What [`canonicalise`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Tracked files given their time.
    pub files: u64,
    /// Of those, files changed since git's index, hashed here.
    pub hashed: u64,
    /// Directories given their time.
    pub dirs: u64,
    /// Tracked entries left alone: links, submodules, conflicts, files
    /// deleted from the work tree or left out of a sparse checkout.
    pub skipped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MtimesError {
    #[error("cannot run git (is it installed and on PATH?): {0}")]
    NoGit(io::Error),
    #[error("{dir} is not in a git work tree: {why}")]
    NotAWorkTree { dir: PathBuf, why: String },
    #[error("`git {command}` failed: {why}")]
    Git { command: String, why: String },
    #[error("cannot set the time of {path}: {source}")]
    SetTime { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// The canonical time of content whose ID (a git object ID or a SHA-256,
/// in any spelling) is `id`.
pub fn time_of(id: &[u8]) -> SystemTime {
    let digest = Sha256::digest(id);
    let word = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    let seconds = EPOCH_SECONDS + word % SPAN_SECONDS;
    let nanos = (word / SPAN_SECONDS % 1_000_000_000) as u32;
    SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos)
}

/// Gives the tracked files and directories under `dir`, which must be in
/// a git work tree, their canonical times (see the crate's docs).
pub fn canonicalise(dir: &Path) -> Result<Report, MtimesError> {
    let top = PathBuf::from(
        git(dir, &["rev-parse", "--show-toplevel"])
            .map_err(|e| match e {
                MtimesError::Git { why, .. } => MtimesError::NotAWorkTree {
                    dir: dir.to_owned(),
                    why,
                },
                other => other,
            })?
            .trim_end(),
    );
    let dir = dir.canonicalize().map_err(|source| MtimesError::Read {
        path: dir.to_owned(),
        source,
    })?;
    // Brings git's stat cache up to date, so that diff-files lists the
    // files whose content changed, not those whose time did (as ours do).
    let _ = git(&top, &["update-index", "-q", "--refresh"]);
    let changed: HashSet<String> = git(&top, &["diff-files", "--name-only", "-z"])?
        .split('\0')
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect();
    let mut report = Report::default();
    // Each directory's tracked entries: name, and the ID that timed it.
    let mut dirs: BTreeMap<PathBuf, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for line in git(&top, &["ls-files", "--stage", "-z"])?.split('\0') {
        // `<mode> <object> <stage>\t<path>`
        let Some((meta, name)) = line.split_once('\t') else {
            continue;
        };
        let path = top.join(name);
        if !path.starts_with(&dir) {
            continue;
        }
        let mut fields = meta.split(' ');
        let (Some(mode), Some(object), Some(stage)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if stage != "0" || !matches!(mode, "100644" | "100755") {
            report.skipped += 1;
            continue;
        }
        let id = match changed.contains(name) {
            false => object.as_bytes().to_vec(),
            true => match content_id(&path) {
                Ok(id) => {
                    report.hashed += 1;
                    id
                }
                Err(MtimesError::Read { source, .. })
                    if source.kind() == io::ErrorKind::NotFound =>
                {
                    report.skipped += 1;
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        match set_time(&path, &id) {
            Ok(()) => report.files += 1,
            // Not in the work tree though git's index says unchanged: a
            // sparse checkout leaves such files out.
            Err(MtimesError::SetTime { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                report.skipped += 1;
                continue;
            }
            Err(e) => return Err(e),
        }
        let (parent, file) = name.rsplit_once('/').unwrap_or(("", name));
        dirs.entry(top.join(parent))
            .or_default()
            .push((file.to_owned(), id));
    }
    // Deepest first, each directory's ID entering its parent's.
    while let Some((path, mut entries)) = dirs.pop_last() {
        entries.sort();
        let mut hash = Sha256::new();
        for (name, id) in &entries {
            hash.update(name.as_bytes());
            hash.update([0]);
            hash.update(id);
            hash.update([0]);
        }
        let id = format!("tree {:x}", hash.finalize()).into_bytes();
        if path.starts_with(&dir) {
            set_time(&path, &id)?;
            report.dirs += 1;
        }
        if path != top
            && let (Some(parent), Some(name)) = (path.parent(), path.file_name())
        {
            dirs.entry(parent.to_owned())
                .or_default()
                .push((name.to_string_lossy().into_owned(), id));
        }
    }
    Ok(report)
}

/// The ID of a file's content as it is now.
fn content_id(path: &Path) -> Result<Vec<u8>, MtimesError> {
    let mut file = std::fs::File::open(path).map_err(|source| MtimesError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut hash = Sha256::new();
    io::copy(&mut file, &mut hash).map_err(|source| MtimesError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(format!("sha256 {:x}", hash.finalize()).into_bytes())
}

fn set_time(path: &Path, id: &[u8]) -> Result<(), MtimesError> {
    let time = FileTime::from_system_time(time_of(id));
    filetime::set_file_times(path, time, time).map_err(|source| MtimesError::SetTime {
        path: path.to_owned(),
        source,
    })
}

/// `git ARGS` in `dir`; its stdout.
fn git(dir: &Path, args: &[&str]) -> Result<String, MtimesError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(MtimesError::NoGit)?;
    if !out.status.success() {
        return Err(MtimesError::Git {
            command: args.join(" "),
            why: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    String::from_utf8(out.stdout).map_err(|_| MtimesError::Git {
        command: args.join(" "),
        why: "its output is not UTF-8 (set core.quotePath?)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_old_enough_and_follow_content() {
        let a = time_of(b"e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
        assert_eq!(a, time_of(b"e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"));
        let two_seconds_ago = SystemTime::now() - Duration::from_secs(2);
        let mut seen = HashSet::new();
        for n in 0..10_000u32 {
            let time = time_of(format!("sha256 {n}").as_bytes());
            assert!(time < two_seconds_ago);
            assert!(time >= SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_SECONDS));
            assert!(seen.insert(time), "two contents, one time");
        }
    }
}
