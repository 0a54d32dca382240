//! Settings that come from three places: flags beat `GRANARY_*` variables
//! (both handled by clap), which beat the config file, which beats the
//! defaults. The file is `granary.toml` in the cache directory, or the one
//! `--config` / `GRANARY_CONFIG` names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytesize::ByteSize;
use granary_prog::Scopes;
use granary_remote::{
    Credential, GrpcSettings, HttpSettings, Namespace, OBJECT_URLS, ObjectSettings, StoreSettings,
};
use granary_store::Policy;
use serde::Deserialize;

use crate::cli::{Lookups, OidcProvider, PolicyArgs, RemoteArgs, ServeArgs};
use crate::units::{
    parse_age_limit, parse_ceiling, parse_duration, parse_floor, parse_interval, parse_size,
};

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
    detach: Option<bool>,
    token_file: Option<PathBuf>,
    oidc: Option<OidcProvider>,
    oidc_audience: Option<String>,
    remote_ca: Option<PathBuf>,
    remote_cert: Option<PathBuf>,
    remote_key: Option<PathBuf>,
    scope: Option<String>,
    scope_fallback: Option<Vec<String>>,
    prefetch: Option<bool>,
    lookups: Option<Lookups>,
    namespace: Option<String>,
    read_namespaces: Option<Vec<String>>,
    signing_key: Option<PathBuf>,
    trusted_keys: Option<PathBuf>,
    serve: Option<ServeFile>,
}

/// The `[serve]` table: `granary serve`'s settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ServeFile {
    listen: Option<String>,
    grpc_listen: Option<String>,
    max_size: Option<String>,
    low_watermark: Option<u8>,
    hard_limit: Option<String>,
    max_blob: Option<String>,
    tokens: Option<PathBuf>,
    anonymous_read: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    idle_timeout: Option<String>,
    max_connections: Option<usize>,
    shutdown_grace: Option<String>,
    compressed_cache: Option<String>,
    memory_cache: Option<String>,
    backing: Option<String>,
    write_through: Option<bool>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    #[serde(default)]
    oidc: Vec<OidcFile>,
}

/// A `[[serve.oidc]]` table: an issuer whose ID tokens are credentials.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct OidcFile {
    issuer: String,
    audience: String,
    jwks_file: Option<PathBuf>,
    #[serde(default)]
    rule: Vec<OidcRuleFile>,
}

/// A `[[serve.oidc.rule]]` table: claims to match, namespaces to grant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcRuleFile {
    claims: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    write: Vec<String>,
    #[serde(default)]
    read: Vec<String>,
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
    pub endpoint: Endpoint,
    pub read_only: bool,
    pub timeout: Duration,
    pub budget: Duration,
    pub upload_deadline: Duration,
    /// Answer the go command's close before the uploads are done.
    pub detach: bool,
    pub scopes: Scopes,
    pub namespace: Namespace,
    pub read_namespaces: Vec<Namespace>,
    /// The secret key that signs what this run writes.
    pub signing_key: Option<PathBuf>,
    /// The public keys a record must be signed by to be used.
    pub trusted_keys: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub enum Endpoint {
    Object(ObjectSettings),
    Http(HttpSettings),
    Grpc(GrpcSettings),
}

/// How long connecting to a cache server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
/// config file, the object stores' credential variables (`GRANARY_S3_*`,
/// `GRANARY_GCS_*`, `GRANARY_AZURE_*`) and the defaults.
/// `None`: no remote is set.
pub fn remote(
    dir: &Path,
    config: Option<&Path>,
    args: &RemoteArgs,
) -> anyhow::Result<Option<Remote>> {
    let (file, path) = read_file(dir, config)?;
    let Some(url) = args.remote.clone().or(file.remote.clone()) else {
        return Ok(None);
    };
    let timeout = pick(
        args.remote_timeout,
        &file.remote_timeout,
        parse_duration,
        "remote-timeout",
        &path,
    )?
    .unwrap_or(DEFAULT_REMOTE_TIMEOUT);
    let scopes = scopes(args, &file)?;
    let namespace = |name: &str| {
        Namespace::new(name.trim()).map_err(|e| {
            anyhow::anyhow!(
                "{e} (set by --namespace, --read-namespaces or {})",
                path.display()
            )
        })
    };
    let read_namespaces = match args.read_namespaces.is_empty() {
        false => args.read_namespaces.clone(),
        true => file.read_namespaces.clone().unwrap_or_default(),
    };
    let read_namespaces = read_namespaces
        .iter()
        .map(|name| namespace(name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut namespace = namespace(
        args.namespace
            .as_deref()
            .or(file.namespace.as_deref())
            .unwrap_or_default(),
    )?;
    let server = ["http://", "https://", "grpc://", "grpcs://"]
        .iter()
        .any(|scheme| url.starts_with(scheme));
    let mut url = url;
    let env = |name: &str| std::env::var(name).ok();
    let endpoint = if let Some(mut object) = ObjectSettings::from_url(&url, &env)? {
        if args.oidc.or(file.oidc).is_some() {
            anyhow::bail!(
                "--oidc is for cache servers (http, https, grpc, grpcs); {url} is an object \
                 store, which takes its cloud's own workload identity"
            );
        }
        if let StoreSettings::S3(s3) = &mut object.store {
            s3.endpoint = args.s3_endpoint.clone().or(file.s3_endpoint);
            s3.region = args.s3_region.clone().or(file.s3_region);
            s3.path_style = args.s3_path_style.or(file.s3_path_style);
        }
        object.request_timeout = timeout;
        Endpoint::Object(object)
    } else if server {
        let path = url
            .splitn(4, '/')
            .nth(3)
            .unwrap_or_default()
            .trim_matches('/');
        if !path.is_empty() && !namespace.as_str().is_empty() {
            anyhow::bail!(
                "{url} names its instance (`{path}`) and --namespace names another: \
                 give the namespace once, as the URL's path or as --namespace"
            );
        }
        // The path is the namespace (the REAPI instance name), as
        // --namespace says it: read namespaces are its siblings (`/main/...`
        // beside `/team/pr-7/...`, not under it) and signatures name it. One
        // that cannot be a namespace is refused now, not after five failed
        // requests.
        if !path.is_empty() {
            namespace = Namespace::new(path).map_err(|e| {
                anyhow::anyhow!(
                    "the path of {url} names the namespace (the REAPI instance name): {e}"
                )
            })?;
            url = url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
        }
        let token_file = args.token_file.clone().or(file.token_file);
        let token = token(std::env::var("GRANARY_TOKEN").ok(), token_file.as_deref())?;
        let oidc = args.oidc.or(file.oidc);
        let audience = args.oidc_audience.clone().or(file.oidc_audience);
        let credential = credential(token, oidc, audience.as_deref(), &env)?;
        let ca_file = args.remote_ca.clone().or(file.remote_ca);
        let connect_timeout = CONNECT_TIMEOUT.min(timeout);
        let client_identity = match (
            args.remote_cert.clone().or(file.remote_cert),
            args.remote_key.clone().or(file.remote_key),
        ) {
            (Some(certificate), Some(key)) => Some((certificate, key)),
            (None, None) => None,
            _ => anyhow::bail!("a client certificate needs both --remote-cert and --remote-key"),
        };
        if url.starts_with("grpc") {
            Endpoint::Grpc(GrpcSettings {
                url,
                credential,
                headers: args.remote_header.clone(),
                ca_file,
                client_identity,
                connect_timeout,
            })
        } else {
            if client_identity.is_some() || !args.remote_header.is_empty() {
                anyhow::bail!(
                    "--remote-cert, --remote-key and --remote-header are for grpc:// and \
                     grpcs:// remotes; {url} takes a token (GRANARY_TOKEN or --token-file)"
                );
            }
            Endpoint::Http(HttpSettings {
                url,
                credential,
                ca_file,
                connect_timeout,
            })
        }
    } else {
        anyhow::bail!(
            "`{url}` is not a remote this build knows; use {OBJECT_URLS}, or a cache server's \
             http(s)://HOST:PORT[/NAMESPACE] or grpc(s)://HOST:PORT[/NAMESPACE]"
        );
    };
    Ok(Some(Remote {
        endpoint,
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
        detach: args.detach.or(file.detach).unwrap_or(false),
        scopes,
        namespace,
        read_namespaces,
        signing_key: args.signing_key.clone().or(file.signing_key),
        trusted_keys: args.trusted_keys.clone().or(file.trusted_keys),
    }))
}

/// The scopes of a run without a remote: as [`remote`] resolves them.
pub fn scopes_without_remote(
    dir: &Path,
    config: Option<&Path>,
    args: &RemoteArgs,
) -> anyhow::Result<Scopes> {
    let (file, _) = read_file(dir, config)?;
    scopes(args, &file)
}

/// The scope from `--scope`, the file, else the module in the working
/// directory; fallbacks likewise.
fn scopes(args: &RemoteArgs, file: &File) -> anyhow::Result<Scopes> {
    let check = |name: String| {
        let name = name.trim().to_owned();
        if name.is_empty() || name.chars().any(char::is_control) {
            anyhow::bail!(
                "`{}` is not a scope name; use --scope NAME (a branch name, for example)",
                name.escape_debug()
            );
        }
        Ok(name)
    };
    let scope = match args.scope.clone().or_else(|| file.scope.clone()) {
        Some(name) => check(name)?,
        None => crate::scope::default_name(&std::env::current_dir().unwrap_or_default()),
    };
    let fallbacks = match args.scope_fallback.is_empty() {
        false => args.scope_fallback.clone(),
        true => file.scope_fallback.clone().unwrap_or_default(),
    };
    let fallbacks = fallbacks
        .into_iter()
        .map(|name| check(name).map(|name| crate::scope::qualify(&name)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Scopes {
        scope: crate::scope::qualify(&scope),
        fallbacks,
        prefetch: args.prefetch.or(file.prefetch).unwrap_or(true),
        look_up_unnamed: args.lookups.or(file.lookups) != Some(Lookups::Named),
    })
}

/// The cache server's token: `GRANARY_TOKEN`, else the first line of the
/// token file; never from argv. `None`: anonymous.
fn token(variable: Option<String>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(token) = variable.filter(|t| !t.trim().is_empty()) {
        return Ok(Some(token.trim().to_owned()));
    }
    let Some(file) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file).with_context(|| {
        format!(
            "cannot read the token file {} (set by --token-file or token-file)",
            file.display()
        )
    })?;
    match text.lines().next().map(str::trim) {
        Some(token) if !token.is_empty() => Ok(Some(token.to_owned())),
        _ => anyhow::bail!(
            "the token file {} is empty; put the token on its first line",
            file.display()
        ),
    }
}

/// What the client shows a cache server: the CI job's ID token with
/// `--oidc`, else the token, if any; not both.
fn credential(
    token: Option<String>,
    oidc: Option<OidcProvider>,
    audience: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<Credential>> {
    let credential = match (oidc, token) {
        (None, token) => return Ok(token.map(Credential::Token)),
        (Some(_), Some(_)) => anyhow::bail!(
            "both a token (GRANARY_TOKEN or --token-file) and --oidc are set; the server \
             would see one of them: unset the one you do not mean"
        ),
        (Some(OidcProvider::Github), None) => {
            Credential::github(audience.unwrap_or(DEFAULT_OIDC_AUDIENCE), env)
        }
        (Some(OidcProvider::Gitlab), None) => {
            if audience.is_some() {
                anyhow::bail!(
                    "--oidc-audience is for GitHub; GitLab's audience is the `aud` of the \
                     job's id_tokens: entry"
                );
            }
            Credential::gitlab(env)
        }
    };
    Ok(Some(credential?))
}

/// The audience asked for by default, and a server's usual one.
const DEFAULT_OIDC_AUDIENCE: &str = "granary";

/// `granary serve`'s settings from `args` (flags and variables), the
/// `[serve]` table of the config file and the defaults, and the backing
/// bucket if one is set.
pub fn serve(
    dir: &Path,
    config: Option<&Path>,
    args: &ServeArgs,
) -> anyhow::Result<(granary_server::Settings, Option<ObjectSettings>)> {
    let (file, path) = read_file(dir, config)?;
    let file = file.serve.unwrap_or_default();
    let listen = match (args.listen, &file.listen) {
        (Some(listen), _) => listen,
        (None, Some(listen)) => listen.parse().map_err(|e| {
            anyhow::anyhow!("`{listen}` is not an address such as 127.0.0.1:8080: {e} (key listen of [serve] in {})", path.display())
        })?,
        (None, None) => std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
    };
    let grpc_listen = match (args.grpc_listen, &file.grpc_listen) {
        (Some(listen), _) => Some(listen),
        (None, Some(listen)) => Some(listen.parse().map_err(|e| {
            anyhow::anyhow!("`{listen}` is not an address such as 127.0.0.1:9092: {e} (key grpc-listen of [serve] in {})", path.display())
        })?),
        (None, None) => None,
    };
    let size = |flag, value, key| pick(flag, value, parse_size, key, &path);
    let max_size =
        size(args.max_size, &file.max_size, "max-size")?.unwrap_or(DEFAULT_SERVE_MAX_SIZE);
    let low_watermark = u64::from(
        args.low_watermark
            .or(file.low_watermark)
            .unwrap_or(90)
            .clamp(1, 100),
    );
    let hard_limit = size(args.hard_limit, &file.hard_limit, "hard-limit")?
        .unwrap_or(max_size.saturating_add(max_size / 10));
    anyhow::ensure!(
        hard_limit >= max_size,
        "the hard limit ({}) is below --max-size ({}); raise --hard-limit",
        ByteSize(hard_limit),
        ByteSize(max_size)
    );
    let limits = granary_server::Limits {
        max_size,
        low_watermark: max_size / 100 * low_watermark,
        hard_limit,
        max_blob: size(args.max_blob, &file.max_blob, "max-blob")?.unwrap_or(DEFAULT_MAX_BLOB),
        memory: size(args.memory_cache, &file.memory_cache, "memory-cache")?
            .unwrap_or(DEFAULT_MEMORY_CACHE),
    };
    let duration = |flag, value, key| pick(flag, value, parse_duration, key, &path);
    let tls = match (
        args.tls_cert.clone().or(file.tls_cert),
        args.tls_key.clone().or(file.tls_key),
    ) {
        (Some(certificate), Some(key)) => Some(granary_server::TlsFiles { certificate, key }),
        (None, None) => None,
        _ => anyhow::bail!("HTTPS needs both a certificate (--tls-cert) and its key (--tls-key)"),
    };
    let settings = granary_server::Settings {
        listen,
        grpc_listen,
        dir: dir.to_owned(),
        limits,
        tokens: args.tokens.clone().or(file.tokens),
        oidc: file
            .oidc
            .into_iter()
            .map(|issuer| granary_server::OidcIssuer {
                issuer: issuer.issuer,
                audience: issuer.audience,
                jwks_file: issuer.jwks_file,
                rules: issuer
                    .rule
                    .into_iter()
                    .map(|rule| granary_server::OidcRule {
                        claims: rule.claims.into_iter().collect(),
                        write: rule.write,
                        read: rule.read,
                    })
                    .collect(),
            })
            .collect(),
        anonymous_read: args.anonymous_read || file.anonymous_read.unwrap_or(false),
        tls,
        idle_timeout: duration(args.idle_timeout, &file.idle_timeout, "idle-timeout")?
            .unwrap_or(Duration::from_secs(60)),
        max_connections: args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(4096)
            .max(1),
        shutdown_grace: duration(args.shutdown_grace, &file.shutdown_grace, "shutdown-grace")?
            .unwrap_or(Duration::from_secs(30)),
        compressed_cache: size(
            args.compressed_cache,
            &file.compressed_cache,
            "compressed-cache",
        )?
        .unwrap_or(DEFAULT_COMPRESSED_CACHE),
        write_through: args.write_through || file.write_through.unwrap_or(false),
    };
    let backing = match args.backing.clone().or(file.backing) {
        None => None,
        Some(url) => {
            let env = |name: &str| std::env::var(name).ok();
            let Some(mut object) = ObjectSettings::from_url(&url, &env)? else {
                anyhow::bail!("`{url}` is not a backing store this build knows; use {OBJECT_URLS}");
            };
            if let StoreSettings::S3(s3) = &mut object.store {
                s3.endpoint = args.s3_endpoint.clone().or(file.s3_endpoint);
                s3.region = args.s3_region.clone().or(file.s3_region);
            }
            object.request_timeout = DEFAULT_REMOTE_TIMEOUT;
            Some(object)
        }
    };
    anyhow::ensure!(
        backing.is_some() || !settings.write_through,
        "write-through needs a backing store to write through to: set --backing, or \
         remove write-through from the [serve] table"
    );
    Ok((settings, backing))
}

/// `granary serve --max-size` by default.
const DEFAULT_SERVE_MAX_SIZE: u64 = 10 << 30;
/// `granary serve --max-blob` by default.
const DEFAULT_MAX_BLOB: u64 = 4 << 30;
/// About five times `go build std`'s outputs, compressed.
const DEFAULT_COMPRESSED_CACHE: u64 = 256 << 20;
/// Some tens of thousands of small blobs: more than a `go build std`
/// (about 1,400 of its 2,400 outputs are under 16 KiB).
const DEFAULT_MEMORY_CACHE: u64 = 64 << 20;

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
            let origin = match required {
                true => "set by --config or GRANARY_CONFIG",
                false => "in the cache directory",
            };
            return Err(e).with_context(|| {
                format!("cannot read the config file {} ({origin})", path.display())
            });
        }
    };
    let file = toml::from_str(&text)
        .with_context(|| format!("the config file {} is not valid", path.display()))?;
    Ok((file, path))
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
    use granary_remote::S3Settings;

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

    fn s3(remote: &Remote) -> (&S3Settings, &ObjectSettings) {
        match &remote.endpoint {
            Endpoint::Object(
                object @ ObjectSettings {
                    store: StoreSettings::S3(s3),
                    ..
                },
            ) => (s3, object),
            other => panic!("an S3 remote, not {other:?}"),
        }
    }

    #[test]
    fn a_server_url_makes_an_http_remote_with_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "gry_secret\n").unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            format!(
                "remote = \"https://cache.example:8443/team\"\ntoken-file = \"{}\"\n\
                 remote-ca = \"/etc/ca.pem\"\n",
                token_file.display()
            ),
        )
        .unwrap();
        let remote = remote(dir.path(), None, &RemoteArgs::default())
            .unwrap()
            .unwrap();
        let Endpoint::Http(http) = &remote.endpoint else {
            panic!("{remote:?}")
        };
        // The path is the namespace, as `--namespace team` would say it.
        assert_eq!(http.url, "https://cache.example:8443");
        assert_eq!(remote.namespace.as_str(), "team");
        assert_eq!(http.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(
            token(None, Some(&token_file)).unwrap().as_deref(),
            Some("gry_secret")
        );
        assert!(!format!("{remote:?}").contains("gry_secret"));
        assert_eq!(
            token(Some("gry_env".into()), Some(&token_file))
                .unwrap()
                .as_deref(),
            Some("gry_env"),
            "GRANARY_TOKEN beats the file"
        );
        std::fs::write(&token_file, "\n").unwrap();
        let empty = token(None, Some(&token_file)).unwrap_err().to_string();
        assert!(empty.contains("empty"), "{empty}");
        let missing = token(None, Some(&dir.path().join("nope"))).unwrap_err();
        assert!(
            format!("{missing:#}").contains("--token-file"),
            "{missing:#}"
        );
    }

    #[test]
    fn oidc_replaces_the_token_and_never_joins_it() {
        let runner = |name: &str| match name {
            "ACTIONS_ID_TOKEN_REQUEST_URL" => Some("https://runner.example/t?v=2".to_owned()),
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN" => Some("secret".to_owned()),
            _ => None,
        };
        let github = credential(None, Some(OidcProvider::Github), Some("team"), &runner);
        assert!(
            matches!(github, Ok(Some(Credential::GithubIdToken(_)))),
            "{github:?}"
        );
        let both = credential(
            Some("gry_x".into()),
            Some(OidcProvider::Github),
            None,
            &runner,
        )
        .unwrap_err()
        .to_string();
        assert!(
            both.contains("GRANARY_TOKEN") && both.contains("--oidc"),
            "{both}"
        );
        let gitlab = credential(None, Some(OidcProvider::Gitlab), Some("team"), &runner)
            .unwrap_err()
            .to_string();
        assert!(gitlab.contains("id_tokens:"), "{gitlab}");
        let plain = credential(Some("gry_x".into()), None, None, &runner).unwrap();
        assert!(matches!(plain, Some(Credential::Token(t)) if t == "gry_x"));

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "remote = \"s3://bucket/go\"\noidc = \"github\"\n",
        )
        .unwrap();
        let object = remote(dir.path(), None, &RemoteArgs::default()).unwrap_err();
        assert!(object.to_string().contains("workload identity"), "{object}");
    }

    #[test]
    fn a_grpc_url_makes_a_reapi_remote_with_headers_and_client_certificates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "remote = \"grpcs://cache.example:9092/team\"\nremote-cert = \"/etc/client.pem\"\n\
             remote-key = \"/etc/client-key.pem\"\n",
        )
        .unwrap();
        let header = || vec![("x-buildbuddy-api-key".to_owned(), "secret-key".to_owned())];
        let args = RemoteArgs {
            remote_header: header(),
            ..RemoteArgs::default()
        };
        let resolved = remote(dir.path(), None, &args).unwrap().unwrap();
        let Endpoint::Grpc(grpc) = &resolved.endpoint else {
            panic!("{resolved:?}")
        };
        assert_eq!(grpc.url, "grpcs://cache.example:9092");
        assert_eq!(resolved.namespace.as_str(), "team");
        assert_eq!(grpc.headers, header());
        assert_eq!(
            grpc.client_identity,
            Some(("/etc/client.pem".into(), "/etc/client-key.pem".into()))
        );
        assert!(!format!("{resolved:?}").contains("secret-key"));

        let empty = tempfile::tempdir().unwrap();
        let refused = |args: RemoteArgs| remote(empty.path(), None, &args).unwrap_err().to_string();
        let half = refused(RemoteArgs {
            remote: Some("grpcs://cache:9092".into()),
            remote_cert: Some("/etc/client.pem".into()),
            ..RemoteArgs::default()
        });
        assert!(half.contains("--remote-key"), "{half}");
        let http = refused(RemoteArgs {
            remote: Some("https://cache:8080".into()),
            remote_header: header(),
            ..RemoteArgs::default()
        });
        assert!(http.contains("grpc://"), "{http}");
        let both = refused(RemoteArgs {
            remote: Some("grpc://cache:9092/team".into()),
            namespace: Some("main".into()),
            ..RemoteArgs::default()
        });
        assert!(both.contains("--namespace"), "{both}");
        // A longer path is a namespace of several segments, as Buildbarn
        // and BuildBuddy users write instance names.
        for url in [
            "https://cache:8080/team/main",
            "grpcs://cache:9092/team/main/",
        ] {
            let named = remote(
                empty.path(),
                None,
                &RemoteArgs {
                    remote: Some(url.into()),
                    read_namespaces: vec!["team/release".into()],
                    ..RemoteArgs::default()
                },
            )
            .unwrap()
            .unwrap();
            assert_eq!(named.namespace.as_str(), "team/main");
            assert_eq!(named.read_namespaces[0].as_str(), "team/release");
            let (Endpoint::Http(HttpSettings { url: base, .. })
            | Endpoint::Grpc(GrpcSettings { url: base, .. })) = &named.endpoint
            else {
                panic!("{named:?}")
            };
            assert!(
                base.ends_with("cache:8080") || base.ends_with("cache:9092"),
                "{base}"
            );
        }
        // A path that cannot be one is refused at start, saying why.
        for url in [
            "http://cache:8080/team/ac",
            "grpc://cache:9092/a//b",
            "http://c:1/x y",
        ] {
            let why = refused(RemoteArgs {
                remote: Some(url.into()),
                ..RemoteArgs::default()
            });
            assert!(
                why.contains("names the namespace") && why.contains("team/main"),
                "{url}: {why}"
            );
        }
    }

    #[test]
    fn serve_settings_come_from_flags_then_the_serve_table() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "max-size = \"1GiB\"\n[serve]\nlisten = \"127.0.0.1:9999\"\ngrpc-listen = \"127.0.0.1:9998\"\nmax-size = \"100MiB\"\n\
             low-watermark = 50\nidle-timeout = \"5s\"\ncompressed-cache = \"1MiB\"\nmemory-cache = \"2MiB\"\nbacking = \"s3://bucket/servers\"\nwrite-through = true\n",
        )
        .unwrap();
        let args = ServeArgs {
            listen: None,
            grpc_listen: None,
            max_size: None,
            low_watermark: None,
            hard_limit: None,
            max_blob: Some(1 << 20),
            tokens: None,
            anonymous_read: false,
            tls_cert: None,
            tls_key: None,
            idle_timeout: None,
            max_connections: None,
            shutdown_grace: None,
            compressed_cache: None,
            memory_cache: None,
            backing: None,
            write_through: false,
            s3_endpoint: Some("http://127.0.0.1:8333".into()),
            s3_region: None,
        };
        let (settings, backing) = serve(dir.path(), None, &args).unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(
            settings.grpc_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9998")
        );
        assert_eq!(settings.limits.max_size, 100 << 20);
        assert_eq!(settings.limits.low_watermark, 50 << 20);
        assert_eq!(settings.limits.hard_limit, (100 << 20) + (10 << 20));
        assert_eq!(settings.limits.max_blob, 1 << 20);
        assert_eq!(settings.idle_timeout, Duration::from_secs(5));
        assert_eq!(settings.compressed_cache, 1 << 20);
        assert_eq!(settings.limits.memory, 2 << 20);
        assert!(settings.write_through);
        let backing = backing.unwrap();
        let StoreSettings::S3(s3) = &backing.store else {
            panic!("{backing:?}")
        };
        assert_eq!(
            (s3.bucket.as_str(), backing.prefix.as_str()),
            ("bucket", "servers")
        );
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:8333"));

        let below = ServeArgs {
            hard_limit: Some(1),
            ..args
        };
        let error = serve(dir.path(), None, &below).unwrap_err().to_string();
        assert!(error.contains("--hard-limit"), "{error}");
        std::fs::write(dir.path().join(CONFIG_FILE), "[serve]\nmax_size = 1\n").unwrap();
        let error = format!("{:#}", serve(dir.path(), None, &below).unwrap_err());
        assert!(error.contains("unknown field"), "{error}");
        // Write-through with nothing to write through to.
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "[serve]\nwrite-through = true\n",
        )
        .unwrap();
        let unlimited = ServeArgs {
            hard_limit: None,
            ..below
        };
        let error = serve(dir.path(), None, &unlimited).unwrap_err().to_string();
        assert!(error.contains("--backing"), "{error}");
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
        assert_eq!(s3(&from_file).0.bucket, "team-cache");
        assert_eq!(s3(&from_file).1.prefix, "go");
        assert_eq!(
            s3(&from_file).0.endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(s3(&from_file).0.path_style, Some(false));
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
            (s3(&both).0.bucket.as_str(), s3(&both).1.prefix.as_str()),
            ("other", "prefix/deeper")
        );
        assert_eq!(s3(&both).1.request_timeout, Duration::from_millis(500));
        assert_eq!(
            s3(&both).0.endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );

        std::fs::write(dir.path().join(CONFIG_FILE), "remote = \"ftp://nope\"\n").unwrap();
        let err = remote(dir.path(), None, &RemoteArgs::default()).unwrap_err();
        let err = format!("{err:#}");
        for kind in ["s3://BUCKET", "gs://BUCKET", "az://CONTAINER", "grpc(s)://"] {
            assert!(err.contains(kind), "{err}");
        }
    }

    #[test]
    fn trust_settings_come_from_flags_then_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "remote = \"s3://cache/go\"\nnamespace = \"main\"\n\
             read-namespaces = [\"release\"]\ntrusted-keys = \"/etc/granary/trusted\"\n",
        )
        .unwrap();
        let from_file = remote(dir.path(), None, &RemoteArgs::default())
            .unwrap()
            .unwrap();
        assert_eq!(from_file.namespace.as_str(), "main");
        assert_eq!(from_file.read_namespaces[0].as_str(), "release");
        assert_eq!(
            from_file.trusted_keys.as_deref(),
            Some(Path::new("/etc/granary/trusted"))
        );
        assert_eq!(from_file.signing_key, None);
        let flags = RemoteArgs {
            namespace: Some("pr-12".into()),
            read_namespaces: vec!["main".into(), "release".into()],
            signing_key: Some("/secrets/ci.key".into()),
            ..RemoteArgs::default()
        };
        let both = remote(dir.path(), None, &flags).unwrap().unwrap();
        assert_eq!(both.namespace.as_str(), "pr-12");
        assert_eq!(both.read_namespaces.len(), 2);
        assert_eq!(
            both.signing_key.as_deref(),
            Some(Path::new("/secrets/ci.key"))
        );

        let bad = RemoteArgs {
            namespace: Some("../main".into()),
            ..RemoteArgs::default()
        };
        let err = remote(dir.path(), None, &bad).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a namespace name"),
            "{err:#}"
        );
        // On a cache server the URL's path is the namespace already.
        let twice = RemoteArgs {
            remote: Some("http://127.0.0.1:8080/team".into()),
            ..RemoteArgs::default()
        };
        let err = remote(dir.path(), None, &twice).unwrap_err();
        assert!(
            format!("{err:#}").contains("give the namespace once"),
            "{err:#}"
        );
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
