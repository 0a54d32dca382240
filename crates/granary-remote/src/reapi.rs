//! Go action entries as REAPI `ActionResult` messages, the action cache
//! format of bazel-remote and the other Bazel remote caches.
//!
//! One action result per Go action: a single output file whose digest is
//! the output ID and size, its bytes inline in `contents` when small, and
//! the original put time as the worker-completed time of the execution
//! metadata. A cache that moves inline contents to its CAS (some do) leaves
//! `contents` empty; the output is then fetched from the CAS by digest.
//! A signed record carries its signature as one auxiliary metadata message
//! of the execution metadata ([`SIGNATURE_TYPE`]), which caches store
//! untouched.
//! The only file that knows the generated REAPI types, besides the server's.

use std::time::{Duration, SystemTime};

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    ActionResult, Digest as ReapiDigest, ExecutedActionMetadata, OutputFile,
};
use bazel_remote_apis::google::protobuf::{Any, Timestamp};
use prost::Message;

use crate::record::{ActionRecord, MAX_BUILD_TIME, Placement, time_since_epoch};
use granary_id::Id;
use granary_trust::{PublicKey, Signature};

/// The path of the one output file of a Go action.
pub(crate) const OUTPUT_PATH: &str = "go-output";
/// Who wrote the entry, for people reading the cache with Bazel's tools.
const WORKER: &str = "granary";
/// The type of the auxiliary metadata that holds a record's signature.
pub const SIGNATURE_TYPE: &str = "type.googleapis.com/granary.v1.RecordSignature";

/// A record's signature, as a protobuf message of granary's own.
#[derive(Clone, PartialEq, prost::Message)]
struct RecordSignature {
    /// The signer's ed25519 public key, 32 bytes.
    #[prost(bytes = "vec", tag = "1")]
    signer: Vec<u8>,
    /// The signature of the record's claim, 64 bytes.
    #[prost(bytes = "vec", tag = "2")]
    signature: Vec<u8>,
}

/// The action result for `record`, with `inline` as its contents.
pub fn encode(record: &ActionRecord, inline: Option<&[u8]>) -> Vec<u8> {
    let since_epoch = record
        .put_time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: OUTPUT_PATH.to_owned(),
            digest: Some(ReapiDigest {
                hash: hex::encode(record.output),
                size_bytes: record.size as i64,
            }),
            contents: inline.map(<[u8]>::to_vec).unwrap_or_default(),
            ..OutputFile::default()
        }],
        execution_metadata: Some(ExecutedActionMetadata {
            worker: WORKER.to_owned(),
            // Where it was measured, the build's start: REAPI's way to say
            // how long the action took.
            worker_start_timestamp: record
                .build_time
                .and_then(|took| since_epoch.checked_sub(took))
                .map(timestamp),
            worker_completed_timestamp: Some(timestamp(since_epoch)),
            auxiliary_metadata: record
                .signature
                .iter()
                .map(|s| Any {
                    type_url: SIGNATURE_TYPE.to_owned(),
                    value: RecordSignature {
                        signer: s.signer.0.to_vec(),
                        signature: s.bytes.to_vec(),
                    }
                    .encode_to_vec(),
                })
                .collect(),
            ..ExecutedActionMetadata::default()
        }),
        ..ActionResult::default()
    };
    result.encode_to_vec()
}

fn timestamp(since_epoch: Duration) -> Timestamp {
    Timestamp {
        seconds: since_epoch.as_secs() as i64,
        nanos: since_epoch.subsec_nanos() as i32,
    }
}

/// How long the action took by its worker's timestamps, if it says, at
/// most [`MAX_BUILD_TIME`]; times that make no sense say nothing.
fn build_time(metadata: &ExecutedActionMetadata) -> Option<Duration> {
    let since_epoch = |t: &Timestamp| {
        let seconds = u64::try_from(t.seconds).ok()?;
        let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
        Some(Duration::new(seconds, nanos))
    };
    let start = since_epoch(metadata.worker_start_timestamp.as_ref()?)?;
    let completed = since_epoch(metadata.worker_completed_timestamp.as_ref()?)?;
    completed
        .checked_sub(start)
        .map(|took| took.min(MAX_BUILD_TIME))
}

/// The record and inline output that an action result of `action` holds.
pub fn decode(action: &Id, bytes: &[u8]) -> Result<(ActionRecord, Option<Vec<u8>>), String> {
    let result =
        ActionResult::decode(bytes).map_err(|e| format!("not an ActionResult message: {e}"))?;
    let [file] = <[OutputFile; 1]>::try_from(result.output_files).map_err(|files| {
        format!(
            "a Go action has one output file, this result has {}",
            files.len()
        )
    })?;
    let digest = file.digest.ok_or("the output file has no digest")?;
    let output = Id::from_hex(&digest.hash)
        .ok_or_else(|| format!("`{}` is not a SHA-256 digest", digest.hash))?;
    let size = u64::try_from(digest.size_bytes).map_err(|_| "the output size is negative")?;
    let metadata = result.execution_metadata.unwrap_or_default();
    let completed = metadata
        .worker_completed_timestamp
        .ok_or("the result has no completion time")?;
    let signature = signature_in(&metadata.auxiliary_metadata)?;
    let build_time = build_time(&metadata);
    let (Ok(seconds), Ok(nanos)) = (
        u64::try_from(completed.seconds),
        u32::try_from(completed.nanos),
    ) else {
        return Err("the completion time is before 1970".into());
    };
    let put_time = (nanos < 1_000_000_000)
        .then(|| time_since_epoch(Duration::new(seconds, nanos)))
        .flatten()
        .ok_or("the completion time is not a valid timestamp of a Go cache entry")?;
    let inline = match file.contents.len() as u64 {
        0 if size > 0 => None,
        inline if inline == size => Some(file.contents),
        inline => {
            return Err(format!(
                "{inline} bytes of inline contents for an output of {size}"
            ));
        }
    };
    let record = ActionRecord {
        action: *action,
        output,
        size,
        put_time,
        placement: if inline.is_some() {
            Placement::Inline
        } else {
            Placement::Object
        },
        build_time,
        signature,
    };
    Ok((record, inline))
}

/// The signature among a result's auxiliary metadata, if there is one.
fn signature_in(metadata: &[Any]) -> Result<Option<Signature>, String> {
    let signatures: Vec<&Any> = metadata
        .iter()
        .filter(|any| any.type_url == SIGNATURE_TYPE)
        .collect();
    let any = match signatures[..] {
        [] => return Ok(None),
        [any] => any,
        _ => return Err("the result has several signatures".into()),
    };
    let bad = || "the result's signature is malformed".to_owned();
    let message = RecordSignature::decode(&any.value[..]).map_err(|_| bad())?;
    Ok(Some(Signature {
        signer: PublicKey(message.signer.try_into().map_err(|_| bad())?),
        bytes: message.signature.try_into().map_err(|_| bad())?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result_completed_at(seconds: i64, nanos: i32) -> Vec<u8> {
        let record = ActionRecord {
            action: Id([1; 32]),
            output: Id::of(b"out"),
            size: 3,
            put_time: SystemTime::UNIX_EPOCH,
            placement: Placement::Inline,
            build_time: None,
            signature: None,
        };
        let mut result = ActionResult::decode(&encode(&record, Some(b"out"))[..]).unwrap();
        let metadata = result.execution_metadata.as_mut().unwrap();
        metadata.worker_completed_timestamp = Some(Timestamp { seconds, nanos });
        result.encode_to_vec()
    }

    #[test]
    fn the_build_time_is_the_workers_start_to_its_completion() {
        let record = ActionRecord {
            action: Id([1; 32]),
            output: Id::of(b"out"),
            size: 3,
            put_time: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5),
            placement: Placement::Inline,
            build_time: Some(Duration::from_millis(1500)),
            signature: None,
        };
        let bytes = encode(&record, Some(b"out"));
        let (decoded, _) = decode(&Id([1; 32]), &bytes).unwrap();
        assert_eq!(decoded, record);
        // A start after the completion, or none, says nothing.
        let mut result = ActionResult::decode(&bytes[..]).unwrap();
        let metadata = result.execution_metadata.as_mut().unwrap();
        metadata.worker_start_timestamp = Some(Timestamp {
            seconds: 1_800_000_000,
            nanos: 0,
        });
        let (later, _) = decode(&Id([1; 32]), &result.encode_to_vec()).unwrap();
        assert_eq!(later.build_time, None);
        let metadata = result.execution_metadata.as_mut().unwrap();
        metadata.worker_start_timestamp = Some(Timestamp {
            seconds: 0,
            nanos: 0,
        });
        let (ancient, _) = decode(&Id([1; 32]), &result.encode_to_vec()).unwrap();
        assert_eq!(ancient.build_time, Some(MAX_BUILD_TIME));
        let (untimed, _) = decode(&Id([1; 32]), &result_completed_at(1, 0)).unwrap();
        assert_eq!(untimed.build_time, None);
    }

    #[test]
    fn completion_times_a_go_entry_cannot_carry_are_refused() {
        let (record, inline) =
            decode(&Id([1; 32]), &result_completed_at(1_700_000_000, 5)).unwrap();
        assert_eq!(
            record.put_time,
            SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5)
        );
        assert_eq!(inline.as_deref(), Some(&b"out"[..]));
        // The year 10000 once passed here and broke the answer to the go
        // command; 2262 is the last year cmd/go's format holds.
        for (seconds, nanos) in [
            (253_402_300_800, 0),
            (9_223_372_037, 0),
            (i64::MAX, 999_999_999),
            (-1, 0),
            (0, -1),
            (0, 1_000_000_000),
        ] {
            let e = decode(&Id([1; 32]), &result_completed_at(seconds, nanos)).unwrap_err();
            assert!(e.contains("time"), "{seconds}.{nanos}: {e}");
        }
    }
}
