#!/usr/bin/env bash
# Build the test control plane (etcd, kube-apiserver, kube-controller-manager, kubectl, helm)
# from pinned Go modules, and cache the binaries outside the repository.
#
#   bash hack/build-control-plane.sh            # build if the pins changed, print the bin dir
#   bash hack/build-control-plane.sh --print-dir  # print the bin dir of the current pins only
#   bash hack/build-control-plane.sh --force    # rebuild even when the stamp matches
#
# Pins live in hack/controlplane/pins.env and in the wrapper modules under
# hack/controlplane/{kubernetes,etcd,helm}/ (regenerate those with update-modules.sh).
# Binaries go to ${CONNQUOTA_CACHE:-$HOME/.cache/connquota}/bin/<kube version>-<pin hash>/,
# and that directory is recorded in ${CONNQUOTA_CACHE}/controlplane-bin-dir.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
modules="$repo/hack/controlplane"
cache="${CONNQUOTA_CACHE:-$HOME/.cache/connquota}"
# shellcheck source=/dev/null
source "$modules/pins.env"
# shellcheck source=lib/version-check.sh
source "$repo/hack/lib/version-check.sh"

# Bump when the way binaries are built changes (flags, ldflags): it is part of the pin hash.
BUILD_RECIPE=1

die() { echo "build-control-plane: $*" >&2; exit 1; }

force=0
print_only=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --print-dir) print_only=1 ;;
    -h|--help) sed -n '2,12p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument: $arg" ;;
  esac
done

# --- Go toolchain -----------------------------------------------------------------------
GO="${GO:-}"
if [[ -z "$GO" ]]; then
  if command -v go >/dev/null 2>&1; then GO="$(command -v go)"
  elif [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go
  else die "Go is not installed (need Go >= the 'go' line of hack/controlplane/*/go.mod); \
install it from the official Go distribution, put it on PATH or set GO=/path/to/go"
  fi
fi
export GOTOOLCHAIN=local   # never download another toolchain behind the user's back
go_have="$("$GO" env GOVERSION 2>/dev/null)" || die "'$GO' does not run"
go_have="${go_have#go}"
go_need="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$modules"/*/go.mod | sort -V | tail -1)"
oldest="$(printf '%s\n%s\n' "$go_need" "$go_have" | sort -V)"   # whole output, no `| head`
if [[ "${oldest%%$'\n'*}" != "$go_need" ]]; then
  die "Go $go_have is too old: the pinned modules need Go >= $go_need (found $GO)"
fi

# --- Pin hash and output dir -------------------------------------------------------------
pin_hash="$(
  {
    echo "recipe=$BUILD_RECIPE go=$go_have $("$GO" env GOOS GOARCH | tr '\n' ' ')"
    cat "$modules/pins.env"
    for d in kubernetes etcd helm; do cat "$modules/$d/go.mod" "$modules/$d/go.sum"; done
  } | sha256sum | cut -c1-12
)"
bindir="$cache/bin/${KUBERNETES_VERSION}-${pin_hash}"
stamp="$bindir/.stamp"
if [[ "$print_only" == 1 ]]; then echo "$bindir"; exit 0; fi

tools=(etcd kube-apiserver kube-controller-manager kubectl helm)
if [[ "$force" == 0 && -f "$stamp" ]]; then
  ok=1
  for t in "${tools[@]}"; do [[ -x "$bindir/$t" ]] || ok=0; done
  if [[ "$ok" == 1 ]]; then
    mkdir -p "$cache" && echo "$bindir" > "$cache/controlplane-bin-dir"
    echo "build-control-plane: up to date (pins unchanged): $bindir" >&2
    echo "$bindir"
    exit 0
  fi
fi

# --- Build --------------------------------------------------------------------------------
export CGO_ENABLED=0 GOFLAGS="-trimpath -mod=readonly"
jobs="${CONNQUOTA_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
mkdir -p "$cache/bin"
tmp="$(mktemp -d "$cache/bin/.build-XXXXXX")"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT

module_time() {  # build date of a module version, for reproducible version strings
  (cd "$1" && "$GO" list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' "$2")
}

start=$SECONDS
echo "build-control-plane: building into $bindir with $("$GO" version), -p $jobs" >&2

# etcd 3.6: the `etcd` main package is the root of go.etcd.io/etcd/server/v3.
(
  cd "$modules/etcd"
  "$GO" build -p "$jobs" -o "$tmp/etcd" \
    -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-${ETCD_VERSION}" \
    go.etcd.io/etcd/server/v3
)
echo "build-control-plane: etcd done after $((SECONDS - start))s" >&2

# Kubernetes: same version variables as hack/lib/version.sh sets.
kube_minor="${KUBERNETES_VERSION#v1.}"; kube_minor="${kube_minor%%.*}"
kube_date="$(module_time "$modules/kubernetes" k8s.io/kubernetes)"
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=${KUBERNETES_VERSION}"
  kube_ldflags+=" -X $pkg.gitMajor=1 -X $pkg.gitMinor=${kube_minor}"
  kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=${kube_date}"
done
(
  cd "$modules/kubernetes"
  "$GO" build -p "$jobs" -o "$tmp/" -ldflags "$kube_ldflags" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl
)
echo "build-control-plane: kubernetes done after $((SECONDS - start))s" >&2

# Helm 3: its own version plus the Kubernetes version it assumes (from its client-go).
(
  cd "$modules/helm"
  cg="$("$GO" list -m -f '{{.Version}}' k8s.io/client-go)"   # v0.34.2
  cg="${cg#v0.}"; helm_k8s_major=1; helm_k8s_minor="${cg%%.*}"
  helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
  helm_ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    helm_ldflags+=" -X $pkg.k8sVersionMajor=${helm_k8s_major} -X $pkg.k8sVersionMinor=${helm_k8s_minor}"
  done
  "$GO" build -p "$jobs" -o "$tmp/helm" -ldflags "$helm_ldflags" helm.sh/helm/v3/cmd/helm
)
echo "build-control-plane: helm done after $((SECONDS - start))s" >&2

# Smoke-check the versions before publishing the directory.
# expect_version captures each output before matching (no `| grep -q` under pipefail: SIGPIPE).
expect_version kube-apiserver line "Kubernetes ${KUBERNETES_VERSION}" "$tmp/kube-apiserver" --version \
  || die "kube-apiserver version mismatch"
expect_version etcd contains "etcd Version: ${ETCD_VERSION#v}" "$tmp/etcd" --version \
  || die "etcd version mismatch"
expect_version helm line "${HELM_VERSION}" "$tmp/helm" version --template '{{.Version}}' \
  || die "helm version mismatch"

{
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ) seconds=$((SECONDS - start)) go=$go_have hash=$pin_hash"
  cat "$modules/pins.env"
} > "$tmp/.stamp"
rm -rf "$bindir"
mv "$tmp" "$bindir"
trap - EXIT
echo "$bindir" > "$cache/controlplane-bin-dir"
echo "build-control-plane: built in $((SECONDS - start))s: $bindir" >&2
echo "$bindir"
