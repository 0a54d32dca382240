#!/usr/bin/env bash
# The job's own folder for granary's CI files (settings, keys, a virtualenv):
# the one setup.sh chose (GRANARY_CI_TEMP), else the runner's temporary
# folder on GitHub, the job's on GitLab, and elsewhere a new folder of
# mktemp's: never a name others could guess and create first. The folder
# must be a real directory of this user's, private to it.
set -euo pipefail
if [ -n "${GRANARY_CI_TEMP:-}" ]; then
    dir="$GRANARY_CI_TEMP"
elif [ -n "${RUNNER_TEMP:-}" ]; then
    dir="$RUNNER_TEMP/granary"
elif [ -n "${CI_BUILDS_DIR:-}" ] && [ -n "${CI_JOB_ID:-}" ]; then
    dir="$CI_BUILDS_DIR/granary-$CI_JOB_ID"
else
    dir="$(mktemp -d "${TMPDIR:-/tmp}/granary.XXXXXXXXXX")"
fi
if [ -L "$dir" ] || ! mkdir -p -m 700 "$dir" || [ ! -O "$dir" ]; then
    echo "granary: $dir is not a folder of this job's own; set GRANARY_CI_TEMP to one" >&2
    exit 1
fi
chmod 700 "$dir"
echo "$dir"
