//! Feeds arbitrary bytes to granary serve as the start of a plain HTTP/1.1
//! connection, where reads of stored blobs are answered outside hyper: a
//! request taken there ends where its head ends, whatever follows. Linux
//! only, as that path is.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| granary_server::fuzz::http1_head(bytes));
