//! Where things live under the remote's prefix.
//!
//! ```text
//! <prefix>/granary-v1/ac/<hex action ID>    an action record (see ActionRecord)
//! <prefix>/granary-v1/cas/<hex output ID>   an output's bytes as one zstd frame
//! ```
//!
//! The version is part of every key: a future layout gets a new name and
//! lives beside this one, so old and new granary versions can share a bucket
//! without misreading each other. Keys are lower-case hex, so any S3-
//! compatible store accepts them, and S3 can partition them by their first
//! characters under load.

use crate::Digest;

/// The name of this layout under the prefix.
pub const VERSION: &str = "granary-v1";

/// The key of the action record of `action`.
pub fn action_key(action: &Digest) -> String {
    format!("{VERSION}/ac/{}", hex::encode(action))
}

/// The key of the object holding the output `output`.
pub fn object_key(output: &Digest) -> String {
    format!("{VERSION}/cas/{}", hex::encode(output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_versioned_hex_paths() {
        let id = [0xab; 32];
        assert_eq!(
            action_key(&id),
            format!("granary-v1/ac/{}", "ab".repeat(32))
        );
        assert_eq!(
            object_key(&id),
            format!("granary-v1/cas/{}", "ab".repeat(32))
        );
    }
}
