//! Manifests: which entries a scope's builds used, in the order they used
//! them, and which packs hold them.
//!
//! A fresh runner reads the manifests of its scopes at start-up and fetches
//! what they name before the go command asks for it, a pack (or a batch)
//! at a time instead of an entry at a time. A manifest is a zstd frame of
//! lines:
//!
//! ```text
//! granary-manifest 1
//! scope <scope>
//! written <unix seconds>
//! pack <hex pack ID> <created, unix seconds> <bytes> <entries in the pack> <used> [<earlier>]
//! <hex action ID>[ <build ms>]          (<used> + <earlier> lines)
//! pack@<namespace> <the same fields>    (a pack in another namespace)
//! <hex action ID>[ <build ms>]          (likewise)
//! loose <used> [<earlier>]
//! <hex action ID>[ <build ms>]          (that many lines)
//! signed <hex public key> <hex signature>   (last, if signed)
//! ```
//!
//! An entry's build time, where it was measured, is how long the go command
//! took to build it (as in its record): a runner that hits it, prefetched
//! or not, can say what the hit saved.
//!
//! A signed manifest ends with the signature (see `granary-trust`) of its
//! namespace and of the SHA-256 of the text before that line.
//!
//! A `pack` group names a pack (see [`pack`](crate::pack)) and the entries
//! to take from it; a `loose` group names entries to fetch by batch (from a
//! server that has a batch endpoint) or one by one. A group lists first the
//! entries the latest job used, then those only the job before it used
//! (*earlier* entries, 0 when the field is left out): a job's first go
//! command publishes before its last one runs, so its manifest keeps what
//! the job before used, for the commands still to come; the job after it
//! keeps only what its predecessor used, so what nobody uses drops out.
//!
//! A pack is in the manifest's namespace unless its line names another
//! (`pack@main`, `pack@` for the default namespace): a pull request's job,
//! which reads `main`, names `main`'s packs rather than packing what it
//! used again. Its readers use such a group only if they read that
//! namespace too, and trust its entries as that namespace's. Versions
//! before this form refuse a manifest that has it.
//!
//! Ages keep the bucket bounded: a manifest older than
//! [`MANIFEST_MAX_AGE`] is ignored, a new manifest never names a pack older
//! than [`PACK_REUSE_AGE`] (its entries are packed again), so no manifest
//! in use names a pack older than their sum, and the sweep deletes packs
//! older than [`PACK_DELETE_AGE`] and manifests older than
//! [`MANIFEST_DELETE_AGE`].

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use granary_format::layout::Namespace;
use granary_id::Id;
use granary_trust::Signature;

const MAGIC: &str = "granary-manifest 1";
const DAY: Duration = Duration::from_secs(24 * 3600);
/// Manifests older than this are not used.
pub const MANIFEST_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// A new manifest does not name packs older than this.
pub const PACK_REUSE_AGE: Duration = Duration::from_secs(3 * 24 * 3600);
/// The sweep deletes packs older than this: no manifest in use names one.
pub const PACK_DELETE_AGE: Duration = MANIFEST_MAX_AGE
    .saturating_add(PACK_REUSE_AGE)
    .saturating_add(DAY);
/// The sweep deletes manifests older than this.
pub const MANIFEST_DELETE_AGE: Duration = MANIFEST_MAX_AGE.saturating_add(DAY);
/// Decompressed manifests longer than this are refused (about 1,000,000
/// entries).
const MAX_MANIFEST: usize = 64 << 20;

/// A pack in the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackRef {
    /// The SHA-256 of the pack's bytes, which is also its name.
    pub id: Id,
    pub created: SystemTime,
    /// The pack's length in bytes.
    pub size: u64,
    /// The entries in the pack (a group may name only some of them).
    pub entries: u32,
}

/// Entries to fetch together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    /// The pack that holds them; `None`: fetch them by batch or one by one.
    pub pack: Option<PackRef>,
    /// The namespace the pack is in, if not the manifest's own.
    pub pack_in: Option<Namespace>,
    /// What the latest job used.
    pub actions: Vec<Id>,
    /// What only the job before it used.
    pub earlier: Vec<Id>,
}

impl Group {
    /// Every entry the group names.
    pub fn all(&self) -> impl Iterator<Item = &Id> {
        self.actions.iter().chain(&self.earlier)
    }
}

/// What a scope's builds used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub scope: String,
    pub written: SystemTime,
    pub groups: Vec<Group>,
    /// How long the entries that have one took to build.
    pub build_times: HashMap<Id, Duration>,
}

impl Manifest {
    /// Whether it is too old to be used ([`MANIFEST_MAX_AGE`]).
    pub fn is_stale(&self, now: SystemTime) -> bool {
        self.written
            .checked_add(MANIFEST_MAX_AGE)
            .is_none_or(|fresh_until| fresh_until < now)
    }

    /// The number of entries it names.
    pub fn entries(&self) -> usize {
        self.groups
            .iter()
            .map(|g| g.actions.len() + g.earlier.len())
            .sum()
    }

    /// The manifest as stored: a zstd frame of its lines.
    pub fn encode(&self) -> Vec<u8> {
        compress(&self.text())
    }

    /// [`Manifest::encode`], with the signature that `sign` makes of the
    /// SHA-256 of the text.
    pub fn encode_signed(&self, sign: impl FnOnce(&Id) -> Signature) -> Vec<u8> {
        let mut text = self.text();
        let signature = sign(&Id::of(text.as_bytes()));
        text.push_str(&format!("signed {}\n", signature.to_hex()));
        compress(&text)
    }

    fn text(&self) -> String {
        let mut text = format!(
            "{MAGIC}\nscope {}\nwritten {}\n",
            self.scope.replace(['\n', '\r'], " "),
            unix_seconds(self.written)
        );
        for group in &self.groups {
            let kind = match &group.pack_in {
                Some(namespace) => format!("pack@{}", namespace.as_str()),
                None => "pack".to_owned(),
            };
            match &group.pack {
                Some(pack) => text.push_str(&format!(
                    "{kind} {} {} {} {} {}",
                    hex::encode(pack.id),
                    unix_seconds(pack.created),
                    pack.size,
                    pack.entries,
                    group.actions.len()
                )),
                None => text.push_str(&format!("loose {}", group.actions.len())),
            }
            match group.earlier.len() {
                0 => text.push('\n'),
                earlier => text.push_str(&format!(" {earlier}\n")),
            }
            for action in group.all() {
                text.push_str(&hex::encode(action));
                if let Some(took) = self.build_times.get(action) {
                    text.push_str(&format!(" {}", took.as_millis()));
                }
                text.push('\n');
            }
        }
        text
    }

    /// Reads a stored manifest, signed or not. The error says what is
    /// wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, String> {
        Manifest::decode_sealed(bytes).map(|(manifest, _)| manifest)
    }

    /// Reads a stored manifest, with what its signature covers.
    pub fn decode_sealed(bytes: &[u8]) -> Result<(Manifest, Seal), String> {
        let text = zstd::bulk::decompress(bytes, MAX_MANIFEST)
            .map_err(|e| format!("not a zstd frame of at most {MAX_MANIFEST} bytes: {e}"))?;
        let text = std::str::from_utf8(&text).map_err(|_| "not UTF-8".to_owned())?;
        let (text, signature) = match text.trim_end_matches('\n').rsplit_once('\n') {
            Some((_, last)) if last.starts_with("signed ") => {
                let signed = &text[..text.len() - last.len() - 1];
                (signed, Some(parse_signature(last)?))
            }
            _ => (text, None),
        };
        let seal = Seal {
            digest: Id::of(text.as_bytes()),
            signature,
        };
        let mut lines = text.lines().enumerate().map(|(i, line)| (i + 1, line));
        let mut next = |what: &str| {
            lines
                .next()
                .ok_or_else(|| format!("ends where {what} was expected"))
        };
        let (_, magic) = next("the header")?;
        if magic != MAGIC {
            return Err(format!("starts with {magic:?}, not {MAGIC:?}"));
        }
        let (_, scope) = next("the scope")?;
        let scope = scope
            .strip_prefix("scope ")
            .ok_or("no scope line")?
            .to_owned();
        let (n, written) = next("the time written")?;
        let written = written
            .strip_prefix("written ")
            .and_then(|t| t.parse().ok())
            .and_then(from_unix_seconds)
            .ok_or_else(|| format!("line {n}: not `written <unix seconds>`"))?;
        let mut groups = Vec::new();
        let mut build_times = HashMap::new();
        while let Some((n, line)) = lines.next() {
            let bad = || format!("line {n}: expected `pack ...` or `loose <entries>`: {line:?}");
            let fields: Vec<&str> = line.split(' ').collect();
            let (pack, pack_in, counts) = match fields[..] {
                [kind, id, created, size, entries, ref counts @ ..]
                    if kind == "pack" || kind.starts_with("pack@") =>
                {
                    let pack_in = kind
                        .strip_prefix("pack@")
                        .map(Namespace::new)
                        .transpose()
                        .map_err(|e| format!("line {n}: a pack in no namespace: {e}"))?;
                    let pack = PackRef {
                        id: Id::from_hex(id).ok_or_else(bad)?,
                        created: created
                            .parse()
                            .ok()
                            .and_then(from_unix_seconds)
                            .ok_or_else(bad)?,
                        size: size.parse().map_err(|_| bad())?,
                        entries: entries.parse().map_err(|_| bad())?,
                    };
                    (Some(pack), pack_in, counts)
                }
                ["loose", ref counts @ ..] => (None, None, counts),
                _ => return Err(bad()),
            };
            let (used, earlier): (usize, usize) = match counts {
                [used] => (used.parse().map_err(|_| bad())?, 0),
                [used, earlier] => (
                    used.parse().map_err(|_| bad())?,
                    earlier.parse().map_err(|_| bad())?,
                ),
                _ => return Err(bad()),
            };
            let mut read = |count: usize| -> Result<Vec<Id>, String> {
                let mut actions = Vec::with_capacity(count.min(MAX_MANIFEST / 65));
                for _ in 0..count {
                    let (n, line) = lines
                        .next()
                        .ok_or_else(|| format!("ends inside a group of {count} entries"))?;
                    let (id, took) = match line.split_once(' ') {
                        Some((id, ms)) => (id, Some(ms)),
                        None => (line, None),
                    };
                    let action = Id::from_hex(id)
                        .ok_or_else(|| format!("line {n}: not an action ID: {line:?}"))?;
                    if let Some(ms) = took {
                        let took = crate::record::build_time(ms)
                            .ok_or_else(|| format!("line {n}: not a build time: {line:?}"))?;
                        build_times.insert(action, took);
                    }
                    actions.push(action);
                }
                Ok(actions)
            };
            let actions = read(used)?;
            let earlier = read(earlier)?;
            groups.push(Group {
                pack,
                pack_in,
                actions,
                earlier,
            });
        }
        let manifest = Manifest {
            scope,
            written,
            groups,
            build_times,
        };
        Ok((manifest, seal))
    }
}

/// What a stored manifest's signature covers, and the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    /// The SHA-256 of the manifest's text, the signature line left out.
    pub digest: Id,
    pub signature: Option<Signature>,
}

fn parse_signature(line: &str) -> Result<Signature, String> {
    let bad = || format!("a malformed signature line: {line:?}");
    let ["signed", signer, signature] = line.split(' ').collect::<Vec<_>>()[..] else {
        return Err(bad());
    };
    Signature::from_hex(signer, signature).ok_or_else(bad)
}

fn compress(text: &str) -> Vec<u8> {
    zstd::bulk::compress(text.as_bytes(), 3).expect("compressing in memory does not fail")
}

/// Seconds since the Unix epoch, as manifests write times.
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The time `seconds` after the Unix epoch, if an entry may carry it.
pub fn from_unix_seconds(seconds: u64) -> Option<SystemTime> {
    crate::record::time_since_epoch(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            scope: "example.com/m linux/amd64 go1.25".into(),
            written: from_unix_seconds(1_790_000_000).unwrap(),
            groups: vec![
                Group {
                    pack: Some(PackRef {
                        id: Id([7; 32]),
                        created: from_unix_seconds(1_789_000_000).unwrap(),
                        size: 8 << 20,
                        entries: 3,
                    }),
                    pack_in: None,
                    actions: vec![Id([1; 32]), Id([2; 32])],
                    earlier: vec![Id([4; 32])],
                },
                Group {
                    pack: None,
                    pack_in: None,
                    actions: vec![Id([3; 32])],
                    earlier: Vec::new(),
                },
                Group {
                    pack: Some(PackRef {
                        id: Id([8; 32]),
                        created: from_unix_seconds(1_789_500_000).unwrap(),
                        size: 4 << 20,
                        entries: 1,
                    }),
                    pack_in: Some(Namespace::new("team/main").unwrap()),
                    actions: vec![Id([5; 32])],
                    earlier: Vec::new(),
                },
                Group {
                    pack: Some(PackRef {
                        id: Id([9; 32]),
                        created: from_unix_seconds(1_789_500_000).unwrap(),
                        size: 1 << 20,
                        entries: 1,
                    }),
                    pack_in: Some(Namespace::default()),
                    actions: vec![Id([6; 32])],
                    earlier: Vec::new(),
                },
            ],
            build_times: HashMap::from([
                (Id([1; 32]), Duration::from_millis(250)),
                (Id([4; 32]), Duration::from_millis(3)),
            ]),
        }
    }

    #[test]
    fn manifests_round_trip() {
        let manifest = sample();
        assert_eq!(Manifest::decode(&manifest.encode()).unwrap(), manifest);
        assert_eq!(manifest.entries(), 6);
        assert!(!manifest.is_stale(manifest.written + MANIFEST_MAX_AGE));
        assert!(manifest.is_stale(manifest.written + MANIFEST_MAX_AGE + Duration::from_secs(1)));
        let text = zstd::bulk::decompress(&manifest.encode(), 1 << 20).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains(" 2 1\n") && text.contains("\nloose 1\n"),
            "{text}"
        );
        let pack = |id: u8| hex::encode(Id([id; 32]));
        assert!(
            text.contains(&format!("\npack@team/main {} ", pack(8)))
                && text.contains(&format!("\npack@ {} ", pack(9))),
            "{text}"
        );
        let one = hex::encode(Id([1; 32]));
        assert!(text.contains(&format!("\n{one} 250\n")), "{text}");
        assert!(
            text.contains(&format!("\n{}\n", hex::encode(Id([2; 32])))),
            "{text}"
        );
    }

    #[test]
    fn damaged_manifests_are_refused_with_a_reason() {
        let good = String::from_utf8(zstd::bulk::decompress(&sample().encode(), 1 << 20).unwrap())
            .unwrap();
        let compress = |text: &str| zstd::bulk::compress(text.as_bytes(), 3).unwrap();
        let cases = [
            (b"plain text".to_vec(), "zstd"),
            (
                compress(&good.replace("granary-manifest 1", "x")),
                "starts with",
            ),
            (
                compress(&good.replace("loose 1", "loose 2")),
                "not an action ID",
            ),
            (
                compress(good.trim_end().rsplit_once('\n').unwrap().0),
                "ends inside",
            ),
            (
                compress(&good.replace(" 2 1\n", " 2 3\n")),
                "not an action ID",
            ),
            (
                compress(&good.replace("loose 1", "loose 1 1 1")),
                "expected `pack",
            ),
            (
                compress(&good.replace("loose 1", "loose -1")),
                "expected `pack",
            ),
            (compress(&good.replace("pack ", "box ")), "expected `pack"),
            (
                compress(&good.replace("pack@team/main ", "pack@team/packs ")),
                "a pack in no namespace",
            ),
            (
                compress(&good.replace("pack@team/main ", "packs@team/main ")),
                "expected `pack",
            ),
            (compress(&good.replace("written", "when")), "written"),
            // Times no entry can carry: they once overflowed into a panic.
            (
                compress(&good.replace("written 1790000000", "written 18446744073709551615")),
                "written",
            ),
            (
                compress(&good.replace("written 1790000000", "written 9223372036854775000")),
                "written",
            ),
            (
                compress(&good.replace(" 1789000000 ", " 9223372036854775000 ")),
                "expected `pack",
            ),
            (
                compress(&good.replace(" 250\n", " -250\n")),
                "not a build time",
            ),
            (
                compress(&good.replace(" 250\n", " 250 1\n")),
                "not a build time",
            ),
            (compress(&good[..good.len() - 10]), "not an action ID"),
            (compress(&good[..30]), "ends where"),
        ];
        for (bytes, why) in cases {
            let e = Manifest::decode(&bytes).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn a_signed_manifest_carries_its_signature_last() {
        let key = granary_trust::SigningKey::generate().unwrap();
        let manifest = sample();
        let bytes = manifest.encode_signed(|digest| key.sign_manifest("main", digest));
        let (decoded, seal) = Manifest::decode_sealed(&bytes).unwrap();
        assert_eq!(decoded, manifest);
        let (_, unsigned) = Manifest::decode_sealed(&manifest.encode()).unwrap();
        assert_eq!((unsigned.digest, unsigned.signature), (seal.digest, None));
        let trusted = granary_trust::TrustedKeys::new([key.public()]);
        let check =
            |seal: Seal| trusted.check_manifest("main", &seal.digest, seal.signature.as_ref());
        assert_eq!(check(seal), Ok(()));
        // One more entry, or a signature line that is not last, fails.
        let text = String::from_utf8(zstd::bulk::decompress(&bytes, 1 << 20).unwrap()).unwrap();
        let (body, signature) = text.trim_end().rsplit_once('\n').unwrap();
        let grown = format!("{body}\nloose 1\n{}\n{signature}\n", "cd".repeat(32));
        let (_, seal) = Manifest::decode_sealed(&compress(&grown)).unwrap();
        assert!(check(seal).is_err());
        let moved = format!(
            "{}\n{signature}\n{}\n",
            body.lines().take(3).collect::<Vec<_>>().join("\n"),
            body.lines().skip(3).collect::<Vec<_>>().join("\n")
        );
        assert!(Manifest::decode_sealed(&compress(&moved)).is_err());
        let broken = text.replace("signed ", "signed zz");
        assert!(Manifest::decode_sealed(&compress(&broken)).is_err());
    }
}
