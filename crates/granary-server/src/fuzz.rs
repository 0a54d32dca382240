//! Entry points for the fuzz targets in `fuzz/`: the parsers of what
//! clients send, which are private to this crate. Each takes arbitrary
//! input, must not panic, and checks what it can of the answer. Not an
//! API; the unit tests below run each on hostile input so that they keep
//! compiling and keep holding.

use std::path::Path;

use crate::grpc::resource::{parse_read, parse_write};
use crate::key::{Key, batch_instance};

/// An HTTP request path: a blob's key, a batch's instance, or nothing. A
/// key's file stays inside its kind's folder, whatever the path said, and
/// an instance is a namespace that the path spells before its last parts.
pub fn http_path(path: &str) {
    let namespace = |instance: &str| granary_format::Namespace::new(instance).is_ok();
    if let Some((key, instance)) = Key::from_path(path) {
        let relative = key.relative_path();
        assert!(
            relative.starts_with(key.kind.name()) && !relative.contains(".."),
            "{path} -> {relative}"
        );
        assert!(instance.is_empty() || path.starts_with(&format!("/{instance}/")));
        assert!(namespace(instance), "{path} -> {instance}");
    }
    if let Some(instance) = batch_instance(path) {
        assert!(namespace(instance), "{path} -> {instance}");
        let spelled = match instance {
            "" => "/batch".to_owned(),
            name => format!("/{name}/batch"),
        };
        assert_eq!(path, spelled);
    }
}

/// A `POST /batch` body, in `instance`: only well-formed action IDs pass.
pub fn batch_request(body: &[u8], instance: &str) {
    if let Ok(asked) = crate::batch::parse(body, instance) {
        assert!(asked.len() <= crate::batch::MAX_BATCH);
    }
}

/// A ByteStream resource name, read and write: a parsed size is the one
/// the name spells, and an instance is a prefix of the name.
pub fn resource_name(name: &str) {
    for parsed in [parse_read(name), parse_write(name)].into_iter().flatten() {
        assert!(name.contains(&format!("/{}", parsed.size)), "{name}");
        assert!(name.starts_with(parsed.instance), "{name}");
    }
}

/// The start of a plain HTTP/1.1 connection, as the reads answered
/// outside hyper parse it: a request taken there ends where its head ends,
/// whatever follows it (the bytes after are the next request's).
#[cfg(target_os = "linux")]
pub fn http1_head(bytes: &[u8]) {
    crate::sendfile::check_parse(bytes);
}

/// An `Authorization` header, and a tokens file's text.
pub fn credentials(header: &[u8], tokens_file: &str) {
    if let Some(token) = crate::auth::presented_token(header) {
        assert!(
            token.len() <= header.len(),
            "a token is never longer than its header"
        );
    }
    let _ = crate::auth::parse_tokens(Path::new("tokens"), tokens_file);
    let middle = (0..=tokens_file.len() / 2)
        .rev()
        .find(|&at| tokens_file.is_char_boundary(at))
        .unwrap_or(0);
    let (glob, name) = tokens_file.split_at(middle);
    if !glob.contains('*') {
        assert_eq!(crate::grant::glob_matches(glob, name), glob == name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_input_passes_every_entry_point() {
        let hex = "ab".repeat(32);
        let inputs = [
            String::new(),
            "/".to_owned(),
            format!("/../ac/{hex}"),
            format!("/a/b/ac/{hex}"),
            format!("/team/cas/{hex}"),
            format!("/{}/batch", "x".repeat(65)),
            format!("uploads/u/blobs/{hex}/18446744073709551615"),
            format!("i/uploads/u/compressed-blobs/zstd/{hex}/99999999999999999999"),
            format!("blobs/sha256/{hex}/-1"),
            "write 00 pr namespaces=,".to_owned(),
            format!("read {hex}\nread {hex}\n"),
            "Basic Og==".to_owned(),
            "Bearer \u{0}".to_owned(),
            "ü*ü".to_owned(),
            "\u{fffd}".to_owned(),
        ];
        for input in &inputs {
            http_path(input);
            batch_request(input.as_bytes(), "team");
            resource_name(input);
            credentials(input.as_bytes(), input);
            #[cfg(target_os = "linux")]
            http1_head(format!("GET {input} HTTP/1.1\r\nConnection: close\r\n\r\nPUT").as_bytes());
        }
    }
}
