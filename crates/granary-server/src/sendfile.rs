//! Reads of stored blobs over plain HTTP/1.1, answered before hyper takes
//! the connection, a file's bytes sent by the kernel (`sendfile`).
//!
//! hyper sends a body only from memory (hyperium/hyper#3026), so every
//! byte of a large GET through it is read into a buffer and copied out
//! again. A plain connection therefore starts here. While its requests are
//! GETs and HEADs of blobs this server holds, or misses it can answer at
//! once, they are answered here: the head, then the file, from the page
//! cache to the socket without passing through the server. The first other
//! request hands the connection to hyper for the rest of its life, with
//! the bytes read so far. Other requests are a PUT, a batch, a blob still
//! arriving or read through the backing store, a compressed blob for a
//! client that wants it decoded, a refused or missing token, HTTP/2, or
//! anything else this module does not parse.
//!
//! Architecture invariant: a request answered here has no body: no
//! `Content-Length`, no `Transfer-Encoding`, no `Expect`, no `Upgrade`. Its
//! end is the end of its head as httparse, hyper's own parser, finds it, so
//! this module and hyper cannot disagree on where the next request starts
//! (the way requests are smuggled). Whatever is in doubt goes to hyper.
//!
//! Every wait is bounded by the idle timeout, as on hyper's connections: a
//! request head that is not whole within it (however its bytes trickle
//! in), and a client that stops reading. Between requests, a closing
//! server ends the connection.

use std::fs::File;
use std::io;
use std::time::{Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::batch;
use crate::dashboard::Face;
use crate::disk::{Blob, Stored};
use crate::grant::Access;
use crate::http::SMALL_BLOB;
use crate::key::{Key, Kind};
use crate::service::{Held, OpenedNow, Service};

/// A request head longer than this is hyper's to judge.
const MAX_HEAD: usize = 16 * 1024;

/// Headers a request answered here may have; more go to hyper.
const MAX_HEADERS: usize = 32;

/// How a connection left this module.
pub enum Ended {
    /// Answered and closed, or given up (an idle client, a closing server).
    Closed,
    /// For hyper, with the bytes already read from it, which start with
    /// the next request.
    HandedOff(Bytes),
}

/// Answers the connection's reads of stored blobs until a request that
/// hyper must answer, the client leaves, or `closing` is cancelled
/// between requests.
pub async fn answer_reads(
    stream: &mut TcpStream,
    service: &Service,
    closing: &CancellationToken,
) -> io::Result<Ended> {
    let idle = service.idle_timeout;
    let mut buffer = BytesMut::with_capacity(4096);
    // Bytes alone are not progress (as for `Stalls`): a head trickled a
    // byte at a time must still be whole within the idle timeout.
    let mut deadline = tokio::time::Instant::now() + idle;
    loop {
        let read = match parse(&buffer) {
            Parsed::Read(read) => read,
            Parsed::Other => return Ok(Ended::HandedOff(buffer.freeze())),
            Parsed::Partial if buffer.len() >= MAX_HEAD => {
                return Ok(Ended::HandedOff(buffer.freeze()));
            }
            Parsed::Partial => {
                let between_requests = buffer.is_empty();
                let received = tokio::select! {
                    received = tokio::time::timeout_at(deadline, stream.read_buf(&mut buffer)) => received,
                    () = closing.cancelled(), if between_requests => return Ok(Ended::Closed),
                };
                match received {
                    Ok(Ok(0)) | Err(_) => return Ok(Ended::Closed),
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => return Err(e),
                }
            }
        };
        let started = Instant::now();
        let Some(answer) = answer(service, &read).await else {
            return Ok(Ended::HandedOff(buffer.freeze()));
        };
        buffer.advance(read.head_length);
        let status = answer.status();
        service.dashboard.count(Face::Http);
        if read.key.kind == Kind::Ac {
            service.dashboard.count_namespace(&read.instance);
        }
        let method = if read.head { "HEAD" } else { "GET" };
        let took = started.elapsed().as_secs_f64();
        service
            .metrics
            .answered(method, read.key.kind.name(), status, took);
        service.metrics.looked_up(read.key.kind, status == 200);
        send(stream, service, answer, read.close).await?;
        if read.close {
            stream.shutdown().await?;
            return Ok(Ended::Closed);
        }
        deadline = tokio::time::Instant::now() + idle;
    }
}

/// A request head, as far as this module is concerned.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// Not all here yet.
    Partial,
    /// A GET or HEAD of a blob, without a body, that this module may answer.
    Read(Read),
    /// Anything else: hyper's.
    Other,
}

#[derive(Debug, PartialEq, Eq)]
struct Read {
    head_length: usize,
    head: bool,
    key: Key,
    instance: String,
    authorization: Option<Vec<u8>>,
    zstd: bool,
    /// The client asked to close the connection after the answer.
    close: bool,
}

/// Parses the request head at the start of `bytes`.
fn parse(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_length = match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let head = match request.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Parsed::Other,
    };
    if request.version != Some(1) {
        return Parsed::Other;
    }
    let target = request.path.unwrap_or_default();
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let Some((key, instance)) = Key::from_path(path) else {
        return Parsed::Other;
    };
    let mut authorization = None;
    let mut accept_encoding = http::HeaderMap::new();
    let mut close = false;
    for header in request.headers.iter() {
        let name = header.name;
        let is = |other: &str| name.eq_ignore_ascii_case(other);
        if is("content-length") || is("transfer-encoding") || is("expect") || is("upgrade") {
            return Parsed::Other;
        } else if is("authorization") {
            if authorization.is_some() {
                return Parsed::Other;
            }
            authorization = Some(header.value.to_vec());
        } else if is("accept-encoding") {
            let Ok(value) = HeaderValue::from_bytes(header.value) else {
                return Parsed::Other;
            };
            accept_encoding.append(http::header::ACCEPT_ENCODING, value);
        } else if is("connection") {
            for option in header.value.split(|&byte| byte == b',') {
                let option = option.trim_ascii();
                if option.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !option.eq_ignore_ascii_case(b"keep-alive") {
                    return Parsed::Other;
                }
            }
        }
    }
    Parsed::Read(Read {
        head_length,
        head,
        key,
        instance: instance.to_owned(),
        authorization,
        zstd: batch::accepts_zstd(&accept_encoding),
        close,
    })
}

/// The fuzz target's check of [`parse`] on `bytes`.
pub fn check_parse(bytes: &[u8]) {
    if let Parsed::Read(read) = parse(bytes) {
        let head = &bytes[..read.head_length];
        // Lines may end in LF alone, as for hyper: the same parser.
        assert!(head.ends_with(b"\n"));
        assert_eq!(parse(head), Parsed::Read(read), "what follows changed it");
        assert_eq!(parse(&head[..head.len() - 1]), Parsed::Partial);
    }
}

/// What is sent back for a read answered here.
enum Answer {
    NotFound,
    /// A HEAD's answer: the blob's length.
    Length(u64),
    /// A small blob as it is stored, read already; or a zstd frame.
    Bytes {
        bytes: Bytes,
        compressed: bool,
    },
    /// A larger one, for the kernel to send from its file.
    File(Blob),
}

impl Answer {
    fn status(&self) -> u16 {
        match self {
            Answer::NotFound => 404,
            Answer::Length(_) | Answer::Bytes { .. } | Answer::File(_) => 200,
        }
    }
}

/// The answer to `read`, if it is one for this module: its client may
/// read the key, and the key is stored (and readable), or missing with
/// nowhere else to look.
async fn answer(service: &Service, read: &Read) -> Option<Answer> {
    // Not counted here: a refused token goes to hyper, which counts it.
    let identity = service.auth.identify(read.authorization.as_deref()).await;
    let allowed = identity.refusal.is_none()
        && identity.access >= Access::Read
        && (read.key.kind == Kind::Cas || identity.may_use_namespace(&read.instance, false));
    if !allowed {
        return None;
    }
    if read.head {
        return match service.held_now(&read.key)? {
            Held::Stored(size) => Some(Answer::Length(size)),
            Held::Absent => Some(Answer::NotFound),
            Held::InBacking => None,
        };
    }
    let blob = match service.open_now(&read.key, read.zstd) {
        OpenedNow::Stored(blob) => blob,
        OpenedNow::Missing => return Some(Answer::NotFound),
        OpenedNow::Later => return None,
    };
    match &blob.stored_in {
        Stored::File(_) if blob.stored > SMALL_BLOB => Some(Answer::File(blob)),
        // A read from the page cache or memory, shorter than a second
        // packet. One that fails is hyper's to answer (and to report).
        Stored::File(_) | Stored::Memory(_) => {
            let bytes = blob.read_stored().ok()?;
            let compressed = blob.compressed();
            Some(Answer::Bytes { bytes, compressed })
        }
    }
}

/// Writes `answer`: its head, then the blob's stored bytes, a small blob
/// in the same write as its head, a larger one sent from its file by the
/// kernel.
async fn send(
    stream: &mut TcpStream,
    service: &Service,
    answer: Answer,
    close: bool,
) -> io::Result<()> {
    let (status, length, compressed) = match &answer {
        Answer::NotFound => ("404 Not Found", 0, false),
        Answer::Length(length) => ("200 OK", *length, false),
        Answer::Bytes { bytes, compressed } => ("200 OK", bytes.len() as u64, *compressed),
        Answer::File(blob) => ("200 OK", blob.stored, blob.compressed()),
    };
    let mut head = format!("HTTP/1.1 {status}\r\ncontent-length: {length}\r\n");
    if compressed {
        head.push_str("content-encoding: zstd\r\nvary: accept-encoding\r\n");
    }
    if close {
        head.push_str("connection: close\r\n");
    }
    let date = httpdate::fmt_http_date(SystemTime::now());
    head.push_str(&format!("date: {date}\r\n\r\n"));
    let mut head = head.into_bytes();
    if let Answer::Bytes { bytes, .. } = &answer {
        head.extend_from_slice(bytes);
        service.metrics.bytes_sent.inc_by(bytes.len() as u64);
    }
    within(service.idle_timeout, stream.write_all(&head)).await?;
    if let Answer::File(blob) = &answer
        && let Stored::File(file) = &blob.stored_in
    {
        send_file(stream, service, file, blob.stored).await?;
    }
    // The blob's pin against eviction lives until here.
    drop(answer);
    Ok(())
}

/// Sends `length` bytes of `file` from its start, waiting for the socket
/// to take more at most the idle timeout at a time.
async fn send_file(
    stream: &TcpStream,
    service: &Service,
    file: &File,
    length: u64,
) -> io::Result<()> {
    // sendfile's own limit per call (Linux, any file system).
    const MOST_AT_ONCE: u64 = 0x7fff_f000;
    let mut offset = 0;
    while offset < length {
        let count = (length - offset).min(MOST_AT_ONCE) as usize;
        let sent = stream.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(stream, file, Some(&mut offset), count).map_err(io::Error::from)
        });
        match sent {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the file ended at {offset} of {length} bytes"),
                ));
            }
            Ok(sent) => {
                service.metrics.bytes_sent.inc_by(sent as u64);
                service.metrics.bytes_sent_by_kernel.inc_by(sent as u64);
                // A fast client could otherwise keep this thread for the
                // whole blob.
                tokio::task::consume_budget().await;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                within(service.idle_timeout, stream.writable()).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `io`, failed with `TimedOut` unless done within `limit`.
async fn within<T>(
    limit: std::time::Duration,
    io: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(limit, io).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client took nothing for {limit:?}"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex() -> String {
        "ab".repeat(32)
    }

    fn read_of(request: &str) -> Read {
        match parse(request.as_bytes()) {
            Parsed::Read(read) => read,
            other => panic!("{request:?}: {other:?}"),
        }
    }

    #[test]
    fn a_get_of_a_blob_is_read_here_up_to_the_end_of_its_head() {
        let hex = hex();
        let first = format!(
            "GET /team/main/ac/{hex}?x=1 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\n\
             Accept-Encoding: gzip\r\nAccept-Encoding: zstd\r\nConnection: keep-alive\r\n\r\n"
        );
        let pipelined = format!("{first}PUT /cas/{hex} HTTP/1.1\r\n");
        let read = read_of(&pipelined);
        assert_eq!(read.head_length, first.len());
        assert_eq!(read.instance, "team/main");
        assert_eq!(
            read.key,
            Key::from_path(&format!("/team/main/ac/{hex}")).unwrap().0
        );
        assert_eq!(read.authorization.as_deref(), Some(&b"Bearer t"[..]));
        assert!(read.zstd && !read.head && !read.close);

        let read = read_of(&format!(
            "HEAD /cas/{hex} HTTP/1.1\r\nconnection: Close\r\naccept-encoding: zstd;q=0\r\n\r\n"
        ));
        assert!(read.head && read.close && !read.zstd);
        assert_eq!(read.authorization, None);
    }

    #[test]
    fn whatever_is_in_doubt_goes_to_hyper() {
        let hex = hex();
        for request in [
            format!("PUT /cas/{hex} HTTP/1.1\r\n\r\n"),
            format!("GET /cas/{hex} HTTP/1.0\r\n\r\n"),
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_owned(),
            "GET /status HTTP/1.1\r\n\r\n".to_owned(),
            format!("GET /cas/{hex}x HTTP/1.1\r\n\r\n"),
            format!("GET http://h/cas/{hex} HTTP/1.1\r\n\r\n"),
            format!("GET /cas/{hex} HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
            format!("GET /cas/{hex} HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            format!("GET /cas/{hex} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            format!("GET /cas/{hex} HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"),
            format!("GET /cas/{hex} HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"),
            format!("GET /cas/{hex} HTTP/1.1\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n"),
            format!("GET /cas/{hex} HTTP/1.1\r\nX: \x01\r\n\r\n"),
            format!(
                "GET /cas/{hex} HTTP/1.1\r\n{}\r\n",
                "X: y\r\n".repeat(MAX_HEADERS + 1)
            ),
            format!("GET  /cas/{hex} HTTP/1.1\r\n\r\n"),
        ] {
            assert_eq!(parse(request.as_bytes()), Parsed::Other, "{request:?}");
        }
    }

    #[test]
    fn a_head_not_all_here_is_partial() {
        let request = format!("GET /cas/{} HTTP/1.1\r\nHost: h\r\n\r\n", hex());
        for end in 0..request.len() {
            assert_eq!(parse(&request.as_bytes()[..end]), Parsed::Partial, "{end}");
        }
    }
}
