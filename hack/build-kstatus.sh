#!/usr/bin/env bash
# Build the kstatus checker (hack/tools/kstatus: Flux's kstatus library, sigs.k8s.io/cli-utils,
# pinned in its go.mod) and cache it outside the repository; print the binary's path.
#
#   bash hack/build-kstatus.sh          # build if the module or Go changed, print the path
#
# The binary goes to ${CONNQUOTA_CACHE:-$HOME/.cache/connquota}/bin/kstatus-<hash>/kstatus.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$repo/hack/tools/kstatus"
cache="${CONNQUOTA_CACHE:-$HOME/.cache/connquota}"
GO="${GO:-$(command -v go || true)}"
[[ -n "$GO" ]] || { echo "build-kstatus: Go is not installed (see README)" >&2; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath -mod=readonly"

go_version="$("$GO" env GOVERSION)"
hash="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" <(echo "$go_version") | sha256sum | cut -c1-12)"
out="$cache/bin/kstatus-$hash"
if [[ ! -x "$out/kstatus" ]]; then
  mkdir -p "$out"
  (cd "$src" && "$GO" build -o "$out/kstatus.tmp" .)
  mv "$out/kstatus.tmp" "$out/kstatus"
  echo "build-kstatus: built $out/kstatus" >&2
fi
echo "$out/kstatus"
