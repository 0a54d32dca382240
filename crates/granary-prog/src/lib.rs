//! granary's GOCACHEPROG engine: everything `granary prog` does between
//! reading the go command's requests and writing its answers.
//!
//! [`run`] takes the request stream, the answer stream, the local tier and
//! the [`Options`] (the remote tier among them), serves until `close` or
//! the end of input, and returns the run's [`Summary`]. The binary hands it
//! stdin and stdout; tests hand it byte buffers. Everything from the
//! command line or the config file arrives resolved: this crate knows
//! nothing of clap, `granary.toml` or the upkeep commands.
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
//! - Every request becomes a `Ticket` (`respond.rs`), which guarantees exactly one answer;
//!   whoever finishes a request writes its line to stdout under a lock
//!   (`Responder`), so there is no writer thread to hop through.
//!
//! `close` (or the end of stdin) stops the reading; the job queue is closed,
//! the workers drain it and exit, and only then is `close` answered.
//!
//! With a remote tier (see `remote.rs`), a local miss hands its ticket to an
//! asynchronous remote lookup instead of answering at once, so the reader
//! never waits on the network, and a stored put is queued for upload. The
//! remote's manifests are prefetched in the background from the start, and
//! a manifest of what the run used is published at close (see
//! `prefetch.rs` and `publish.rs`). A detached run (`Options::detach`)
//! answers `close` first and publishes after.

pub mod history;
mod prefetch;
mod publish;
mod remote;
mod respond;
pub mod stats;

use std::fmt;
use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use granary_id::Id;
use granary_protocol::{BodyError, FramingError, Incoming, Request, RequestReader, Response};
use granary_remote::Made;
use granary_store::{Hit, Lookup, ObjectWriter, Store};

use prefetch::Prefetch;
pub use publish::JOURNALS;
use remote::Remote;
pub use remote::{RemoteOptions, Scopes};
use respond::{Responder, Ticket, answer_hit, disk_path, fail};
pub use stats::Summary;
use stats::{RemoteState, Stats, add};

/// How a run is to be served.
#[derive(Default)]
pub struct Options {
    /// Where to write the run's statistics at close.
    pub stats_file: Option<PathBuf>,
    /// Where to append, at close, the IDs of the actions answered as
    /// misses, one hex ID a line (`granary explain` reads them).
    pub misses_file: Option<PathBuf>,
    /// Print a summary line on stderr at close.
    pub verbose: bool,
    /// The remote tier, if one is set and usable.
    pub remote: Option<RemoteOptions>,
    /// Runs on a worker thread once the handshake is out, before that
    /// worker takes its first put: for slow start-up work that must not
    /// delay the go command (the binary starts its background trim here).
    pub on_start: Option<Box<dyn FnOnce() + Send>>,
    /// With a remote tier: answer `close` before the uploads and the
    /// manifest are done, then call this, then finish them and write the
    /// statistics, so that the go command exits without waiting on the
    /// network. The binary lets go of stdout and stderr here: the go
    /// command waits for stdout to close, and whatever reads its output
    /// for stderr to.
    pub detach: Option<Box<dyn FnOnce() + Send>>,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("stats_file", &self.stats_file)
            .field("misses_file", &self.misses_file)
            .field("verbose", &self.verbose)
            .field("remote", &self.remote)
            .field("on_start", &self.on_start.is_some())
            .field("detach", &self.detach.is_some())
            .finish()
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    pub summary: Summary,
    /// Why the request stream could no longer be followed, if it could
    /// not: the go command sent something it never sends.
    pub framing_error: Option<FramingError>,
}

/// Why a run could not start. The handshake is out by then, so the go
/// command reports the helper's exit with this message.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the cache directory {0} is not valid UTF-8, so it cannot be sent to the go command; \
         choose another with --dir or GRANARY_DIR"
    )]
    DirNotUtf8(PathBuf),
    #[error("cannot start worker threads: {0}")]
    Threads(#[source] io::Error),
}

/// Puts waiting for a worker. Bounded, so that a stalled disk pushes back on
/// the reader (and so on the go command) instead of filling memory.
const JOB_QUEUE: usize = 64;
/// Put bodies up to this size travel whole with their job; larger ones stream.
const INLINE_BODY_LIMIT: u64 = 256 * 1024;
/// Chunks of a streamed body in flight between the reader and its worker.
const STREAM_DEPTH: usize = 8;

/// Serves the requests on `input`, answering on `output`, until `close` or
/// the end of input. The statistics are written (`stats_file`, and the
/// history in the cache directory) before `close` is answered, so they are
/// there when the go command exits; a detached run writes them once it
/// has published, after `close`.
pub fn run<R, W>(input: R, output: W, store: Store, options: Options) -> Result<Outcome, StartError>
where
    R: BufRead,
    W: Write + Send + 'static,
{
    let started = (SystemTime::now(), Instant::now());
    let responder = Responder::new(Box::new(output));
    // Before anything slow: cmd/go waits for this message.
    responder.send(&Response::handshake());

    let dir = store.dir().to_owned();
    if dir.to_str().is_none() {
        return Err(StartError::DirNotUtf8(dir));
    }
    let stats = Arc::new(Stats::default());
    if options.misses_file.is_some() {
        stats.list_misses();
    }
    let (remote, runtime) = options
        .remote
        .map(|options| Remote::start(options, store.clone(), stats.clone()))
        .transpose()
        .unwrap_or_else(|e| {
            tracing::warn!("cannot start the remote tier ({e}); building with the local cache");
            None
        })
        .map(|(remote, runtime)| (Arc::new(Prefetch::new(Arc::new(remote))), runtime))
        .unzip();
    if let Some(prefetch) = &remote {
        prefetch.start();
    }
    let engine = Arc::new(Engine {
        store,
        stats,
        remote,
    });

    let (jobs, queue) = crossbeam_channel::bounded(JOB_QUEUE);
    let on_start = Arc::new(Mutex::new(options.on_start));
    let workers = (0..worker_count())
        .map(|i| {
            let engine = engine.clone();
            let queue = queue.clone();
            let on_start = on_start.clone();
            thread::Builder::new()
                .name(format!("granary-worker-{i}"))
                .spawn(move || {
                    let start = on_start
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take();
                    if let Some(start) = start {
                        start();
                    }
                    engine.work(queue)
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(StartError::Threads)?;
    drop(queue);

    let mut reader = RequestReader::new(input);
    let outcome = read_requests(&mut reader, &responder, &jobs, &engine);

    drop(jobs);
    for worker in workers {
        if worker.join().is_err() {
            tracing::error!("a worker thread panicked; its requests were answered with errors");
        }
    }
    tracing::debug!("closing");
    let (mut close, framing_error) = match outcome {
        Ok(close) => (close, None),
        Err(e) => (None, Some(e)),
    };
    if let Some(prefetch) = &engine.remote {
        prefetch.finish();
    }
    // Before any wait on the remote: `granary explain` reads them once the
    // go command exits.
    if let Some(path) = &options.misses_file
        && let Err(e) = append_misses(path, &engine.stats.take_misses())
    {
        tracing::warn!("cannot append the misses to {}: {e}", path.display());
    }
    if let Some(detach) = options.detach.filter(|_| engine.remote.is_some()) {
        if let Some(ticket) = close.take() {
            let id = ticket.id();
            ticket.answer(Response::closed(id));
        }
        detach();
        tracing::debug!("detached");
    }
    if let Some(prefetch) = &engine.remote {
        prefetch.remote.finish(publish::publish(prefetch));
    }
    // Cancels what the remote still has running (uploads given up at
    // close) here, without waiting, rather than when its last task drops
    // the remote on a thread of the runtime itself.
    if let Some(runtime) = runtime {
        runtime.shutdown_background();
    }
    let remote_state = engine
        .remote
        .as_ref()
        .map_or_else(RemoteState::default, |prefetch| prefetch.remote.state());
    let summary = engine
        .stats
        .summary(started.0, started.1.elapsed(), remote_state);
    if summary.served()
        && let Err(e) = history::append(&dir, &summary)
    {
        tracing::debug!("cannot record this run in the statistics history: {e}");
    }
    if let Some(path) = &options.stats_file
        && let Err(e) = summary.write_to(path)
    {
        tracing::warn!("{e}");
    }
    if options.verbose {
        eprintln!("{}", summary.line());
    }
    tracing::debug!("closed");
    if let Some(ticket) = close {
        let id = ticket.id();
        ticket.answer(Response::closed(id));
    }
    Ok(Outcome {
        summary,
        framing_error,
    })
}

/// Appends `misses` to the file at `path` in one write, so that the
/// helpers of several go commands at once do not mix their lines.
fn append_misses(path: &std::path::Path, misses: &[Id]) -> io::Result<()> {
    let mut text = String::with_capacity(misses.len() * 65);
    for action in misses {
        text.push_str(&action.to_string());
        text.push('\n');
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())
}

fn worker_count() -> usize {
    let cpus = thread::available_parallelism().map_or(2, |n| n.get());
    (cpus * 2).clamp(4, 16)
}

/// Reads requests until `close`, whose ticket it returns, or the end of
/// input. Returns an error when the request stream can no longer be followed.
fn read_requests<R: BufRead>(
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
fn read_put<R: BufRead>(
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

/// A put request, before its body.
struct Put {
    ticket: Ticket,
    action: Id,
    output: Id,
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
    stats: Arc<Stats>,
    /// The remote tier, if the run has one: gets go through its prefetch,
    /// which always has the remote.
    remote: Option<Arc<Prefetch>>,
}

impl Engine {
    fn work(self: &Arc<Self>, queue: Receiver<PutJob>) {
        for put in queue {
            self.put(put);
        }
    }

    fn get(self: &Arc<Self>, ticket: Ticket, action: Id) {
        add(&self.stats.gets, 1);
        let id = ticket.id();
        match self.store.get(&action) {
            Lookup::Hit(hit) => self.answer_hit(ticket, action, hit),
            Lookup::Miss(reason) => {
                tracing::debug!("get {id}: miss for action {}: {reason:?}", action);
                if reason.is_corruption() {
                    add(&self.stats.corrupt_entries, 1);
                    tracing::info!(
                        "damaged cache entry for action {} ({reason:?}); treated as a miss",
                        action
                    );
                }
                if let Some(prefetch) = &self.remote
                    && prefetch.remote.is_on()
                {
                    return prefetch.get(ticket, action);
                }
                self.stats.miss(action);
                ticket.answer(Response::miss(id));
            }
        }
    }

    /// Answers with an entry of the local tier.
    fn answer_hit(&self, ticket: Ticket, action: Id, hit: Hit) {
        match &self.remote {
            Some(prefetch) => prefetch.remote.answer_local(ticket, action, hit),
            None => answer_hit(&self.stats, ticket, hit),
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
            Body::Inline(bytes) => self.write_inline(&output, &bytes),
            Body::Streamed(stream) => self.write_streamed(&output, stream),
        };
        let put_time = SystemTime::now();
        let stored = written.and_then(|writer| {
            let stored = self
                .store
                .put_as_of(&action, writer, output, size, put_time)?;
            Ok((disk_path(stored.object.clone())?, stored))
        });
        match stored {
            Ok((path, stored)) => {
                add(&self.stats.puts, 1);
                let build_time = self.stats.put_after_miss(&action);
                add(&self.stats.put_bytes, size);
                if stored.reused {
                    add(&self.stats.reused_objects, 1);
                }
                let id = ticket.id();
                tracing::debug!("put {id}: action {} stored {size} bytes", action);
                ticket.answer(Response::stored(id, path));
                if let Some(prefetch) = &self.remote {
                    let remote = &prefetch.remote;
                    remote.record_put(action, build_time);
                    let made = Made {
                        action,
                        output,
                        put_time,
                        build_time,
                    };
                    remote.queue_upload(made, stored.object);
                }
            }
            Err(e) => fail(&self.stats, ticket, &e),
        }
    }

    fn write_inline(&self, output: &Id, body: &[u8]) -> Result<ObjectWriter, PutError> {
        let mut writer = self.store.object_writer(output)?;
        writer.write_all(body).map_err(PutError::Write)?;
        Ok(writer)
    }

    /// Writes chunks as they arrive. Keeps draining the stream after a write
    /// error, so that the reader never blocks on a dead worker.
    fn write_streamed(
        &self,
        output: &Id,
        stream: Receiver<Chunk>,
    ) -> Result<ObjectWriter, PutError> {
        let mut writer = self.store.object_writer(output).map_err(PutError::from);
        loop {
            match stream.recv() {
                Ok(Chunk::Data(data)) => {
                    if let Ok(w) = &mut writer
                        && let Err(e) = w.write_all(&data)
                    {
                        writer = Err(PutError::Write(e));
                    }
                }
                Ok(Chunk::End) => return writer,
                Ok(Chunk::Failed(message)) => return Err(PutError::BadBody(message)),
                Err(_) => return Err(PutError::CutOff),
            }
        }
    }
}

/// Why a put was not stored: answered to the go command as an error.
#[derive(Debug, thiserror::Error)]
enum PutError {
    #[error(transparent)]
    Store(#[from] granary_store::StoreError),
    #[error("cannot write the put body to the cache: {0}")]
    Write(#[source] io::Error),
    /// What the request reader found wrong with a streamed body.
    #[error("{0}")]
    BadBody(String),
    #[error("the put body was cut off")]
    CutOff,
    #[error(transparent)]
    Path(#[from] respond::NotUtf8),
}
