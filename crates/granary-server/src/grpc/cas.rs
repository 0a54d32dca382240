//! ContentAddressableStorage: which blobs are missing, and blobs read and
//! written in batches, each checked against its digest. Trees and chunks
//! are UNIMPLEMENTED: a build cache keeps neither.

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    self as reapi, BatchReadBlobsRequest, BatchReadBlobsResponse, BatchUpdateBlobsRequest,
    BatchUpdateBlobsResponse, FindMissingBlobsRequest, FindMissingBlobsResponse,
    batch_read_blobs_response, batch_update_blobs_response, compressor,
    content_addressable_storage_server::ContentAddressableStorage,
};
use bytes::Bytes;
use futures_util::StreamExt;
use tonic::{Code, Request, Response, Status};

use super::{
    MAX_BATCH, Reapi, check_digest_function, digest_key, empty_hash, rejected_status, rpc_status,
};
use crate::backing::UPLOADS_AT_ONCE;
use crate::check::{Rejected, Why};
use crate::disk::STORE_LEVEL;
use crate::grant::Access;
use crate::key::{Key, Kind};
use crate::service::{Service, Whole};

/// Blobs a client may ask about in one FindMissingBlobs (about 300 KiB of
/// digests).
const MAX_FIND: usize = 4096;
/// Questions to the backing store in flight for one FindMissingBlobs.
const BACKING_QUESTIONS_AT_ONCE: usize = 16;
impl Reapi {
    async fn find_missing_blobs(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        let asked = request.get_ref();
        self.authorize(&request, &asked.instance_name, Access::Read, false)
            .await?;
        check_digest_function(asked.digest_function)?;
        if asked.blob_digests.len() > MAX_FIND {
            return Err(Status::invalid_argument(format!(
                "ask about at most {MAX_FIND} blobs at once"
            )));
        }
        let mut keys = Vec::with_capacity(asked.blob_digests.len());
        for digest in &asked.blob_digests {
            keys.push(digest_key(Kind::Cas, Some(digest))?);
        }
        // The backing store is asked about several blobs at once.
        let present: Vec<bool> = futures_util::stream::iter(keys)
            .map(|(key, size)| self.has(key, size))
            .buffered(BACKING_QUESTIONS_AT_ONCE)
            .collect()
            .await;
        let missing = asked
            .blob_digests
            .iter()
            .zip(present)
            .filter(|(_, present)| !present)
            .map(|(digest, _)| digest.clone())
            .collect();
        Ok(Response::new(FindMissingBlobsResponse {
            missing_blob_digests: missing,
        }))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        let asked = request.get_ref();
        self.authorize(&request, &asked.instance_name, Access::Write, false)
            .await?;
        check_digest_function(asked.digest_function)?;
        let request = request.into_inner();
        let sizes = request
            .requests
            .iter()
            .map(|r| r.digest.as_ref().map_or(0, |d| d.size_bytes));
        // Each blob is decoded into at most its digest's size: bounded here.
        if batch_total(sizes).is_none() {
            self.service.metrics.reject("too_large");
            return Err(Status::invalid_argument(format!(
                "the batch's digests say more than {MAX_BATCH} bytes; send at most that per \
                 call, larger blobs through ByteStream.Write"
            )));
        }
        let service = self.service.clone();
        let stored: Vec<_> = tokio::task::spawn_blocking(move || {
            request
                .requests
                .into_iter()
                .map(|blob| (blob.digest.clone(), store_one(&service, blob)))
                .collect()
        })
        .await
        .expect("storing does not panic");
        // With --write-through, a few blobs go to the bucket at once, as
        // the write-behind sends them: a batch of many small blobs is not
        // one round trip after another.
        let responses = futures_util::stream::iter(stored)
            .map(|(digest, stored)| async move {
                let handed = match stored {
                    Ok((key, written)) => self
                        .service
                        .written(key, written)
                        .await
                        .map_err(|rejected| self.rejected(rejected)),
                    Err(status) => Err(status),
                };
                let status = match handed {
                    Ok(()) => rpc_status(Code::Ok, String::new()),
                    Err(status) => rpc_status(status.code(), status.message().to_owned()),
                };
                batch_update_blobs_response::Response {
                    digest,
                    status: Some(status),
                }
            })
            .buffered(UPLOADS_AT_ONCE)
            .collect()
            .await;
        Ok(Response::new(BatchUpdateBlobsResponse { responses }))
    }

    async fn batch_read_blobs(
        &self,
        request: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        let asked = request.get_ref();
        self.authorize(&request, &asked.instance_name, Access::Read, false)
            .await?;
        check_digest_function(asked.digest_function)?;
        let mut keys = Vec::with_capacity(asked.digests.len());
        for digest in &asked.digests {
            keys.push(digest_key(Kind::Cas, Some(digest))?);
        }
        // Checked before anything is read: a blob is read whole only up to
        // its digest's size, and those sizes add up to at most the limit.
        let sizes = asked.digests.iter().map(|digest| digest.size_bytes);
        if batch_total(sizes).is_none() {
            return Err(Status::invalid_argument(format!(
                "the blobs asked for hold more than {MAX_BATCH} bytes; ask for at most that \
                 per call, larger blobs through ByteStream.Read"
            )));
        }
        let zstd = asked
            .acceptable_compressors
            .contains(&(compressor::Value::Zstd as i32));
        let mut responses = Vec::with_capacity(keys.len());
        for (digest, (key, size)) in asked.digests.iter().zip(keys) {
            let found = match size == 0 && key.hash == empty_hash() {
                true => Some(Whole {
                    bytes: Bytes::new(),
                    zstd: false,
                    size: 0,
                }),
                false => self.read_whole(key, size, zstd).await?,
            };
            let Some(whole) = found.filter(|whole| whole.size == size) else {
                self.count(Kind::Cas, false);
                responses.push(batch_read_blobs_response::Response {
                    digest: Some(digest.clone()),
                    data: Vec::new(),
                    compressor: compressor::Value::Identity as i32,
                    status: Some(rpc_status(Code::NotFound, format!("no {key}"))),
                });
                continue;
            };
            self.count(Kind::Cas, true);
            let (data, used) = match (whole.zstd, zstd && size > 0) {
                (true, _) => (whole.bytes.into(), compressor::Value::Zstd),
                (false, true) => (
                    zstd::bulk::compress(&whole.bytes, STORE_LEVEL)
                        .map_err(|e| Status::internal(format!("cannot compress: {e}")))?,
                    compressor::Value::Zstd,
                ),
                (false, false) => (whole.bytes.into(), compressor::Value::Identity),
            };
            responses.push(batch_read_blobs_response::Response {
                digest: Some(digest.clone()),
                data,
                compressor: used as i32,
                status: Some(rpc_status(Code::Ok, String::new())),
            });
        }
        Ok(Response::new(BatchReadBlobsResponse { responses }))
    }
}

/// Checks and stores one blob of a batch; its key and whether it was
/// written. Blocking.
fn store_one(
    service: &Service,
    blob: reapi::batch_update_blobs_request::Request,
) -> Result<(Key, bool), Status> {
    let (key, size) = digest_key(Kind::Cas, blob.digest.as_ref())?;
    let stored = decoded(key, size, blob).and_then(|data| {
        service.metrics.bytes_received.inc_by(data.len() as u64);
        if data.len() as u64 != size {
            return Err(Rejected::incomplete(format!(
                "the digest of {key} says {size} bytes, the data has {}; nothing stored",
                data.len()
            )));
        }
        service.store_blocking(key, &data)
    });
    let stored = stored.map(|written| (key, written));
    stored.map_err(|rejected| {
        service.metrics.reject(rejected.why.reason());
        rejected_status(rejected)
    })
}

/// A batch blob's bytes, decoded into at most the `size` its digest says
/// (a small bomb cannot fill memory).
fn decoded(
    key: Key,
    size: u64,
    blob: reapi::batch_update_blobs_request::Request,
) -> Result<Vec<u8>, Rejected> {
    match compressor::Value::try_from(blob.compressor) {
        Ok(compressor::Value::Identity) => Ok(blob.data),
        Ok(compressor::Value::Zstd) => {
            zstd::bulk::decompress(&blob.data, size as usize).map_err(|e| {
                Rejected::new(
                    Why::Invalid,
                    format!(
                        "the zstd data of {key} does not decompress to at most {size} bytes: {e}"
                    ),
                )
            })
        }
        _ => Err(Rejected::new(
            Why::Invalid,
            format!(
                "compressor {} is not supported; use identity or zstd",
                blob.compressor
            ),
        )),
    }
}

/// The total of a batch's digest sizes, if every size is a size and the
/// total is at most [`MAX_BATCH`]. Sizes come from the client: added as
/// they are, four of 2^62 wrap to 0.
fn batch_total(sizes: impl IntoIterator<Item = i64>) -> Option<u64> {
    sizes.into_iter().try_fold(0u64, |total, size| {
        let total = total.checked_add(u64::try_from(size).ok()?)?;
        (total <= MAX_BATCH).then_some(total)
    })
}

#[tonic::async_trait]
impl ContentAddressableStorage for Reapi {
    async fn find_missing_blobs(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        self.observed(
            "FindMissingBlobs",
            "cas",
            Reapi::find_missing_blobs(self, request),
        )
        .await
    }

    async fn batch_update_blobs(
        &self,
        request: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        self.observed(
            "BatchUpdateBlobs",
            "cas",
            Reapi::batch_update_blobs(self, request),
        )
        .await
    }

    async fn batch_read_blobs(
        &self,
        request: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        self.observed(
            "BatchReadBlobs",
            "cas",
            Reapi::batch_read_blobs(self, request),
        )
        .await
    }

    type GetTreeStream = futures_util::stream::Empty<Result<reapi::GetTreeResponse, Status>>;

    async fn get_tree(
        &self,
        _request: Request<reapi::GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        Err(no_trees())
    }

    async fn split_blob(
        &self,
        _request: Request<reapi::SplitBlobRequest>,
    ) -> Result<Response<reapi::SplitBlobResponse>, Status> {
        Err(no_chunks())
    }

    type GetChunkMappingStream =
        futures_util::stream::Empty<Result<reapi::GetChunkMappingResponse, Status>>;

    async fn get_chunk_mapping(
        &self,
        _request: Request<reapi::GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        Err(no_chunks())
    }

    async fn splice_blob(
        &self,
        _request: Request<reapi::SpliceBlobRequest>,
    ) -> Result<Response<reapi::SpliceBlobResponse>, Status> {
        Err(no_chunks())
    }

    async fn register_chunk_mapping(
        &self,
        _request: Request<tonic::Streaming<reapi::RegisterChunkMappingRequest>>,
    ) -> Result<Response<reapi::RegisterChunkMappingResponse>, Status> {
        Err(no_chunks())
    }
}

fn no_trees() -> Status {
    Status::unimplemented("granary serve is a build cache and keeps no directory trees")
}

fn no_chunks() -> Status {
    Status::unimplemented("granary serve does not split blobs into chunks")
}
