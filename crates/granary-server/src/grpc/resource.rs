//! ByteStream resource names:
//!
//! ```text
//! read:  [{instance}/]blobs/{hash}/{size}
//!        [{instance}/]compressed-blobs/zstd/{hash}/{size}
//! write: [{instance}/]uploads/{uuid}/blobs/{hash}/{size}[/{metadata}]
//!        [{instance}/]uploads/{uuid}/compressed-blobs/zstd/{hash}/{size}[/{metadata}]
//! ```
//!
//! An optional `sha256/` before the hash is accepted; other digest
//! functions are refused.

use tonic::Status;

use crate::key::{Key, Kind};

/// A blob that a resource name names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource<'a> {
    pub instance: &'a str,
    pub key: Key,
    pub size: u64,
    /// The bytes travel as one zstd stream.
    pub compressed: bool,
}

/// A resource name to read.
pub fn parse_read(name: &str) -> Result<Resource<'_>, Status> {
    let segments: Vec<&str> = name.split('/').collect();
    let at = segments
        .iter()
        .position(|s| matches!(*s, "blobs" | "compressed-blobs"))
        .ok_or_else(|| bad(name, "it names no blob"))?;
    let (resource, rest) = blob(name, &segments, at)?;
    match rest {
        [] => Ok(resource),
        _ => Err(bad(name, "it goes on after the size")),
    }
}

/// A resource name to write.
pub fn parse_write(name: &str) -> Result<Resource<'_>, Status> {
    let segments: Vec<&str> = name.split('/').collect();
    let at = segments
        .iter()
        .position(|s| *s == "uploads")
        .ok_or_else(|| {
            bad(
                name,
                "an upload's name has `uploads/{uuid}/` before the blob",
            )
        })?;
    match segments.get(at + 1) {
        Some(uuid) if !uuid.is_empty() => {}
        _ => return Err(bad(name, "the upload has no id after `uploads/`")),
    }
    if !matches!(segments.get(at + 2), Some(&("blobs" | "compressed-blobs"))) {
        return Err(bad(
            name,
            "`blobs/` or `compressed-blobs/` must follow the upload id",
        ));
    }
    let (mut resource, _metadata) = blob(name, &segments, at + 2)?;
    resource.instance = instance(name, &segments, at)?;
    Ok(resource)
}

/// The blob named from `segments[at]` (`blobs` or `compressed-blobs`) on,
/// and the segments after its size.
fn blob<'a, 's>(
    name: &'a str,
    segments: &'s [&'a str],
    at: usize,
) -> Result<(Resource<'a>, &'s [&'a str]), Status> {
    let mut rest = &segments[at..];
    let compressed = rest[0] == "compressed-blobs";
    rest = &rest[1..];
    if compressed {
        match rest.first() {
            Some(&"zstd") => rest = &rest[1..],
            Some(other) => {
                return Err(bad(
                    name,
                    &format!("compressor `{other}` is not supported; use zstd"),
                ));
            }
            None => return Err(bad(name, "the compressor is missing")),
        }
    }
    if rest.first() == Some(&"sha256") {
        rest = &rest[1..];
    }
    let [hash, size, rest @ ..] = rest else {
        return Err(bad(name, "a hash and a size must follow"));
    };
    let key = Key::new(Kind::Cas, hash).ok_or_else(|| {
        bad(
            name,
            "the hash is not 64 lower-case hex digits of a SHA-256",
        )
    })?;
    let size = size
        .parse::<u64>()
        .map_err(|_| bad(name, "the size is not a number of bytes"))?;
    Ok((
        Resource {
            instance: instance(name, segments, at)?,
            key,
            size,
            compressed,
        },
        rest,
    ))
}

/// The instance: everything before `segments[at]`.
fn instance<'a>(name: &'a str, segments: &[&str], at: usize) -> Result<&'a str, Status> {
    let length: usize = segments[..at].iter().map(|s| s.len() + 1).sum();
    Ok(match length {
        0 => "",
        length => &name[..length - 1],
    })
}

fn bad(name: &str, why: &str) -> Status {
    Status::invalid_argument(format!(
        "`{}` is not a ByteStream resource name of a blob: {why}",
        name.chars().take(200).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_name_blobs_or_are_refused() {
        let hex = "0b".repeat(32);
        let key = Key::new(Kind::Cas, &hex).unwrap();
        let read =
            |name: String| parse_read(&name).map(|r| (r.instance.to_owned(), r.size, r.compressed));
        assert_eq!(
            read(format!("blobs/{hex}/5")).unwrap(),
            ("".into(), 5, false)
        );
        assert_eq!(
            read(format!("team/compressed-blobs/zstd/{hex}/7")).unwrap(),
            ("team".into(), 7, true)
        );
        assert_eq!(
            read(format!("a/b/blobs/sha256/{hex}/0")).unwrap(),
            ("a/b".into(), 0, false)
        );
        let name = format!("pr-1/uploads/u-1/blobs/{hex}/9/meta/data");
        let write = parse_write(&name).unwrap();
        assert_eq!((write.instance, write.key, write.size), ("pr-1", key, 9));
        let name = format!("uploads/u/compressed-blobs/zstd/{hex}/3");
        let write = parse_write(&name).unwrap();
        assert_eq!((write.instance, write.compressed), ("", true));
        for bad in [
            format!("blobs/{hex}"),
            format!("blobs/{hex}/-1"),
            format!("blobs/{hex}/5/extra"),
            format!("blobs/{}/5", "0B".repeat(32)),
            format!("compressed-blobs/gzip/{hex}/5"),
            format!("blobs/md5/{hex}/5"),
            format!("uploads/{hex}/5"),
            "".to_owned(),
        ] {
            assert!(parse_read(&bad).is_err(), "{bad}");
        }
        for bad in [
            format!("blobs/{hex}/5"),
            format!("uploads//blobs/{hex}/5"),
            format!("uploads/u/actions/{hex}/5"),
        ] {
            assert!(parse_write(&bad).is_err(), "{bad}");
        }
    }
}
