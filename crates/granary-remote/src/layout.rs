//! Where things live under the remote's prefix, in each [`Format`].
//!
//! ```text
//! Format::Granary (object storage):
//! <prefix>/granary-v1/ac/<hex action ID>    an action record (see ActionRecord)
//! <prefix>/granary-v1/cas/<hex output ID>   an output's bytes as one zstd frame
//! <prefix>/granary-v1/manifests/<scope>     a scope's manifest (see manifest)
//! <prefix>/granary-v1/packs/<hex pack ID>   a pack (see pack)
//!
//! Format::Reapi (bazel-remote's HTTP API, granary serve):
//! <prefix>/ac/<hex action ID>               an ActionResult message (see reapi)
//! <prefix>/cas/<hex output ID>              an output's bytes, as they are
//! <prefix>/ac/<hex manifest_action(scope)>  a scope's manifest, as an output
//! ```
//!
//! In the granary format, the version is part of every key: a future layout gets a new name and
//! lives beside this one, so old and new granary versions can share a bucket
//! without misreading each other. Keys are lower-case hex, so any S3-
//! compatible store accepts them, and S3 can partition them by their first
//! characters under load.

use crate::manifest::scope_key_name;
use granary_id::Id;

/// The name of granary's own layout under the prefix.
pub const VERSION: &str = "granary-v1";

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
    /// The key of the action entry of `action`.
    pub fn action_key(self, action: &Id) -> String {
        match self {
            Format::Granary => format!("{VERSION}/ac/{}", hex::encode(action)),
            Format::Reapi => format!("ac/{}", hex::encode(action)),
        }
    }

    /// The key of the object holding the output `output`.
    pub fn object_key(self, output: &Id) -> String {
        match self {
            Format::Granary => format!("{VERSION}/cas/{}", hex::encode(output)),
            Format::Reapi => format!("cas/{}", hex::encode(output)),
        }
    }

    /// The key of the manifest of `scope`.
    pub fn manifest_key(self, scope: &str) -> String {
        match self {
            Format::Granary => format!("{VERSION}/manifests/{}", scope_key_name(scope)),
            Format::Reapi => self.action_key(&manifest_action(scope)),
        }
    }
}

/// Where a cache server keeps the manifest of `scope`: an action entry
/// under a name no go action has.
pub fn manifest_action(scope: &str) -> Id {
    Id::of(format!("granary-manifest 1\n{scope}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_versioned_hex_paths() {
        let id = Id([0xab; 32]);
        let hex = "ab".repeat(32);
        assert_eq!(
            Format::Granary.action_key(&id),
            format!("granary-v1/ac/{hex}")
        );
        assert_eq!(
            Format::Granary.object_key(&id),
            format!("granary-v1/cas/{hex}")
        );
        assert_eq!(Format::Reapi.action_key(&id), format!("ac/{hex}"));
        assert_eq!(Format::Reapi.object_key(&id), format!("cas/{hex}"));
    }
}
