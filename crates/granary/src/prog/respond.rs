//! The one writer of stdout, and the tickets that make every request
//! answered exactly once.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use granary_protocol::Response;

/// Writes responses to stdout, one whole line at a time.
///
/// Architecture invariant: in `prog` mode nothing else writes to stdout.
#[derive(Debug, Clone)]
pub struct Responder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    out: Mutex<io::Stdout>,
    /// Set once a write fails: the go command has gone away.
    broken: AtomicBool,
}

impl Responder {
    pub fn stdout() -> Responder {
        Responder {
            inner: Arc::new(Inner {
                out: Mutex::new(io::stdout()),
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
