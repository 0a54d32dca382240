//! The one writer of stdout, and the tickets that make every request
//! answered exactly once.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::fmt;
use std::path::PathBuf;

use granary_protocol::Response;
use granary_store::{ActionEntry, Hit};

use crate::stats::{Stats, add};

/// Writes responses to the output (stdout in `granary prog`), one whole
/// line at a time.
///
/// Architecture invariant: in `prog` mode nothing else writes to stdout.
#[derive(Debug, Clone)]
pub struct Responder {
    inner: Arc<Inner>,
}

struct Inner {
    out: Mutex<Box<dyn Write + Send>>,
    /// Set once a write fails: the go command has gone away.
    broken: AtomicBool,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Responder {
    pub fn new(out: Box<dyn Write + Send>) -> Responder {
        Responder {
            inner: Arc::new(Inner {
                out: Mutex::new(out),
                broken: AtomicBool::new(false),
            }),
        }
    }

    /// Sends one response and flushes it, so that the waiting goroutine in
    /// cmd/go wakes at once. A hit whose time cannot be written is sent as
    /// a miss: an answer the go command can use, never none.
    pub fn send(&self, response: &Response) {
        let mut line = Vec::with_capacity(256);
        if let Err(e) = response.encode(&mut line) {
            tracing::warn!("answered request {} with a miss: {e}", response.id);
            Response::miss(response.id)
                .encode(&mut line)
                .expect("a miss has no time");
        }
        let mut out = self.inner.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = out.write_all(&line).and_then(|()| out.flush())
            && !self.inner.broken.swap(true, Ordering::Relaxed)
        {
            tracing::debug!("the go command stopped reading responses: {e}");
        }
    }

    /// A ticket for the request `id`.
    pub fn ticket(&self, id: i64) -> Ticket {
        Ticket {
            id,
            responder: Some(self.clone()),
        }
    }
}

/// The obligation to answer request `id` once. Consumed by [`Ticket::answer`];
/// dropped unanswered (a bug, or a panicking worker), it answers with an
/// error so that the go command never waits forever.
#[derive(Debug)]
pub struct Ticket {
    id: i64,
    responder: Option<Responder>,
}

impl Ticket {
    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn answer(mut self, response: Response) {
        debug_assert_eq!(response.id, self.id);
        if let Some(responder) = self.responder.take() {
            responder.send(&response);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(responder) = self.responder.take() {
            responder.send(&Response::error(
                self.id,
                "granary: internal error: the request was dropped unanswered",
            ));
        }
    }
}

/// Answers a get with an entry of the local tier, counting the hit.
pub fn answer_hit(stats: &Stats, ticket: Ticket, hit: Hit) {
    match disk_path(hit.object) {
        Ok(path) => answer_entry(stats, ticket, &hit.entry, path),
        Err(e) => fail(stats, ticket, &e),
    }
}

/// Answers a get with `entry`, whose output is at `path`, counting the hit.
pub fn answer_entry(stats: &Stats, ticket: Ticket, entry: &ActionEntry, path: String) {
    add(&stats.hits, 1);
    add(&stats.hit_bytes, entry.size);
    let id = ticket.id();
    ticket.answer(Response::hit(
        id,
        entry.output_id,
        entry.size,
        entry.put_time,
        path,
    ));
}

/// Answers a request with an error, counting it.
pub fn fail(stats: &Stats, ticket: Ticket, error: &dyn fmt::Display) {
    add(&stats.errors, 1);
    tracing::debug!("request {} failed: {error}", ticket.id());
    let id = ticket.id();
    ticket.answer(Response::error(id, format!("granary: {error}")));
}

/// A path that the protocol cannot carry.
#[derive(Debug, thiserror::Error)]
#[error("the path {0} is not valid UTF-8")]
pub struct NotUtf8(String);

/// A path as the protocol carries it. The cache directory was checked to be
/// UTF-8 at start, so this fails only if that check is ever removed.
pub fn disk_path(path: PathBuf) -> Result<String, NotUtf8> {
    path.into_os_string()
        .into_string()
        .map_err(|p| NotUtf8(p.to_string_lossy().into_owned()))
}
