//! Feeds arbitrary `Authorization` headers and tokens files to granary
//! serve: the header's token, the file's lines and the namespace globs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (header, file) = data.split_at(data.len() / 2);
    granary_server::fuzz::credentials(header, &String::from_utf8_lossy(file));
});
