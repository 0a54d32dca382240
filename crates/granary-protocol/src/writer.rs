//! Writing requests as cmd/go writes them: for tests, fuzzing and benchmarks
//! that drive a helper without the `go` command.

use std::io::{self, Write};

use granary_id::Id;

use crate::Request;

/// Writes a request's JSON line and the blank line after it, as cmd/go does.
/// A put's body line must follow when `body_size` is positive.
pub fn write_request_header(w: &mut impl Write, request: &Request) -> io::Result<()> {
    let b64 = |h: &Id| base64_simd::STANDARD.encode_to_string(h);
    match request {
        Request::Get { id, action_id } => write!(
            w,
            "{{\"ID\":{id},\"Command\":\"get\",\"ActionID\":\"{}\"}}\n\n",
            b64(action_id)
        ),
        Request::Put {
            id,
            action_id,
            output_id,
            body_size,
        } => {
            write!(
                w,
                "{{\"ID\":{id},\"Command\":\"put\",\"ActionID\":\"{}\",\"OutputID\":\"{}\"",
                b64(action_id),
                b64(output_id)
            )?;
            if *body_size > 0 {
                write!(w, ",\"BodySize\":{body_size}")?;
            }
            w.write_all(b"}\n\n")
        }
        Request::Close { id } => write!(w, "{{\"ID\":{id},\"Command\":\"close\"}}\n\n"),
    }
}

/// Writes a whole request; `body` must hold `body_size` bytes for a put.
pub fn write_request(w: &mut impl Write, request: &Request, body: &[u8]) -> io::Result<()> {
    write_request_header(w, request)?;
    if matches!(request, Request::Put { body_size, .. } if *body_size > 0) {
        w.write_all(b"\"")?;
        w.write_all(base64_simd::STANDARD.encode_to_string(body).as_bytes())?;
        w.write_all(b"\"\n")?;
    }
    Ok(())
}
