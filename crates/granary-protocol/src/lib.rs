//! The wire format of cmd/go's `GOCACHEPROG` protocol.
//!
//! The `go` command starts a cache helper and talks to it over the helper's
//! stdin and stdout. The helper first announces the commands it knows
//! ([`Response::handshake`]); then `go` sends requests, each a JSON object on one
//! line followed by a blank line. A `put` whose `BodySize` is positive is
//! followed by one more line holding the body as a JSON string of padded
//! standard base64. The helper answers every request exactly once, in any
//! order, with a JSON [`Response`] on one line.
//!
//! This crate is pure: [`RequestReader`] turns any [`std::io::BufRead`] into
//! [`Request`] values and streams put bodies, decoded, into any
//! [`std::io::Write`], so memory stays bounded whatever the body size.
//! [`Response::encode`] produces the answer lines. It knows nothing about where
//! bodies end up, nor about threads; the `granary` binary wires it to the store.
//!
//! Errors come in two kinds, and the difference matters to the caller:
//! - [`RequestError`]: one request is bad, but the stream is still in step. The
//!   request's ID is known; answer it with [`Response::error`] and carry on.
//! - [`FramingError`]: the stream itself cannot be followed any more (malformed
//!   JSON, no ID, input ending inside a body). Nothing more can be answered.
//!
//! The format is defined by `src/cmd/go/internal/cacheprog/cacheprog.go` in
//! Go's source; Go 1.21 to 1.23 named the output ID `ObjectID`, which is
//! accepted as well as `OutputID`.

mod request;
mod response;
mod writer;

pub use request::{BodyError, FramingError, Incoming, Request, RequestError, RequestReader};
pub use response::{Response, TimeOutOfRange};
pub use writer::{write_request, write_request_header};

/// The commands granary implements, in the order they are announced.
pub const KNOWN_COMMANDS: [&str; 3] = ["get", "put", "close"];
