//! Feeds arbitrary bytes to the pack reader, plain and as a zstd stream, in
//! pieces of arbitrary sizes, as a damaged pack or batch answer could come.
//! The reader must never panic or loop, and never hand out more object
//! bytes than an entry announced.
#![no_main]

use bytes::Bytes;
use futures_util::StreamExt;
use granary_remote::{PackReader, RawEntry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the piece size and whether the input is
    // compressed.
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first & 0x7f) + 1;
    let zstd = first & 0x80 != 0;
    let chunks: Vec<Result<Bytes, granary_remote::RemoteError>> = input
        .chunks(piece)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let stream = futures_util::stream::iter(chunks).boxed();
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(async move {
            let opened = match zstd {
                true => PackReader::open_zstd(stream, "fuzz".into()).await,
                false => PackReader::open(stream, "fuzz".into()).await,
            };
            let Ok(mut pack) = opened else { return };
            loop {
                match pack.next().await {
                    Ok(Some(RawEntry::Found { object_length, .. })) => {
                        let mut read = 0u64;
                        let result = pack
                            .read_object(|bytes| {
                                read += bytes.len() as u64;
                                Ok(())
                            })
                            .await;
                        assert!(read <= object_length, "more object bytes than announced");
                        if result.is_err() {
                            return;
                        }
                    }
                    Ok(Some(RawEntry::Missing(_))) => {}
                    Ok(None) | Err(_) => return,
                }
            }
        });
});
