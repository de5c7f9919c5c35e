#!/usr/bin/env bash
# Build promtool (Prometheus' rule checker and unit-test runner) from the Go module of a pinned
# Prometheus release and cache it outside the repository; print the binary's path.
#
#   bash hack/build-promtool.sh          # build if the version or Go changed, print the path
#
# The binary goes to ${CONNQUOTA_CACHE:-$HOME/.cache/connquota}/bin/promtool-<hash>/promtool.
# The tests use it to check charts/connquota/files/prometheus/rules.yaml (`promtool check rules`)
# and to run tests/data/prometheus/*.test.yaml (`promtool test rules`). The first build compiles
# Prometheus' rule engine: about 10 minutes on two cores.
set -euo pipefail

# Prometheus 3.x publishes its Go module as v0.3xx.y (v0.316.0 is Prometheus 3.16.0).
PROMETHEUS_MODULE_VERSION="${PROMETHEUS_MODULE_VERSION:-v0.316.0}"

cache="${CONNQUOTA_CACHE:-$HOME/.cache/connquota}"
GO="${GO:-$(command -v go || true)}"
[[ -n "$GO" ]] || { echo "build-promtool: Go is not installed (see README)" >&2; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false"

go_version="$("$GO" env GOVERSION)"
hash="$(printf '%s\n%s\n' "$PROMETHEUS_MODULE_VERSION" "$go_version" | sha256sum | cut -c1-12)"
out="$cache/bin/promtool-$hash"
if [[ ! -x "$out/promtool" ]]; then
  mkdir -p "$out/gobin"
  echo "build-promtool: building promtool $PROMETHEUS_MODULE_VERSION with $go_version (first time: ~10 min)" >&2
  GOBIN="$out/gobin" "$GO" install \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION"
  mv "$out/gobin/promtool" "$out/promtool"
  rmdir "$out/gobin"
  version="$("$out/promtool" --version 2>&1 || true)"
  echo "build-promtool: built $out/promtool: ${version%%$'\n'*}" >&2
fi
echo "$out/promtool"
