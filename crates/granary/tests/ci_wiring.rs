//! The CI wiring (action.yml's and the GitLab template's scripts in ci/)
//! in simulated runners: GitHub's GITHUB_ENV, GITHUB_PATH,
//! GITHUB_STEP_SUMMARY and event file, GitLab's CI_* variables; then real
//! go builds with what the scripts set, against a granary serve.
#![cfg(unix)] // it runs the action's shell scripts and checks file modes; the Windows build is tested under Wine (scripts/test.sh)

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::server::Server;
use common::*;

/// PATH with the granary under test first, as a runner that installed it.
fn path_with_granary() -> std::ffi::OsString {
    let bin = granary().parent().unwrap().to_owned();
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths([bin].into_iter().chain(std::env::split_paths(&path))).unwrap()
}

/// A simulated GitHub runner: its files and variables.
struct Runner {
    dir: PathBuf,
    vars: Vec<(String, String)>,
}

impl Runner {
    fn github(sb: &Sandbox, name: &str, event_name: &str, event: &str) -> Runner {
        let dir = sb.path(name);
        fs::create_dir_all(dir.join("temp")).unwrap();
        fs::write(dir.join("event.json"), event).unwrap();
        let file = |f: &str| dir.join(f).display().to_string();
        let vars = [
            ("GITHUB_ACTIONS", "true".to_owned()),
            ("GITHUB_EVENT_NAME", event_name.to_owned()),
            ("GITHUB_EVENT_PATH", file("event.json")),
            ("GITHUB_REPOSITORY", "acme/app".to_owned()),
            ("GITHUB_JOB", "build".to_owned()),
            ("GITHUB_ENV", file("env")),
            ("GITHUB_PATH", file("path")),
            ("GITHUB_STEP_SUMMARY", file("summary.md")),
            ("RUNNER_TEMP", file("temp")),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into();
        Runner { dir, vars }
    }

    /// Runs a script of ci/ with the runner's variables, `inputs` and
    /// granary on PATH; returns its stdout.
    fn script(&self, name: &str, extra: &[(&str, &str)]) -> String {
        let mut cmd = Command::new("bash");
        without_granary_env(&mut cmd)
            .arg(repo_root().join("ci").join(name))
            .current_dir(&self.dir)
            .env("PATH", path_with_granary())
            // The runner's own folder: tests must not share /tmp's.
            .env("INPUT_GOCACHE", self.dir.join("gocache"))
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .envs(extra.iter().copied());
        String::from_utf8(run_ok(&mut cmd).stdout).unwrap()
    }

    /// What setup.sh appended to GITHUB_ENV.
    fn env(&self) -> HashMap<String, String> {
        fs::read_to_string(self.dir.join("env"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// `go build` of `module` with an empty local cache `cache` and the
/// variables setup.sh set.
fn build(sb: &Sandbox, cache: &str, module: &Path, env: &HashMap<String, String>) -> Stats {
    let stats_file = sb.path(&format!("{cache}.json"));
    let mut cmd = sb.go(
        &sb.path(cache),
        module,
        &[
            "build",
            "-o",
            sb.path("bin").join(cache).to_str().unwrap(),
            ".",
        ],
    );
    // The sandbox's cache, not the runner's GOCACHE: each build starts empty.
    cmd.envs(env.iter().filter(|(key, _)| *key != "GOCACHE"))
        .env("GRANARY_STATS_FILE", &stats_file)
        .env("GRANARY_TRIM_INTERVAL", "none");
    run_ok(&mut cmd);
    // The action detaches the close: the statistics are written once the
    // publication is done, which `granary stats` waits for.
    assert_eq!(env.get("GRANARY_DETACH").map(String::as_str), Some("true"));
    let mut summary = Command::new(granary());
    without_granary_env(&mut summary)
        .arg("--dir")
        .arg(sb.path(cache))
        .args(["stats", "--wait", "60s"]);
    run_ok(&mut summary);
    stats(&stats_file)
}

fn key_pair(sb: &Sandbox) -> (String, String) {
    let secret = sb.path("signer");
    run_ok(
        Command::new(granary())
            .args(["key", "generate"])
            .arg(&secret),
    );
    let public = fs::read_to_string(format!("{}.pub", secret.display())).unwrap();
    (fs::read_to_string(&secret).unwrap(), public)
}

#[test]
fn github_runners_get_namespaces_by_event_and_forks_only_read() {
    let server = Server::start(&[]);
    let sb = Sandbox::new();
    let module = sb.module("wired", 3);
    let (secret, public) = key_pair(&sb);
    let inputs = |extra: &[(&'static str, String)]| {
        let mut inputs = vec![
            ("INPUT_REMOTE", server.url.clone()),
            ("INPUT_READ_NAMESPACES", "auto".to_owned()),
            ("INPUT_TRUSTED_KEYS", public.clone()),
            ("INPUT_SIGNING_KEY", secret.clone()),
        ];
        inputs.extend_from_slice(extra);
        inputs
    };
    let run = |runner: &Runner, inputs: &[(&str, String)], script: &str| {
        let inputs: Vec<(&str, &str)> = inputs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        runner.script(script, &inputs)
    };

    // A push to the default branch writes main, signed.
    let push = Runner::github(
        &sb,
        "push",
        "push",
        r#"{"repository": {"default_branch": "main"}}"#,
    );
    let mut push_vars = push.vars.clone();
    push_vars.push(("GITHUB_REF".into(), "refs/heads/main".into()));
    push_vars.push(("GITHUB_REF_NAME".into(), "main".into()));
    let push = Runner {
        vars: push_vars,
        ..push
    };
    // The job's GOCACHE is the build's below, where the summary reads.
    let main_cache = sb.path("main-runner").display().to_string();
    run(&push, &inputs(&[("INPUT_GOCACHE", main_cache)]), "setup.sh");
    let env = push.env();
    assert_eq!(env["GOCACHEPROG"], format!("{} prog", granary().display()));
    assert_eq!(env["GRANARY_REMOTE"], server.url);
    assert_eq!(env["GRANARY_NAMESPACE"], "main");
    assert_eq!(env["GRANARY_READ_NAMESPACES"], "");
    assert_eq!(env["GRANARY_READ_ONLY"], "false");
    assert_eq!(env["GRANARY_SCOPE"], "main build");
    let signing_key = Path::new(&env["GRANARY_SIGNING_KEY"]);
    assert_eq!(
        fs::metadata(signing_key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let main = build(&sb, "main-runner", &module, &env);
    assert!(main.remote.uploads > 10, "{main:?}");
    run(&push, &[], "summary.sh");
    let summary = fs::read_to_string(push.dir.join("summary.md")).unwrap();
    assert!(
        summary.contains("### granary") && summary.contains("in 1 runs"),
        "{summary}"
    );
    assert!(summary.contains(&server.url), "{summary}");

    // A pull request from a fork reads main and writes nothing, and gets no
    // signing key even when the workflow passes one.
    let fork_event = r#"{"repository": {"default_branch": "main"},
        "pull_request": {"number": 7, "head": {"ref": "feature", "repo": {"full_name": "mallory/app"}}}}"#;
    let fork = Runner::github(&sb, "fork", "pull_request", fork_event);
    run(&fork, &inputs(&[]), "setup.sh");
    let env = fork.env();
    assert_eq!(env["GRANARY_NAMESPACE"], "pr-7");
    assert_eq!(env["GRANARY_READ_NAMESPACES"], "main");
    assert_eq!(env["GRANARY_READ_ONLY"], "true");
    assert_eq!(env["GRANARY_SCOPE"], "feature build");
    assert_eq!(env["GRANARY_SCOPE_FALLBACK"], "main build");
    assert!(!env.contains_key("GRANARY_SIGNING_KEY"), "{env:?}");
    let forked = build(&sb, "fork-runner", &module, &env);
    assert!(forked.hits > 10, "reads main: {forked:?}");
    assert_eq!(forked.remote.uploads, 0, "{forked:?}");
    assert_eq!(forked.remote.remote_off, "", "{forked:?}");

    // A pull request from the repository itself writes its own namespace.
    let own = fork_event.replace("mallory/app", "acme/app");
    let own = Runner::github(&sb, "own", "pull_request", &own);
    run(&own, &inputs(&[]), "setup.sh");
    assert_eq!(own.env()["GRANARY_READ_ONLY"], "false");
    assert!(own.env().contains_key("GRANARY_SIGNING_KEY"));
    // Unless the workflow says otherwise.
    let forced = Runner::github(&sb, "forced", "pull_request", fork_event);
    run(
        &forced,
        &inputs(&[
            ("INPUT_FORKS_READ_ONLY", "false".into()),
            ("INPUT_NAMESPACE", "untrusted".into()),
        ]),
        "setup.sh",
    );
    assert_eq!(forced.env()["GRANARY_READ_ONLY"], "false");
    assert_eq!(forced.env()["GRANARY_NAMESPACE"], "untrusted");
}

/// The jobs of a workflow keep a manifest each: one job's never replaces
/// another's. With one manifest per branch, the job that published last
/// named only what it used, so another job's fresh runner found its
/// entries by lookups, one round trip each, instead of in its prefetch.
#[test]
fn the_jobs_of_a_branch_keep_their_own_manifests() {
    let server = Server::start(&[]);
    let sb = Sandbox::new();
    let app = sb.module("app", 3);
    let tool = sb.module("tool", 3);
    let event = r#"{"repository": {"default_branch": "main"}}"#;
    let job = |runner: &str, job: &str, module: &Path| {
        let mut push = Runner::github(&sb, runner, "push", event);
        push.vars.retain(|(k, _)| k != "GITHUB_JOB");
        push.vars.extend([
            ("GITHUB_JOB".into(), job.into()),
            ("GITHUB_REF".into(), "refs/heads/main".into()),
        ]);
        push.script("setup.sh", &[("INPUT_REMOTE", server.url.as_str())]);
        let env = push.env();
        assert_eq!(env["GRANARY_SCOPE"], format!("main {job}"));
        build(&sb, &format!("{runner}-cache"), module, &env)
    };
    let first = job("app-1", "app", &app);
    assert!(first.remote.uploads > 10, "{first:?}");
    // The other job publishes after it, twice (two commits).
    job("tool-1", "tool", &tool);
    job("tool-2", "tool", &tool);

    let fresh = job("app-2", "app", &app);
    assert!(fresh.hits > 10, "{fresh:?}");
    assert!(
        fresh.prefetch.prefetch_used >= fresh.hits && fresh.remote.remote_hits == 0,
        "its own manifest named every hit; none was looked up: {fresh:?}"
    );
}

/// With `oidc: true` a job with an ID token shows it instead of a secret;
/// a job without one (a fork's pull request) reads only.
#[test]
fn oidc_input_uses_the_jobs_id_token_where_there_is_one() {
    let sb = Sandbox::new();
    let event = r#"{"repository": {"default_branch": "main"}}"#;
    let oidc = [
        ("INPUT_REMOTE", "https://cache.example"),
        ("INPUT_OIDC", "true"),
    ];
    let push = Runner::github(&sb, "push", "push", event);
    let mut with_token = oidc.to_vec();
    with_token.extend([
        (
            "ACTIONS_ID_TOKEN_REQUEST_URL",
            "https://runner.example/token",
        ),
        ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "secret"),
        ("INPUT_OIDC_AUDIENCE", "team-cache"),
    ]);
    push.script("setup.sh", &with_token);
    let env = push.env();
    assert_eq!(env["GRANARY_OIDC"], "github");
    assert_eq!(env["GRANARY_OIDC_AUDIENCE"], "team-cache");
    assert_eq!(env["GRANARY_READ_ONLY"], "false");

    let fork_event = r#"{"repository": {"default_branch": "main"},
        "pull_request": {"number": 7, "head": {"ref": "f", "repo": {"full_name": "mallory/app"}}}}"#;
    let fork = Runner::github(&sb, "fork", "pull_request", fork_event);
    fork.script(
        "setup.sh",
        &[oidc[0], oidc[1], ("INPUT_FORKS_READ_ONLY", "false")],
    );
    let env = fork.env();
    assert!(!env.contains_key("GRANARY_OIDC"), "{env:?}");
    assert_eq!(env["GRANARY_READ_ONLY"], "true", "no ID token, no writes");

    let mut cmd = Command::new("bash");
    without_granary_env(&mut cmd)
        .arg(repo_root().join("ci/setup.sh"))
        .current_dir(sb.path("push"))
        .env("PATH", path_with_granary())
        .envs([
            ("GITLAB_CI", "true"),
            ("CI_BUILDS_DIR", sb.path("push").to_str().unwrap()),
        ])
        .envs(oidc);
    let out = String::from_utf8(run_ok(&mut cmd).stdout).unwrap();
    assert!(out.contains("export GRANARY_OIDC=gitlab"), "{out}");
    assert!(
        !out.contains("GRANARY_OIDC_AUDIENCE"),
        "GitLab's audience is in id_tokens: {out}"
    );
}

#[test]
fn gitlab_merge_requests_from_forks_only_read_and_the_summary_is_kept() {
    let sb = Sandbox::new();
    let builds = sb.path("builds");
    fs::create_dir_all(&builds).unwrap();
    let cache = sb.cache();
    let gitlab = [
        ("GITLAB_CI", "true"),
        ("CI_BUILDS_DIR", builds.to_str().unwrap()),
        ("CI_JOB_ID", "42"),
        ("CI_JOB_NAME", "test: [linux, amd64]"),
        ("CI_DEFAULT_BRANCH", "main"),
        ("CI_MERGE_REQUEST_IID", "3"),
        ("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "fix/bug"),
        ("CI_MERGE_REQUEST_SOURCE_PROJECT_ID", "9"),
        ("CI_MERGE_REQUEST_PROJECT_ID", "1"),
        ("INPUT_REMOTE", "s3://ci-cache/go"),
        ("GOCACHE", cache.to_str().unwrap()),
    ];
    let runner = Runner {
        dir: builds.clone(),
        vars: Vec::new(),
    };
    // before_script: eval "$(bash ci/setup.sh)", then the job's commands.
    let script = format!(
        "eval \"$(bash {})\" && echo \"$GRANARY_NAMESPACE|$GRANARY_READ_NAMESPACES|$GRANARY_READ_ONLY|$GRANARY_SCOPE|$GRANARY_SCOPE_FALLBACK\"",
        repo_root().join("ci/setup.sh").display()
    );
    let paths = path_with_granary();
    let mut cmd = Command::new("bash");
    without_granary_env(&mut cmd)
        .args(["-c", &script])
        .current_dir(&builds)
        .env("PATH", &paths)
        .envs(gitlab);
    let out = String::from_utf8(run_ok(&mut cmd).stdout).unwrap();
    // A matrix job's name has commas, which would split the fallbacks.
    assert_eq!(
        out.trim(),
        "mr-3|main|true|fix/bug test: [linux; amd64]|main test: [linux; amd64]"
    );
    assert!(!builds.join("granary-summary.md").exists());
    // after_script runs in a new shell: the summary finds the settings in
    // the job's folder.
    let mut gitlab_vars = gitlab.to_vec();
    gitlab_vars.push(("PATH", paths.to_str().unwrap()));
    let printed = runner.script("summary.sh", &gitlab_vars);
    let kept = fs::read_to_string(builds.join("granary-summary.md")).unwrap();
    assert!(kept.contains("### granary"), "{kept}");
    assert_eq!(printed, kept);
}

/// Only the events a workflow lists write (default: pushes and pull
/// requests), and only a push of the default branch writes main: an
/// issue comment, a workflow_run or a schedule on the default branch, or a
/// tag named like it, gets neither main, nor writes, nor the signing key.
#[test]
fn only_listed_events_write_and_only_a_branch_push_writes_main() {
    let sb = Sandbox::new();
    let (secret, _) = key_pair(&sb);
    let event = r#"{"repository": {"default_branch": "main"}}"#;
    let setup = |name: &str, event_name: &str, git_ref: &str, extra: &[(&str, &str)]| {
        let mut runner = Runner::github(&sb, name, event_name, event);
        runner.vars.push(("GITHUB_REF".into(), git_ref.into()));
        let mut inputs = vec![
            ("INPUT_REMOTE", "https://cache.example"),
            ("INPUT_SIGNING_KEY", secret.as_str()),
        ];
        inputs.extend_from_slice(extra);
        runner.script("setup.sh", &inputs);
        runner.env()
    };
    let wiring = |env: &HashMap<String, String>| {
        (
            env["GRANARY_NAMESPACE"].clone(),
            env["GRANARY_READ_ONLY"].clone(),
            env.contains_key("GRANARY_SIGNING_KEY"),
        )
    };
    let push = setup("push", "push", "refs/heads/main", &[]);
    assert_eq!(wiring(&push), ("main".into(), "false".into(), true));
    for untrusted in [
        "issue_comment",
        "workflow_run",
        "schedule",
        "pull_request_target",
    ] {
        let env = setup(untrusted, untrusted, "refs/heads/main", &[]);
        let (namespace, read_only, signs) = wiring(&env);
        assert_ne!(namespace, "main", "{untrusted}");
        assert_eq!((read_only.as_str(), signs), ("true", false), "{untrusted}");
        assert_eq!(
            env["GRANARY_READ_NAMESPACES"], "main",
            "{untrusted} reads main"
        );
    }
    let tag = setup("tag", "push", "refs/tags/main", &[]);
    assert_eq!(wiring(&tag), ("tag-main".into(), "false".into(), true));
    let branch = setup("branch", "push", "refs/heads/feature/x", &[]);
    assert_eq!(wiring(&branch), ("feature-x".into(), "false".into(), true));
    // A workflow that trusts its schedules says so.
    let listed = setup(
        "listed",
        "schedule",
        "refs/heads/main",
        &[("INPUT_WRITE_EVENTS", "push, schedule")],
    );
    assert_eq!(wiring(&listed), ("main".into(), "false".into(), true));
}

/// On GitLab the job's folder (its signing key too) is gone after the
/// summary; the template asks for an ID token only in jobs that use OIDC;
/// outside GitHub and GitLab the folder is a new private one, not a name
/// others could create first.
#[test]
fn the_jobs_folder_is_private_and_its_signing_key_does_not_outlive_the_job() {
    let sb = Sandbox::new();
    let (secret, _) = key_pair(&sb);
    let builds = sb.path("builds");
    fs::create_dir_all(&builds).unwrap();
    let cache = sb.cache();
    let paths = path_with_granary();
    let gitlab = [
        ("GITLAB_CI", "true"),
        ("CI_BUILDS_DIR", builds.to_str().unwrap()),
        ("CI_JOB_ID", "43"),
        ("CI_DEFAULT_BRANCH", "main"),
        ("CI_PIPELINE_SOURCE", "push"),
        ("CI_COMMIT_BRANCH", "main"),
        ("INPUT_REMOTE", "s3://ci-cache/go"),
        ("INPUT_SIGNING_KEY", secret.as_str()),
        ("GOCACHE", cache.to_str().unwrap()),
        ("PATH", paths.to_str().unwrap()),
    ];
    let runner = Runner {
        dir: builds.clone(),
        vars: Vec::new(),
    };
    let exports = runner.script("setup.sh", &gitlab);
    assert!(
        exports.contains("export GRANARY_NAMESPACE=main"),
        "{exports}"
    );
    let folder = builds.join("granary-43");
    assert!(folder.join("signing-key").exists(), "{exports}");
    assert_eq!(
        fs::metadata(&folder).unwrap().permissions().mode() & 0o777,
        0o700
    );
    runner.script("summary.sh", &gitlab);
    assert!(!folder.exists(), "the job's folder outlived the job");

    let template = fs::read_to_string(repo_root().join("ci/granary.gitlab-ci.yml")).unwrap();
    let (plain, oidc) = template.split_once(".granary-oidc:").unwrap();
    let plain = &plain[plain.find(".granary:").unwrap()..];
    assert!(!plain.contains("id_tokens"), "{plain}");
    assert!(
        oidc.contains("id_tokens") && oidc.contains("INPUT_OIDC"),
        "{oidc}"
    );

    // Elsewhere: a new private folder each time, carried to the summary by
    // GRANARY_CI_TEMP.
    let tmp = sb.path("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let elsewhere = [
        ("TMPDIR", tmp.to_str().unwrap()),
        ("INPUT_REMOTE", "s3://ci-cache/go"),
        ("PATH", paths.to_str().unwrap()),
    ];
    let first = runner.script("setup.sh", &elsewhere);
    let second = runner.script("setup.sh", &elsewhere);
    let folder_of = |exports: &str| {
        exports
            .lines()
            .find_map(|line| line.strip_prefix("export GRANARY_CI_TEMP="))
            .unwrap_or_else(|| panic!("{exports}"))
            .to_owned()
    };
    let (one, two) = (folder_of(&first), folder_of(&second));
    assert_ne!(one, two);
    assert!(
        one.starts_with(tmp.to_str().unwrap()) && one != tmp.join("granary").display().to_string()
    );
    assert_eq!(
        fs::metadata(&one).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // A link planted where the folder would be is refused.
    let planted = sb.path("planted");
    std::os::unix::fs::symlink(&tmp, &planted).unwrap();
    let mut cmd = Command::new("bash");
    without_granary_env(&mut cmd)
        .arg(repo_root().join("ci/temp.sh"))
        .env("GRANARY_CI_TEMP", &planted);
    let refused = cmd.output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("GRANARY_CI_TEMP"));
}

/// The action gives the checkout canonical times (`granary mtimes`) unless
/// `mtimes: false`, so that go reuses test results on a fresh checkout.
#[test]
fn the_checkout_gets_canonical_times_unless_turned_off() {
    let sb = Sandbox::new();
    let workspace = sb.path("workspace");
    fs::create_dir_all(&workspace).unwrap();
    fs::write(workspace.join("data.txt"), "input\n").unwrap();
    git(&workspace, &["init", "-q"]);
    git(&workspace, &["add", "."]);
    git(&workspace, &["commit", "-q", "-m", "data"]);
    let event = r#"{"repository": {"default_branch": "main"}}"#;
    let modified = || {
        fs::metadata(workspace.join("data.txt"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let fresh = modified();
    let runner = Runner::github(&sb, "runner", "push", event);
    let workspace_var = ("GITHUB_WORKSPACE", workspace.to_str().unwrap());
    runner.script("setup.sh", &[workspace_var, ("INPUT_MTIMES", "false")]);
    assert_eq!(modified(), fresh, "mtimes: false leaves the checkout alone");
    runner.script("setup.sh", &[workspace_var]);
    let canonical = modified();
    let year_2021 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_609_459_200);
    assert!(canonical < year_2021, "{canonical:?}");
}

/// GOCACHE is one path on every runner (some analysis tools key on it),
/// but never a link or another user's folder.
#[test]
fn gocache_is_one_path_and_never_a_link() {
    let sb = Sandbox::new();
    let runner = Runner::github(&sb, "gocache", "push", "{}");
    let remote = [("INPUT_REMOTE", "http://127.0.0.1:9")];
    runner.script("setup.sh", &remote);
    assert_eq!(
        runner.env()["GOCACHE"],
        runner.dir.join("gocache").display().to_string()
    );

    let elsewhere = sb.path("someone-elses");
    fs::create_dir(&elsewhere).unwrap();
    let link = sb.path("linked-cache");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    fs::remove_file(runner.dir.join("env")).unwrap();
    runner.script(
        "setup.sh",
        &[remote[0], ("INPUT_GOCACHE", link.to_str().unwrap())],
    );
    let gocache = &runner.env()["GOCACHE"];
    assert!(
        gocache.ends_with("/go-build") && gocache.starts_with(&*runner.dir.to_string_lossy()),
        "a link is not used: {gocache}"
    );

    // Without the input: the one default path, unless it is taken.
    let default = Path::new("/tmp/granary-go-build");
    let mut cmd = Command::new("bash");
    without_granary_env(&mut cmd)
        .arg(repo_root().join("ci/setup.sh"))
        .current_dir(&runner.dir)
        .env("PATH", path_with_granary())
        .envs(runner.vars.iter().map(|(k, v)| (k, v)))
        .env("INPUT_REMOTE", "http://127.0.0.1:9");
    fs::remove_file(runner.dir.join("env")).unwrap();
    run_ok(&mut cmd);
    let taken = default.is_symlink()
        || fs::metadata(default).is_ok_and(|m| {
            std::os::unix::fs::MetadataExt::uid(&m)
                != fs::metadata(&runner.dir)
                    .map(|d| std::os::unix::fs::MetadataExt::uid(&d))
                    .unwrap()
        });
    if !taken {
        assert_eq!(runner.env()["GOCACHE"], default.display().to_string());
    }
}

/// On a Windows runner, under Git Bash, what setup.sh hands go and granary
/// through GITHUB_ENV are Windows paths (which cygpath gives; here a stand-in
/// that puts every path under C:/msys).
#[test]
fn a_windows_runner_gets_windows_paths() {
    let sb = Sandbox::new();
    let runner = Runner::github(&sb, "windows", "push", "{}");
    let tools = sb.path("git-bash");
    fs::create_dir_all(&tools).unwrap();
    let cygpath = tools.join("cygpath");
    fs::write(
        &cygpath,
        "#!/bin/sh\n[ \"$1\" = -m ] && printf 'C:/msys%s\\n' \"$2\"\n",
    )
    .unwrap();
    fs::set_permissions(&cygpath, fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::join_paths(
        [tools]
            .into_iter()
            .chain(std::env::split_paths(&path_with_granary())),
    )
    .unwrap();
    let (secret, public) = key_pair(&sb);
    runner.script(
        "setup.sh",
        &[
            ("PATH", path.to_str().unwrap()),
            ("INPUT_REMOTE", "http://127.0.0.1:9"),
            ("INPUT_SIGNING_KEY", &secret),
            ("INPUT_TRUSTED_KEYS", &public),
            ("INPUT_MTIMES", "false"),
        ],
    );
    let env = runner.env();
    let windows = |path: &Path| format!("C:/msys{}", path.display());
    assert_eq!(env["GOCACHE"], windows(&runner.dir.join("gocache")));
    assert_eq!(env["GOCACHEPROG"], format!("{} prog", windows(&granary())));
    for key in ["GRANARY_SIGNING_KEY", "GRANARY_TRUSTED_KEYS"] {
        assert!(env[key].starts_with("C:/msys/"), "{key}={}", env[key]);
    }
}
