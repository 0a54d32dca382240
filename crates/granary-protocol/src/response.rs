//! Encoding responses.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use granary_id::Id;

use crate::KNOWN_COMMANDS;

/// An answer to one request, or the handshake.
///
/// Construct it with the functions below, which set exactly the fields each
/// kind of answer needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Response {
    #[serde(rename = "ID")]
    pub id: i64,
    #[serde(rename = "Err", skip_serializing_if = "Option::is_none")]
    pub err: Option<String>,
    #[serde(rename = "KnownCommands", skip_serializing_if = "<[_]>::is_empty")]
    pub known_commands: &'static [&'static str],
    #[serde(rename = "Miss", skip_serializing_if = "is_false")]
    pub miss: bool,
    #[serde(
        rename = "OutputID",
        skip_serializing_if = "Option::is_none",
        serialize_with = "base64"
    )]
    pub output_id: Option<Id>,
    #[serde(rename = "Size", skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(
        rename = "Time",
        skip_serializing_if = "Option::is_none",
        serialize_with = "rfc3339"
    )]
    pub time: Option<SystemTime>,
    #[serde(rename = "DiskPath", skip_serializing_if = "Option::is_none")]
    pub disk_path: Option<String>,
}

impl Response {
    /// The first message, sent before any request: the commands granary knows.
    pub fn handshake() -> Self {
        Response {
            known_commands: &KNOWN_COMMANDS,
            ..Response::default()
        }
    }

    /// A get whose action is not cached (or whose entry is unusable).
    pub fn miss(id: i64) -> Self {
        Response {
            id,
            miss: true,
            ..Response::default()
        }
    }

    /// A get hit. `time` must be the original put time: `go test` compares it
    /// with `go clean -testcache`'s expiry mark.
    pub fn hit(id: i64, output_id: Id, size: u64, time: SystemTime, disk_path: String) -> Self {
        Response {
            id,
            output_id: Some(output_id),
            size,
            time: Some(time),
            disk_path: Some(disk_path),
            ..Response::default()
        }
    }

    /// A successful put.
    pub fn stored(id: i64, disk_path: String) -> Self {
        Response {
            id,
            disk_path: Some(disk_path),
            ..Response::default()
        }
    }

    /// The answer to `close`.
    pub fn closed(id: i64) -> Self {
        Response {
            id,
            ..Response::default()
        }
    }

    /// A failed request. `go` fails the action that asked, so this is for
    /// broken requests and broken local state only, never for a miss.
    pub fn error(id: i64, message: impl Into<String>) -> Self {
        Response {
            id,
            err: Some(message.into()),
            ..Response::default()
        }
    }

    /// Appends the response as one JSON line to `out`. Fails, appending
    /// nothing, only if its time is after the year 9999, which RFC 3339
    /// cannot write.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), TimeOutOfRange> {
        if let Some(time) = self.time
            && time > latest_rfc3339()
        {
            return Err(TimeOutOfRange(time));
        }
        // Serializing these plain fields into memory cannot fail now.
        serde_json::to_writer(&mut *out, self).expect("a response always serializes");
        out.push(b'\n');
        Ok(())
    }
}

/// The last instant RFC 3339 can write: 9999-12-31T23:59:59.999999999Z.
fn latest_rfc3339() -> SystemTime {
    UNIX_EPOCH + Duration::new(253_402_300_799, 999_999_999)
}

/// A response whose time RFC 3339 cannot write.
#[derive(Debug, thiserror::Error)]
#[error("the time {0:?} is after the year 9999 and cannot be sent to the go command")]
pub struct TimeOutOfRange(SystemTime);

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn base64<S: Serializer>(hash: &Option<Id>, s: S) -> Result<S::Ok, S::Error> {
    let hash = hash
        .as_ref()
        .map(|h| base64_simd::STANDARD.encode_to_string(h));
    hash.serialize(s)
}

/// Formats as Go's `time.Time` marshals: RFC 3339 with nanoseconds, in UTC.
fn rfc3339<S: Serializer>(time: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    // humantime refuses times before 1970, which no cache entry can carry.
    let time = time.map(|t| humantime::format_rfc3339_nanos(t.max(UNIX_EPOCH)).to_string());
    time.serialize(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(r: &Response) -> String {
        let mut out = Vec::new();
        r.encode(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_time_rfc3339_cannot_write_is_refused_not_a_panic() {
        let hit = |time| Response::hit(1, Id([0; 32]), 1, time, "/c/x-d".into());
        // Windows keeps times in 100 ns steps: .9999999 there, .999999999 here.
        assert!(encoded(&hit(latest_rfc3339())).contains("\"9999-12-31T23:59:59.9999999"));
        let mut out = b"kept".to_vec();
        let later = latest_rfc3339() + Duration::from_micros(1);
        assert!(hit(later).encode(&mut out).is_err());
        assert_eq!(out, b"kept", "nothing appended");
    }

    #[test]
    fn handshake_lists_the_commands() {
        assert_eq!(
            encoded(&Response::handshake()),
            "{\"ID\":0,\"KnownCommands\":[\"get\",\"put\",\"close\"]}\n"
        );
    }

    #[test]
    fn hit_carries_everything_go_needs() {
        // In 100 ns steps, which is all a time holds on Windows.
        let time = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_700);
        let r = Response::hit(7, Id([0xff; 32]), 42, time, "/c/ff/x-d".into());
        assert_eq!(
            encoded(&r),
            format!(
                "{{\"ID\":7,\"OutputID\":\"{}\",\"Size\":42,\"Time\":\"2023-11-14T22:13:20.123456700Z\",\"DiskPath\":\"/c/ff/x-d\"}}\n",
                base64_simd::STANDARD.encode_to_string([0xff; 32])
            )
        );
    }

    #[test]
    fn miss_and_error() {
        assert_eq!(encoded(&Response::miss(3)), "{\"ID\":3,\"Miss\":true}\n");
        assert_eq!(
            encoded(&Response::error(4, "bad \"x\"")),
            "{\"ID\":4,\"Err\":\"bad \\\"x\\\"\"}\n"
        );
    }
}
