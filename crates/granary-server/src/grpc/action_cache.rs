//! ActionCache: action results by action digest, in the action cache of
//! the call's instance (its namespace).

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    ActionResult, GetActionResultRequest, UpdateActionResultRequest,
    action_cache_server::ActionCache,
};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{Reapi, check_digest_function, digest_key, not_found};
use crate::check::MAX_ACTION_RESULT;
use crate::grant::Access;
use crate::key::Kind;

impl Reapi {
    async fn get_action_result(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let asked = request.get_ref();
        self.authorize(&request, &asked.instance_name, Access::Read, true)
            .await?;
        check_digest_function(asked.digest_function)?;
        let (key, _) = digest_key(Kind::Ac, asked.action_digest.as_ref())?;
        let key = key.in_instance(&asked.instance_name);
        let Some(whole) = self.read_whole(key, MAX_ACTION_RESULT, false).await? else {
            self.count(Kind::Ac, false);
            return Err(not_found(key));
        };
        let result = ActionResult::decode(&whole.bytes[..])
            .map_err(|e| Status::internal(format!("{key} is not an ActionResult: {e}")))?;
        // A result whose outputs were evicted is no hit: the client would
        // fail to fetch them.
        for file in &result.output_files {
            if let Some(digest) = &file.digest
                && file.contents.is_empty()
                && let Ok((blob, size)) = digest_key(Kind::Cas, Some(digest))
                && !self.has(blob, size).await
            {
                self.count(Kind::Ac, false);
                return Err(Status::not_found(format!(
                    "{key} names {blob}, which the CAS no longer holds"
                )));
            }
        }
        self.count(Kind::Ac, true);
        Ok(Response::new(result))
    }

    async fn update_action_result(
        &self,
        request: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let asked = request.get_ref();
        self.authorize(&request, &asked.instance_name, Access::Write, true)
            .await?;
        check_digest_function(asked.digest_function)?;
        let (key, _) = digest_key(Kind::Ac, asked.action_digest.as_ref())?;
        let key = key.in_instance(&asked.instance_name);
        let request = request.into_inner();
        let result = request
            .action_result
            .ok_or_else(|| Status::invalid_argument("the request has no action result"))?;
        let bytes = result.encode_to_vec();
        if bytes.len() as u64 > MAX_ACTION_RESULT {
            self.service.metrics.reject("too_large");
            return Err(Status::resource_exhausted(format!(
                "an action result is at most {MAX_ACTION_RESULT} bytes"
            )));
        }
        self.service
            .metrics
            .bytes_received
            .inc_by(bytes.len() as u64);
        self.service
            .store(key, bytes)
            .await
            .map_err(|rejected| self.rejected(rejected))?;
        Ok(Response::new(result))
    }
}

#[tonic::async_trait]
impl ActionCache for Reapi {
    async fn get_action_result(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        self.observed(
            "GetActionResult",
            "ac",
            Reapi::get_action_result(self, request),
        )
        .await
    }

    async fn update_action_result(
        &self,
        request: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        self.observed(
            "UpdateActionResult",
            "ac",
            Reapi::update_action_result(self, request),
        )
        .await
    }
}
