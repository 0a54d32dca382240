//! Settings that come from three places: flags beat `GRANARY_*` variables
//! (both handled by clap), which beat the config file, which beats the
//! defaults. The file is `granary.toml` in the cache directory, or the one
//! `--config` / `GRANARY_CONFIG` names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytesize::ByteSize;
use granary_remote::{S3Credentials, S3Settings};
use granary_store::Policy;
use serde::Deserialize;

use crate::cli::{PolicyArgs, RemoteArgs};

/// The config file's name in the cache directory.
pub const CONFIG_FILE: &str = "granary.toml";
/// How often `granary prog` trims the cache by default.
pub const DEFAULT_TRIM_INTERVAL: Duration = Duration::from_secs(3600);

/// The config file. Keys are the long flags' names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    max_age: Option<String>,
    max_size: Option<String>,
    min_free: Option<String>,
    grace: Option<String>,
    trim_interval: Option<String>,
    remote: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_path_style: Option<bool>,
    read_only: Option<bool>,
    remote_timeout: Option<String>,
    remote_budget: Option<String>,
    upload_deadline: Option<String>,
}

/// Deadline of one remote lookup or upload by default.
pub const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time remote lookups may waste (misses, errors) in one run by default.
pub const DEFAULT_REMOTE_BUDGET: Duration = Duration::from_secs(120);
/// How long `close` waits for uploads by default.
pub const DEFAULT_UPLOAD_DEADLINE: Duration = Duration::from_secs(30);

/// Settings of the remote tier, resolved.
#[derive(Debug, Clone)]
pub struct Remote {
    pub s3: S3Settings,
    pub read_only: bool,
    pub timeout: Duration,
    pub budget: Duration,
    pub upload_deadline: Duration,
}

/// Settings of the cache's upkeep, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upkeep {
    pub policy: Policy,
    /// How often `prog` trims; `Duration::MAX`: never by itself.
    pub trim_interval: Duration,
}

/// A flag's value, else the file's, parsed as the flag's would be.
fn pick<T>(
    flag: Option<T>,
    value: &Option<String>,
    parse: fn(&str) -> Result<T, String>,
    key: &str,
    path: &Path,
) -> anyhow::Result<Option<T>> {
    match (flag, value) {
        (Some(flag), _) => Ok(Some(flag)),
        (None, Some(value)) => parse(value)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{e} (key {key} of {})", path.display())),
        (None, None) => Ok(None),
    }
}

/// Resolves the remote settings from `args` (flags and variables), the
/// config file, the `GRANARY_S3_*` credential variables and the defaults.
/// `None`: no remote is set.
pub fn remote(
    dir: &Path,
    config: Option<&Path>,
    args: &RemoteArgs,
) -> anyhow::Result<Option<Remote>> {
    let (file, path) = read_file(dir, config)?;
    let Some(url) = args.remote.clone().or(file.remote) else {
        return Ok(None);
    };
    let mut s3 = S3Settings::from_url(&url)?;
    s3.endpoint = args.s3_endpoint.clone().or(file.s3_endpoint);
    s3.region = args.s3_region.clone().or(file.s3_region);
    s3.path_style = args.s3_path_style.or(file.s3_path_style);
    s3.credentials = s3_credentials(|name| std::env::var(name).ok())?;
    let timeout = pick(
        args.remote_timeout,
        &file.remote_timeout,
        parse_duration,
        "remote-timeout",
        &path,
    )?
    .unwrap_or(DEFAULT_REMOTE_TIMEOUT);
    s3.request_timeout = timeout;
    Ok(Some(Remote {
        s3,
        read_only: args.read_only || file.read_only.unwrap_or(false),
        timeout,
        budget: pick(
            args.remote_budget,
            &file.remote_budget,
            parse_duration,
            "remote-budget",
            &path,
        )?
        .unwrap_or(DEFAULT_REMOTE_BUDGET),
        upload_deadline: pick(
            args.upload_deadline,
            &file.upload_deadline,
            parse_duration,
            "upload-deadline",
            &path,
        )?
        .unwrap_or(DEFAULT_UPLOAD_DEADLINE),
    }))
}

/// The key pair in `GRANARY_S3_ACCESS_KEY_ID` and
/// `GRANARY_S3_SECRET_ACCESS_KEY` (with `GRANARY_S3_SESSION_TOKEN`), if
/// set; never from argv or the config file. `None`: the AWS chain.
fn s3_credentials(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<S3Credentials>> {
    let token = var("GRANARY_S3_SESSION_TOKEN");
    match (
        var("GRANARY_S3_ACCESS_KEY_ID"),
        var("GRANARY_S3_SECRET_ACCESS_KEY"),
    ) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Some(S3Credentials {
            access_key_id,
            secret_access_key,
            session_token: token,
        })),
        (None, None) => Ok(None),
        (Some(_), None) | (None, Some(_)) => anyhow::bail!(
            "set both GRANARY_S3_ACCESS_KEY_ID and GRANARY_S3_SECRET_ACCESS_KEY, or neither \
             (to use the AWS_* variables and the rest of the AWS chain)"
        ),
    }
}

/// Resolves the upkeep settings of the cache in `dir` from `args` (flags
/// and variables), the config file and the defaults.
pub fn upkeep(dir: &Path, config: Option<&Path>, args: &PolicyArgs) -> anyhow::Result<Upkeep> {
    let (file, path) = read_file(dir, config)?;
    let defaults = Policy::default();
    let policy = Policy {
        max_age: pick(
            args.max_age,
            &file.max_age,
            parse_age_limit,
            "max-age",
            &path,
        )?
        .unwrap_or(defaults.max_age),
        max_size: pick(
            args.max_size,
            &file.max_size,
            parse_ceiling,
            "max-size",
            &path,
        )?
        .unwrap_or(defaults.max_size),
        min_free: pick(
            args.min_free,
            &file.min_free,
            parse_floor,
            "min-free",
            &path,
        )?
        .unwrap_or(defaults.min_free),
        grace: pick(args.grace, &file.grace, parse_duration, "grace", &path)?
            .unwrap_or(defaults.grace),
    };
    let trim_interval = pick(
        args.trim_interval,
        &file.trim_interval,
        parse_interval,
        "trim-interval",
        &path,
    )?
    .unwrap_or(DEFAULT_TRIM_INTERVAL);
    Ok(Upkeep {
        policy,
        trim_interval,
    })
}

/// The config file and its path: the named one, which must exist, else
/// `granary.toml` in the cache directory, if there is one.
fn read_file(dir: &Path, config: Option<&Path>) -> anyhow::Result<(File, PathBuf)> {
    let (path, required) = match config {
        Some(path) => (path.to_owned(), true),
        None => (dir.join(CONFIG_FILE), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok((File::default(), path));
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot read the config file {} (set by --config or GRANARY_CONFIG)",
                    path.display()
                )
            });
        }
    };
    let file = toml::from_str(&text)
        .with_context(|| format!("the config file {} is not valid", path.display()))?;
    Ok((file, path))
}

/// A duration such as `90s`, `4h`, `5d` or `1w 2d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration such as 30m, 4h or 5d: {e}"))
}

/// A size such as `500MB`, `20GiB` or `1073741824` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|e| format!("`{text}` is not a size such as 500MiB or 20GiB: {e}"))
}

fn is_none(text: &str) -> bool {
    text.trim().eq_ignore_ascii_case("none")
}

/// `--max-age`: a duration, or `none` for no age limit.
pub fn parse_age_limit(text: &str) -> Result<Duration, String> {
    if is_none(text) {
        return Ok(Duration::MAX);
    }
    parse_duration(text)
}

/// `--max-size`: a size, or `none` for no ceiling.
pub fn parse_ceiling(text: &str) -> Result<u64, String> {
    if is_none(text) {
        return Ok(u64::MAX);
    }
    parse_size(text)
}

/// `--min-free`: a size, or `none` (or 0) for no floor.
pub fn parse_floor(text: &str) -> Result<u64, String> {
    if is_none(text) {
        return Ok(0);
    }
    parse_size(text)
}

/// `--trim-interval`: a duration, or `none` to never trim from `prog`.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    if is_none(text) {
        return Ok(Duration::MAX);
    }
    parse_duration(text)
}

/// How an age reads in reports, in the largest whole unit, as the flags
/// take it: `5d`, `4h`, `90s`, `none`.
pub fn show_age(age: Duration) -> String {
    if age == Duration::MAX {
        return "none".to_owned();
    }
    let secs = age.as_secs();
    let unit = [(86_400, "d"), (3600, "h"), (60, "m")]
        .into_iter()
        .find(|(size, _)| secs > 0 && secs.is_multiple_of(*size));
    match unit {
        Some((size, name)) => format!("{}{name}", secs / size),
        None if age.subsec_nanos() == 0 => format!("{secs}s"),
        None => format!("{}ms", age.as_millis()),
    }
}

pub fn show_size(size: u64) -> String {
    if size == u64::MAX {
        "none".to_owned()
    } else {
        ByteSize(size).display().iec().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn args() -> PolicyArgs {
        PolicyArgs::default()
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            upkeep(dir.path(), None, &args()).unwrap(),
            Upkeep {
                policy: Policy::default(),
                trim_interval: DEFAULT_TRIM_INTERVAL
            },
            "no file: the defaults"
        );
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "max-age = \"2d\"\nmax-size = \"20GiB\"\nmin-free = \"5 GiB\"\ngrace = \"6h\"\n\
             trim-interval = \"none\"\n",
        )
        .unwrap();
        let from_file = upkeep(dir.path(), None, &args()).unwrap();
        assert_eq!(
            from_file.policy,
            Policy {
                max_age: 48 * HOUR,
                max_size: 20 << 30,
                min_free: 5 << 30,
                grace: 6 * HOUR,
            }
        );
        assert_eq!(from_file.trim_interval, Duration::MAX);

        let flags = PolicyArgs {
            max_size: Some(1 << 30),
            grace: Some(Duration::ZERO),
            ..args()
        };
        let both = upkeep(dir.path(), None, &flags).unwrap();
        assert_eq!(both.policy.max_size, 1 << 30);
        assert_eq!(both.policy.grace, Duration::ZERO);
        assert_eq!(
            both.policy.max_age,
            48 * HOUR,
            "unset flags leave the file's"
        );
    }

    #[test]
    fn a_named_file_must_exist_and_bad_files_say_where() {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("elsewhere.toml");
        let err = upkeep(dir.path(), Some(&named), &args()).unwrap_err();
        assert!(format!("{err:#}").contains("GRANARY_CONFIG"), "{err:#}");

        let error_with = |contents: &str| {
            std::fs::write(&named, contents).unwrap();
            format!(
                "{:#}",
                upkeep(dir.path(), Some(&named), &args()).unwrap_err()
            )
        };
        let err = error_with("max-size = \"twenty gigs\"\n");
        assert!(
            err.contains("twenty gigs") && err.contains("key max-size"),
            "{err}"
        );
        assert!(err.contains("elsewhere.toml"), "{err}");
        let err = error_with("max_size = \"1GiB\"\n");
        assert!(
            err.contains("unknown field") && err.contains("max-size"),
            "{err}"
        );
    }

    #[test]
    fn remote_settings_come_from_flags_then_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let none = remote(dir.path(), None, &RemoteArgs::default()).unwrap();
        assert!(none.is_none(), "no remote unless one is set");
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "remote = \"s3://team-cache/go\"\ns3-endpoint = \"http://127.0.0.1:9000\"\n\
             s3-path-style = false\nread-only = true\nremote-timeout = \"3s\"\n",
        )
        .unwrap();
        let from_file = remote(dir.path(), None, &RemoteArgs::default())
            .unwrap()
            .unwrap();
        assert_eq!(from_file.s3.bucket, "team-cache");
        assert_eq!(from_file.s3.prefix, "go");
        assert_eq!(
            from_file.s3.endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(from_file.s3.path_style, Some(false));
        assert!(from_file.read_only);
        assert_eq!(from_file.timeout, Duration::from_secs(3));
        assert_eq!(from_file.budget, DEFAULT_REMOTE_BUDGET);
        assert_eq!(from_file.upload_deadline, DEFAULT_UPLOAD_DEADLINE);

        let flags = RemoteArgs {
            remote: Some("s3://other/prefix/deeper".into()),
            remote_timeout: Some(Duration::from_millis(500)),
            ..RemoteArgs::default()
        };
        let both = remote(dir.path(), None, &flags).unwrap().unwrap();
        assert_eq!(
            (both.s3.bucket.as_str(), both.s3.prefix.as_str()),
            ("other", "prefix/deeper")
        );
        assert_eq!(both.s3.request_timeout, Duration::from_millis(500));
        assert_eq!(both.s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));

        std::fs::write(dir.path().join(CONFIG_FILE), "remote = \"gs://nope\"\n").unwrap();
        let err = remote(dir.path(), None, &RemoteArgs::default()).unwrap_err();
        assert!(format!("{err:#}").contains("s3://BUCKET"), "{err:#}");
    }

    #[test]
    fn credentials_come_in_pairs() {
        let vars = |pairs: &'static [(&str, &str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.to_string())
            }
        };
        assert!(
            s3_credentials(vars(&[])).unwrap().is_none(),
            "the AWS chain"
        );
        let pair = s3_credentials(vars(&[
            ("GRANARY_S3_ACCESS_KEY_ID", "id"),
            ("GRANARY_S3_SECRET_ACCESS_KEY", "secret"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (pair.access_key_id.as_str(), pair.secret_access_key.as_str()),
            ("id", "secret")
        );
        let half = s3_credentials(vars(&[("GRANARY_S3_ACCESS_KEY_ID", "id")])).unwrap_err();
        assert!(half.to_string().contains("set both"), "{half}");
    }

    #[test]
    fn limits_read_and_show_alike() {
        assert_eq!(parse_age_limit("none"), Ok(Duration::MAX));
        assert_eq!(parse_ceiling("None"), Ok(u64::MAX));
        assert_eq!(parse_floor("none"), Ok(0));
        assert_eq!(parse_ceiling("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_interval("30m"), Ok(30 * 60 * Duration::from_secs(1)));
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("not a duration")
        );
        for age in ["5d", "4h", "90s", "1500ms", "none", "2m"] {
            assert_eq!(show_age(parse_age_limit(age).unwrap()), age);
        }
    }
}
