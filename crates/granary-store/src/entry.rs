//! The action entry: cmd/go's `-a` file.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use granary_id::{ID_SIZE, Id};

const HEX_SIZE: usize = ID_SIZE * 2;

/// Size of an action entry: `v1 <64 hex> <64 hex> <20> <20>\n`.
pub const ENTRY_SIZE: usize = 2 + 1 + HEX_SIZE + 1 + HEX_SIZE + 1 + 20 + 1 + 20 + 1;

/// What an action ID maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionEntry {
    pub output_id: Id,
    /// Size in bytes of the output.
    pub size: u64,
    /// When the entry was first put; `go test` compares it with
    /// `go clean -testcache`'s mark, so it must survive every copy.
    pub put_time: SystemTime,
}

/// Why an action file is not a valid entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("the action file has {0} bytes, not {ENTRY_SIZE}")]
    WrongLength(usize),
    #[error("the action file is not a v1 entry")]
    BadHeader,
    #[error("the action file's IDs are not hex")]
    BadHex,
    #[error("the action file belongs to another action ID")]
    OtherAction,
    #[error("the action file's size is not a non-negative number")]
    BadSize,
    #[error("the action file's time is not a non-negative number")]
    BadTime,
}

impl ActionEntry {
    /// Parses an action file's contents, as cmd/go does. `action` is the ID
    /// the file was found under, which it must repeat.
    pub fn parse(data: &[u8], action: &Id) -> Result<ActionEntry, EntryError> {
        let (found, entry) = Self::parse_any(data)?;
        if found != *action {
            return Err(EntryError::OtherAction);
        }
        Ok(entry)
    }

    /// Parses an action file's contents and returns the action ID it names.
    pub fn parse_any(data: &[u8]) -> Result<(Id, ActionEntry), EntryError> {
        if data.len() != ENTRY_SIZE {
            return Err(EntryError::WrongLength(data.len()));
        }
        let space = |i: usize| data[i] == b' ';
        let out_at = 3 + HEX_SIZE + 1;
        let size_at = out_at + HEX_SIZE + 1;
        let time_at = size_at + 21;
        if &data[..3] != b"v1 "
            || !space(out_at - 1)
            || !space(size_at - 1)
            || !space(time_at - 1)
            || data[ENTRY_SIZE - 1] != b'\n'
        {
            return Err(EntryError::BadHeader);
        }
        let action = Id::from_hex(&data[3..3 + HEX_SIZE]).ok_or(EntryError::BadHex)?;
        let output = Id::from_hex(&data[out_at..out_at + HEX_SIZE]).ok_or(EntryError::BadHex)?;
        let size = parse_padded(&data[size_at..size_at + 20]).ok_or(EntryError::BadSize)?;
        let nanos = parse_padded(&data[time_at..time_at + 20]).ok_or(EntryError::BadTime)?;
        Ok((
            action,
            ActionEntry {
                output_id: output,
                size,
                put_time: UNIX_EPOCH + Duration::from_nanos(nanos),
            },
        ))
    }

    /// The entry as cmd/go writes it.
    pub fn encode(&self, action: &Id) -> String {
        let nanos = self
            .put_time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos().min(i64::MAX as u128));
        format!(
            "v1 {action} {} {:>20} {:>20}\n",
            self.output_id, self.size, nanos
        )
    }
}

/// Parses a right-aligned, space-padded decimal that fits an i64, as Go's
/// `strconv.ParseInt` after trimming leading spaces does.
fn parse_padded(field: &[u8]) -> Option<u64> {
    let digits = std::str::from_utf8(field).ok()?.trim_start_matches(' ');
    let value: i64 = digits.parse().ok()?;
    u64::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Id, ActionEntry) {
        (
            Id([0xab; 32]),
            ActionEntry {
                output_id: Id([0x01; 32]),
                size: 1234,
                // In 100 ns steps, which is all a time holds on Windows.
                put_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_700),
            },
        )
    }

    #[test]
    fn round_trips_in_gos_exact_format() {
        let (action, entry) = sample();
        let text = entry.encode(&action);
        assert_eq!(text.len(), ENTRY_SIZE);
        assert_eq!(
            text,
            format!(
                "v1 {} {} {:>20} {:>20}\n",
                "ab".repeat(32),
                "01".repeat(32),
                1234,
                1_700_000_000_123_456_700u64
            )
        );
        assert_eq!(ActionEntry::parse(text.as_bytes(), &action), Ok(entry));
    }

    #[test]
    fn rejects_what_go_rejects() {
        let (action, entry) = sample();
        let good = entry.encode(&action).into_bytes();
        let with = |i: usize, b: u8| {
            let mut bad = good.clone();
            bad[i] = b;
            ActionEntry::parse(&bad, &action)
        };
        assert_eq!(with(0, b'x'), Err(EntryError::BadHeader));
        assert_eq!(with(5, b'g'), Err(EntryError::BadHex));
        assert_eq!(with(ENTRY_SIZE - 1, b' '), Err(EntryError::BadHeader));
        assert_eq!(with(ENTRY_SIZE - 25, b'x'), Err(EntryError::BadSize));
        assert_eq!(with(ENTRY_SIZE - 20, b'-'), Err(EntryError::BadTime));
        assert_eq!(
            ActionEntry::parse(&good[..100], &action),
            Err(EntryError::WrongLength(100))
        );
        assert_eq!(
            ActionEntry::parse(&good, &Id([0xac; 32])),
            Err(EntryError::OtherAction)
        );
    }
}
