#!/usr/bin/env bash
# Run one pytest tier and turn pytest's exit codes into a tier result (docs/testing.md).
#
#   bash hack/pytest-tier.sh <tier> <empty-ok|empty-fails> <pytest args...>
#
# pytest exits 5 when the selection holds no test. For a tier that must never be empty (soak:
# CI would silently lose the long runs) that is a failure; for a tier that may be empty
# (serial, chaos before its first test) it is a pass, said out loud. Every other non-zero
# exit code is passed on unchanged.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tier="${1:?tier name}"
empty="${2:?empty-ok or empty-fails}"
shift 2
pytest="${PYTEST:-$repo/.venv/bin/pytest}"

start=$SECONDS
"$pytest" "$@"
rc=$?
took=$((SECONDS - start))
if [[ "$rc" == 5 ]]; then
  if [[ "$empty" == empty-ok ]]; then
    echo "pytest-tier: $tier: no test selected (allowed for this tier) after ${took}s" >&2
    exit 0
  fi
  echo "pytest-tier: $tier: FAILED: no test selected (pytest exit 5); the tier must not be empty" >&2
  exit 5
fi
if [[ "$rc" == 0 ]]; then
  echo "pytest-tier: $tier: passed in ${took}s" >&2
else
  echo "pytest-tier: $tier: FAILED (pytest exit $rc) after ${took}s" >&2
fi
exit "$rc"
