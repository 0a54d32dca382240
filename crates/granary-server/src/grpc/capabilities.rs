//! Capabilities: what the server offers a caller (SHA-256, zstd, the batch
//! and blob limits, action-cache updates for write tokens).

use std::time::Instant;

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    ActionCacheUpdateCapabilities, CacheCapabilities, GetCapabilitiesRequest, ServerCapabilities,
    capabilities_server::Capabilities, compressor, digest_function, symlink_absolute_path_strategy,
};
use bazel_remote_apis::build::bazel::semver::SemVer;
use tonic::{Request, Response, Status};

use super::{MAX_BATCH, Reapi};
use crate::grant::Access;

impl Reapi {
    /// What this server offers the caller of `request`.
    async fn capabilities(
        &self,
        request: &Request<GetCapabilitiesRequest>,
    ) -> Result<ServerCapabilities, Status> {
        self.authorize(
            request,
            &request.get_ref().instance_name,
            Access::Read,
            false,
        )
        .await?;
        let writes = self.identify(request).await.access == Access::Write;
        let zstd = vec![compressor::Value::Zstd as i32];
        Ok(ServerCapabilities {
            cache_capabilities: Some(CacheCapabilities {
                digest_functions: vec![digest_function::Value::Sha256 as i32],
                action_cache_update_capabilities: Some(ActionCacheUpdateCapabilities {
                    update_enabled: writes,
                }),
                max_batch_total_size_bytes: MAX_BATCH as i64,
                symlink_absolute_path_strategy: symlink_absolute_path_strategy::Value::Disallowed
                    as i32,
                supported_compressors: zstd.clone(),
                supported_batch_update_compressors: zstd,
                max_cas_blob_size_bytes: self.service.disk.limits().max_blob as i64,
                ..CacheCapabilities::default()
            }),
            low_api_version: Some(SemVer {
                major: 2,
                ..SemVer::default()
            }),
            high_api_version: Some(SemVer {
                major: 2,
                minor: 3,
                ..SemVer::default()
            }),
            ..ServerCapabilities::default()
        })
    }
}

#[tonic::async_trait]
impl Capabilities for Reapi {
    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        let started = Instant::now();
        let result = self.capabilities(&request).await.map(Response::new);
        self.observe("GetCapabilities", "capabilities", started, &result);
        result
    }
}
