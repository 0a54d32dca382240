//! Signed action records: who may tell a build which output an action has.
//!
//! A body in a shared cache is checked against its output ID, but the
//! mapping from an action ID to an output ID cannot be checked that way: it
//! is what the build would produce, and only a build knows it. Anyone who can
//! write the cache could map a real action to a forged output. So writers
//! that are trusted sign what they claim ([`Claim`]: namespace, action ID,
//! output ID, size and put time) with an ed25519 key ([`SigningKey`]), and
//! readers use a record only if a key they trust ([`TrustedKeys`]) signed
//! exactly that claim ([`TrustedKeys::check`]). Manifests, which tell a
//! fresh runner what to prefetch, are signed the same way over their
//! namespace and the SHA-256 of their text ([`SigningKey::sign_manifest`]).
//!
//! Key files are text. A secret key file holds one line
//! `ed25519-secret:<64 hex digits>` (and `#` comments), and must not be
//! readable by group or others ([`SigningKey::read`] refuses it otherwise).
//! A public key is written `ed25519:<64 hex digits>`; a trusted-keys file
//! lists one a line, each optionally followed by a comment, and `#` lines.
//! Listing several keys lets a team rotate: trust the new key, switch the
//! writers to it, then drop the old one.
//!
//! Architecture invariant: this crate knows claims, keys and key files; it
//! knows nothing of record formats, remotes or the network. It is the only
//! crate that names `ed25519-dalek`.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use ed25519_dalek::{Signer as _, VerifyingKey};
use granary_id::Id;

/// How a secret key is written in its file.
const SECRET_PREFIX: &str = "ed25519-secret:";
/// How a public key is written.
const PUBLIC_PREFIX: &str = "ed25519:";
/// What every signed message starts with, so that no signature made by a
/// granary key for one purpose can pass for another.
const CLAIM_DOMAIN: &[u8] = b"granary signed action record 1\0";
/// What every signed manifest message starts with.
const MANIFEST_DOMAIN: &[u8] = b"granary signed manifest 1\0";

/// The message signed for the manifest whose text hashes to `digest`.
fn manifest_message(namespace: &str, digest: &Id) -> Vec<u8> {
    let mut message = MANIFEST_DOMAIN.to_vec();
    message.extend_from_slice(&(namespace.len() as u64).to_be_bytes());
    message.extend_from_slice(namespace.as_bytes());
    message.extend_from_slice(&digest.0);
    message
}

/// What a signature vouches for: in `namespace`, the action `action` has the
/// output `output` of `size` bytes, first put at `put_time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim<'a> {
    pub namespace: &'a str,
    pub action: Id,
    pub output: Id,
    pub size: u64,
    pub put_time: SystemTime,
}

impl Claim<'_> {
    /// The bytes that are signed: the domain, the namespace with its length,
    /// the two IDs, the size and the put time in Unix nanoseconds, each
    /// number as 8 big-endian bytes.
    pub fn message(&self) -> Vec<u8> {
        let nanos = self
            .put_time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut message = Vec::with_capacity(CLAIM_DOMAIN.len() + 8 + self.namespace.len() + 80);
        message.extend_from_slice(CLAIM_DOMAIN);
        message.extend_from_slice(&(self.namespace.len() as u64).to_be_bytes());
        message.extend_from_slice(self.namespace.as_bytes());
        message.extend_from_slice(&self.action.0);
        message.extend_from_slice(&self.output.0);
        message.extend_from_slice(&self.size.to_be_bytes());
        message.extend_from_slice(&nanos.to_be_bytes());
        message
    }
}

/// An ed25519 public key: who signed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = String;

    fn from_str(text: &str) -> Result<PublicKey, String> {
        let digits = text
            .strip_prefix(PUBLIC_PREFIX)
            .ok_or_else(|| format!("a public key starts with `{PUBLIC_PREFIX}`"))?;
        let mut key = [0; 32];
        hex::decode_to_slice(digits, &mut key)
            .map_err(|_| format!("`{PUBLIC_PREFIX}` must be followed by 64 hex digits"))?;
        let point =
            VerifyingKey::from_bytes(&key).map_err(|_| "not an ed25519 public key".to_owned())?;
        // Anyone can sign for a small-order key: it would vouch for nothing.
        if point.is_weak() {
            return Err("a weak (small-order) ed25519 key, for which anyone can sign".to_owned());
        }
        Ok(PublicKey(key))
    }
}

/// A signature and the key that made it, as records carry them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    pub signer: PublicKey,
    pub bytes: [u8; 64],
}

impl Signature {
    /// The signer and the signature in lower-case hex, separated by a
    /// space: how text formats (record headers, manifests) carry one.
    pub fn to_hex(&self) -> String {
        format!("{} {}", hex::encode(self.signer.0), hex::encode(self.bytes))
    }

    /// Reads the two fields [`Signature::to_hex`] writes; only lower-case
    /// hex, so that one signature has one spelling.
    pub fn from_hex(signer: &str, signature: &str) -> Option<Signature> {
        if [signer, signature]
            .iter()
            .any(|field| field.bytes().any(|b| b.is_ascii_uppercase()))
        {
            return None;
        }
        let mut key = [0; 32];
        let mut bytes = [0; 64];
        hex::decode_to_slice(signer, &mut key).ok()?;
        hex::decode_to_slice(signature, &mut bytes).ok()?;
        Some(Signature {
            signer: PublicKey(key),
            bytes,
        })
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature(by {})", self.signer)
    }
}

/// A secret key that signs claims.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {})", self.public())
    }
}

impl SigningKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> io::Result<SigningKey> {
        let mut secret = [0; 32];
        getrandom::fill(&mut secret).map_err(io::Error::other)?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&secret)))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    pub fn sign(&self, claim: &Claim) -> Signature {
        self.sign_message(&claim.message())
    }

    /// Signs the manifest of `namespace` whose text hashes to `digest`.
    pub fn sign_manifest(&self, namespace: &str, digest: &Id) -> Signature {
        self.sign_message(&manifest_message(namespace, digest))
    }

    fn sign_message(&self, message: &[u8]) -> Signature {
        Signature {
            signer: self.public(),
            bytes: self.0.sign(message).to_bytes(),
        }
    }

    /// Reads a secret key file, refusing one that group or others may read.
    pub fn read(path: &Path) -> Result<SigningKey, KeyFileError> {
        let io_error = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(path).map_err(io_error)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Readable {
                    path: path.to_owned(),
                    mode: mode & 0o777,
                });
            }
        }
        let text = fs::read_to_string(path).map_err(io_error)?;
        let mut keys = meaningful_lines(&text).map(|(number, line)| {
            let digits = line.strip_prefix(SECRET_PREFIX).ok_or(number)?;
            let mut secret = [0; 32];
            hex::decode_to_slice(digits, &mut secret).map_err(|_| number)?;
            Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&secret)))
        });
        match (keys.next(), keys.next()) {
            (Some(Ok(key)), None) => Ok(key),
            (Some(Err(line)), _) | (Some(Ok(_)), Some(Err(line))) => Err(KeyFileError::Malformed {
                path: path.to_owned(),
                line,
                why: "expected `ed25519-secret:` and 64 hex digits".to_owned(),
            }),
            (Some(Ok(_)), Some(Ok(_))) | (None, _) => Err(KeyFileError::NotOneKey {
                path: path.to_owned(),
            }),
        }
    }

    /// Creates a new key in `path` (readable by its owner only) and its
    /// public key in `path.pub`; refuses to overwrite either.
    pub fn create_files(path: &Path) -> Result<(SigningKey, PathBuf), KeyFileError> {
        let key = SigningKey::generate().map_err(|source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        let public_path = public_path_of(path);
        let public = key.public();
        let secret = format!(
            "# A granary signing key: keep it secret. Its public key is\n# {public}\n{SECRET_PREFIX}{}\n",
            hex::encode(key.0.to_bytes())
        );
        write_new(path, secret.as_bytes(), 0o600)?;
        if let Err(e) = write_new(&public_path, format!("{public}\n").as_bytes(), 0o644) {
            // No secret without its public half: the user will try again.
            let _ = fs::remove_file(path);
            return Err(e);
        }
        Ok((key, public_path))
    }
}

/// Where the public key of the secret key file `path` is written.
pub fn public_path_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyFileError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let io_error = |source: io::Error| match source.kind() {
        io::ErrorKind::AlreadyExists => KeyFileError::Exists {
            path: path.to_owned(),
        },
        _ => KeyFileError::Io {
            path: path.to_owned(),
            source,
        },
    };
    let mut file = options.open(path).map_err(io_error)?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_error)
}

/// Lines that are neither blank nor `#` comments, numbered from 1.
fn meaningful_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}

/// Why a record is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    #[error("the record is not signed")]
    Unsigned,
    #[error("the record is signed by {0}, which is not a trusted key")]
    UnknownKey(PublicKey),
    #[error("the record's signature by {0} does not match what the record says")]
    BadSignature(PublicKey),
}

/// The public keys whose signatures a reader accepts.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: HashMap<PublicKey, VerifyingKey>,
}

impl TrustedKeys {
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> TrustedKeys {
        let keys = keys
            .into_iter()
            .filter_map(|key| Some((key, VerifyingKey::from_bytes(&key.0).ok()?)))
            .collect();
        TrustedKeys { keys }
    }

    /// Reads a trusted-keys file: one public key a line, a comment may
    /// follow it; `#` lines and blank lines are skipped.
    pub fn read(path: &Path) -> Result<TrustedKeys, KeyFileError> {
        let text = fs::read_to_string(path).map_err(|source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut keys = Vec::new();
        for (line, text) in meaningful_lines(&text) {
            let word = text.split_whitespace().next().unwrap_or_default();
            // The parser's reason: a weak key is refused for being weak.
            keys.push(
                word.parse()
                    .map_err(|why: String| KeyFileError::Malformed {
                        path: path.to_owned(),
                        line,
                        why: format!("{why}; a trusted key is `ed25519:` and 64 hex digits"),
                    })?,
            );
        }
        if keys.is_empty() {
            return Err(KeyFileError::NotOneKey {
                path: path.to_owned(),
            });
        }
        Ok(TrustedKeys::new(keys))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `signature` is a trusted key's signature of exactly `claim`.
    pub fn check(&self, claim: &Claim, signature: Option<&Signature>) -> Result<(), Untrusted> {
        self.check_message(&claim.message(), signature)
    }

    /// What [`TrustedKeys::check`] says of each claim and its signature, in
    /// order. The signatures of trusted keys are verified together, at
    /// about half the cost of one by one; if that fails, one by one, to
    /// find the bad ones.
    ///
    /// Batch verification can accept a signature that `verify_strict`
    /// refuses only if it is a variant (a small-order component added) of
    /// a signature the key's owner made of that same claim: it vouches
    /// for nothing the owner did not sign. Weak keys are never trusted.
    pub fn check_all(&self, claims: &[(Claim, Option<&Signature>)]) -> Vec<Result<(), Untrusted>> {
        let mut results = Vec::with_capacity(claims.len());
        let mut signed = Vec::new();
        for (i, (claim, signature)) in claims.iter().enumerate() {
            let known = signature.ok_or(Untrusted::Unsigned).and_then(|signature| {
                let key = self.keys.get(&signature.signer);
                key.ok_or(Untrusted::UnknownKey(signature.signer))
                    .map(|key| (*key, signature))
            });
            match known {
                Ok((key, signature)) => {
                    signed.push((i, claim.message(), signature, key));
                    results.push(Ok(()));
                }
                Err(why) => results.push(Err(why)),
            }
        }
        let all_good = signed.len() > 1 && {
            let messages: Vec<&[u8]> = signed.iter().map(|(_, m, _, _)| m.as_slice()).collect();
            let signatures: Vec<ed25519_dalek::Signature> = signed
                .iter()
                .map(|(_, _, s, _)| ed25519_dalek::Signature::from_bytes(&s.bytes))
                .collect();
            let keys: Vec<VerifyingKey> = signed.iter().map(|(_, _, _, key)| *key).collect();
            ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
        };
        if !all_good {
            for (i, message, signature, _) in signed {
                results[i] = self.check_message(&message, Some(signature));
            }
        }
        results
    }

    /// Whether `signature` is a trusted key's signature of the manifest of
    /// `namespace` whose text hashes to `digest`.
    pub fn check_manifest(
        &self,
        namespace: &str,
        digest: &Id,
        signature: Option<&Signature>,
    ) -> Result<(), Untrusted> {
        self.check_message(&manifest_message(namespace, digest), signature)
    }

    fn check_message(
        &self,
        message: &[u8],
        signature: Option<&Signature>,
    ) -> Result<(), Untrusted> {
        let signature = signature.ok_or(Untrusted::Unsigned)?;
        let key = self
            .keys
            .get(&signature.signer)
            .ok_or(Untrusted::UnknownKey(signature.signer))?;
        // Strict: no malleable signatures and no weak keys.
        key.verify_strict(
            message,
            &ed25519_dalek::Signature::from_bytes(&signature.bytes),
        )
        .map_err(|_| Untrusted::BadSignature(signature.signer))
    }
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot use the key file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} already exists; choose another file name, or remove it if you mean to replace that key"
    )]
    Exists { path: PathBuf },
    #[error(
        "the secret key file {path} is open to group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Readable { path: PathBuf, mode: u32 },
    #[error("{path}, line {line}: {why}")]
    Malformed {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error(
        "{path} must hold exactly one key (for a secret key) or at least one (for trusted keys)"
    )]
    NotOneKey { path: PathBuf },
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn claim(namespace: &str) -> Claim<'_> {
        Claim {
            namespace,
            action: Id([1; 32]),
            output: Id([2; 32]),
            size: 1234,
            put_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
        }
    }

    #[test]
    fn a_signature_covers_every_field_of_the_claim() {
        let key = SigningKey::generate().unwrap();
        let trusted = TrustedKeys::new([key.public()]);
        let signature = key.sign(&claim("main"));
        assert_eq!(trusted.check(&claim("main"), Some(&signature)), Ok(()));
        let bad = Err(Untrusted::BadSignature(key.public()));
        let others = [
            claim("pr-1"),
            Claim {
                action: Id([9; 32]),
                ..claim("main")
            },
            Claim {
                output: Id([9; 32]),
                ..claim("main")
            },
            Claim {
                size: 1235,
                ..claim("main")
            },
            Claim {
                put_time: SystemTime::UNIX_EPOCH,
                ..claim("main")
            },
        ];
        for other in others {
            assert_eq!(trusted.check(&other, Some(&signature)), bad, "{other:?}");
        }
        let mut tampered = signature;
        tampered.bytes[10] ^= 1;
        assert_eq!(trusted.check(&claim("main"), Some(&tampered)), bad);
        assert_eq!(
            trusted.check(&claim("main"), None),
            Err(Untrusted::Unsigned)
        );
    }

    #[test]
    fn a_manifest_signature_covers_its_namespace_and_text_and_is_no_record_signature() {
        let key = SigningKey::generate().unwrap();
        let trusted = TrustedKeys::new([key.public()]);
        let digest = Id::of(b"granary-manifest 1\n...");
        let signature = key.sign_manifest("main", &digest);
        assert_eq!(
            trusted.check_manifest("main", &digest, Some(&signature)),
            Ok(())
        );
        let bad = Err(Untrusted::BadSignature(key.public()));
        assert_eq!(
            trusted.check_manifest("pr-1", &digest, Some(&signature)),
            bad
        );
        let other = Id::of(b"another text");
        assert_eq!(
            trusted.check_manifest("main", &other, Some(&signature)),
            bad
        );
        // Neither kind of signature passes for the other.
        let record = key.sign(&claim("main"));
        assert_eq!(trusted.check_manifest("main", &digest, Some(&record)), bad);
        assert_eq!(trusted.check(&claim("main"), Some(&signature)), bad);
    }

    #[test]
    fn only_listed_keys_are_trusted_and_several_allow_rotation() {
        let (old, new, stranger) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        let trusted = TrustedKeys::new([old.public(), new.public()]);
        for key in [&old, &new] {
            assert_eq!(
                trusted.check(&claim(""), Some(&key.sign(&claim("")))),
                Ok(())
            );
        }
        // A stranger naming a trusted key as signer does not pass either.
        let mut forged = stranger.sign(&claim(""));
        assert_eq!(
            trusted.check(&claim(""), Some(&forged)),
            Err(Untrusted::UnknownKey(stranger.public()))
        );
        forged.signer = old.public();
        assert_eq!(
            trusted.check(&claim(""), Some(&forged)),
            Err(Untrusted::BadSignature(old.public()))
        );
    }

    #[test]
    fn checking_all_at_once_says_what_checking_each_says() {
        let (old, new, stranger) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        let trusted = TrustedKeys::new([old.public(), new.public()]);
        let claims: Vec<Claim> = (0..6u8)
            .map(|i| Claim {
                action: Id([i; 32]),
                ..claim("main")
            })
            .collect();
        let good: Vec<Signature> = claims
            .iter()
            .enumerate()
            .map(|(i, claim)| [&old, &new][i % 2].sign(claim))
            .collect();
        let all_good: Vec<_> = claims.iter().copied().zip(good.iter().map(Some)).collect();
        assert_eq!(trusted.check_all(&all_good), vec![Ok(()); 6]);

        let mut forged_signer = stranger.sign(&claims[3]);
        forged_signer.signer = old.public();
        let other_claim = old.sign(&Claim {
            size: 1,
            ..claims[4]
        });
        let unknown = stranger.sign(&claims[5]);
        let signatures = [
            Some(&good[0]),
            None,
            Some(&good[2]),
            Some(&forged_signer),
            Some(&other_claim),
            Some(&unknown),
        ];
        let mixed: Vec<_> = claims.iter().copied().zip(signatures).collect();
        let each: Vec<_> = mixed.iter().map(|(c, s)| trusted.check(c, *s)).collect();
        assert_eq!(trusted.check_all(&mixed), each);
        assert_eq!(
            each,
            [
                Ok(()),
                Err(Untrusted::Unsigned),
                Ok(()),
                Err(Untrusted::BadSignature(old.public())),
                Err(Untrusted::BadSignature(old.public())),
                Err(Untrusted::UnknownKey(stranger.public())),
            ]
        );
        // One alone is checked as by `check`.
        assert_eq!(trusted.check_all(&mixed[3..4]), each[3..4]);
    }

    #[test]
    fn a_weak_key_is_no_public_key() {
        let identity = format!("ed25519:01{}", "00".repeat(31));
        let refused = identity.parse::<PublicKey>().unwrap_err();
        assert!(refused.contains("weak"), "{refused}");
        // A trusted-keys file says why too.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trusted");
        fs::write(&path, format!("# ci\n{identity} weak\n")).unwrap();
        let refused = TrustedKeys::read(&path).unwrap_err().to_string();
        assert!(
            refused.contains("line 2") && refused.contains("weak (small-order)"),
            "{refused}"
        );
    }

    #[test]
    fn key_files_round_trip_and_refuse_what_they_must() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ci.key");
        let (key, public_path) = SigningKey::create_files(&path).unwrap();
        assert_eq!(public_path, dir.path().join("ci.key.pub"));
        let read = SigningKey::read(&path).unwrap();
        assert_eq!(read.public(), key.public());
        let trusted = TrustedKeys::read(&public_path).unwrap();
        assert_eq!(
            trusted.check(&claim("x"), Some(&read.sign(&claim("x")))),
            Ok(())
        );
        assert!(matches!(
            SigningKey::create_files(&path),
            Err(KeyFileError::Exists { .. })
        ));

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
            let e = SigningKey::read(&path).unwrap_err();
            assert!(e.to_string().contains("chmod 600"), "{e}");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }

        let list = dir.path().join("trusted");
        let other = SigningKey::generate().unwrap().public();
        fs::write(
            &list,
            format!("# the CI keys\n\n{} old CI key\n  {other}\n", key.public()),
        )
        .unwrap();
        assert_eq!(TrustedKeys::read(&list).unwrap().len(), 2);
        for bad in ["ed25519:abc\n", "ssh-ed25519 AAAA\n", "# only a comment\n"] {
            fs::write(&list, bad).unwrap();
            assert!(TrustedKeys::read(&list).is_err(), "{bad:?}");
        }
        fs::write(&list, format!("{}\nnonsense\n", key.public())).unwrap();
        let e = TrustedKeys::read(&list).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
