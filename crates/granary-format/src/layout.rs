//! Where things live under the remote's prefix, in each [`Format`].
//!
//! ```text
//! Format::Granary (object storage):
//! <prefix>/granary-v1/<ns>ac/<hex action ID>    an action record (see ActionRecord)
//! <prefix>/granary-v1/cas/<hex output ID>       an output's bytes as one zstd frame
//! <prefix>/granary-v1/<ns>manifests/<scope>     a scope's manifest (see manifest)
//! <prefix>/granary-v1/<ns>packs/<hex pack ID>   a pack (see pack)
//!
//! Format::Reapi (bazel-remote's HTTP API, granary serve):
//! <prefix>/<ns>ac/<hex action ID>               an ActionResult message (see reapi)
//! <prefix>/cas/<hex output ID>                  an output's bytes, as they are
//! <prefix>/<ns>ac/<hex manifest_action(scope)>  a scope's manifest, as an output
//! <prefix>/cas/<hex pack ID>                     a pack as one zstd stream, where there are no batches (see RemoteCache::stores_packs)
//! ```
//!
//! `<ns>` is empty in the default namespace, and `ns/<name>/` (granary) or
//! `<name>/` (REAPI, where it is the instance name) in a [`Namespace`]
//! called `<name>`. What says which output an action has (records,
//! manifests, packs) lives in a namespace; bodies are shared, since each is
//! checked against its hash. So a bucket policy on `granary-v1/ns/<name>/*`
//! decides who writes a namespace.
//!
//! In the granary format, the version is part of every key: a future layout gets a new name and
//! lives beside this one, so old and new granary versions can share a bucket
//! without misreading each other. Keys are lower-case hex, so any S3-
//! compatible store accepts them, and S3 can partition them by their first
//! characters under load.

use granary_id::Id;
use sha2::Digest as _;

/// The name of granary's own layout under the prefix.
pub const VERSION: &str = "granary-v1";

/// A part of the action cache that one kind of writer writes (`main`,
/// `pr-123`, `team/main`): on a cache server, the REAPI instance name. One
/// or more segments separated by `/`, each of letters, digits, `.`, `_`
/// and `-`, not starting with `.`, and none a word that the protocols or
/// the layout give a meaning in a path ([`RESERVED_SEGMENTS`]); at most
/// [`MAX_NAMESPACE`] bytes. The default namespace has the empty name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Namespace(String);

/// The longest namespace name.
pub const MAX_NAMESPACE: usize = 128;

/// Segments no namespace may have: REAPI's words in resource names, the
/// HTTP API's and the bucket layout's, where a reader finds where the name
/// ends by them.
pub const RESERVED_SEGMENTS: [&str; 11] = [
    "blobs",
    "uploads",
    "actionResults",
    "operations",
    "capabilities",
    "compressed-blobs",
    "ac",
    "cas",
    "batch",
    "manifests",
    "packs",
];

impl Namespace {
    pub fn new(name: &str) -> Result<Namespace, String> {
        if name.is_empty() {
            return Ok(Namespace::default());
        }
        let why = if name.len() > MAX_NAMESPACE {
            Some(format!("it is longer than {MAX_NAMESPACE} bytes"))
        } else {
            name.split('/').find_map(|segment| {
                let valid = !segment.is_empty()
                    && !segment.starts_with('.')
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                match (valid, RESERVED_SEGMENTS.contains(&segment)) {
                    (false, _) => Some(format!(
                        "segment `{segment}` is not letters, digits, `.`, `_` and `-`, not \
                         starting with `.`"
                    )),
                    (true, true) => Some(format!(
                        "`{segment}` has a meaning of its own in the protocols' paths"
                    )),
                    (true, false) => None,
                }
            })
        };
        match why {
            None => Ok(Namespace(name.to_owned())),
            Some(why) => Err(format!(
                "`{name}` is not a namespace name: {why}. A namespace (a REAPI instance name) \
                 is one or more `/`-separated segments of letters, digits, `.`, `_` and `-`, \
                 such as `main` or `team/main`, at most {MAX_NAMESPACE} bytes, with no \
                 segment among {}",
                RESERVED_SEGMENTS.join(", ")
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_str() {
            "" => f.write_str("the default namespace"),
            name => write!(f, "namespace {name}"),
        }
    }
}

/// How entries are encoded, and where they live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// granary's own action records and zstd objects, versioned: for object
    /// storage, where nothing else reads them.
    Granary,
    /// REAPI action results and plain CAS blobs, as Bazel remote caches
    /// (bazel-remote, granary serve) store and check them.
    Reapi,
}

impl Format {
    /// The key of the action entry of `action` in `namespace`.
    pub fn action_key(self, namespace: &str, action: &Id) -> String {
        format!("{}ac/{action}", self.namespace_dir(namespace))
    }

    /// The key of the object holding the output `output`.
    pub fn object_key(self, output: &Id) -> String {
        match self {
            Format::Granary => format!("{VERSION}/cas/{}", hex::encode(output)),
            Format::Reapi => format!("cas/{}", hex::encode(output)),
        }
    }

    /// The key of the manifest of `scope` in `namespace`.
    pub fn manifest_key(self, namespace: &str, scope: &str) -> String {
        match self {
            Format::Granary => format!(
                "{}manifests/{}",
                self.namespace_dir(namespace),
                scope_key_name(scope)
            ),
            Format::Reapi => self.action_key(namespace, &manifest_action(scope)),
        }
    }

    /// The key of a pack in `namespace`: in a REAPI cache, a CAS blob,
    /// which only a manifest in the namespace names.
    pub fn pack_key(self, namespace: &str, id: &Id) -> String {
        match self {
            Format::Granary => format!("{}packs/{id}", self.namespace_dir(namespace)),
            Format::Reapi => self.object_key(id),
        }
    }

    /// Where `namespace`'s records, manifests and packs live.
    pub fn namespace_dir(self, namespace: &str) -> String {
        match (self, namespace) {
            (Format::Granary, "") => format!("{VERSION}/"),
            (Format::Granary, name) => format!("{VERSION}/ns/{name}/"),
            (Format::Reapi, "") => String::new(),
            (Format::Reapi, name) => format!("{name}/"),
        }
    }
}

/// Where a cache server keeps the manifest of `scope`: an action entry
/// under a name no go action has.
pub fn manifest_action(scope: &str) -> Id {
    Id::of(format!("granary-manifest 1\n{scope}").as_bytes())
}

/// A name for `scope` that is safe as a key: its letters, digits and dashes
/// (for people browsing the bucket), then a hash of the whole scope (so that
/// scopes that differ only in other characters differ).
pub fn scope_key_name(scope: &str) -> String {
    let readable: String = scope
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(80)
        .collect();
    let hash = sha2::Sha256::digest(scope.as_bytes());
    format!("{readable}-{}", hex::encode(&hash[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_names_are_safe_keys_and_distinct() {
        let a = scope_key_name("example.com/m linux/amd64");
        assert!(a.starts_with("example-com-m-linux-amd64-"), "{a}");
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert_ne!(a, scope_key_name("example.com/m linux/amd64 "));
        assert!(scope_key_name(&"x".repeat(500)).len() < 100);
    }

    #[test]
    fn namespace_names_are_safe_in_keys_and_paths() {
        let long = format!("{}/{}", "x".repeat(64), "y".repeat(63));
        for good in [
            "",
            "main",
            "pr-123",
            "feature_x.1",
            "team/main",
            "a/b/c",
            &long,
        ] {
            assert_eq!(Namespace::new(good).unwrap().as_str(), good);
        }
        let too_long = format!("{long}z");
        for bad in [
            ".",
            "..",
            "a/../b",
            "/a",
            "a/",
            "a//b",
            "a b",
            "ü",
            &too_long,
            "team/.hidden",
            "blobs",
            "team/uploads",
            "ac",
            "x/cas/y",
            "compressed-blobs",
            "packs",
            "batch",
        ] {
            let why = Namespace::new(bad).unwrap_err();
            assert!(why.contains("team/main"), "{bad:?}: {why}");
        }
        assert!(
            Namespace::new("team/ac")
                .unwrap_err()
                .contains("`ac` has a meaning")
        );
    }

    #[test]
    fn keys_are_versioned_hex_paths() {
        let id = Id([0xab; 32]);
        let hex = "ab".repeat(32);
        let (granary, reapi) = (Format::Granary, Format::Reapi);
        for (key, expected) in [
            (granary.action_key("", &id), "granary-v1/ac/"),
            (granary.action_key("pr-1", &id), "granary-v1/ns/pr-1/ac/"),
            (granary.pack_key("pr-1", &id), "granary-v1/ns/pr-1/packs/"),
            (granary.object_key(&id), "granary-v1/cas/"),
            (reapi.action_key("", &id), "ac/"),
            (reapi.action_key("main", &id), "main/ac/"),
            (reapi.action_key("team/main", &id), "team/main/ac/"),
            (
                granary.action_key("team/main", &id),
                "granary-v1/ns/team/main/ac/",
            ),
            (reapi.object_key(&id), "cas/"),
            (reapi.pack_key("main", &id), "cas/"),
        ] {
            assert_eq!(key, format!("{expected}{hex}"));
        }
    }
}
