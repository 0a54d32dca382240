//! Feeds arbitrary bytes to the request reader, as a hostile or broken `go`
//! process could. The reader must never panic, never loop, and keep each
//! decoded body within its announced size.
#![no_main]

use std::io::{BufReader, Write};

use granary_protocol::{BodyError, Incoming, Request, RequestReader};
use libfuzzer_sys::fuzz_target;

/// Counts bytes and fails past a limit, to check the size bound.
struct Bounded {
    written: u64,
    limit: u64,
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written += buf.len() as u64;
        assert!(self.written <= self.limit, "a body grew past its BodySize");
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the read size, so that pieces straddle reads.
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let capacity = usize::from(first % 64) + 1;
    let mut reader = RequestReader::new(BufReader::with_capacity(capacity, input));
    // Every request consumes input, so this many rounds always suffice.
    for _ in 0..=input.len() {
        match reader.next_request() {
            Ok(Incoming::Request(Request::Put { body_size, .. })) => {
                let mut sink = Bounded { written: 0, limit: body_size };
                match reader.read_body(&mut sink) {
                    Ok(n) => assert_eq!(n, body_size),
                    Err(BodyError::Framing(_)) => return,
                    Err(_) => {}
                }
            }
            Ok(Incoming::End) | Err(_) => return,
            Ok(_) => {}
        }
    }
    panic!("the reader did not finish its input");
});
