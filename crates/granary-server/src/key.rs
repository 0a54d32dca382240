//! Cache keys: which store (action cache or CAS) and a SHA-256 in hex.
//!
//! The action cache is divided by REAPI instance name (the namespace a
//! client writes, `/<instance>/ac/<hex>`): an entry of a named instance is
//! stored under the hash of the instance name and the action ID together,
//! so instances never see each other's entries and the disk layout stays
//! one flat store. The CAS is shared: a blob is checked against its hash.

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

    pub fn parse(name: &str) -> Option<Kind> {
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
    /// under an instance name of one or more segments
    /// (`/team/main/ac/<hex>`), with that name (empty without one).
    /// `None`: the path names no blob.
    pub fn from_path(path: &str) -> Option<(Key, &str)> {
        let (rest, hash) = path.strip_prefix('/')?.rsplit_once('/')?;
        let (instance, kind) = match rest.rsplit_once('/') {
            Some((instance, kind)) if is_instance_name(instance) => (instance, kind),
            Some(_) => return None,
            None => ("", rest),
        };
        let key = Key::new(Kind::parse(kind)?, hash)?;
        Some((key.in_instance(instance), instance))
    }

    /// Where this key lives for clients of `instance`: the CAS and the
    /// default instance as they are, an action of a named instance under
    /// the hash of both.
    pub fn in_instance(self, instance: &str) -> Key {
        if self.kind == Kind::Cas || instance.is_empty() {
            return self;
        }
        let mut named = format!("granary instance 1\0{instance}\0").into_bytes();
        named.extend_from_slice(&self.hash.0);
        Key {
            kind: self.kind,
            hash: Id::of(&named),
        }
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

/// The instance of a batch request's path, `/batch` (the empty name) or
/// `/<instance>/batch`; `None`: not the batch endpoint.
pub fn batch_instance(path: &str) -> Option<&str> {
    match path.strip_suffix("/batch")? {
        "" => Some(""),
        instance => instance.strip_prefix('/').filter(|i| is_instance_name(i)),
    }
}

/// A named instance is a namespace, by the rule clients name them with.
fn is_instance_name(name: &str) -> bool {
    !name.is_empty() && granary_format::Namespace::new(name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_blobs_or_nothing() {
        let hex = "0a".repeat(32);
        let cas = format!("/cas/{hex}");
        let (key, instance) = Key::from_path(&cas).unwrap();
        assert_eq!(
            (key.kind, key.hash, instance),
            (Kind::Cas, Id([0x0a; 32]), "")
        );
        assert_eq!(key.relative_path(), format!("cas/0a/{hex}"));
        // The CAS is shared; each instance has an action cache of its own.
        let at = |path: String| Key::from_path(&path).map(|(key, _)| key).unwrap();
        assert_eq!(at(format!("/team-1/cas/{hex}")), key);
        let path = format!("/team-1/ac/{hex}");
        let (team, instance) = Key::from_path(&path).unwrap();
        assert_eq!((team.kind, instance), (Kind::Ac, "team-1"));
        let default = at(format!("/ac/{hex}"));
        assert_eq!(default.hash, Id([0x0a; 32]));
        assert_ne!(team, default);
        assert_ne!(team, at(format!("/team-2/ac/{hex}")));
        // An instance of several segments is one name: not its last segment.
        let path = format!("/team/main/ac/{hex}");
        let (nested, instance) = Key::from_path(&path).unwrap();
        assert_eq!(instance, "team/main");
        assert_ne!(nested, at(format!("/main/ac/{hex}")));
        assert_eq!(at(format!("/team/main/cas/{hex}")), key);
        assert_eq!(batch_instance("/batch"), Some(""));
        assert_eq!(batch_instance("/pr-1/batch"), Some("pr-1"));
        assert_eq!(batch_instance("/team/main/batch"), Some("team/main"));
        assert_eq!(batch_instance("/../batch"), None);
        assert_eq!(batch_instance("/team/ac/batch"), None);
        for bad in [
            format!("/cas/{}", "0A".repeat(32)),
            format!("/cas/{}", "0a".repeat(31)),
            format!("/cas/{hex}/"),
            format!("/cas/{hex}0"),
            format!("/blobs/{hex}"),
            format!("/../cas/{hex}"),
            format!("/a//cas/{hex}"),
            format!("//cas/{hex}"),
            format!("/team/ac/ac/{hex}"),
            format!("/blobs/ac/{hex}"),
            format!("/a/./ac/{hex}"),
            format!("cas/{hex}"),
            format!("/cas/..%2f{}", "0a".repeat(30)),
            "/cas/../../etc/passwd".to_owned(),
            "/".to_owned(),
        ] {
            assert_eq!(Key::from_path(&bad), None, "{bad}");
        }
    }
}
