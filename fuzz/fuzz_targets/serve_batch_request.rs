//! Feeds arbitrary `POST /batch` bodies to granary serve's parser: only
//! well-formed action IDs pass, never more than a batch may hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    granary_server::fuzz::batch_request(body, "");
    granary_server::fuzz::batch_request(body, "team");
});
