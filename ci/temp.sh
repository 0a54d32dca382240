#!/usr/bin/env bash
# The job's own folder for granary's CI files (settings, keys, a virtualenv):
# the runner's temporary folder on GitHub, the job's on GitLab.
set -euo pipefail
dir="${RUNNER_TEMP:-${CI_BUILDS_DIR:-${TMPDIR:-/tmp}}}/granary${CI_JOB_ID:+-$CI_JOB_ID}"
mkdir -p "$dir"
echo "$dir"
