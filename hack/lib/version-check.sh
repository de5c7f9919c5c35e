# shellcheck shell=bash
# Version checks for freshly built binaries, sourced by hack/build-control-plane.sh.
#
# Never pipe a tool's output into `grep -q` (or `head`) under `set -o pipefail`: grep exits at
# the first match, the tool's next write gets SIGPIPE (exit 141) and pipefail turns a correct
# binary into a failed build. These functions capture the whole output first, then match in
# bash itself, so there is no pipe at all.

# expect_version <label> <line|contains> <expected> <command...>
#   Runs the command, captures stdout and stderr, and succeeds when one line of the output is
#   exactly <expected> (line) or the output contains <expected> (contains). Otherwise prints
#   what the command reported to stderr and returns 1.
expect_version() {
  local label="$1" mode="$2" expected="$3"
  shift 3
  local out rc=0
  out="$("$@" 2>&1)" || rc=$?
  if [[ "$rc" != 0 ]]; then
    echo "$label: '$*' exited $rc: $out" >&2
    return 1
  fi
  case "$mode" in
    line) [[ $'\n'"$out"$'\n' == *$'\n'"$expected"$'\n'* ]] && return 0 ;;
    contains) [[ "$out" == *"$expected"* ]] && return 0 ;;
    *) echo "expect_version: unknown mode '$mode' (line or contains)" >&2; return 2 ;;
  esac
  echo "$label: '$*' reports '${out:0:300}', expected ${mode} '${expected}'" >&2
  return 1
}
