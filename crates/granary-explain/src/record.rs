//! Records: what each action of a scope's runs was built from, kept in the
//! cache so that a later run, on any machine, can say what changed.
//!
//! A record is a zstd frame of one JSON object:
//!
//! ```text
//! {"format": "granary-explain 1", "scope": "example.com/m linux/amd64",
//!  "actions": {"build example.com/m/a": [{"written": 1765000000,
//!                                         "id": "64815b12672083028f84",
//!                                         "inputs": ["file a.go PEfE7o35oB", …]}], …}}
//! ```
//!
//! One record per scope holds the latest inputs of every action that
//! scope's runs made (several of one name: a package built with its tests
//! and without): a run replaces the entries of the names it made and keeps
//! the others, so a job's `go build`, `go vet` and `go test` add up.
//! Entries older than [`KEEP_FOR`] and beyond [`MAX_ACTIONS`] drop out.

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};

const FORMAT: &str = "granary-explain 1";
/// Entries unused for this long drop out of a record, in seconds.
const KEEP_FOR: u64 = 30 * 24 * 3600;
/// A record keeps at most this many actions, the newest.
const MAX_ACTIONS: usize = 50_000;
/// Records longer than this, compressed or not, are refused.
pub const MAX_RECORD: u64 = 64 << 20;
/// Hex digits of an action ID a record keeps.
const ID_DIGITS: usize = 20;

/// The latest inputs of each action of a scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    format: String,
    pub scope: String,
    pub actions: BTreeMap<String, Vec<Recorded>>,
}

/// One action's inputs, as of its latest run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// When, in Unix seconds.
    pub written: u64,
    /// The key the action made (hex, shortened; empty for a test result).
    pub id: String,
    /// What went into them (see `observe` and `inputs`).
    pub inputs: Vec<String>,
}

/// Why bytes are not a record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not a zstd frame of at most 64 MiB: {0}")]
    Frame(#[source] std::io::Error),
    #[error("not a granary-explain record: {0}")]
    Json(#[source] serde_json::Error),
    #[error("a record of format `{0}`, which this granary does not read")]
    Format(String),
}

impl Recorded {
    /// An entry for an action made at `written`, of this key and inputs.
    pub fn new(written: u64, id: &str, inputs: impl IntoIterator<Item = String>) -> Recorded {
        let mut inputs: Vec<String> = inputs.into_iter().collect();
        inputs.sort();
        inputs.dedup();
        Recorded {
            written,
            id: short_id(id).to_owned(),
            inputs,
        }
    }
}

/// A key as a record keeps it.
pub fn short_id(id: &str) -> &str {
    id.get(..ID_DIGITS).unwrap_or(id)
}

impl Record {
    pub fn new(scope: &str) -> Record {
        Record {
            format: FORMAT.to_owned(),
            scope: scope.to_owned(),
            actions: BTreeMap::new(),
        }
    }

    /// The record's bytes: a zstd frame of its JSON.
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("a record always serializes");
        zstd::encode_all(&json[..], 3).expect("compressing into memory cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        let mut json = Vec::new();
        zstd::Decoder::new(bytes)
            .map_err(RecordError::Frame)?
            .take(MAX_RECORD + 1)
            .read_to_end(&mut json)
            .map_err(RecordError::Frame)?;
        if json.len() as u64 > MAX_RECORD {
            return Err(RecordError::Frame(std::io::Error::other(
                "longer than 64 MiB",
            )));
        }
        let record: Record = serde_json::from_slice(&json).map_err(RecordError::Json)?;
        if record.format != FORMAT {
            return Err(RecordError::Format(record.format));
        }
        Ok(record)
    }

    /// This record with the actions of `newer` replacing its own, and
    /// without the entries too old (as of `now`) or too many to keep.
    pub fn merge(mut self, newer: Record, now: u64) -> Record {
        self.actions.extend(newer.actions);
        let written = |actions: &Vec<Recorded>| actions.iter().map(|a| a.written).max();
        self.actions.retain(|_, actions| {
            written(actions).is_some_and(|at| now.saturating_sub(at) <= KEEP_FOR)
        });
        if self.actions.len() > MAX_ACTIONS {
            let mut times: Vec<u64> = self.actions.values().filter_map(written).collect();
            times.sort_unstable_by(|a, b| b.cmp(a));
            let oldest_kept = times[MAX_ACTIONS - 1];
            self.actions
                .retain(|_, actions| written(actions) >= Some(oldest_kept));
        }
        self.scope = newer.scope;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(written: u64, input: &str) -> Vec<Recorded> {
        vec![Recorded::new(
            written,
            &"ab".repeat(32),
            [input.to_owned(), input.to_owned()],
        )]
    }

    #[test]
    fn records_round_trip_and_refuse_what_they_are_not() {
        let mut record = Record::new("example.com/m linux/amd64");
        record
            .actions
            .insert("build example.com/m/a".into(), action(10, "file a.go X"));
        let decoded = Record::decode(&record.encode()).unwrap();
        assert_eq!(decoded, record);
        let a = &decoded.actions["build example.com/m/a"][0];
        assert_eq!(a.id, "ab".repeat(10));
        assert_eq!(a.inputs.len(), 1);

        assert!(matches!(
            Record::decode(b"junk"),
            Err(RecordError::Frame(_))
        ));
        let other = zstd::encode_all(
            &br#"{"format":"granary-explain 9","scope":"","actions":{}}"#[..],
            1,
        )
        .unwrap();
        assert!(matches!(
            Record::decode(&other),
            Err(RecordError::Format(_))
        ));
        let bomb = zstd::encode_all(&vec![b' '; (MAX_RECORD + 10) as usize][..], 19).unwrap();
        assert!(matches!(Record::decode(&bomb), Err(RecordError::Frame(_))));
    }

    #[test]
    fn a_merge_keeps_other_actions_and_drops_old_ones() {
        let now = 100 * 24 * 3600;
        let mut old = Record::new("s");
        old.actions.insert("build a".into(), action(now - 10, "a1"));
        old.actions.insert("build b".into(), action(now - 10, "b1"));
        old.actions
            .insert("build gone".into(), action(now - KEEP_FOR - 1, "g"));
        let mut new = Record::new("s");
        new.actions.insert("build a".into(), action(now, "a2"));
        let merged = old.merge(new, now);
        assert_eq!(
            merged.actions.keys().collect::<Vec<_>>(),
            ["build a", "build b"]
        );
        assert_eq!(merged.actions["build a"][0].inputs, ["a2"]);
    }
}
