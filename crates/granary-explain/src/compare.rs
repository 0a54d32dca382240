//! Why an action missed: its inputs against those of the last recorded
//! run of the same action, said as a person would want to hear it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::inputs::split;
use crate::record::{Record, Recorded};

/// A record read from somewhere, and how to name that place.
#[derive(Debug)]
pub struct Source {
    /// `namespace main`, `this machine`.
    pub label: String,
    pub record: Record,
}

/// Why one action missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// `build example.com/m/a`.
    pub action: String,
    pub base: Base,
    /// What differs from the base (empty unless [`Base::Changed`]).
    pub differences: Vec<Difference>,
}

/// What a missed action was compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// No record has this action: its first recorded run.
    Unrecorded,
    /// A run with the same key: the inputs are the same, so its output was
    /// not in the cache (evicted, never stored, or in a namespace not read).
    Same { from: String, written: u64 },
    /// The closest recorded run of the action, with other inputs.
    Changed { from: String, written: u64 },
}

/// One input that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// What the input is: `source file a.go`, `variable FOO, read by the test`.
    pub what: String,
    /// How it changed: `changed`, `added`, `v1 → v3`.
    pub change: String,
}

/// Why each of the `missed` actions (name and this run's entry) missed,
/// against the recorded runs in `sources`: an entry with the same key if
/// there is one, else the one of the same name with the fewest differing
/// inputs (a package's build with its tests is compared with one with its
/// tests), the newest among equals.
pub fn explain(missed: &[(String, Recorded)], sources: &[Source]) -> Vec<Explained> {
    missed
        .iter()
        .map(|(action, now)| {
            let candidates = sources.iter().flat_map(|source| {
                source
                    .record
                    .actions
                    .get(action)
                    .into_iter()
                    .flatten()
                    .map(move |recorded| (source.label.as_str(), recorded))
            });
            let mut best: Option<(usize, u64, &str, &Recorded, Vec<Difference>)> = None;
            for (from, recorded) in candidates {
                let differences = differences(&recorded.inputs, &now.inputs);
                let same = !now.id.is_empty() && recorded.id == now.id;
                let rank = if same { 0 } else { 1 + differences.len() };
                let better = best.as_ref().is_none_or(|(best_rank, written, ..)| {
                    rank < *best_rank || rank == *best_rank && recorded.written > *written
                });
                if better {
                    best = Some((rank, recorded.written, from, recorded, differences));
                }
            }
            let (base, differences) = match best {
                None => (Base::Unrecorded, Vec::new()),
                Some((rank, written, from, _, differences)) => {
                    let from = from.to_owned();
                    match rank == 0 || differences.is_empty() {
                        true => (Base::Same { from, written }, Vec::new()),
                        false => (Base::Changed { from, written }, differences),
                    }
                }
            };
            Explained {
                action: action.clone(),
                base,
                differences,
            }
        })
        .collect()
}

/// The inputs that differ between `old` and `new`, by what they are about.
pub fn differences(old: &[String], new: &[String]) -> Vec<Difference> {
    let mut by_key: BTreeMap<&str, (Vec<&str>, Vec<&str>)> = BTreeMap::new();
    for line in old {
        let (key, value) = split(line);
        by_key.entry(key).or_default().0.push(value);
    }
    for line in new {
        let (key, value) = split(line);
        by_key.entry(key).or_default().1.push(value);
    }
    by_key
        .into_iter()
        .filter(|(_, (old, new))| old != new)
        .map(|(key, (old, new))| Difference {
            what: describe(key),
            change: change(key, &old, &new),
        })
        .collect()
}

/// What an input is about, for a person.
fn describe(key: &str) -> String {
    let two = |prefix: &str| key.strip_prefix(prefix);
    if let Some(path) = two("open\t") {
        format!("{path}, read by the test")
    } else if let Some(path) = two("stat\t") {
        format!("{path}, looked at by the test")
    } else if let Some(name) = two("env\t") {
        format!("variable {name}, read by the test")
    } else if key == "flags" {
        "the test's flags".to_owned()
    } else if key == "binary" {
        "the test binary (rebuilt: see its link)".to_owned()
    } else if key == "pkg" {
        "the package's compiled form (see its build)".to_owned()
    } else if let Some(file) = two("file ") {
        format!("source file {file}")
    } else if let Some(package) = two("packagefile ")
        .or_else(|| two("vetout "))
        .or_else(|| two("import ").filter(|p| !p.starts_with('"')))
    {
        format!("dependency {}", package.trim_matches('"'))
    } else if key == "go version" {
        "the go version".to_owned()
    } else if key == "dir" {
        "the package's folder (go keys builds on it: check out at one path, or use -trimpath)"
            .to_owned()
    } else if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        format!("variable {key}")
    } else {
        key.to_owned()
    }
}

/// How an input's values changed, for a person.
fn change(key: &str, old: &[&str], new: &[&str]) -> String {
    match (old, new) {
        ([], new) => match new {
            [value] if readable(value) => format!("added: {}", clip(value)),
            _ => "added".to_owned(),
        },
        (_, []) => "removed".to_owned(),
        ([old], [new]) if key.starts_with("open\t") || key.starts_with("stat\t") => {
            file_change(old, new)
        }
        ([old], [new]) if key.starts_with("env\t") => match (*old, *new) {
            ("unset", _) => "set".to_owned(),
            (_, "unset") => "unset".to_owned(),
            _ => "changed value".to_owned(),
        },
        ([old], [new]) if readable(old) && readable(new) => {
            format!("{} → {}", clip(old), clip(new))
        }
        _ => "changed".to_owned(),
    }
}

/// A file's change, from values `content C time T`, `folder N time T` or
/// `missing` (see `inputs`).
fn file_change(old: &str, new: &str) -> String {
    let parts = |value: &str| {
        value
            .rsplit_once(" time ")
            .map(|(content, time)| (content.to_owned(), time.to_owned()))
    };
    match (parts(old), parts(new)) {
        (None, Some(_)) => "appeared".to_owned(),
        (Some(_), None) => "disappeared".to_owned(),
        (Some((old_content, _)), Some((new_content, _))) if old_content != new_content => {
            match new_content.starts_with("folder") {
                true => "entries changed".to_owned(),
                false => "content changed".to_owned(),
            }
        }
        (Some(_), Some(_)) => "same content, new modification time: a fresh checkout? \
                               `granary mtimes` gives files the times of their content"
            .to_owned(),
        (None, None) => "changed".to_owned(),
    }
}

/// Whether a value means something to a person: not an ID, nor IDs
/// joined by `/` (`packagemain ACTION/CONTENT`).
fn readable(value: &str) -> bool {
    // An ID in base64 has digits, or upper- and lower-case letters both
    // (one in about 30 of go's 20-character IDs has no digit).
    let id_like = |part: &str| {
        let has = |class: fn(&u8) -> bool| part.bytes().any(|b| class(&b));
        part.len() >= 8
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && (has(u8::is_ascii_digit)
                || has(u8::is_ascii_uppercase) && has(u8::is_ascii_lowercase))
    };
    !value.split('/').all(id_like)
}

fn clip(value: &str) -> String {
    const MAX: usize = 120;
    match value.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_owned(),
    }
}

impl Explained {
    /// The explanation as lines for a terminal, ages as of `now` (Unix
    /// seconds); at most `limit` differences.
    pub fn render(&self, now: u64, limit: usize) -> String {
        let mut out = String::new();
        let _ = match &self.base {
            Base::Unrecorded => writeln!(out, "{}: no recorded run to compare with", self.action),
            Base::Same { from, written } => writeln!(
                out,
                "{}: same inputs as the run of {} ago ({from}): its output was not in the cache \
                 (evicted, never stored, or in a namespace this run does not read)",
                self.action,
                age(now.saturating_sub(*written))
            ),
            Base::Changed { from, written } => writeln!(
                out,
                "{}: against the run of {} ago ({from}):",
                self.action,
                age(now.saturating_sub(*written))
            ),
        };
        for difference in self.differences.iter().take(limit) {
            let _ = writeln!(out, "    {}: {}", difference.what, difference.change);
        }
        if self.differences.len() > limit {
            let _ = writeln!(
                out,
                "    and {} more differences",
                self.differences.len() - limit
            );
        }
        out
    }
}

/// An age in the largest unit that fits: `40 s`, `5 min`, `3 h`, `2 days`.
pub fn age(seconds: u64) -> String {
    match seconds {
        0..120 => format!("{seconds} s"),
        120..7200 => format!("{} min", seconds / 60),
        7200..172_800 => format!("{} h", seconds / 3600),
        _ => format!("{} days", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(written: u64, id: &str, inputs: &[&str]) -> Recorded {
        Recorded::new(written, id, inputs.iter().map(|s| s.to_string()))
    }

    fn source(label: &str, action: &str, entries: Vec<Recorded>) -> Source {
        let mut record = Record::new("s");
        record.actions.insert(action.to_owned(), entries);
        Source {
            label: label.to_owned(),
            record,
        }
    }

    #[test]
    fn differences_are_named_as_a_person_would() {
        let old = [
            "go1.26.7",
            "file a.go AAAAAAAAA1",
            "file gone.go AAAAAAAAA2",
            "import os BBBBBBBBB1",
            "GOAMD64=v1",
            "open\t/m/a/testdata/x\tcontent 0a time 1",
            "open\t/m/a/testdata/y\tcontent 0b time 1",
            "env\tFOO\tunset",
            "flags\t[\"-test.run=A\"] execcmd []",
            "dir /m/a",
        ];
        let new = [
            "go1.26.8",
            "file a.go AAAAAAAAA9",
            "file new.go AAAAAAAAA3",
            "import os BBBBBBBBB2",
            "GOAMD64=v3",
            "open\t/m/a/testdata/x\tcontent 0c time 1",
            "open\t/m/a/testdata/y\tcontent 0b time 2",
            "env\tFOO\tset 1234",
            "flags\t[\"-test.run=B\"] execcmd []",
            "dir /m/a",
        ];
        let owned = |lines: &[&str]| lines.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let found: Vec<String> = differences(&owned(&old), &owned(&new))
            .into_iter()
            .map(|d| format!("{}: {}", d.what, d.change))
            .collect();
        assert_eq!(
            found,
            [
                "variable GOAMD64: v1 → v3",
                "variable FOO, read by the test: set",
                "source file a.go: changed",
                "source file gone.go: removed",
                "source file new.go: added",
                "the test's flags: [\"-test.run=A\"] execcmd [] → [\"-test.run=B\"] execcmd []",
                "the go version: go1.26.7 → go1.26.8",
                "dependency os: changed",
                "/m/a/testdata/x, read by the test: content changed",
                "/m/a/testdata/y, read by the test: same content, new modification time: \
                 a fresh checkout? `granary mtimes` gives files the times of their content",
            ]
        );
    }

    #[test]
    fn ids_without_digits_are_not_shown_as_values() {
        let old = vec!["import lib pSbvnGBGtWuvXyzAbCdEf".to_owned()];
        let new = vec!["import lib qWeRtYuIoPaSdFgHjKlZ".to_owned()];
        let found = differences(&old, &new);
        assert_eq!(
            (found[0].what.as_str(), found[0].change.as_str()),
            ("dependency lib", "changed")
        );
    }

    #[test]
    fn the_base_is_the_same_key_else_the_closest_else_the_newest() {
        let now = entry(
            100,
            "k3",
            &["file a_test.go TTTTTTTTT2", "file a.go AAAAAAAAA2"],
        );
        let sources = [
            source(
                "namespace main",
                "build a",
                vec![
                    entry(50, "k1", &["file a.go AAAAAAAAA1"]),
                    entry(
                        50,
                        "k2",
                        &["file a_test.go TTTTTTTTT1", "file a.go AAAAAAAAA1"],
                    ),
                ],
            ),
            source(
                "this machine",
                "build a",
                vec![entry(
                    60,
                    "k4",
                    &["file a_test.go TTTTTTTTT1", "file a.go AAAAAAAAA1"],
                )],
            ),
        ];
        let missed = [("build a".to_owned(), now.clone())];
        let explained = &explain(&missed, &sources)[0];
        assert_eq!(
            explained.base,
            Base::Changed {
                from: "this machine".into(),
                written: 60
            },
            "with its tests, like this run's, and newer"
        );
        assert_eq!(explained.differences.len(), 2);

        let same = [(
            "build a".to_owned(),
            entry(100, "k1", &["file a.go AAAAAAAAA1"]),
        )];
        assert!(matches!(
            explain(&same, &sources)[0].base,
            Base::Same { .. }
        ));
        let unknown = [("build b".to_owned(), now)];
        assert_eq!(explain(&unknown, &sources)[0].base, Base::Unrecorded);
        assert!(
            explain(&missed, &sources)[0]
                .render(100 + 3600, 1)
                .contains("and 1 more")
        );
    }
}
