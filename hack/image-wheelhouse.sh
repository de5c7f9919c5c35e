#!/usr/bin/env bash
# Download the wheels requirements.lock and requirements-build.lock pin (hash-checked, binary only, as the images install
# them) into a cache directory named after the lock's hash, so tests/unit/test_images.py can
# install the images' environment into a clean virtualenv without a network.
#
#   bash hack/image-wheelhouse.sh              # download (once per lock), print the directory
#   bash hack/image-wheelhouse.sh --print-dir  # only print where it goes
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${CONNQUOTA_CACHE:-$HOME/.cache/connquota}"
lock_hash="$(cat "$repo/requirements.lock" "$repo/requirements-build.lock" | sha256sum | cut -c1-16)"
dir="$cache/wheelhouse/$lock_hash"
if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$dir"
  exit 0
fi
if [[ ! -f "$dir/.complete" ]]; then
  mkdir -p "$dir"
  "$repo/.venv/bin/pip" download --quiet --disable-pip-version-check --require-hashes \
    --only-binary=:all: --no-deps -r "$repo/requirements.lock" -r "$repo/requirements-build.lock" \
    -d "$dir"
  touch "$dir/.complete"
fi
echo "$dir"
