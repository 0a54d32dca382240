//! Feeds arbitrary action results to the REAPI record decoder, as a hostile
//! cache server could, and answers the go command with whatever it accepts.
//! Neither may panic: every time and size the decoder lets through must
//! make a response the encoder can write. The bytes are taken both as a
//! message and as the time and size of one that granary's encoder makes,
//! so that the fuzzer reaches every time and size without having to learn
//! protobuf first. A build time, however long, decodes as at most
//! `MAX_BUILD_TIME`.
#![no_main]

use std::time::{Duration, SystemTime};

use granary_id::Id;
use granary_protocol::Response;
use granary_remote::{ActionRecord, Placement, reapi};
use libfuzzer_sys::fuzz_target;

fn answer(record: &ActionRecord) {
    let hit = Response::hit(1, record.output, record.size, record.put_time, "/c/x-d".into());
    let mut line = Vec::new();
    hit.encode(&mut line)
        .expect("a time the decoder accepts can be sent to the go command");
}

fuzz_target!(|data: &[u8]| {
    if let Ok((record, _)) = reapi::decode(&Id([1; 32]), data) {
        answer(&record);
    }
    // A well-formed result with the fuzzer's time and size.
    let word = |at: usize| {
        let mut bytes = [0; 8];
        let part = data.get(at..).unwrap_or_default();
        let n = part.len().min(8);
        bytes[..n].copy_from_slice(&part[..n]);
        u64::from_le_bytes(bytes)
    };
    // A result granary's own encoder made, of the fuzzer's time and size.
    let since_epoch = Duration::new(word(8), (word(16) % 1_000_000_000) as u32);
    let Some(put_time) = SystemTime::UNIX_EPOCH.checked_add(since_epoch) else {
        return;
    };
    let record = ActionRecord {
        action: Id([1; 32]),
        output: Id([2; 32]),
        size: word(0),
        put_time,
        placement: Placement::Object,
        build_time: Some(Duration::from_millis(word(24))),
        signature: None,
    };
    if let Ok((decoded, _)) = reapi::decode(&Id([1; 32]), &reapi::encode(&record, None)) {
        assert!(decoded.build_time.is_none_or(|t| t <= granary_remote::MAX_BUILD_TIME));
        answer(&decoded);
    }
});
