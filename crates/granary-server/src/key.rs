//! Cache keys: which store (action cache or CAS) and a SHA-256 in hex.

use std::fmt;

use granary_id::Id;

/// Which of the two stores a blob belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The action cache: REAPI `ActionResult` messages by action digest.
    Ac,
    /// The content-addressed store: bytes by their own SHA-256.
    Cas,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ac => "ac",
            Kind::Cas => "cas",
        }
    }

    fn parse(name: &str) -> Option<Kind> {
        match name {
            "ac" => Some(Kind::Ac),
            "cas" => Some(Kind::Cas),
            _ => None,
        }
    }
}

/// A blob's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub kind: Kind,
    pub hash: Id,
}

impl Key {
    pub fn new(kind: Kind, hex_hash: &str) -> Option<Key> {
        // Lower-case only, as bazel-remote: one blob has one name.
        if hex_hash.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let hash = Id::from_hex(hex_hash)?;
        Some(Key { kind, hash })
    }

    /// The key of a request path: `/ac/<hex>`, `/cas/<hex>`, or either
    /// under one instance name (`/<instance>/cas/<hex>`), which is ignored
    /// as bazel-remote ignores it. `None`: the path names no blob.
    pub fn from_path(path: &str) -> Option<Key> {
        let mut parts = path.strip_prefix('/')?.split('/');
        let (kind, hash) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(kind), Some(hash), None, None) => (kind, hash),
            (Some(instance), Some(kind), Some(hash), None) if is_instance_name(instance) => {
                (kind, hash)
            }
            _ => return None,
        };
        Key::new(Kind::parse(kind)?, hash)
    }

    pub fn hex(&self) -> String {
        self.hash.to_hex()
    }

    /// The blob's path under the cache directory: `cas/ab/abcd...`.
    pub fn relative_path(&self) -> String {
        let hex = self.hex();
        format!("{}/{}/{hex}", self.kind.name(), &hex[..2])
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.name(), self.hex())
    }
}

/// Whether `path` is the batch endpoint: `/batch`, or `/<instance>/batch`.
pub fn is_batch_path(path: &str) -> bool {
    match path.strip_suffix("/batch") {
        Some("") => true,
        Some(instance) => instance.strip_prefix('/').is_some_and(is_instance_name),
        None => false,
    }
}

fn is_instance_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_blobs_or_nothing() {
        let hex = "0a".repeat(32);
        let key = Key::from_path(&format!("/cas/{hex}")).unwrap();
        assert_eq!((key.kind, key.hash), (Kind::Cas, Id([0x0a; 32])));
        assert_eq!(key.relative_path(), format!("cas/0a/{hex}"));
        assert_eq!(
            Key::from_path(&format!("/team-1/ac/{hex}")).map(|k| k.kind),
            Some(Kind::Ac)
        );
        for bad in [
            format!("/cas/{}", "0A".repeat(32)),
            format!("/cas/{}", "0a".repeat(31)),
            format!("/cas/{hex}/"),
            format!("/cas/{hex}0"),
            format!("/blobs/{hex}"),
            format!("/../cas/{hex}"),
            format!("/a/b/cas/{hex}"),
            format!("cas/{hex}"),
            format!("/cas/..%2f{}", "0a".repeat(30)),
            "/cas/../../etc/passwd".to_owned(),
            "/".to_owned(),
        ] {
            assert_eq!(Key::from_path(&bad), None, "{bad}");
        }
    }
}
