//! `granary prog`: the GOCACHEPROG engine.
//!
//! The `go` command writes requests to our stdin and waits, goroutine by
//! goroutine, for their answers on our stdout. cmd/go holds one lock while it
//! writes a whole request, body included, so a slow reader stalls the build.
//! Hence the shape:
//!
//! - The main thread reads requests with [`RequestReader`]. It answers gets
//!   of the local tier itself: a lookup is five small system calls on files
//!   in the page cache, cheaper than waking another thread, and a warm build
//!   is a thousand gets in a row (see "Performance" in ARCHITECTURE.md).
//! - Puts go to a few worker threads, which hash and write bodies. The main
//!   thread decodes a body and hands it on: whole when small, else in chunks
//!   through a bounded channel, so memory stays bounded for any body size
//!   and the reader never waits on a disk write.
//! - Every request becomes a [`Ticket`], which guarantees exactly one answer;
//!   whoever finishes a request writes its line to stdout under a lock
//!   ([`Responder`]), so there is no writer thread to hop through.
//!
//! `close` (or the end of stdin) stops the reading; the job queue is closed,
//! the workers drain it and exit, and only then is `close` answered.
//!
//! With a remote tier (see [`remote`]), a local miss hands its ticket to an
//! asynchronous remote lookup instead of answering at once, so the reader
//! never waits on the network, and a stored put is queued for upload. The
//! remote's manifests are prefetched in the background from the start, and
//! a manifest of what the run used is published at close (see
//! [`prefetch`]).

mod prefetch;
mod remote;
mod respond;
pub mod stats;

use std::io::{self, BufReader, Write};
use std::path::PathBuf;
use std::process::{ChildStdin, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender};
use granary_protocol::{BodyError, FramingError, Hash, Incoming, Request, RequestReader, Response};
use granary_store::{ActionId, Hit, Lookup, ObjectWriter, OutputId, Store};

use crate::config::Upkeep;
use crate::history;
use remote::Remote;
pub use remote::RemoteOptions;
use respond::{Responder, Ticket};
use stats::{RemoteState, Stats, add};

/// Options of `granary prog` beyond the cache directory.
#[derive(Debug, Default)]
pub struct Options {
    pub stats_file: Option<PathBuf>,
    pub verbose: bool,
    /// The trim policy, unless the configuration is broken: then nothing
    /// is trimmed (the build must go on).
    pub upkeep: Option<Upkeep>,
    /// The remote tier, if one is set and usable.
    pub remote: Option<RemoteOptions>,
}

/// Puts waiting for a worker. Bounded, so that a stalled disk pushes back on
/// the reader (and so on the go command) instead of filling memory.
const JOB_QUEUE: usize = 64;
/// Put bodies up to this size travel whole with their job; larger ones stream.
const INLINE_BODY_LIMIT: u64 = 256 * 1024;
/// Chunks of a streamed body in flight between the reader and its worker.
const STREAM_DEPTH: usize = 8;
/// Read size on stdin; a decoded chunk is at most three quarters of it.
const STDIN_BUFFER: usize = 256 * 1024;

/// Runs the helper until `close` or the end of stdin.
pub fn run(dir: PathBuf, options: Options) -> anyhow::Result<ExitCode> {
    let started = (SystemTime::now(), Instant::now());
    let responder = Responder::stdout();
    // Before anything slow: cmd/go waits for this message.
    responder.send(&Response::handshake());

    if dir.to_str().is_none() {
        anyhow::bail!(
            "the cache directory {} is not valid UTF-8, so it cannot be sent to the go command; \
             choose another with --dir or GRANARY_DIR",
            dir.display()
        );
    }
    let store = Store::open(&dir).with_context(|| {
        format!(
            "cannot use {} as the cache directory; choose another with --dir or GRANARY_DIR",
            dir.display()
        )
    })?;
    let remote = match options.remote.map(Remote::start).transpose() {
        Ok(remote) => remote,
        Err(e) => {
            tracing::warn!("cannot start the remote tier ({e}); building with the local cache");
            None
        }
    };
    let engine = Arc::new(Engine {
        store,
        stats: Stats::default(),
        upkeep: options.upkeep,
        trim_start: Mutex::new(None),
        remote,
    });
    engine.start_prefetch();

    let (jobs, queue) = crossbeam_channel::bounded(JOB_QUEUE);
    let workers = (0..worker_count())
        .map(|i| {
            let engine = engine.clone();
            let queue = queue.clone();
            thread::Builder::new()
                .name(format!("granary-worker-{i}"))
                .spawn(move || {
                    if i == 0 {
                        engine.trim_if_due();
                    }
                    engine.work(queue)
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .context("cannot start worker threads")?;
    drop(queue);

    let stdin = io::stdin();
    let mut reader = RequestReader::new(BufReader::with_capacity(STDIN_BUFFER, stdin.lock()));
    let outcome = read_requests(&mut reader, &responder, &jobs, &engine);

    drop(jobs);
    for worker in workers {
        if worker.join().is_err() {
            tracing::error!("a worker thread panicked; its requests were answered with errors");
        }
    }
    if let Some(remote) = &engine.remote {
        engine.finish_remote(remote);
    }
    let (close, framing_error) = match outcome {
        Ok(close) => (close, None),
        Err(e) => (None, Some(e)),
    };
    let remote_state = engine
        .remote
        .as_ref()
        .map_or_else(RemoteState::default, Remote::state);
    let summary = engine
        .stats
        .summary(started.0, started.1.elapsed(), remote_state);
    if summary.served()
        && let Err(e) = history::append(&dir, &summary)
    {
        tracing::debug!("cannot record this run in the statistics history: {e:#}");
    }
    if let Some(path) = &options.stats_file
        && let Err(e) = summary.write_to(path)
    {
        tracing::warn!("{e:#}");
    }
    if options.verbose {
        eprintln!("{}", summary.line());
    }
    if let Some(ticket) = close {
        let id = ticket.id();
        ticket.answer(Response::closed(id));
    }
    match framing_error {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => {
            eprintln!("granary: error: {e}; cannot follow the go command's requests any more");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn worker_count() -> usize {
    let cpus = thread::available_parallelism().map_or(2, |n| n.get());
    (cpus * 2).clamp(4, 16)
}

/// Reads requests until `close`, whose ticket it returns, or the end of
/// input. Returns an error when the request stream can no longer be followed.
fn read_requests<R: io::BufRead>(
    reader: &mut RequestReader<R>,
    responder: &Responder,
    jobs: &Sender<PutJob>,
    engine: &Arc<Engine>,
) -> Result<Option<Ticket>, FramingError> {
    let stats = &engine.stats;
    loop {
        let request = match reader.next_request()? {
            Incoming::Request(request) => request,
            Incoming::Rejected { id, error } => {
                fail(stats, responder.ticket(id), &error);
                continue;
            }
            Incoming::End => return Ok(None),
        };
        let ticket = responder.ticket(request.id());
        match request {
            Request::Get { action_id, .. } => engine.get(ticket, action_id),
            Request::Put {
                action_id,
                output_id,
                body_size,
                ..
            } => {
                let put = Put {
                    ticket,
                    action: action_id,
                    output: output_id,
                    size: body_size,
                };
                read_put(reader, jobs, stats, put)?;
            }
            Request::Close { .. } => return Ok(Some(ticket)),
        }
    }
}

/// Reads a put's body and queues the put. A bad body is answered with an
/// error: here when it was to travel whole, by the worker when it was
/// streaming.
fn read_put<R: io::BufRead>(
    reader: &mut RequestReader<R>,
    jobs: &Sender<PutJob>,
    stats: &Stats,
    put: Put,
) -> Result<(), FramingError> {
    let error = if put.size <= INLINE_BODY_LIMIT {
        let mut body = Vec::with_capacity(put.size as usize);
        match reader.read_body(&mut body) {
            Ok(_) => {
                let _ = jobs.send(PutJob {
                    put,
                    body: Body::Inline(body),
                });
                return Ok(());
            }
            Err(error) => {
                fail(stats, put.ticket, &error);
                error
            }
        }
    } else {
        let (chunks, stream) = crossbeam_channel::bounded(STREAM_DEPTH);
        let _ = jobs.send(PutJob {
            put,
            body: Body::Streamed(stream),
        });
        match reader.read_body(&mut ChunkSink(&chunks)) {
            Ok(_) => {
                let _ = chunks.send(Chunk::End);
                return Ok(());
            }
            Err(error) => {
                let _ = chunks.send(Chunk::Failed(error.to_string()));
                error
            }
        }
    };
    match error {
        BodyError::Framing(e) => Err(e),
        BodyError::Invalid(_) | BodyError::Sink(_) => Ok(()),
    }
}

/// Answers a request with an error, counting it.
fn fail(stats: &Stats, ticket: Ticket, error: &dyn std::fmt::Display) {
    add(&stats.errors, 1);
    tracing::debug!("request {} failed: {error}", ticket.id());
    let id = ticket.id();
    ticket.answer(Response::error(id, format!("granary: {error}")));
}

/// A put request, before its body.
struct Put {
    ticket: Ticket,
    action: Hash,
    output: Hash,
    size: u64,
}

/// A put whose body the reader has read (or is streaming).
struct PutJob {
    put: Put,
    body: Body,
}

enum Body {
    Inline(Vec<u8>),
    Streamed(Receiver<Chunk>),
}

enum Chunk {
    Data(Vec<u8>),
    /// The body is complete.
    End,
    /// The body is bad; the message says why.
    Failed(String),
}

/// Passes decoded body bytes to the worker that stores them.
struct ChunkSink<'a>(&'a Sender<Chunk>);

impl Write for ChunkSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .send(Chunk::Data(buf.to_vec()))
            .map_err(|_| io::Error::other("the worker storing the body stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the workers share.
struct Engine {
    store: Store,
    stats: Stats,
    upkeep: Option<Upkeep>,
    /// The background trim's stdin, held open until this process ends.
    trim_start: Mutex<Option<ChildStdin>>,
    remote: Option<Remote>,
}

impl Engine {
    /// Starts `granary trim --if-due` in the background when the last trim
    /// is older than the interval. A process of its own, because a trim of
    /// a large cache may outlast a short build, and after `close` the go
    /// command waits for this one to close its stdout (or kills it); the
    /// child inherits none of our pipes, so the go command never waits for
    /// it. It waits for the end of this process, so as not to take CPU from
    /// the build.
    fn trim_if_due(&self) {
        let Some(upkeep) = self.upkeep else { return };
        if upkeep.trim_interval == Duration::MAX || !self.store.trim_due(upkeep.trim_interval) {
            return;
        }
        let spawned = std::env::current_exe().and_then(|exe| {
            Command::new(exe)
                .arg("--dir")
                .arg(self.store.dir())
                .args(["trim", "--if-due", "--after-stdin"])
                .args(policy_args(&upkeep))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        });
        match spawned {
            Ok(mut child) => {
                tracing::info!(
                    "trimming the cache in the background once this run ends (process {})",
                    child.id()
                );
                // Closed when this process ends: the trim starts then.
                *self
                    .trim_start
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = child.stdin.take();
            }
            Err(e) => tracing::warn!("cannot start a background trim: {e}"),
        }
    }

    fn work(self: &Arc<Self>, queue: Receiver<PutJob>) {
        for put in queue {
            self.put(put);
        }
    }

    fn get(self: &Arc<Self>, ticket: Ticket, action: Hash) {
        add(&self.stats.gets, 1);
        let id = ticket.id();
        match self.store.get(&ActionId(action)) {
            Lookup::Hit(hit) => self.answer_hit(ticket, action, hit),
            Lookup::Miss(reason) => {
                tracing::debug!("get {id}: miss for action {}: {reason:?}", ActionId(action));
                if reason.is_corruption() {
                    add(&self.stats.corrupt_entries, 1);
                    tracing::info!(
                        "damaged cache entry for action {} ({reason:?}); treated as a miss",
                        ActionId(action)
                    );
                }
                if let Some(remote) = &self.remote
                    && remote.is_on()
                {
                    return self.remote_get(remote, ticket, action);
                }
                add(&self.stats.misses, 1);
                ticket.answer(Response::miss(id));
            }
        }
    }

    /// Answers with an entry of the local tier.
    fn answer_hit(&self, ticket: Ticket, action: Hash, hit: Hit) {
        match disk_path(hit.object) {
            Ok(path) => {
                add(&self.stats.hits, 1);
                add(&self.stats.hit_bytes, hit.entry.size);
                self.record_use(action);
                let id = ticket.id();
                ticket.answer(Response::hit(
                    id,
                    hit.entry.output_id.0,
                    hit.entry.size,
                    hit.entry.put_time,
                    path,
                ));
            }
            Err(e) => fail(&self.stats, ticket, &e),
        }
    }

    /// Notes that this run used `action`, for the manifest it publishes.
    fn record_use(&self, action: Hash) {
        if let Some(remote) = &self.remote {
            remote
                .used
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(action);
        }
    }

    fn put(self: &Arc<Self>, job: PutJob) {
        let PutJob {
            put:
                Put {
                    ticket,
                    action,
                    output,
                    size,
                },
            body,
        } = job;
        let written = match body {
            Body::Inline(bytes) => self.write_inline(&OutputId(output), &bytes),
            Body::Streamed(stream) => self.write_streamed(&OutputId(output), stream),
        };
        let put_time = SystemTime::now();
        let stored = written.and_then(|writer| {
            self.store
                .put_as_of(&ActionId(action), writer, OutputId(output), size, put_time)
                .map_err(|e| e.to_string())
        });
        match stored.and_then(|stored| Ok((disk_path(stored.object.clone())?, stored))) {
            Ok((path, stored)) => {
                add(&self.stats.puts, 1);
                add(&self.stats.put_bytes, size);
                if stored.reused {
                    add(&self.stats.reused_objects, 1);
                }
                let id = ticket.id();
                tracing::debug!("put {id}: action {} stored {size} bytes", ActionId(action));
                ticket.answer(Response::stored(id, path));
                self.record_use(action);
                if let Some(remote) = &self.remote {
                    let output = OutputId(output);
                    self.queue_upload(remote, action, output, put_time, stored.object);
                }
            }
            Err(message) => fail(&self.stats, ticket, &message),
        }
    }

    fn write_inline(&self, output: &OutputId, body: &[u8]) -> Result<ObjectWriter, String> {
        let mut writer = self
            .store
            .object_writer(output)
            .map_err(|e| e.to_string())?;
        writer.write_all(body).map_err(write_error)?;
        Ok(writer)
    }

    /// Writes chunks as they arrive. Keeps draining the stream after a write
    /// error, so that the reader never blocks on a dead worker.
    fn write_streamed(
        &self,
        output: &OutputId,
        stream: Receiver<Chunk>,
    ) -> Result<ObjectWriter, String> {
        let mut writer = self.store.object_writer(output).map_err(|e| e.to_string());
        loop {
            match stream.recv() {
                Ok(Chunk::Data(data)) => {
                    if let Ok(w) = &mut writer
                        && let Err(e) = w.write_all(&data)
                    {
                        writer = Err(write_error(e));
                    }
                }
                Ok(Chunk::End) => return writer,
                Ok(Chunk::Failed(message)) => return Err(message),
                Err(_) => return Err("the put body was cut off".to_owned()),
            }
        }
    }
}

/// The flags that give a `granary trim` this upkeep policy.
fn policy_args(upkeep: &Upkeep) -> Vec<String> {
    let age = |d: Duration| {
        if d == Duration::MAX {
            "none".to_owned()
        } else {
            format!("{}ms", d.as_millis())
        }
    };
    let size = |n: u64| {
        if n == u64::MAX {
            "none".to_owned()
        } else {
            n.to_string()
        }
    };
    let p = &upkeep.policy;
    vec![
        format!("--max-age={}", age(p.max_age)),
        format!("--max-size={}", size(p.max_size)),
        format!("--min-free={}", p.min_free),
        format!("--grace={}", age(p.grace)),
        format!("--trim-interval={}", age(upkeep.trim_interval)),
    ]
}

fn write_error(e: io::Error) -> String {
    format!("cannot write the put body to the cache: {e}")
}

/// A path as the protocol carries it. The cache directory was checked to be
/// UTF-8 at start, so this fails only if that check is ever removed.
fn disk_path(path: PathBuf) -> Result<String, String> {
    path.into_os_string()
        .into_string()
        .map_err(|p| format!("the path {} is not valid UTF-8", p.to_string_lossy()))
}
