#!/usr/bin/env bash
# Wires granary into a CI job: GOCACHEPROG, the remote, the namespace the
# job writes and those it reads, the scope of its manifests, read-only for
# pull requests from forks, trusted and signing keys, and the time the job
# started (for the summary). Used by action.yml (GitHub Actions) and
# ci/granary.gitlab-ci.yml (GitLab CI).
#
# Inputs are variables (GitHub passes the action's inputs so):
#   INPUT_REMOTE            the remote URL (s3://, gs://, az://, http(s)://, grpc(s)://)
#   INPUT_NAMESPACE         the namespace to write [default: main for a push (or a
#                           write event below) to the default branch, pr-N / mr-N for
#                           pull and merge requests, tag-NAME for tags, else the
#                           branch's name]
#   INPUT_WRITE_EVENTS      comma-separated events whose jobs may write; the others
#                           only read and get no signing key [default: push and
#                           pull_request on GitHub, push and merge_request_event
#                           (CI_PIPELINE_SOURCE) on GitLab]. issue_comment,
#                           workflow_run, schedule and the like run code that a push
#                           did not vet, or on a ref they do not own: list them only
#                           if you trust them to write main.
#   INPUT_READ_NAMESPACES   comma-separated namespaces to read too, or none
#                           [default (empty or auto): main, except on the default branch]
#   INPUT_FORKS_READ_ONLY   true: pull requests from forks never write [default: true]
#   INPUT_READ_ONLY         true: this job never writes [default: false]
#   INPUT_TRUSTED_KEYS      public keys (ed25519:...), one per line: only records they
#                           signed are used
#   INPUT_SIGNING_KEY       a secret key (ed25519-secret:...) that signs what this job
#                           writes; ignored when the job is read-only
#   INPUT_OIDC              true: show the cache server the job's OIDC ID token instead
#                           of a stored token (GitHub: the job needs `permissions:
#                           id-token: write`; GitLab: the template's id_tokens: entry)
#                           [default: false]
#   INPUT_OIDC_AUDIENCE     the audience GitHub's ID token is asked for [default: granary]
#   INPUT_PACKAGE           what `pip install` installs when granary is not on PATH
#                           [default: granary-cache]
#   INPUT_MTIMES            true: give the checkout's tracked files times derived from
#                           their content (`granary mtimes`), so that go reuses test
#                           results on a fresh checkout [default: true]
#   INPUT_DETACH            true: each go command exits without waiting for its uploads
#                           and manifest, which finish in the background; the summary
#                           (ci/summary.sh) waits for them [default: true]
#   INPUT_JOB               names this job's manifests, so that the jobs of one branch
#                           that run side by side do not replace each other's; jobs given
#                           one name share theirs [default: the job's ID, GITHUB_JOB on
#                           GitHub, CI_JOB_NAME on GitLab]
#   INPUT_GOCACHE           GOCACHE, the local tier: one path on every runner, since
#                           some analysis tools key on it [default: /tmp/granary-go-build;
#                           a folder there that another user owns, or a link, is not
#                           used: then the job's private folder]
#
# On GitHub it appends to $GITHUB_ENV and $GITHUB_PATH; elsewhere (GitLab) it
# prints `export` lines to evaluate: eval "$(bash ci/setup.sh)". Either way it
# keeps them in $temp/env too, for ci/summary.sh in a later shell.
set -euo pipefail

temp="$(bash "$(dirname "$0")/temp.sh")"
mkdir -p "$temp"
settings=()
set_var() { settings+=("$1=$2"); }
# A path as the job's programs take it. Under Git Bash (Windows runners)
# go and granary are Windows programs, and what goes to GITHUB_ENV is not
# translated for them: C:/Users/... rather than /c/Users/....
native() {
    if command -v cygpath >/dev/null; then cygpath -m "$1"; else printf '%s' "$1"; fi
}
# Windows runners call Python `python`, not `python3`.
python="$(command -v python3 || command -v python || echo python3)"

# granary itself: the one on PATH, else a wheel into a virtualenv (there
# are wheels for Linux, macOS and Windows; a Windows virtualenv keeps its
# programs in Scripts/).
if ! granary="$(command -v granary)"; then
    "$python" -m venv "$temp/venv"
    bin="$temp/venv/bin"
    [ -d "$temp/venv/Scripts" ] && bin="$temp/venv/Scripts"
    "$bin/pip" install --quiet --disable-pip-version-check "${INPUT_PACKAGE:-granary-cache}"
    granary="$bin/granary"
    if [ -n "${GITHUB_PATH:-}" ]; then echo "$(native "$bin")" >>"$GITHUB_PATH"; fi
fi
set_var GOCACHEPROG "$(native "$granary") prog"

# GOCACHE at one path on every runner. go makes the folder; one that is
# already there must be this user's own, not a link: another user's could
# hand this job outputs it did not build.
gocache="${INPUT_GOCACHE:-/tmp/granary-go-build}"
if [ -L "$gocache" ] || { [ -e "$gocache" ] && [ ! -O "$gocache" ]; }; then
    echo "granary: $gocache is a link or another user's; GOCACHE is $temp/go-build instead \
(set the gocache input to a folder of this user's)" >&2
    gocache="$temp/go-build"
fi
set_var GOCACHE "$(native "$gocache")"

# go keys test results on the times of the files tests read; a fresh
# checkout's are new. Canonical times make them the same on every runner.
if [ "${INPUT_MTIMES:-true}" = true ]; then
    workspace="${GITHUB_WORKSPACE:-${CI_PROJECT_DIR:-$PWD}}"
    if git -C "$workspace" rev-parse --git-dir >/dev/null 2>&1; then
        "$granary" mtimes "$workspace" >&2 ||
            echo "granary: the checkout keeps its times; test results will not be reused" >&2
    else
        echo "granary: $workspace is no git checkout (yet): check out before this step, or \
test results will not be reused" >&2
    fi
fi

# A namespace name: letters, digits, `.`, `_` and `-`, at most 64.
namespace_of() { printf '%s' "$1" | tr -c 'A-Za-z0-9._-' '-' | sed 's/^\.*//' | cut -c1-64; }

# What kind of run this is, from the CI system's own variables: the event,
# the branch or tag it runs on, the pull or merge request.
default_branch="" branch="" tag="" request="" fork=false event_name="" write_events=""
if [ -n "${GITHUB_ACTIONS:-}" ]; then
    event_name="${GITHUB_EVENT_NAME:-}"
    write_events="push,pull_request"
    event="${GITHUB_EVENT_PATH:-/dev/null}"
    json() { "$python" -c 'import json, sys
try:
    data = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    data = {}
for key in sys.argv[2].split("."):
    data = data.get(key) if isinstance(data, dict) else None
print("" if data is None else data)' "$event" "$1"; }
    default_branch="$(json repository.default_branch)"
    case "${GITHUB_EVENT_NAME:-}" in
    pull_request | pull_request_target)
        request="pr-$(json pull_request.number)"
        branch="${GITHUB_HEAD_REF:-$(json pull_request.head.ref)}"
        [ "$(json pull_request.head.repo.full_name)" != "${GITHUB_REPOSITORY:-}" ] && fork=true
        ;;
    *)
        # The ref's kind from the ref itself: a tag named like the default
        # branch is still a tag.
        case "${GITHUB_REF:-}" in
        refs/heads/*) branch="${GITHUB_REF#refs/heads/}" ;;
        refs/tags/*) tag="${GITHUB_REF#refs/tags/}" ;;
        "") case "${GITHUB_REF_TYPE:-branch}" in
            tag) tag="${GITHUB_REF_NAME:-}" ;;
            *) branch="${GITHUB_REF_NAME:-}" ;;
            esac ;;
        esac
        ;;
    esac
elif [ -n "${GITLAB_CI:-}" ]; then
    event_name="${CI_PIPELINE_SOURCE:-}"
    write_events="push,merge_request_event"
    default_branch="${CI_DEFAULT_BRANCH:-}"
    if [ -n "${CI_MERGE_REQUEST_IID:-}" ]; then
        request="mr-$CI_MERGE_REQUEST_IID"
        branch="${CI_MERGE_REQUEST_SOURCE_BRANCH_NAME:-}"
        [ "${CI_MERGE_REQUEST_SOURCE_PROJECT_ID:-}" != "${CI_MERGE_REQUEST_PROJECT_ID:-}" ] && fork=true
    elif [ -n "${CI_COMMIT_TAG:-}" ]; then
        tag="$CI_COMMIT_TAG"
    else
        branch="${CI_COMMIT_BRANCH:-}"
    fi
fi
write_events="${INPUT_WRITE_EVENTS:-$write_events}"

# Whether this job's event is one that may write; outside GitHub and GitLab
# there is no event to judge, and the job writes unless told not to.
may_write=true
if [ -n "$event_name$write_events" ]; then
    case ",${write_events// /}," in
    *",$event_name,"*) ;;
    *) may_write=false ;;
    esac
fi
on_default=false
[ -z "$request" ] && [ -n "$branch" ] && [ "$branch" = "$default_branch" ] && $may_write &&
    on_default=true
if [ -n "${INPUT_NAMESPACE:-}" ]; then
    namespace="$INPUT_NAMESPACE"
elif $on_default; then
    namespace=main
elif [ -n "$request" ]; then
    namespace="$request"
elif [ -n "$tag" ]; then
    namespace="$(namespace_of "tag-$tag")"
else
    namespace="$(namespace_of "${branch:-ci}")"
    # Only a trusted event on the default branch writes main.
    [ "$namespace" = main ] && ! $on_default && namespace="$(namespace_of "${event_name:-ci}-main")"
fi
case "${INPUT_READ_NAMESPACES:-auto}" in
auto) if [ "$namespace" = main ]; then read_namespaces=""; else read_namespaces=main; fi ;;
none) read_namespaces="" ;;
*) read_namespaces="$INPUT_READ_NAMESPACES" ;;
esac
read_only=false
[ "${INPUT_READ_ONLY:-false}" = true ] && read_only=true
$may_write || read_only=true
[ "$fork" = true ] && [ "${INPUT_FORKS_READ_ONLY:-true}" = true ] && read_only=true
oidc=""
if [ "${INPUT_OIDC:-false}" = true ]; then
    if [ -n "${GITLAB_CI:-}" ]; then
        oidc=gitlab
    elif [ -n "${ACTIONS_ID_TOKEN_REQUEST_URL:-}" ]; then
        oidc=github
    else
        # Pull requests from forks never get an ID token: they read, as
        # anonymous clients, if the server lets them.
        echo "granary: this job has no ID token (forks' pull requests get none; other jobs need \
permissions: id-token: write); it reads without one and writes nothing" >&2
        read_only=true
    fi
fi

if [ -n "${INPUT_REMOTE:-}" ]; then
    set_var GRANARY_REMOTE "$INPUT_REMOTE"
    set_var GRANARY_NAMESPACE "$namespace"
    set_var GRANARY_READ_NAMESPACES "$read_namespaces"
    set_var GRANARY_READ_ONLY "$read_only"
    set_var GRANARY_DETACH "${INPUT_DETACH:-true}"
    # Manifests per branch and job: the jobs of a workflow run side by side,
    # and one's manifest would replace another's. A new branch starts from
    # the same job's on the default branch. (Git forbids spaces in branch
    # names, so the two parts never run together.)
    # Commas would split the fallback's list: GitLab names a matrix's jobs
    # `test: [linux, amd64]`.
    job="${INPUT_JOB:-${GITHUB_JOB:-${CI_JOB_NAME:-}}}"
    job="${job//,/;}"
    [ -n "$branch$tag" ] && set_var GRANARY_SCOPE "${branch:-$tag}${job:+ $job}"
    [ -n "$default_branch" ] && set_var GRANARY_SCOPE_FALLBACK "$default_branch${job:+ $job}"
    if [ -n "$oidc" ]; then
        set_var GRANARY_OIDC "$oidc"
        [ "$oidc" = github ] && set_var GRANARY_OIDC_AUDIENCE "${INPUT_OIDC_AUDIENCE:-granary}"
    fi
fi
if [ -n "${INPUT_TRUSTED_KEYS:-}" ]; then
    printf '%s\n' "$INPUT_TRUSTED_KEYS" >"$temp/trusted-keys"
    set_var GRANARY_TRUSTED_KEYS "$(native "$temp/trusted-keys")"
fi
if [ -n "${INPUT_SIGNING_KEY:-}" ] && ! $read_only; then
    (umask 077 && printf '%s\n' "$INPUT_SIGNING_KEY" >"$temp/signing-key")
    set_var GRANARY_SIGNING_KEY "$(native "$temp/signing-key")"
fi
# The summary counts the runs since now, and finds the folder (and removes
# the signing key from it) by this.
set_var GRANARY_STATS_SINCE "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
set_var GRANARY_CI_TEMP "$temp"

: >"$temp/env"
for setting in "${settings[@]}"; do
    line="$(printf 'export %s=%q' "${setting%%=*}" "${setting#*=}")"
    echo "$line" >>"$temp/env"
    if [ -n "${GITHUB_ENV:-}" ]; then
        echo "$setting" >>"$GITHUB_ENV"
    else
        echo "$line"
    fi
done
why=""
$may_write || why=" (event ${event_name:-none} is not one of write-events: ${write_events})"
echo "granary: namespace ${namespace}, reads ${read_namespaces:-no other}, read-only ${read_only}${why}" >&2
