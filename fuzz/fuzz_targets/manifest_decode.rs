//! Feeds arbitrary text to the manifest parser, as a damaged or hostile
//! bucket could. Decoding must never panic, and whatever it accepts must
//! come back unchanged from its own encoding.
#![no_main]

use granary_remote::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Manifests are zstd frames starting with a fixed line: compress, and
    // give the line, so that the fuzzer reaches the parser.
    let text = [b"granary-manifest 1\n", data].concat();
    let stored = zstd::bulk::compress(&text, 1).expect("compressing in memory does not fail");
    if let Ok(manifest) = Manifest::decode(&stored) {
        let again = Manifest::decode(&manifest.encode()).expect("its own encoding decodes");
        assert_eq!(again.groups, manifest.groups);
        assert_eq!(again.written, manifest.written);
    }
    // And the bytes as they are, as a frame that may be damaged.
    let _ = Manifest::decode(data);
});
