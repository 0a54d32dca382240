//! zstd on streams of chunks: blobs stored compressed are decoded on the
//! way to a client that wants them plain, and plain ones encoded for a
//! client that asks for `compressed-blobs`.

use std::io;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

/// Bytes of decoded output per chunk.
const OUT_CHUNK: usize = 256 * 1024;

/// `stream`, a zstd stream, decoded. A stream that ends in the middle of
/// a frame ends with an error, never quietly short.
pub fn decoded(
    stream: BoxStream<'static, io::Result<Bytes>>,
) -> BoxStream<'static, io::Result<Bytes>> {
    struct State {
        input: BoxStream<'static, io::Result<Bytes>>,
        decoder: Decoder<'static>,
        pending: Bytes,
        /// Whether the last frame ended (zstd's hint was 0).
        ended: bool,
        done: bool,
    }
    let decoder = match Decoder::new() {
        Ok(decoder) => decoder,
        Err(e) => return futures_util::stream::once(async move { Err(e) }).boxed(),
    };
    let state = State {
        input: stream,
        decoder,
        pending: Bytes::new(),
        ended: true,
        done: false,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        loop {
            if state.pending.is_empty() {
                match state.input.next().await {
                    Some(Ok(chunk)) => state.pending = chunk,
                    Some(Err(e)) => {
                        state.done = true;
                        return Some((Err(e), state));
                    }
                    None => {
                        state.done = true;
                        return match state.ended {
                            true => None,
                            false => Some((
                                Err(io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    "the stored zstd stream ends in the middle of a frame",
                                )),
                                state,
                            )),
                        };
                    }
                }
            }
            let mut out = vec![0; OUT_CHUNK];
            let mut input = InBuffer::around(&state.pending[..]);
            let mut output = OutBuffer::around(&mut out[..]);
            let hint = match state.decoder.run(&mut input, &mut output) {
                Ok(hint) => hint,
                Err(e) => {
                    state.done = true;
                    return Some((Err(e), state));
                }
            };
            let (read, produced) = (input.pos(), output.pos());
            if produced > 0 || read > 0 {
                state.ended = hint == 0;
            }
            state.pending = state.pending.slice(read..);
            if produced > 0 {
                out.truncate(produced);
                return Some((Ok(Bytes::from(out)), state));
            }
        }
    })
    .boxed()
}

/// `stream` as one zstd stream at `level`.
pub fn encoded(
    stream: BoxStream<'static, io::Result<Bytes>>,
    level: i32,
) -> BoxStream<'static, io::Result<Bytes>> {
    let encoder = match zstd::stream::write::Encoder::new(Vec::new(), level) {
        Ok(encoder) => encoder,
        Err(e) => return futures_util::stream::once(async move { Err(e) }).boxed(),
    };
    futures_util::stream::unfold(
        (stream, Some(encoder)),
        |(mut stream, encoder)| async move {
            let mut encoder = encoder?;
            loop {
                match stream.next().await {
                    Some(Ok(chunk)) => {
                        if let Err(e) = io::Write::write_all(&mut encoder, &chunk) {
                            return Some((Err(e), (stream, None)));
                        }
                        let out = std::mem::take(encoder.get_mut());
                        if !out.is_empty() {
                            return Some((Ok(out.into()), (stream, Some(encoder))));
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), (stream, None))),
                    None => {
                        return Some((encoder.finish().map(Bytes::from), (stream, None)));
                    }
                }
            }
        },
    )
    .boxed()
}

/// `stream` without its first `skip` bytes.
pub fn skipped(
    stream: BoxStream<'static, io::Result<Bytes>>,
    skip: u64,
) -> BoxStream<'static, io::Result<Bytes>> {
    if skip == 0 {
        return stream;
    }
    futures_util::stream::unfold((stream, skip), |(mut stream, mut skip)| async move {
        loop {
            match stream.next().await? {
                Ok(chunk) if skip >= chunk.len() as u64 => skip -= chunk.len() as u64,
                Ok(chunk) => return Some((Ok(chunk.slice(skip as usize..)), (stream, 0))),
                Err(e) => return Some((Err(e), (stream, skip))),
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(bytes: &[u8], size: usize) -> BoxStream<'static, io::Result<Bytes>> {
        let chunks: Vec<io::Result<Bytes>> = bytes
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures_util::stream::iter(chunks).boxed()
    }

    async fn collect(stream: BoxStream<'static, io::Result<Bytes>>) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        let mut stream = stream;
        while let Some(chunk) = stream.next().await {
            all.extend_from_slice(&chunk?);
        }
        Ok(all)
    }

    #[tokio::test]
    async fn what_is_encoded_decodes_to_itself_in_any_chunking_and_offset() {
        let blob: Vec<u8> = (0..(700 << 10)).map(|i| (i * 13 % 97) as u8).collect();
        let compressed = collect(encoded(chunks(&blob, 100_000), 3)).await.unwrap();
        assert!(compressed.len() < blob.len() / 4, "{}", compressed.len());
        for size in [1, 4096, compressed.len()] {
            let plain = collect(decoded(chunks(&compressed, size))).await.unwrap();
            assert!(plain == blob, "in chunks of {size}");
        }
        for skip in [0, 1, 255 << 10, 256 << 10, blob.len() as u64] {
            let plain = collect(skipped(decoded(chunks(&compressed, 5000)), skip))
                .await
                .unwrap();
            assert!(plain[..] == blob[skip as usize..], "from {skip}");
        }
    }

    #[tokio::test]
    async fn a_truncated_or_damaged_stream_is_an_error_not_a_short_blob() {
        let blob = vec![9u8; 100_000];
        let compressed = zstd::bulk::compress(&blob, 3).unwrap();
        let cut = &compressed[..compressed.len() - 3];
        let error = collect(decoded(chunks(cut, 7))).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        let mut damaged = compressed.clone();
        damaged[0] ^= 0xff;
        assert!(collect(decoded(chunks(&damaged, 1000))).await.is_err());
    }
}
