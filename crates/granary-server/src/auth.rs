//! Who may read and who may write.
//!
//! Tokens live in a file, hashed, one per line:
//!
//! ```text
//! # scope  SHA-256 of the token (hex)                                   name
//! write    9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 ci-main
//! write    60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752 pr namespaces=pr-*
//! ```
//!
//! `namespaces=` restricts what the token's scope allows in the action cache
//! to the instance names (namespaces) its comma-separated globs match (whole
//! names; `*` matches any run of characters within one `/`-separated
//! segment): a write token so restricted writes only
//! there (and reads everywhere), a read token reads only there. The CAS
//! stays open to the token's scope, since every blob is checked against its
//! hash. Without it, a token may use every namespace.
//!
//! Beside tokens, the server may trust CI systems' OpenID Connect ID tokens
//! (`oidc.rs`), whose claims its rules turn into the same kind of grant.
//!
//! Clients send `Authorization: Bearer <token>`, or HTTP basic auth with
//! the token as the password (what Bazel sends for `https://user:token@host`).
//! The server keeps only hashes, so the file gives nothing away, and never
//! logs a header. `granary serve token` makes a token and its line.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::grant::{Access, CredentialRefusal, Grant, glob_matches};
use crate::oidc::Oidc;

/// Who sent one request, and what they may do: found once per request.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub access: Access,
    /// Whether the request carried a credential at all.
    pub presented: bool,
    /// Why its credential was refused.
    pub refusal: Option<CredentialRefusal>,
    /// What its credential allows (everything on an open server); `None`:
    /// what anonymous clients may. Shared: every request clones it.
    grant: Option<Arc<Grant>>,
}

impl Identity {
    /// Whether it may read (or, with `write`, write) the action cache of
    /// the namespace (instance name) `namespace`, as far as its
    /// credential's namespaces go; whether it may read or write at all is
    /// [`Identity::access`]'s question.
    pub fn may_use_namespace(&self, namespace: &str, write: bool) -> bool {
        let globs = self.grant.as_ref().and_then(|grant| match write {
            true => grant.write.as_ref(),
            false => grant.read.as_ref(),
        });
        globs.is_none_or(|globs| globs.iter().any(|glob| glob_matches(glob, namespace)))
    }

    /// Whether it may read the server's status and metrics: with
    /// credentials configured, only with a valid one (they name paths,
    /// limits and the backing store), even where anonymous clients may
    /// read blobs.
    pub fn may_monitor(&self) -> bool {
        self.grant.is_some()
    }

    /// What a client without a credential is told.
    pub fn unauthorized_message(&self) -> String {
        match &self.refusal {
            Some(refusal) => refusal.message.clone(),
            None => "a valid token is needed: send `Authorization: Bearer <token>`".to_owned(),
        }
    }
}

/// The server's policy.
pub struct Auth {
    /// Token hash → grant; `None`: no tokens file.
    tokens: Option<HashMap<[u8; 32], Arc<Grant>>>,
    /// Issuers whose ID tokens are credentials.
    oidc: Option<Oidc>,
    anonymous_read: bool,
    /// The grant of every request on an open server.
    everything: Arc<Grant>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.tokens.as_ref().map(HashMap::len))
            .field("oidc", &self.oidc)
            .field("anonymous_read", &self.anonymous_read)
            .finish()
    }
}

/// A tokens file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the tokens file {path} is readable or writable by others (mode {mode:o}); \
         run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "line {line} of the tokens file {path}: {why}; \
         each line is `read|write <sha256 hex of the token> [name] [namespaces=GLOB,...]`"
    )]
    Syntax {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

impl Auth {
    /// Credentials from the tokens file `tokens` and ID tokens of `oidc`'s
    /// issuers; without either, everyone may read and write (for a server
    /// on loopback or a trusted network). With either, a request without
    /// a credential may read if `anonymous_read`, and do nothing else.
    pub fn new(
        tokens: Option<&Path>,
        oidc: Option<Oidc>,
        anonymous_read: bool,
    ) -> Result<Auth, TokensError> {
        Ok(Auth {
            tokens: tokens.map(read_tokens).transpose()?,
            oidc,
            anonymous_read,
            everything: Arc::new(Grant {
                access: Access::Write,
                write: None,
                read: None,
            }),
        })
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(tokens) = &self.tokens {
            parts.push(format!("{} token(s)", tokens.len()));
        }
        if let Some(oidc) = &self.oidc {
            parts.push(oidc.describe());
        }
        if parts.is_empty() {
            return "open (no tokens file or OIDC issuer: anyone may read and write)".to_owned();
        }
        if self.anonymous_read {
            parts.push("anonymous read".to_owned());
        }
        parts.join(", ")
    }

    /// Who sent a request with this `Authorization` header.
    pub async fn identify(&self, authorization: Option<&[u8]>) -> Identity {
        let identity = |access, grant, refusal| Identity {
            access,
            presented: authorization.is_some(),
            refusal,
            grant,
        };
        if self.tokens.is_none() && self.oidc.is_none() {
            return identity(Access::Write, Some(self.everything.clone()), None);
        }
        let Some(token) = authorization.and_then(presented_token) else {
            let anonymous = match self.anonymous_read {
                true => Access::Read,
                false => Access::None,
            };
            return identity(anonymous, None, None);
        };
        let hash = hash_token(&token);
        if let Some(grant) = self.tokens.as_ref().and_then(|tokens| tokens.get(&hash)) {
            return identity(grant.access, Some(grant.clone()), None);
        }
        let refusal = match (&self.oidc, std::str::from_utf8(&token)) {
            (Some(oidc), Ok(token)) if looks_like_a_jwt(token) => {
                match oidc.verify(token, hash).await {
                    Ok(grant) => return identity(grant.access, Some(grant), None),
                    Err(refusal) => refusal,
                }
            }
            _ => CredentialRefusal {
                reason: "unknown_token",
                message: "the server does not know this token; send a valid one as \
                          `Authorization: Bearer <token>`"
                    .to_owned(),
            },
        };
        identity(Access::None, None, Some(refusal))
    }
}

/// A JWT is three base64url parts, and its header a JSON object.
fn looks_like_a_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.matches('.').count() == 2
}

fn read_tokens(path: &Path) -> Result<HashMap<[u8; 32], Arc<Grant>>, TokensError> {
    let read = |source| TokensError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read)?;
    check_permissions(path, &file)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read)?;
    parse_tokens(path, &text)
}

/// The grants of a tokens file's `text` (read from `path`, for messages).
pub(crate) fn parse_tokens(
    path: &Path,
    text: &str,
) -> Result<HashMap<[u8; 32], Arc<Grant>>, TokensError> {
    let mut tokens = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let syntax = |why: String| TokensError::Syntax {
            path: path.to_owned(),
            line: number + 1,
            why,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(scope), Some(hash)) = (fields.next(), fields.next()) else {
            return Err(syntax("a scope and a hash are needed".into()));
        };
        let access = match scope {
            "read" => Access::Read,
            "write" => Access::Write,
            other => return Err(syntax(format!("unknown scope `{other}`"))),
        };
        let mut digest = [0; 32];
        hex::decode_to_slice(hash, &mut digest).map_err(|_| {
            syntax("the hash is not 64 hex digits (store hashes, never tokens)".into())
        })?;
        let mut namespaces = None;
        for field in fields {
            if let Some(globs) = field.strip_prefix("namespaces=") {
                let globs: Vec<String> = globs.split(',').map(str::to_owned).collect();
                if globs.iter().any(String::is_empty) {
                    return Err(syntax("an empty namespace glob".into()));
                }
                namespaces = Some(globs);
            }
        }
        // `namespaces=` restricts what the scope allows: a write token's
        // writes, a read token's reads.
        let grant = match access {
            Access::Write => Grant {
                access,
                write: namespaces,
                read: None,
            },
            _ => Grant {
                access,
                write: None,
                read: namespaces,
            },
        };
        if tokens.insert(digest, Arc::new(grant)).is_some() {
            return Err(syntax("this token is listed twice".into()));
        }
    }
    Ok(tokens)
}

/// The SHA-256 of a token, as the tokens file holds it.
pub fn hash_token(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// A new random token, and its line for the tokens file; `namespaces`
/// (globs) restrict its use of the action cache if not empty.
pub fn new_token(
    scope: Access,
    name: &str,
    namespaces: &[String],
) -> std::io::Result<(String, String)> {
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
    let token = format!("gry_{}", hex::encode(random));
    let mut line = format!(
        "{} {} {name}",
        scope.name(),
        hex::encode(hash_token(token.as_bytes()))
    );
    if !namespaces.is_empty() {
        line += &format!(" namespaces={}", namespaces.join(","));
    }
    Ok((token, line))
}

/// The token in `Bearer <token>` or `Basic base64(user:token)`.
pub(crate) fn presented_token(header: &[u8]) -> Option<Vec<u8>> {
    let header = std::str::from_utf8(header).ok()?.trim();
    let (scheme, value) = header.split_once(' ')?;
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(value.as_bytes().to_vec())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64_simd::STANDARD.decode_to_vec(value).ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        Some(decoded[colon + 1..].to_vec())
    } else {
        None
    }
}

#[cfg(unix)]
fn check_permissions(path: &Path, file: &std::fs::File) -> Result<(), TokensError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file
        .metadata()
        .map_err(|source| TokensError::Read {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokensError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_: &Path, _: &std::fs::File) -> Result<(), TokensError> {
    Ok(())
}

#[cfg(all(test, unix))] // the tokens file's mode is part of every case
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use futures_util::FutureExt;

    use super::*;

    fn tokens_file(text: &str, mode: u32) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        file
    }

    /// Without OIDC, nothing waits.
    fn identify(auth: &Auth, header: Option<&[u8]>) -> Identity {
        auth.identify(header).now_or_never().expect("no wait")
    }

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn scopes_follow_the_hashed_tokens() {
        let (writer, write_line) = new_token(Access::Write, "ci", &[]).unwrap();
        let (reader, read_line) = new_token(Access::Read, "pr", &[]).unwrap();
        assert!(!write_line.contains(&writer));
        let file = tokens_file(&format!("# comment\n\n{write_line}\n{read_line}\n"), 0o600);
        let auth = Auth::new(Some(file.path()), None, false).unwrap();
        let access = |header: Option<&[u8]>| identify(&auth, header).access;
        assert_eq!(access(Some(&bearer(&writer))), Access::Write);
        assert_eq!(access(Some(&bearer(&reader))), Access::Read);
        let guess = identify(&auth, Some(&bearer("gry_guess")));
        assert_eq!(guess.access, Access::None);
        assert_eq!(guess.refusal.unwrap().reason, "unknown_token");
        assert_eq!(access(None), Access::None);
        let basic = format!(
            "Basic {}",
            base64_simd::STANDARD.encode_to_string(format!("bazel:{writer}"))
        );
        assert_eq!(access(Some(basic.as_bytes())), Access::Write);
        assert_eq!(access(Some(b"Digest abc")), Access::None);
        let anonymous = Auth::new(Some(file.path()), None, true).unwrap();
        assert_eq!(identify(&anonymous, None).access, Access::Read);
        assert!(!identify(&anonymous, None).may_monitor());
        assert!(!identify(&anonymous, Some(&bearer("wrong"))).may_monitor());
        assert!(identify(&anonymous, Some(&bearer(&reader))).may_monitor());
        assert_eq!(
            identify(&anonymous, Some(&bearer("wrong"))).access,
            Access::None
        );
        let open = Auth::new(None, None, false).unwrap();
        assert!(identify(&open, None).may_monitor());
        assert!(identify(&open, Some(&bearer("any"))).may_monitor());
        assert_eq!(identify(&open, None).access, Access::Write);
    }

    #[test]
    fn namespaces_restrict_a_token_to_the_action_caches_its_globs_match() {
        let globs = ["pr-*".to_owned(), "feature-*-x".to_owned()];
        let (pr, line) = new_token(Access::Write, "pr", &globs).unwrap();
        assert!(line.ends_with(" pr namespaces=pr-*,feature-*-x"), "{line}");
        let (ci, ci_line) = new_token(Access::Write, "ci", &[]).unwrap();
        let file = tokens_file(&format!("{line}\n{ci_line}\n"), 0o600);
        let auth = Auth::new(Some(file.path()), None, true).unwrap();
        let pr = identify(&auth, Some(&bearer(&pr)));
        assert_eq!(pr.access, Access::Write);
        for (namespace, allowed) in [
            ("pr-12", true),
            ("pr-", true),
            ("feature-a-x", true),
            ("feature-x", false),
            ("main", false),
            ("", false),
            ("xpr-1", false),
        ] {
            assert_eq!(
                pr.may_use_namespace(namespace, true),
                allowed,
                "{namespace:?}"
            );
            assert!(pr.may_use_namespace(namespace, false));
        }
        let ci = identify(&auth, Some(&bearer(&ci)));
        assert!(ci.may_use_namespace("main", true));
        assert!(
            identify(&auth, None).may_use_namespace("main", true),
            "scope decides"
        );
        // A read token so restricted reads only there.
        let (reader, line) = new_token(Access::Read, "r", &["main".to_owned()]).unwrap();
        let file = tokens_file(&format!("{line}\n"), 0o600);
        let auth = Auth::new(Some(file.path()), None, false).unwrap();
        let reader = identify(&auth, Some(&bearer(&reader)));
        assert!(reader.may_use_namespace("main", false));
        assert!(!reader.may_use_namespace("pr-1", false));
    }

    #[test]
    fn bad_files_say_what_to_fix() {
        let hash = "ab".repeat(32);
        let loose = tokens_file(&format!("write {hash}\n"), 0o644);
        let error = Auth::new(Some(loose.path()), None, false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("chmod 600"), "{error}");
        for (text, says) in [
            (format!("admin {hash}\n"), "line 1"),
            ("write\n".to_owned(), "a scope and a hash"),
            ("# c\nread gry_plaintext_token\n".to_owned(), "line 2"),
            (format!("read {hash}\nwrite {hash}\n"), "twice"),
        ] {
            let file = tokens_file(&text, 0o600);
            let error = Auth::new(Some(file.path()), None, false)
                .unwrap_err()
                .to_string();
            assert!(error.contains(says), "{text:?}: {error}");
        }
        let missing = Auth::new(Some(Path::new("/nonexistent/tokens")), None, false).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/tokens"));
    }

    #[test]
    fn only_jwt_shaped_tokens_go_to_the_oidc_issuers() {
        assert!(looks_like_a_jwt("eyJhbGciOiJSUzI1NiJ9.eyJ9.c2ln"));
        assert!(!looks_like_a_jwt("gry_0123"));
        assert!(!looks_like_a_jwt("eyJ.only-two"));
    }
}
