//! Feeds arbitrary request paths to granary serve's router, as any client
//! may send: a path names a blob whose file stays in its folder, a batch's
//! instance, or nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|path: &str| granary_server::fuzz::http_path(path));
