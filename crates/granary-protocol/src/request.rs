//! Reading requests, and streaming put bodies out of their base64 line.

use std::io::{self, BufRead, ErrorKind, Write};

use serde::Deserialize;

use granary_id::{ID_SIZE, Id};

/// The longest request line accepted. Real ones are about 200 bytes; the
/// limit keeps a hostile line from growing memory without bound.
const MAX_LINE: usize = 64 * 1024;

/// A well-formed request from the `go` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Look up the output stored for `action_id`.
    Get { id: i64, action_id: Id },
    /// Store a body of `body_size` bytes whose SHA-256 is `output_id`. When
    /// `body_size` is positive, the body must be read with
    /// [`RequestReader::read_body`] before the next request.
    Put {
        id: i64,
        action_id: Id,
        output_id: Id,
        body_size: u64,
    },
    /// Finish pending work, answer, and exit.
    Close { id: i64 },
}

impl Request {
    /// The ID the response must echo.
    pub fn id(&self) -> i64 {
        match self {
            Request::Get { id, .. } | Request::Put { id, .. } | Request::Close { id } => *id,
        }
    }
}

/// What [`RequestReader::next_request`] found.
#[derive(Debug)]
pub enum Incoming {
    Request(Request),
    /// A request that cannot be served but whose ID is known. Its body, if it
    /// announced one, has already been skipped; answer it with an error.
    Rejected {
        id: i64,
        error: RequestError,
    },
    /// The input ended cleanly between requests.
    End,
}

/// One request is bad; the stream is still in step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("{command} request without {field}")]
    MissingField {
        command: &'static str,
        field: &'static str,
    },
    #[error("{field} is not valid base64")]
    NotBase64 { field: &'static str },
    #[error("{field} has {len} bytes; it must have {ID_SIZE}")]
    WrongIdLength { field: &'static str, len: usize },
    #[error("BodySize {0} is negative")]
    NegativeBodySize(i64),
    #[error("the put body line is missing")]
    MissingBody,
    #[error("the put body is not valid padded standard base64")]
    BodyNotBase64,
    #[error("the put body has more bytes than BodySize {expected}")]
    BodyTooLong { expected: u64 },
    #[error("the put body has {actual} bytes but BodySize is {expected}")]
    BodyTooShort { expected: u64, actual: u64 },
    #[error("the put body line ends without a closing quote")]
    UnterminatedBody,
    #[error("unexpected text after the put body")]
    TextAfterBody,
}

/// The request stream can no longer be followed.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("reading requests: {0}")]
    Io(#[from] io::Error),
    #[error("a request line is longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("a request is not a JSON object: {0}")]
    MalformedJson(serde_json::Error),
    #[error("a request has no integer ID")]
    MissingId,
    #[error("a request names its ID more than once, so it cannot be answered")]
    AmbiguousId,
    #[error("the input ended inside a put body")]
    TruncatedBody,
}

/// Why a put body could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is bad; the stream is still in step. Answer with an error.
    #[error(transparent)]
    Invalid(#[from] RequestError),
    /// The sink refused the bytes; the rest of the body was read and dropped,
    /// so the stream is still in step.
    #[error("storing the put body: {0}")]
    Sink(io::Error),
    /// The stream cannot be followed any more.
    #[error(transparent)]
    Framing(#[from] FramingError),
}

impl From<io::Error> for BodyError {
    fn from(e: io::Error) -> Self {
        BodyError::Framing(FramingError::Io(e))
    }
}

/// A request as it appears on the wire. Unknown fields are ignored so that a
/// newer `go` adding fields keeps working.
#[derive(Deserialize)]
struct WireRequest {
    #[serde(rename = "ID")]
    id: Option<i64>,
    #[serde(rename = "Command")]
    command: Option<String>,
    #[serde(rename = "ActionID")]
    action_id: Option<String>,
    #[serde(rename = "OutputID")]
    output_id: Option<String>,
    /// The name of `OutputID` in Go 1.21 to 1.23.
    #[serde(rename = "ObjectID")]
    object_id: Option<String>,
    #[serde(rename = "BodySize")]
    body_size: Option<i64>,
}

impl WireRequest {
    fn into_request(self, id: i64) -> Result<Request, RequestError> {
        let command = self.command.as_deref().unwrap_or("");
        match command {
            "get" => Ok(Request::Get {
                id,
                action_id: decode_id("get", "ActionID", self.action_id.as_deref())?,
            }),
            "put" => {
                let body_size = self.body_size.unwrap_or(0);
                if body_size < 0 {
                    return Err(RequestError::NegativeBodySize(body_size));
                }
                let output = self.output_id.as_deref().or(self.object_id.as_deref());
                Ok(Request::Put {
                    id,
                    action_id: decode_id("put", "ActionID", self.action_id.as_deref())?,
                    output_id: decode_id("put", "OutputID", output)?,
                    body_size: body_size as u64,
                })
            }
            "close" => Ok(Request::Close { id }),
            "" => Err(RequestError::MissingField {
                command: "a",
                field: "Command",
            }),
            other => Err(RequestError::UnknownCommand(other.to_owned())),
        }
    }
}

fn decode_id(
    command: &'static str,
    field: &'static str,
    text: Option<&str>,
) -> Result<Id, RequestError> {
    let text = text.ok_or(RequestError::MissingField { command, field })?;
    let bytes = base64_simd::STANDARD
        .decode_to_vec(text)
        .map_err(|_| RequestError::NotBase64 { field })?;
    Id::try_from(bytes.as_slice()).map_err(|_| RequestError::WrongIdLength {
        field,
        len: bytes.len(),
    })
}

/// How many times a JSON object names its ID (a map keeps only the last).
struct IdCount(usize);

impl<'de> Deserialize<'de> for IdCount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = IdCount;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<IdCount, A::Error> {
                let mut ids = 0;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    ids += usize::from(key == "ID");
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
                Ok(IdCount(ids))
            }
        }
        deserializer.deserialize_map(Keys)
    }
}

/// Extracts what can be saved from a line that is JSON but not a well-typed
/// request: its ID, to answer it, and its body size, to skip the body.
fn salvage(line: &[u8]) -> Option<(i64, u64)> {
    let value: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(line).ok()?;
    let id = value.get("ID")?.as_i64()?;
    let body_size = value.get("BodySize").and_then(|v| v.as_u64()).unwrap_or(0);
    Some((id, body_size))
}

/// Reads requests from `go` and streams their bodies.
#[derive(Debug)]
pub struct RequestReader<R> {
    input: R,
    line: Vec<u8>,
    /// The announced size of a put body not yet read by the caller.
    unread_body: Option<u64>,
}

impl<R: BufRead> RequestReader<R> {
    pub fn new(input: R) -> Self {
        RequestReader {
            input,
            line: Vec::with_capacity(512),
            unread_body: None,
        }
    }

    /// Reads the next request. A put body that the caller did not read is
    /// skipped first.
    pub fn next_request(&mut self) -> Result<Incoming, FramingError> {
        if let Some(size) = self.unread_body.take() {
            self.skip_body(size)?;
        }
        loop {
            if !self.read_line()? {
                return Ok(Incoming::End);
            }
            if !self.line.iter().all(u8::is_ascii_whitespace) {
                break;
            }
        }
        let wire: WireRequest = match serde_json::from_slice(&self.line) {
            Ok(wire) => wire,
            Err(error) => {
                if serde_json::from_slice::<IdCount>(&self.line).is_ok_and(|ids| ids.0 > 1) {
                    return Err(FramingError::AmbiguousId);
                }
                let Some((id, body_size)) = salvage(&self.line) else {
                    return Err(FramingError::MalformedJson(error));
                };
                self.skip_body(body_size)?;
                let error = RequestError::Malformed(error.to_string());
                return Ok(Incoming::Rejected { id, error });
            }
        };
        let id = wire.id.ok_or(FramingError::MissingId)?;
        let announced = wire.body_size.unwrap_or(0).max(0) as u64;
        match wire.into_request(id) {
            Ok(request) => {
                if let Request::Put { body_size, .. } = request
                    && body_size > 0
                {
                    self.unread_body = Some(body_size);
                }
                Ok(Incoming::Request(request))
            }
            Err(error) => {
                self.skip_body(announced)?;
                Ok(Incoming::Rejected { id, error })
            }
        }
    }

    /// Streams the body of the put just returned by
    /// [`next_request`](Self::next_request) into `sink`, decoded, and returns
    /// its size. Returns `Ok(0)` when there is no body to read.
    ///
    /// On [`BodyError::Invalid`] and [`BodyError::Sink`] the whole body line
    /// has been consumed (or, for a missing body, nothing was), so reading
    /// can go on; `sink` may have received part of the body and must discard
    /// it.
    pub fn read_body(&mut self, sink: &mut impl Write) -> Result<u64, BodyError> {
        match self.unread_body.take() {
            Some(size) => self.stream_body(size, sink),
            None => Ok(0),
        }
    }

    fn skip_body(&mut self, size: u64) -> Result<(), FramingError> {
        if size == 0 {
            return Ok(());
        }
        match self.stream_body(size, &mut io::sink()) {
            Ok(_) | Err(BodyError::Invalid(_) | BodyError::Sink(_)) => Ok(()),
            Err(BodyError::Framing(e)) => Err(e),
        }
    }

    /// Reads one line, without its newline, into `self.line`. Returns false at
    /// the end of the input.
    fn read_line(&mut self) -> Result<bool, FramingError> {
        self.line.clear();
        loop {
            let buf = fill(&mut self.input)?;
            if buf.is_empty() {
                return Ok(!self.line.is_empty());
            }
            let (taken, done) = match memchr::memchr(b'\n', buf) {
                Some(i) => (i, true),
                None => (buf.len(), false),
            };
            if self.line.len() + taken > MAX_LINE {
                return Err(FramingError::LineTooLong);
            }
            self.line.extend_from_slice(&buf[..taken]);
            self.input.consume(taken + usize::from(done));
            if done {
                return Ok(true);
            }
        }
    }

    fn stream_body(&mut self, expected: u64, sink: &mut impl Write) -> Result<u64, BodyError> {
        self.open_body()?;
        let mut decoder = Base64Stream::default();
        let mut decoded = Vec::new();
        let mut total: u64 = 0;
        let mut first_error: Option<BodyError> = None;
        loop {
            let buf = fill(&mut self.input)?;
            if buf.is_empty() {
                return Err(FramingError::TruncatedBody.into());
            }
            let end = memchr::memchr2(b'"', b'\n', buf);
            let text = &buf[..end.unwrap_or(buf.len())];
            if first_error.is_none() {
                decoded.clear();
                match decoder.decode(text, &mut decoded) {
                    Err(()) => first_error = Some(RequestError::BodyNotBase64.into()),
                    Ok(()) => {
                        total += decoded.len() as u64;
                        if total > expected {
                            first_error = Some(RequestError::BodyTooLong { expected }.into());
                        } else if let Err(e) = sink.write_all(&decoded) {
                            first_error = Some(BodyError::Sink(e));
                        }
                    }
                }
            }
            match end {
                None => {
                    let n = buf.len();
                    self.input.consume(n);
                }
                Some(i) => {
                    let closed = buf[i] == b'"';
                    self.input.consume(i + 1);
                    if !closed {
                        return Err(first_error.unwrap_or(RequestError::UnterminatedBody.into()));
                    }
                    break;
                }
            }
        }
        let trailing_ok = self.finish_body_line()?;
        if let Some(error) = first_error {
            return Err(error);
        }
        if !decoder.is_complete() {
            return Err(RequestError::BodyNotBase64.into());
        }
        if total != expected {
            return Err(RequestError::BodyTooShort {
                expected,
                actual: total,
            }
            .into());
        }
        if !trailing_ok {
            return Err(RequestError::TextAfterBody.into());
        }
        Ok(total)
    }

    /// Skips the blank line before a body and its opening quote.
    fn open_body(&mut self) -> Result<(), BodyError> {
        loop {
            let buf = fill(&mut self.input)?;
            if buf.is_empty() {
                return Err(FramingError::TruncatedBody.into());
            }
            match buf.iter().position(|b| !b.is_ascii_whitespace()) {
                None => {
                    let n = buf.len();
                    self.input.consume(n);
                }
                Some(i) => {
                    let quote = buf[i] == b'"';
                    self.input.consume(i + usize::from(quote));
                    return if quote {
                        Ok(())
                    } else {
                        Err(RequestError::MissingBody.into())
                    };
                }
            }
        }
    }

    /// Consumes the rest of the body line after its closing quote. Returns
    /// whether it held nothing but white space.
    fn finish_body_line(&mut self) -> Result<bool, FramingError> {
        let mut clean = true;
        loop {
            let buf = fill(&mut self.input)?;
            if buf.is_empty() {
                return Ok(clean);
            }
            let newline = memchr::memchr(b'\n', buf);
            let rest = &buf[..newline.unwrap_or(buf.len())];
            clean &= rest.iter().all(u8::is_ascii_whitespace);
            match newline {
                Some(i) => {
                    self.input.consume(i + 1);
                    return Ok(clean);
                }
                None => {
                    let n = buf.len();
                    self.input.consume(n);
                }
            }
        }
    }
}

fn fill<R: BufRead>(input: &mut R) -> io::Result<&[u8]> {
    loop {
        // The borrow checker cannot see that the retry does not overlap the
        // returned borrow, so test for the error first.
        match input.fill_buf() {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            _ => break,
        }
    }
    input.fill_buf()
}

/// Decodes padded standard base64 that arrives in pieces of any length.
#[derive(Default)]
struct Base64Stream {
    /// Up to three characters of an incomplete quantum.
    carry: [u8; 4],
    carry_len: usize,
    /// Whether a padded (final) quantum was seen; nothing may follow it.
    padded: bool,
}

impl Base64Stream {
    fn decode(&mut self, mut text: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
        if text.is_empty() {
            return Ok(());
        }
        if self.padded {
            return Err(());
        }
        if self.carry_len > 0 {
            let take = (4 - self.carry_len).min(text.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&text[..take]);
            self.carry_len += take;
            text = &text[take..];
            if self.carry_len < 4 {
                return Ok(());
            }
            let quantum = self.carry;
            self.carry_len = 0;
            self.decode_aligned(&quantum, out)?;
            if self.padded && !text.is_empty() {
                return Err(());
            }
        }
        let aligned = text.len() / 4 * 4;
        self.decode_aligned(&text[..aligned], out)?;
        let rest = &text[aligned..];
        if !rest.is_empty() && self.padded {
            return Err(());
        }
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carry_len = rest.len();
        Ok(())
    }

    fn decode_aligned(&mut self, text: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
        if text.is_empty() {
            return Ok(());
        }
        base64_simd::STANDARD
            .decode_append(text, out)
            .map_err(|_| ())?;
        self.padded = text[text.len() - 1] == b'=';
        Ok(())
    }

    fn is_complete(&self) -> bool {
        self.carry_len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(data: &[u8]) -> String {
        base64_simd::STANDARD.encode_to_string(data)
    }

    fn id(byte: u8) -> Id {
        Id([byte; ID_SIZE])
    }

    fn reader(text: &str) -> RequestReader<&[u8]> {
        RequestReader::new(text.as_bytes())
    }

    fn put_line(id: i64, body_size: i64) -> String {
        format!(
            r#"{{"ID":{id},"Command":"put","ActionID":"{}","OutputID":"{}","BodySize":{body_size}}}"#,
            b64(&[1; 32]),
            b64(&[2; 32])
        )
    }

    fn rejected(incoming: Incoming) -> (i64, RequestError) {
        match incoming {
            Incoming::Rejected { id, error } => (id, error),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn reads_get_and_close() {
        let text = format!(
            "{{\"ID\":1,\"Command\":\"get\",\"ActionID\":\"{}\"}}\n\n{{\"ID\":2,\"Command\":\"close\"}}\n\n",
            b64(&id(7).0)
        );
        let mut r = reader(&text);
        assert!(matches!(
            r.next_request().unwrap(),
            Incoming::Request(Request::Get { id: 1, action_id }) if action_id == id(7)
        ));
        assert!(matches!(
            r.next_request().unwrap(),
            Incoming::Request(Request::Close { id: 2 })
        ));
        assert!(matches!(r.next_request().unwrap(), Incoming::End));
    }

    #[test]
    fn accepts_object_id_of_old_go_versions() {
        let text = format!(
            "{{\"ID\":3,\"Command\":\"put\",\"ActionID\":\"{}\",\"ObjectID\":\"{}\"}}\n\n",
            b64(&id(1).0),
            b64(&id(9).0)
        );
        match reader(&text).next_request().unwrap() {
            Incoming::Request(Request::Put {
                output_id,
                body_size: 0,
                ..
            }) => assert_eq!(output_id, id(9)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn streams_a_body_in_small_pieces() {
        let body: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let text = format!("{}\n\n\"{}\"\n\n", put_line(4, 1000), b64(&body));
        // A tiny buffer makes every quantum straddle reads.
        let mut r = RequestReader::new(io::BufReader::with_capacity(3, text.as_bytes()));
        assert!(matches!(
            r.next_request().unwrap(),
            Incoming::Request(Request::Put {
                body_size: 1000,
                ..
            })
        ));
        let mut got = Vec::new();
        assert_eq!(r.read_body(&mut got).unwrap(), 1000);
        assert_eq!(got, body);
        assert!(matches!(r.next_request().unwrap(), Incoming::End));
    }

    #[test]
    fn unknown_command_is_rejected_with_its_id() {
        let (id, error) = rejected(
            reader("{\"ID\":5,\"Command\":\"frob\"}\n")
                .next_request()
                .unwrap(),
        );
        assert_eq!(id, 5);
        assert_eq!(error, RequestError::UnknownCommand("frob".into()));
    }

    #[test]
    fn wrong_id_length_is_rejected() {
        let text = format!(
            "{{\"ID\":6,\"Command\":\"get\",\"ActionID\":\"{}\"}}\n",
            b64(&[1; 31])
        );
        let (_, error) = rejected(reader(&text).next_request().unwrap());
        assert_eq!(
            error,
            RequestError::WrongIdLength {
                field: "ActionID",
                len: 31
            }
        );
    }

    #[test]
    fn non_base64_id_is_rejected() {
        let (_, error) = rejected(
            reader("{\"ID\":6,\"Command\":\"get\",\"ActionID\":\"!!\"}\n")
                .next_request()
                .unwrap(),
        );
        assert_eq!(error, RequestError::NotBase64 { field: "ActionID" });
    }

    #[test]
    fn mistyped_field_is_rejected_and_its_body_skipped() {
        let text = format!(
            "{{\"ID\":8,\"Command\":\"put\",\"ActionID\":17,\"BodySize\":3}}\n\n\"{}\"\n{{\"ID\":9,\"Command\":\"close\"}}\n",
            b64(b"abc")
        );
        let mut r = reader(&text);
        let (id, error) = rejected(r.next_request().unwrap());
        assert_eq!(id, 8);
        assert!(matches!(error, RequestError::Malformed(_)));
        assert!(matches!(
            r.next_request().unwrap(),
            Incoming::Request(Request::Close { id: 9 })
        ));
    }

    #[test]
    fn malformed_json_loses_framing() {
        assert!(matches!(
            reader("{\"ID\":1,\"Command\n").next_request(),
            Err(FramingError::MalformedJson(_))
        ));
        assert!(matches!(
            reader("{\"Command\":\"close\"}\n").next_request(),
            Err(FramingError::MissingId)
        ));
        // Answered under the last one once; which one was meant?
        assert!(matches!(
            reader("{\"ID\":1,\"Command\":\"get\",\"ID\":2}\n").next_request(),
            Err(FramingError::AmbiguousId)
        ));
    }

    #[test]
    fn overlong_line_loses_framing() {
        let text = "x".repeat(MAX_LINE + 1);
        assert!(matches!(
            reader(&text).next_request(),
            Err(FramingError::LineTooLong)
        ));
    }

    fn body_error(
        body_size: i64,
        body_line: &str,
    ) -> (BodyError, RequestReader<io::Cursor<Vec<u8>>>) {
        let text = format!(
            "{}\n\n{body_line}\n{{\"ID\":99,\"Command\":\"close\"}}\n",
            put_line(1, body_size)
        );
        let mut r = RequestReader::new(io::Cursor::new(text.into_bytes()));
        r.next_request().unwrap();
        let error = r.read_body(&mut Vec::new()).unwrap_err();
        (error, r)
    }

    fn assert_invalid_then_in_step(body_size: i64, body_line: &str, expected: RequestError) {
        let (error, mut r) = body_error(body_size, body_line);
        match error {
            BodyError::Invalid(e) => assert_eq!(e, expected),
            other => panic!("expected {expected:?}, got {other:?}"),
        }
        assert!(
            matches!(
                r.next_request().unwrap(),
                Incoming::Request(Request::Close { id: 99 })
            ),
            "the stream must stay in step after {expected:?}"
        );
    }

    #[test]
    fn body_errors_keep_the_stream_in_step() {
        let abc = b64(b"abc");
        assert_invalid_then_in_step(3, "\"ab$c\"", RequestError::BodyNotBase64);
        assert_invalid_then_in_step(
            4,
            &format!("\"{abc}\""),
            RequestError::BodyTooShort {
                expected: 4,
                actual: 3,
            },
        );
        assert_invalid_then_in_step(
            2,
            &format!("\"{abc}\""),
            RequestError::BodyTooLong { expected: 2 },
        );
        assert_invalid_then_in_step(3, &format!("\"{abc}"), RequestError::UnterminatedBody);
        assert_invalid_then_in_step(3, &format!("\"{abc}\" x"), RequestError::TextAfterBody);
        assert_invalid_then_in_step(1, "\"QQ==QUFB\"", RequestError::BodyNotBase64);
        assert_invalid_then_in_step(1, "\"QQ\"", RequestError::BodyNotBase64);
    }

    #[test]
    fn missing_body_leaves_the_next_request_readable() {
        let text = format!("{}\n\n{{\"ID\":2,\"Command\":\"close\"}}\n", put_line(1, 3));
        let mut r = reader(&text);
        r.next_request().unwrap();
        assert!(matches!(
            r.read_body(&mut Vec::new()),
            Err(BodyError::Invalid(RequestError::MissingBody))
        ));
        assert!(matches!(
            r.next_request().unwrap(),
            Incoming::Request(Request::Close { id: 2 })
        ));
    }

    #[test]
    fn input_ending_inside_a_body_loses_framing() {
        let text = format!("{}\n\n\"YWJj", put_line(1, 3));
        let mut r = reader(&text);
        r.next_request().unwrap();
        assert!(matches!(
            r.read_body(&mut Vec::new()),
            Err(BodyError::Framing(FramingError::TruncatedBody))
        ));
    }

    #[test]
    fn failing_sink_still_consumes_the_body() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(ErrorKind::StorageFull, "disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let text = format!(
            "{}\n\n\"{}\"\n{{\"ID\":2,\"Command\":\"close\"}}\n",
            put_line(1, 3),
            b64(b"abc")
        );
        let mut r = reader(&text);
        r.next_request().unwrap();
        assert!(matches!(r.read_body(&mut Full), Err(BodyError::Sink(_))));
        assert!(matches!(
            r.next_request().unwrap(),
            Incoming::Request(Request::Close { id: 2 })
        ));
    }

    #[test]
    fn unread_body_is_skipped_by_the_next_request() {
        let text = format!(
            "{}\n\n\"{}\"\n{{\"ID\":2,\"Command\":\"close\"}}\n",
            put_line(1, 3),
            b64(b"abc")
        );
        let mut r = reader(&text);
        r.next_request().unwrap();
        assert!(matches!(
            r.next_request().unwrap(),
            Incoming::Request(Request::Close { id: 2 })
        ));
    }

    #[test]
    fn negative_body_size_is_rejected() {
        let (_, error) = rejected(reader(&put_line(1, -5)).next_request().unwrap());
        assert_eq!(error, RequestError::NegativeBodySize(-5));
    }
}
