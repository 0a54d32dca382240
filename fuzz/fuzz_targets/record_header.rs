//! Feeds arbitrary bytes to the granary record parser, as a hostile bucket
//! could, behind a valid-looking start so that the fuzzer reaches the
//! fields (signatures included). It must never panic, and whatever it
//! accepts must come back unchanged from its own header.
#![no_main]

use granary_id::Id;
use granary_remote::ActionRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let action = Id([1; 32]);
    let record = [format!("granary-ac 1 {action} ").as_bytes(), data].concat();
    for bytes in [&record[..], data] {
        if let Ok((parsed, _)) = ActionRecord::parse(&action, bytes) {
            let header = parsed.header();
            let (again, _) =
                ActionRecord::parse(&action, header.as_bytes()).expect("its own header parses");
            assert_eq!(again, parsed);
        }
    }
});
