//! Feeds arbitrary ByteStream resource names to granary serve's parsers,
//! for reading and for writing, as any gRPC client may send.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|name: &str| granary_server::fuzz::resource_name(name));
