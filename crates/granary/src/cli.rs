//! The command line. Every flag can also be set by a `GRANARY_*` variable,
//! so that `GOCACHEPROG="granary prog"` stays short and no secret ever needs
//! to be in argv.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::units::{
    parse_age_limit, parse_ceiling, parse_duration, parse_floor, parse_interval, parse_size,
};

#[derive(Debug, Parser)]
#[command(
    name = "granary",
    version,
    about = "A fast, safe build cache for the Go toolchain (a GOCACHEPROG helper)",
    long_about = "A fast, safe build cache for the Go toolchain.\n\n\
        The go command starts granary as its cache helper:\n\n    \
        go env -w GOCACHEPROG=\"granary prog\"\n\n\
        granary keeps the cache in Go's own directory and format (GOCACHE), so switching \
        between granary and Go's native cache loses nothing.",
    after_help = "Every flag can also be set with the GRANARY_* variable named in its help."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Cache directory [default: the go command's GOCACHE, resolved as go resolves it,
    /// including `go env -w GOCACHE=...`]
    #[arg(long, global = true, env = "GRANARY_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Config file [default: granary.toml in the cache directory, if there is one]
    #[arg(long, global = true, env = "GRANARY_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Report what granary does on stderr; in `prog`, one summary line at close
    #[arg(
        short,
        long,
        global = true,
        env = "GRANARY_VERBOSE",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the go command as its GOCACHEPROG helper over stdin and stdout
    ///
    /// Not run by hand: set GOCACHEPROG="granary prog" and the go command starts it.
    /// stdout carries the protocol; stderr stays silent unless something fails or
    /// --verbose is set.
    Prog(ProgArgs),

    /// Show the cache's size, its entries by age, and what the trim policy would free
    ///
    /// With --verbose, also the largest objects.
    Du(DuArgs),

    /// Apply the trim policy now: remove entries older than --max-age, then the least
    /// recently used ones until the cache fits --max-size and --min-free is free
    ///
    /// Nothing used within --grace is removed. Safe while builds run.
    Trim(TrimArgs),

    /// Remove every entry, or those unused for longer than --older-than
    ///
    /// Asks for confirmation on a terminal unless --force. Entries used within --grace
    /// stay, so builds running now are not broken; `--grace 0s` removes them too.
    Prune(PruneArgs),

    /// Show the statistics of the last `prog` runs: hit rate and bytes, by run and by day
    Stats(StatsArgs),

    /// Check this setup and say what to fix: the go command, GOCACHEPROG, the cache
    /// directory, the remote (a probe that reads and, unless --read-only, writes, leaving
    /// nothing behind), the clock against the remote's, and the key files
    ///
    /// Exits with status 0 when all is well, 1 otherwise. Takes the settings `prog` takes.
    Doctor(DoctorArgs),

    /// Check every action record's format and every object's hash
    ///
    /// Lists the damaged entries and exits with status 1 if there are any, unless
    /// --repair is given: then it removes exactly those entries (the go command rebuilds
    /// them as misses) and exits with status 0.
    Verify(VerifyArgs),

    /// Give the files git tracks, and their directories, times derived from their
    /// content, so that go reuses test results on a fresh checkout
    ///
    /// go keys a test result on the size and time of every file the test opened; a new
    /// checkout gives every file a new time. The same content gets the same time on
    /// every checkout; a file changed since the commit is hashed and gets another.
    /// Untracked and ignored files keep their times. Run it after the checkout, before
    /// `go test`, at the same path on every runner (go keys on absolute paths too).
    Mtimes(MtimesArgs),

    /// Run a go command and say why each action that missed the cache missed: the
    /// files, flags, variables, toolchain or dependencies that differ from the last
    /// recorded run of it
    ///
    /// `granary explain [OPTIONS] -- go test ./...`. The go command gets granary as its
    /// helper with these options, prints its cache-key inputs (GODEBUG=gocachehash=1),
    /// and the inputs of each action are recorded in the cache (the remote's namespace
    /// and the local tier) for the next run, on any machine, to compare with. go counts
    /// GODEBUG among a test result's inputs, so test results stored by an explained run
    /// are reused by explained runs only.
    Explain(ExplainArgs),

    /// Run a shared cache server for teams and CI: bazel-remote's HTTP cache protocol
    ///
    /// Clients: `granary prog --remote http://HOST:PORT`, Bazel (--remote_cache), or any
    /// other REAPI HTTP client. Blobs live in --dir (required: never the go command's own
    /// cache), least recently used ones are evicted above --max-size. Settings also come
    /// from the [serve] table of granary.toml in --dir, or of --config.
    Serve(ServeArgs),

    /// Make an access token for `granary serve`: prints the token, and the line that
    /// grants it to add to the server's --tokens file (which keeps only its hash)
    ServeToken(ServeTokenArgs),

    /// Make or show the ed25519 keys that sign action records (--signing-key) and that
    /// readers trust (--trusted-keys)
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a key pair: FILE holds the secret key (mode 600), FILE.pub its public key,
    /// the line to add to the readers' --trusted-keys file
    Generate {
        /// Where to write the secret key; neither FILE nor FILE.pub may exist
        file: PathBuf,
    },
    /// Print the public key of the secret key in FILE
    Public {
        /// A secret key file made by `granary key generate`
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "GRANARY_LISTEN", value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,

    /// Also listen here, for REAPI gRPC clients such as Bazel's --remote_cache=grpc://
    /// (gRPC is answered on --listen too)
    #[arg(long, env = "GRANARY_GRPC_LISTEN", value_name = "ADDR")]
    pub grpc_listen: Option<std::net::SocketAddr>,

    /// Evict least recently used blobs once the cache is larger than SIZE [default: 10GiB]
    #[arg(long, env = "GRANARY_SERVE_MAX_SIZE", value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,

    /// Evict down to this percentage of --max-size [default: 90]
    #[arg(long, env = "GRANARY_SERVE_LOW_WATERMARK", value_name = "PERCENT",
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub low_watermark: Option<u8>,

    /// Refuse writes (HTTP 507) that would take the cache above SIZE
    /// [default: --max-size plus 10%]
    #[arg(long, env = "GRANARY_SERVE_HARD_LIMIT", value_name = "SIZE", value_parser = parse_size)]
    pub hard_limit: Option<u64>,

    /// Refuse blobs larger than SIZE (HTTP 413) [default: 4GiB]
    #[arg(long, env = "GRANARY_SERVE_MAX_BLOB", value_name = "SIZE", value_parser = parse_size)]
    pub max_blob: Option<u64>,

    /// Tokens file: lines `read|write <sha256 of the token> [name]`, mode 600
    /// (see `granary serve-token`) [default: none, anyone may read and write]
    #[arg(long, env = "GRANARY_TOKENS", value_name = "FILE")]
    pub tokens: Option<PathBuf>,

    /// With --tokens: let requests without a token read
    #[arg(long, env = "GRANARY_ANONYMOUS_READ",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub anonymous_read: bool,

    /// PEM certificate chain: serve HTTPS (with --tls-key)
    #[arg(
        long,
        env = "GRANARY_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert
    #[arg(
        long,
        env = "GRANARY_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Close connections that make no progress for this long [default: 60s]
    #[arg(long, env = "GRANARY_IDLE_TIMEOUT", value_name = "AGE", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,

    /// Connections served at once; more wait in the listen queue [default: 4096]
    #[arg(long, env = "GRANARY_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// On SIGTERM, wait this long for requests in flight and for uploads to the
    /// backing store [default: 30s]
    #[arg(long, env = "GRANARY_SHUTDOWN_GRACE", value_name = "AGE", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,

    /// Memory for CAS blobs compressed for batch answers (`POST /batch`), kept
    /// for the next runner that fetches them; 0 compresses every answer anew
    /// [default: 256MiB]
    #[arg(long, env = "GRANARY_SERVE_COMPRESSED_CACHE", value_name = "SIZE", value_parser = parse_size)]
    pub compressed_cache: Option<u64>,

    /// Memory for small CAS blobs (under 16 KiB as stored), kept beside their
    /// files so that reading them costs no file system call; 0 keeps none
    /// [default: 64MiB]
    #[arg(long, env = "GRANARY_SERVE_MEMORY_CACHE", value_name = "SIZE", value_parser = parse_size)]
    pub memory_cache: Option<u64>,

    /// Back the disk with this bucket, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or
    /// az://CONTAINER/PREFIX: misses are fetched from it, uploads copied to it in the
    /// background, so several servers can share it. Endpoint, region and credentials as
    /// for `prog --remote` (GRANARY_S3_*, GRANARY_GCS_*, GRANARY_AZURE_*)
    #[arg(long, env = "GRANARY_BACKING", value_name = "URL")]
    pub backing: Option<String>,

    /// Answer a write only once the backing store has it, so that every server on
    /// the bucket can read it at once (read-your-writes across servers), at the cost
    /// of the bucket's latency on every write
    #[arg(long, env = "GRANARY_WRITE_THROUGH", requires = "backing")]
    pub write_through: bool,

    /// Endpoint of the backing store, e.g. http://127.0.0.1:8333 [default: AWS]
    #[arg(long, env = "GRANARY_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// The backing bucket's region [default: AWS_REGION, else us-east-1]
    #[arg(long, env = "GRANARY_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeTokenArgs {
    /// What the token may do
    #[arg(long, value_parser = ["read", "write"])]
    pub scope: String,

    /// A name for the token in the tokens file, e.g. ci-main
    #[arg(long, default_value = "token")]
    pub name: String,

    /// Let the token use only these namespaces' action caches: globs of whole names, `*` for
    /// any run of characters within a `/`-separated segment, comma-separated, e.g. pr-* for
    /// pull requests or team/* [default: all]
    #[arg(long, value_name = "GLOB", value_delimiter = ',')]
    pub namespaces: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,

    #[command(flatten)]
    pub remote: RemoteArgs,

    #[command(flatten)]
    pub output: JsonArg,
}

#[derive(Debug, Args)]
pub struct ProgArgs {
    /// At close, write this run's statistics as a JSON object to PATH (fields: docs/reference.md)
    #[arg(long, env = "GRANARY_STATS_FILE", value_name = "PATH")]
    pub stats_file: Option<PathBuf>,

    /// At close, append the keys answered as misses to PATH, one a line
    /// (`granary explain` sets it)
    #[arg(long, env = "GRANARY_MISSES_FILE", value_name = "PATH")]
    pub misses_file: Option<PathBuf>,

    #[command(flatten)]
    pub policy: PolicyArgs,

    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The go command's helper writes this run's statistics to PATH, as `prog` does
    #[arg(long, env = "GRANARY_STATS_FILE", value_name = "PATH")]
    pub stats_file: Option<PathBuf>,

    #[command(flatten)]
    pub policy: PolicyArgs,

    #[command(flatten)]
    pub remote: RemoteArgs,

    /// The go command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "GO COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

/// The remote cache. Unset flags come from the config file, else the defaults.
/// Credentials never come from flags. S3: GRANARY_S3_ACCESS_KEY_ID and
/// GRANARY_S3_SECRET_ACCESS_KEY (and GRANARY_S3_SESSION_TOKEN), else the AWS chain
/// (AWS_* variables, web identity, container and instance credentials). GCS:
/// GRANARY_GCS_CREDENTIALS (a service-account key file), else
/// GOOGLE_APPLICATION_CREDENTIALS, gcloud's application default credentials or the
/// metadata server; GRANARY_GCS_ENDPOINT for an emulator or a private endpoint. Azure:
/// GRANARY_AZURE_ACCOUNT with GRANARY_AZURE_ACCESS_KEY or GRANARY_AZURE_SAS_TOKEN,
/// else the AZURE_* variables (service principal, workload identity) or the managed
/// identity; GRANARY_AZURE_ENDPOINT for Azurite or a private endpoint.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Remote cache")]
pub struct RemoteArgs {
    /// Share the cache through this bucket or cache server: s3://BUCKET/PREFIX,
    /// gs://BUCKET/PREFIX, az://CONTAINER/PREFIX (or
    /// https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX),
    /// http(s)://HOST:PORT[/NAMESPACE] for granary serve or bazel-remote, or
    /// grpc(s)://HOST:PORT[/NAMESPACE] for any REAPI cache (granary serve, bazel-remote,
    /// BuildBuddy, Buildbarn, NativeLink, EngFlow) [default: none]
    #[arg(long, env = "GRANARY_REMOTE", value_name = "URL")]
    pub remote: Option<String>,

    /// Endpoint of an S3-compatible store (MinIO, R2, SeaweedFS, Ceph), e.g.
    /// http://127.0.0.1:8333 [default: AWS]
    #[arg(long, env = "GRANARY_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// The bucket's region [default: AWS_REGION, else us-east-1]
    #[arg(long, env = "GRANARY_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,

    /// Address the bucket as ENDPOINT/BUCKET (true) or BUCKET.ENDPOINT (false)
    /// [default: true with --s3-endpoint, false for AWS]
    #[arg(
        long,
        env = "GRANARY_S3_PATH_STYLE",
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub s3_path_style: Option<bool>,

    /// File whose first line is the cache server's token [default: GRANARY_TOKEN]
    #[arg(long, env = "GRANARY_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Show the cache server the CI job's OIDC ID token instead of a token: `github`
    /// (the job needs `permissions: id-token: write`) or `gitlab` (the job's
    /// `id_tokens:` sets GRANARY_ID_TOKEN)
    #[arg(long, env = "GRANARY_OIDC", value_name = "CI")]
    pub oidc: Option<OidcProvider>,

    /// The audience GitHub's ID token is asked for: the server's [[serve.oidc]]
    /// audience [default: granary]
    #[arg(long, env = "GRANARY_OIDC_AUDIENCE", value_name = "AUDIENCE")]
    pub oidc_audience: Option<String>,

    /// PEM certificates to trust for an https or grpcs cache server, beside the system's
    #[arg(long, env = "GRANARY_REMOTE_CA", value_name = "FILE")]
    pub remote_ca: Option<PathBuf>,

    /// A header sent with every gRPC call, for servers that take credentials of their
    /// own (BuildBuddy: x-buildbuddy-api-key=KEY); repeatable. The variable holds
    /// several, separated by commas
    #[arg(long, env = "GRANARY_REMOTE_HEADERS", value_name = "NAME=VALUE",
        value_delimiter = ',', value_parser = parse_header)]
    pub remote_header: Vec<(String, String)>,

    /// Client certificate (PEM) for a grpcs server that wants mTLS; with --remote-key
    #[arg(long, env = "GRANARY_REMOTE_CERT", value_name = "FILE")]
    pub remote_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM)
    #[arg(long, env = "GRANARY_REMOTE_KEY", value_name = "FILE")]
    pub remote_key: Option<PathBuf>,

    /// Read the remote, never write to it: for builds of code you do not trust
    #[arg(
        long,
        env = "GRANARY_READ_ONLY",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub read_only: bool,

    /// Deadline of each remote lookup or upload [default: 10s]
    #[arg(long, env = "GRANARY_REMOTE_TIMEOUT", value_name = "AGE", value_parser = parse_duration)]
    pub remote_timeout: Option<Duration>,

    /// Switch the remote off for the rest of the run once lookups that found nothing
    /// (misses, errors, timeouts) have kept the build waiting this long in total
    /// [default: 2m]
    #[arg(long, env = "GRANARY_REMOTE_BUDGET", value_name = "AGE", value_parser = parse_duration)]
    pub remote_budget: Option<Duration>,

    /// At close, wait at most this long for queued uploads; the rest are dropped and
    /// counted [default: 30s]
    #[arg(long, env = "GRANARY_UPLOAD_DEADLINE", value_name = "AGE", value_parser = parse_duration)]
    pub upload_deadline: Option<Duration>,

    /// At close, let the go command exit at once and finish the uploads and the manifest
    /// in the background (not on Windows); `granary stats` waits for them, so a CI job's
    /// summary step counts them. Its messages go to granary-journal/detached.log in the
    /// cache directory [default: false]
    #[arg(
        long,
        env = "GRANARY_DETACH",
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub detach: Option<bool>,

    /// Publish the manifest of what this run used under this name (a branch, say), and
    /// prefetch what it names; the platform and Go version are always added
    /// [default: the module in the working directory]
    #[arg(long, env = "GRANARY_SCOPE", value_name = "NAME")]
    pub scope: Option<String>,

    /// Scopes whose manifests to prefetch after the run's own, e.g. main (comma-separated
    /// or repeated)
    #[arg(
        long,
        env = "GRANARY_SCOPE_FALLBACK",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub scope_fallback: Vec<String>,

    /// Fetch what the scopes' manifests name at start-up, in packs or batches [default: true]
    #[arg(
        long,
        env = "GRANARY_PREFETCH",
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub prefetch: Option<bool>,

    /// Which local misses ask the remote: all, or only those of actions that a manifest
    /// read at start-up names (named: the rest are misses at once, a round trip each
    /// saved, hits from jobs whose manifests the run does not read lost; all when no
    /// manifest was read) [default: all]
    #[arg(long, env = "GRANARY_LOOKUPS", value_name = "WHICH")]
    pub lookups: Option<Lookups>,

    /// The part of the remote's action cache this run writes and reads first, e.g. main,
    /// pr-123 or team/main (on a cache server: the REAPI instance name, which the URL's
    /// path may give instead) [default: the default one]
    #[arg(long, env = "GRANARY_NAMESPACE", value_name = "NAME")]
    pub namespace: Option<String>,

    /// Namespaces read after the run's own, never written, e.g. main for a pull request
    /// (comma-separated or repeated)
    #[arg(
        long,
        env = "GRANARY_READ_NAMESPACES",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub read_namespaces: Vec<String>,

    /// Sign every action record this run writes to the remote with this secret key (see
    /// `granary key generate`); the file must be readable by its owner only. Without
    /// --trusted-keys, the run then trusts this key alone
    #[arg(long, env = "GRANARY_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,

    /// Use a remote record only if one of these public keys signed it (one `ed25519:...`
    /// key a line); anything else is a miss, counted as untrusted
    #[arg(long, env = "GRANARY_TRUSTED_KEYS", value_name = "FILE")]
    pub trusted_keys: Option<PathBuf>,
}

/// The trim policy. Unset flags come from the config file, else the defaults.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Trim policy")]
pub struct PolicyArgs {
    /// Remove entries unused for longer than AGE (`none`: no age limit) [default: 5d]
    #[arg(long, env = "GRANARY_MAX_AGE", value_name = "AGE", value_parser = parse_age_limit)]
    pub max_age: Option<Duration>,

    /// Ceiling on the cache's disk use, e.g. 20GiB: least recently used entries are removed
    /// until it fits [default: none]
    #[arg(long, env = "GRANARY_MAX_SIZE", value_name = "SIZE", value_parser = parse_ceiling)]
    pub max_size: Option<u64>,

    /// Floor on the space left free on the cache's file system, e.g. 5GiB: least recently
    /// used entries are removed until it is free [default: none]
    #[arg(long, env = "GRANARY_MIN_FREE", value_name = "SIZE", value_parser = parse_floor)]
    pub min_free: Option<u64>,

    /// Never remove an entry used within this window, whatever the limits say; `0s` lifts
    /// it (only for a cache nobody is using) [default: 4h]
    #[arg(long, env = "GRANARY_GRACE", value_name = "AGE", value_parser = parse_duration)]
    pub grace: Option<Duration>,

    /// `prog` trims the cache in the background at most this often (`none`: never)
    /// [default: 1h]
    #[arg(
        long,
        env = "GRANARY_TRIM_INTERVAL",
        value_name = "AGE",
        value_parser = parse_interval
    )]
    pub trim_interval: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print the report as JSON on stdout
    #[arg(
        long,
        env = "GRANARY_JSON",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DuArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub output: JsonArg,
}

#[derive(Debug, Args)]
pub struct TrimArgs {
    /// Report what would be removed, remove nothing
    #[arg(
        long,
        env = "GRANARY_DRY_RUN",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub dry_run: bool,

    /// Do nothing if the cache was trimmed within --trim-interval or another trim is
    /// running (what `prog` starts in the background; also fit for cron)
    #[arg(
        long,
        env = "GRANARY_TRIM_IF_DUE",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub if_due: bool,

    /// Start only once stdin is closed: `prog` passes it, with a pipe that closes when
    /// `prog` exits, so that its background trim runs after the build, not during it
    #[arg(
        long,
        env = "GRANARY_TRIM_AFTER_STDIN",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub after_stdin: bool,

    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub output: JsonArg,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["all", "older_than"])))]
pub struct PruneArgs {
    /// Remove every entry (outside the grace window)
    #[arg(
        long,
        env = "GRANARY_PRUNE_ALL",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub all: bool,

    /// Remove the entries unused for longer than AGE, e.g. 2d
    #[arg(
        long,
        env = "GRANARY_PRUNE_OLDER_THAN",
        value_name = "AGE",
        value_parser = parse_duration
    )]
    pub older_than: Option<Duration>,

    /// Never remove an entry used within this window; `0s` lifts it [default: 4h, or the
    /// config file's]
    #[arg(long, env = "GRANARY_GRACE", value_name = "AGE", value_parser = parse_duration)]
    pub grace: Option<Duration>,

    /// Do not ask for confirmation
    #[arg(
        long,
        short,
        env = "GRANARY_FORCE",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub force: bool,

    #[command(flatten)]
    pub output: JsonArg,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// How many of the last runs to list
    #[arg(
        long,
        env = "GRANARY_STATS_LAST",
        value_name = "N",
        default_value_t = 10
    )]
    pub last: usize,

    /// Only the runs started since WHEN: an RFC 3339 time (the CI job's
    /// start) or an age such as 2h
    #[arg(long, env = "GRANARY_STATS_SINCE", value_name = "WHEN", value_parser = parse_since)]
    pub since: Option<SystemTime>,

    /// Print a Markdown summary of the runs, for a CI job summary
    /// ($GITHUB_STEP_SUMMARY): hits by tier, bytes, the remote's trouble, untrusted
    /// records, and the compile time the hits saved
    #[arg(
        long,
        env = "GRANARY_STATS_MARKDOWN",
        value_parser = clap::builder::BoolishValueParser::new(),
        conflicts_with = "json"
    )]
    pub markdown: bool,

    /// Wait at most this long for runs still publishing in the background (--detach), so
    /// that they are counted
    #[arg(
        long,
        env = "GRANARY_STATS_WAIT",
        value_name = "AGE",
        value_parser = parse_duration,
        default_value = "2m"
    )]
    pub wait: Duration,

    #[command(flatten)]
    pub output: JsonArg,
}

/// `--since`: an RFC 3339 time, or an age before now.
fn parse_since(value: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(value)
        .or_else(|_| {
            humantime::parse_duration(value).map(|age| {
                SystemTime::now()
                    .checked_sub(age)
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            })
        })
        .map_err(|_| {
            format!("`{value}` is neither an RFC 3339 time (2026-11-30T07:00:00Z) nor an age (2h)")
        })
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Remove the damaged entries
    #[arg(
        long,
        env = "GRANARY_VERIFY_REPAIR",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub repair: bool,

    #[command(flatten)]
    pub output: JsonArg,
}

#[derive(Debug, Args)]
pub struct MtimesArgs {
    /// A folder in a git work tree: its tracked files and folders get their times
    /// [default: the current folder]
    #[arg(value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,

    #[command(flatten)]
    pub output: JsonArg,
}

/// `NAME=VALUE`, as --remote-header takes it.
fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("`{text}` is not NAME=VALUE")),
    }
}

/// Which local misses ask the remote (`--lookups`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lookups {
    /// Every local miss asks the remote.
    All,
    /// Only misses of actions that a manifest read at start-up names.
    Named,
}

/// A CI system whose ID tokens `--oidc` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OidcProvider {
    Github,
    Gitlab,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn headers_are_name_equals_value() {
        assert_eq!(
            parse_header(" x-api-key = a=b ").unwrap(),
            ("x-api-key".to_owned(), "a=b".to_owned())
        );
        assert!(parse_header("no-value").is_err());
        assert!(parse_header("=value").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_an_environment_variable() {
        fn check(cmd: &clap::Command) {
            // Run by hand to print a token: nothing to configure.
            if cmd.get_name() == "serve-token" {
                return;
            }
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && !arg.is_positional() {
                    let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                    assert!(
                        env.as_deref().is_some_and(|e| e.starts_with("GRANARY_")),
                        "--{} of `{}` has no GRANARY_* variable",
                        arg.get_id(),
                        cmd.get_name()
                    );
                }
            }
            cmd.get_subcommands().for_each(check);
        }
        check(&Cli::command());
    }
}
