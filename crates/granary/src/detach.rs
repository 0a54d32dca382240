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

use std::fs::{File, OpenOptions};
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
    lock.lock_shared()?;
    // Released when the process ends, however it ends.
    std::mem::forget(lock);
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
    let start = Instant::now();
    loop {
        match lock.try_lock() {
            Ok(()) => return true,
            Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < bound => {
                thread::sleep(POLL);
            }
            Err(std::fs::TryLockError::WouldBlock) => return false,
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::debug!("cannot lock {LOCK} to wait for detached runs: {e}");
                return true;
            }
        }
    }
}
