#!/usr/bin/env bash
# The job summary: `granary stats --markdown` of the runs since ci/setup.sh
# ran, appended to $GITHUB_STEP_SUMMARY on GitHub; elsewhere printed and kept
# in granary-summary.md (GitLab: an artifact, or a merge request note).
set -euo pipefail
env_file="$(bash "$(dirname "$0")/temp.sh")/env"
# GitLab runs after_script in a new shell: the settings come from the file.
# shellcheck disable=SC1090
[ -f "$env_file" ] && source "$env_file"
granary="${GOCACHEPROG%% prog*}"
summary="$("${granary:-granary}" stats --markdown --since "${GRANARY_STATS_SINCE:-1h}")"
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    echo "$summary" >>"$GITHUB_STEP_SUMMARY"
else
    echo "$summary" | tee granary-summary.md
fi
# The job is over: its signing key goes. GitHub empties RUNNER_TEMP after
# each job; other runners (GitLab's builds folder) may keep the job's
# folder, so the whole of it goes there.
temp="$(dirname "$env_file")"
rm -f "$temp/signing-key"
[ -z "${RUNNER_TEMP:-}" ] && rm -rf "$temp"
exit 0
