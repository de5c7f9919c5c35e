#!/usr/bin/env bash
# Fetch the prometheus-operator CRDs the chart's optional monitoring objects need
# (ServiceMonitor, PodMonitor, PrometheusRule) from the pinned Go module and cache them
# outside the repository; print the directory holding them.
#
#   bash hack/prometheus-operator-crds.sh   # fetch if not cached, print the CRD dir
#
# The Go module github.com/prometheus-operator/prometheus-operator carries its CRDs under
# example/prometheus-operator-crd/. `go mod download` fetches the module at the pinned version
# and checks it against the pinned hash (and the Go checksum database); the three CRDs go to
# ${CONNQUOTA_CACHE:-$HOME/.cache/connquota}/crds/prometheus-operator-<version>/.
set -euo pipefail

MODULE=github.com/prometheus-operator/prometheus-operator
VERSION=v0.85.0
# `go mod download -json` reports this hash of the module zip; a different one fails the fetch.
SUM="h1:M5xLCLEoaW2IJfnuCwFzzpL+jSVQu3KGT84Pye+fW8s="
CRDS=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_podmonitors.yaml
  monitoring.coreos.com_prometheusrules.yaml)

die() { echo "prometheus-operator-crds: $*" >&2; exit 1; }

cache="${CONNQUOTA_CACHE:-$HOME/.cache/connquota}"
out="$cache/crds/prometheus-operator-$VERSION"
have=1
for f in "${CRDS[@]}"; do [[ -s "$out/$f" ]] || have=0; done
if [[ "$have" == 1 ]]; then echo "$out"; exit 0; fi

GO="${GO:-}"
if [[ -z "$GO" ]]; then
  if command -v go >/dev/null 2>&1; then GO="$(command -v go)"
  elif [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go
  else die "Go is not installed (see README); put it on PATH or set GO=/path/to/go"
  fi
fi
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

# Outside any module, so the repository's go.mod files (if any) play no part.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
info="$(cd "$tmp" && "$GO" mod download -json "$MODULE@$VERSION")" \
  || die "go mod download $MODULE@$VERSION failed: $info"
dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$info")"
sum="$(sed -n 's/^[[:space:]]*"Sum": "\(.*\)",\{0,1\}$/\1/p' <<<"$info")"
[[ "$sum" == "$SUM" ]] || die "$MODULE@$VERSION has hash '$sum', pinned '$SUM'"
[[ -d "$dir/example/prometheus-operator-crd" ]] || die "no example/prometheus-operator-crd in $dir"

mkdir -p "$out.tmp"
for f in "${CRDS[@]}"; do install -m 0644 "$dir/example/prometheus-operator-crd/$f" "$out.tmp/$f"; done
rm -rf "$out" && mv "$out.tmp" "$out"
echo "prometheus-operator-crds: cached $MODULE@$VERSION CRDs in $out" >&2
echo "$out"
