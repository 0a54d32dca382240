//! `--detach`: a `granary prog` that lets the go command exit before its
//! uploads and manifest are done, and finishes them on its own.
//!
//! cmd/go closes our stdin after `close` is answered and waits for our
//! stdout to close; it neither kills nor waits for the process. So once
//! `close` is answered, the run points stdout at the null device and stderr
//! at a log in the cache directory (whatever reads the go command's output,
//! a CI step or a pipe, would otherwise wait for this process's end), then
//! publishes. A shared lock held until the process ends tells `granary
//! stats` that a detached run is still at work, so that a job's summary
//! counts it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
#[cfg(unix)]
use std::io::Write;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use granary_prog::JOURNALS;

/// The lock that detached runs hold, in the cache directory's journals.
const LOCK: &str = "detached.lock";
/// Where detached runs write what they would have said on stderr.
#[cfg(unix)]
const LOG: &str = "detached.log";
/// The log is started afresh once this large.
#[cfg(unix)]
const LOG_LIMIT: u64 = 1 << 20;
/// How often a waiter tries the lock.
const POLL: Duration = Duration::from_millis(20);
/// How long a detaching run tries for its shared lock: a waiter holds the
/// lock exclusively only for the moment it takes to see it free.
#[cfg(unix)]
const SHARED_LOCK_BOUND: Duration = Duration::from_secs(1);

/// What `granary prog` calls once `close` is answered, for the cache
/// directory `dir`.
#[cfg(unix)]
pub fn detacher(dir: &Path) -> Option<Box<dyn FnOnce() + Send>> {
    let dir = dir.to_owned();
    Some(Box::new(move || {
        if let Err(e) = detach(&dir) {
            tracing::warn!("cannot detach from the go command ({e}); it waits for the uploads");
        }
    }))
}

/// Windows cannot let go of its output this way: the close waits, as
/// without `--detach`.
#[cfg(not(unix))]
pub fn detacher(_dir: &Path) -> Option<Box<dyn FnOnce() + Send>> {
    tracing::debug!("--detach is not supported on this platform; the close waits");
    None
}

/// Takes the shared lock for the rest of the process, then lets go of
/// stdout and stderr. The lock comes first: the go command cannot exit,
/// nor a waiter look, before stdout closes.
#[cfg(unix)]
fn detach(dir: &Path) -> io::Result<()> {
    let lock = open_lock(dir)?;
    if poll(SHARED_LOCK_BOUND, || lock.try_lock_shared())? {
        // Released when the process ends, however it ends.
        std::mem::forget(lock);
    } else {
        tracing::debug!("{LOCK} stayed locked; granary stats will not wait for this run");
    }
    let log_path = dir.join(JOURNALS).join(LOG);
    let log = match std::fs::metadata(&log_path) {
        Ok(meta) if meta.len() > LOG_LIMIT => File::create(&log_path)?,
        _ => OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?,
    };
    let null = OpenOptions::new().write(true).open("/dev/null")?;
    io::stdout().flush()?;
    io::stderr().flush()?;
    rustix::stdio::dup2_stdout(&null)?;
    rustix::stdio::dup2_stderr(&log)?;
    Ok(())
}

fn open_lock(dir: &Path) -> io::Result<File> {
    let journals = dir.join(JOURNALS);
    std::fs::create_dir_all(&journals)?;
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(journals.join(LOCK))
}

/// Waits, at most `bound`, until no detached run of the cache directory
/// `dir` is at work. Returns false if one still is; true also when the
/// lock cannot be taken at all (there is nothing to wait on then).
pub fn wait_for_detached(dir: &Path, bound: Duration) -> bool {
    if !dir.join(JOURNALS).join(LOCK).exists() {
        return true;
    }
    let Ok(lock) = open_lock(dir) else {
        return true;
    };
    poll(bound, || lock.try_lock()).unwrap_or_else(|e| {
        tracing::debug!("cannot lock {LOCK} to wait for detached runs: {e}");
        true
    })
}

/// Tries `attempt` every [`POLL`] until it takes the lock or `bound` has
/// passed; whether it took it.
fn poll(
    bound: Duration,
    mut attempt: impl FnMut() -> Result<(), TryLockError>,
) -> io::Result<bool> {
    let start = Instant::now();
    loop {
        match attempt() {
            Ok(()) => return Ok(true),
            Err(TryLockError::WouldBlock) if start.elapsed() < bound => thread::sleep(POLL),
            Err(TryLockError::WouldBlock) => return Ok(false),
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiter waits for a detached run's lock no longer than its bound,
    /// and a detaching run for a waiter's no longer than its own.
    #[test]
    fn waits_for_the_lock_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        assert!(wait_for_detached(dir.path(), Duration::ZERO), "no run yet");
        let detached = open_lock(dir.path()).unwrap();
        detached.lock_shared().unwrap();
        let started = Instant::now();
        assert!(!wait_for_detached(dir.path(), Duration::from_millis(100)));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        drop(detached);
        assert!(wait_for_detached(dir.path(), Duration::from_millis(100)));

        let waiter = open_lock(dir.path()).unwrap();
        waiter.lock().unwrap();
        let detaching = open_lock(dir.path()).unwrap();
        let bound = Duration::from_millis(100);
        assert!(!poll(bound, || detaching.try_lock_shared()).unwrap());
        drop(waiter);
        assert!(poll(bound, || detaching.try_lock_shared()).unwrap());
    }
}
