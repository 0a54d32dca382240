//! The action record: what the remote knows about one action.
//!
//! A record is one header line, then, for an inline output, its body:
//!
//! ```text
//! granary-ac 1 <hex action ID> <hex output ID> <size> <put time, unix ns> inline|object[ built=<ms>][ <signer> <signature>]\n
//! <the output as one zstd frame, if inline>
//! ```
//!
//! The action ID is repeated so that a record copied or written under the
//! wrong key is detected, as cmd/go's own entries do. `built=` is how long
//! the go command took to build the output where it was built, so that a
//! runner that reuses it can say what the hit saved. A signed record ends
//! its header with the signer's public key and the ed25519 signature of its
//! [`Claim`] (see `granary-trust`), both in hex. The build time is not
//! signed: it is a statistic, which a dishonest writer could only inflate
//! in a summary, and records written before it keep their signatures.

use std::time::{Duration, SystemTime};

use granary_id::Id;
use granary_trust::{Claim, Signature};

const MAGIC: &str = "granary-ac";
const FORMAT: &str = "1";
/// The longest header line a valid record can have.
const MAX_HEADER: usize = 400;
/// The longest build time a record carries: longer ones are taken as this
/// much, so no writer can make one hit outweigh a day's builds.
pub const MAX_BUILD_TIME: Duration = Duration::from_secs(3600);
/// The latest time an entry may carry: cmd/go keeps put times as signed
/// 64-bit Unix nanoseconds (until the year 2262), so a later one can only
/// be damage, and no time granary hands on may fail to format.
const LATEST: Duration = Duration::from_nanos(i64::MAX as u64);

/// The time `since` the Unix epoch, if an entry may carry it.
pub fn time_since_epoch(since: Duration) -> Option<SystemTime> {
    (since <= LATEST).then(|| SystemTime::UNIX_EPOCH + since)
}

/// Where an output's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// In the record, after the header line.
    Inline,
    /// In the content-addressed store, under the output ID.
    Object,
}

/// The header of an action record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRecord {
    pub action: Id,
    pub output: Id,
    /// The output's size, uncompressed.
    pub size: u64,
    /// When the output was first put: the go command expires cached test
    /// results by it, so copies must keep it.
    pub put_time: SystemTime,
    pub placement: Placement,
    /// How long building the output took where it was built (from the go
    /// command's miss to its put), if the writer measured it.
    pub build_time: Option<Duration>,
    /// Who vouches for the record, if anyone does.
    pub signature: Option<Signature>,
}

impl ActionRecord {
    /// What the record claims, in `namespace`: what a signature covers.
    pub fn claim<'a>(&self, namespace: &'a str) -> Claim<'a> {
        Claim {
            namespace,
            action: self.action,
            output: self.output,
            size: self.size,
            put_time: self.put_time,
        }
    }

    /// The record's header line, newline included.
    pub fn header(&self) -> String {
        let nanos = self
            .put_time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let placement = match self.placement {
            Placement::Inline => "inline",
            Placement::Object => "object",
        };
        let built = self
            .build_time
            .map_or(String::new(), |t| format!(" built={}", t.as_millis()));
        let signature = self
            .signature
            .map_or(String::new(), |s| format!(" {}", s.to_hex()));
        format!(
            "{MAGIC} {FORMAT} {} {} {} {nanos} {placement}{built}{signature}\n",
            self.action, self.output, self.size,
        )
    }

    /// Splits a record of `action` into its header and what follows it.
    pub fn parse<'a>(action: &Id, record: &'a [u8]) -> Result<(ActionRecord, &'a [u8]), String> {
        let end = record
            .iter()
            .take(MAX_HEADER)
            .position(|&b| b == b'\n')
            .ok_or("no header line")?;
        let line = std::str::from_utf8(&record[..end]).map_err(|_| "header is not text")?;
        let fields: Vec<&str> = line.split(' ').collect();
        let unknown = || format!("unknown header {line:?}");
        let (head, rest) = fields.split_at_checked(7).ok_or_else(unknown)?;
        let [
            MAGIC,
            FORMAT,
            action_hex,
            output_hex,
            size,
            nanos,
            placement,
        ] = *head
        else {
            return Err(unknown());
        };
        let (build_time, signature) = match rest {
            [built, signature @ ..] if built.starts_with("built=") => (
                Some(build_time(&built[6..]).ok_or("bad build time")?),
                signature,
            ),
            signature => (None, signature),
        };
        let signature = match *signature {
            [] => None,
            [signer, signature] => {
                Some(Signature::from_hex(signer, signature).ok_or("bad signature")?)
            }
            _ => return Err(unknown()),
        };
        let record_action = digest(action_hex).ok_or("bad action ID")?;
        if &record_action != action {
            return Err(format!("the record is for another action, {action_hex}"));
        }
        let output = digest(output_hex).ok_or("bad output ID")?;
        let size = number(size).ok_or("bad size")?;
        let put_time = number(nanos)
            .and_then(|nanos| time_since_epoch(Duration::from_nanos(nanos)))
            .ok_or("bad put time")?;
        let placement = match placement {
            "inline" => Placement::Inline,
            "object" => Placement::Object,
            other => return Err(format!("unknown placement {other:?}")),
        };
        let body = &record[end + 1..];
        if placement == Placement::Object && !body.is_empty() {
            return Err("an object record with a body".to_owned());
        }
        let record = ActionRecord {
            action: record_action,
            output,
            size,
            put_time,
            placement,
            build_time,
            signature,
        };
        Ok((record, body))
    }
}

fn digest(text: &str) -> Option<Id> {
    // Only lower-case hex, as written, so that one record has one spelling.
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    Id::from_hex(text)
}

/// A build time in milliseconds, at most [`MAX_BUILD_TIME`].
pub(crate) fn build_time(millis: &str) -> Option<Duration> {
    number(millis).map(|ms| Duration::from_millis(ms).min(MAX_BUILD_TIME))
}

/// A decimal number without sign or leading zeros.
fn number(text: &str) -> Option<u64> {
    let canonical = text == "0" || (!text.starts_with('0') && !text.starts_with('+'));
    canonical.then(|| text.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(placement: Placement) -> ActionRecord {
        ActionRecord {
            action: Id([1; 32]),
            output: Id([2; 32]),
            size: 1234,
            put_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            placement,
            build_time: None,
            signature: None,
        }
    }

    #[test]
    fn a_signature_travels_in_the_header() {
        let key = granary_trust::SigningKey::generate().unwrap();
        let mut signed = record(Placement::Inline);
        signed.signature = Some(key.sign(&signed.claim("main")));
        let mut bytes = signed.header().into_bytes();
        bytes.extend_from_slice(b"body");
        let (parsed, body) = ActionRecord::parse(&Id([1; 32]), &bytes).unwrap();
        assert_eq!((&parsed, body), (&signed, &b"body"[..]));
        let trusted = granary_trust::TrustedKeys::new([key.public()]);
        assert_eq!(
            trusted.check(&parsed.claim("main"), parsed.signature.as_ref()),
            Ok(())
        );
        let header = signed.header();
        let signer = hex::encode(key.public().0);
        for bad in [
            header.replace(&signer, &signer[2..]),
            header.replace(&signer, &signer.to_uppercase()),
            header.replace('\n', " 00\n"),
            header.replacen(&format!(" {signer}"), "", 1),
        ] {
            assert!(
                ActionRecord::parse(&Id([1; 32]), bad.as_bytes()).is_err(),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn a_build_time_travels_before_the_signature() {
        let key = granary_trust::SigningKey::generate().unwrap();
        let mut timed = record(Placement::Object);
        timed.build_time = Some(Duration::from_millis(1234));
        let unsigned_claim = timed.claim("main");
        timed.signature = Some(key.sign(&unsigned_claim));
        let header = timed.header();
        assert!(header.contains(" object built=1234 "), "{header}");
        let (parsed, _) = ActionRecord::parse(&Id([1; 32]), header.as_bytes()).unwrap();
        assert_eq!(parsed, timed);
        // Not signed: a record that carries none keeps its signature.
        let trusted = granary_trust::TrustedKeys::new([key.public()]);
        let bare = header.replace(" built=1234", "");
        let (parsed, _) = ActionRecord::parse(&Id([1; 32]), bare.as_bytes()).unwrap();
        assert_eq!(parsed.build_time, None);
        assert_eq!(
            trusted.check(&parsed.claim("main"), parsed.signature.as_ref()),
            Ok(())
        );
        // A build time beyond reason counts as the most a record carries.
        let long = header.replace("built=1234", "built=99999999999");
        let (parsed, _) = ActionRecord::parse(&Id([1; 32]), long.as_bytes()).unwrap();
        assert_eq!(parsed.build_time, Some(MAX_BUILD_TIME));
        for bad in ["built=", "built=-1", "built=01", "built=1.5", "built=x"] {
            let text = header.replace("built=1234", bad);
            assert!(
                ActionRecord::parse(&Id([1; 32]), text.as_bytes()).is_err(),
                "accepted {text:?}"
            );
        }
        let after = header
            .replace(" built=1234", "")
            .replace('\n', " built=1234\n");
        assert!(ActionRecord::parse(&Id([1; 32]), after.as_bytes()).is_err());
    }

    #[test]
    fn round_trips_with_nanosecond_put_times() {
        for placement in [Placement::Inline, Placement::Object] {
            let record = record(placement);
            let mut bytes = record.header().into_bytes();
            if placement == Placement::Inline {
                bytes.extend_from_slice(b"body");
            }
            let (parsed, body) = ActionRecord::parse(&Id([1; 32]), &bytes).unwrap();
            assert_eq!(parsed, record);
            let expected: &[u8] = if placement == Placement::Inline {
                b"body"
            } else {
                b""
            };
            assert_eq!(body, expected);
        }
    }

    #[test]
    fn rejects_anything_else() {
        let good = record(Placement::Object).header();
        let action = Id([1; 32]);
        let swap = |from: &str, to: &str| good.replacen(from, to, 1);
        let bad = [
            String::new(),
            good.trim_end().to_owned(),
            swap("granary-ac", "granary-ab"),
            swap(" 1 ", " 2 "),
            swap(&"01".repeat(32), &"03".repeat(32)),
            swap(&"02".repeat(32), &"0G".repeat(32)),
            swap(
                &"02".repeat(32),
                &"2".repeat(64).to_uppercase().replace('2', "A"),
            ),
            swap(" 1234 ", " -1 "),
            swap(" 1234 ", " 01234 "),
            swap(" 1234 ", " 99999999999999999999999 "),
            swap("1700000000123456789", "9223372036854775808"),
            swap("1700000000123456789", "18446744073709551615"),
            swap("object", "elsewhere"),
            swap(" object", "  object"),
            format!("{good}trailing"),
            good.replace('\n', " extra\n"),
            "x".repeat(1000),
        ];
        for text in bad {
            assert!(
                ActionRecord::parse(&action, text.as_bytes()).is_err(),
                "accepted {text:?}"
            );
        }
        assert!(ActionRecord::parse(&action, &[0xff, b'\n']).is_err());
    }
}
