#!/usr/bin/env bash
# Install pinned real forward-proxy servers for the proxy-egress tests, without root and
# without touching the system: `apt-get download` the pinned Debian 12 packages, `dpkg -x`
# them into a cache outside the repository, check each binary runs, print the directory.
#
#   bash hack/install-proxies.sh          # install if missing, print the cache directory
#
# Layout: ${CONNQUOTA_CACHE:-$HOME/.cache/connquota}/proxies/<hash>/{bin/tinyproxy,bin/microsocks}
# (<hash> covers the pinned versions, so a new pin installs next to the old one). Idempotent:
# a complete install is left alone. The tests find it through the same command
# (connquota.testing.proxies). Both servers depend only on libc6, which the machine has; the
# script checks that the binaries start, so a missing shared library fails here, loudly.
#
#   tinyproxy  HTTP CONNECT with BasicAuth; `Bind` sets the outgoing source address
#   microsocks SOCKS5 with username/password; `-b` sets the outgoing source address
set -euo pipefail

# Debian 12 (bookworm) versions; change together with the tests if a pin moves.
TINYPROXY_VERSION="${TINYPROXY_VERSION:-1.11.1-2.1+deb12u1}"
MICROSOCKS_VERSION="${MICROSOCKS_VERSION:-1.0.3-2}"

cache="${CONNQUOTA_CACHE:-$HOME/.cache/connquota}"
hash="$(printf 'tinyproxy-bin=%s\nmicrosocks=%s\n' "$TINYPROXY_VERSION" "$MICROSOCKS_VERSION" \
  | sha256sum | cut -c1-12)"
out="$cache/proxies/$hash"

fail() { echo "install-proxies: $*" >&2; exit 1; }

check_binaries() {
  # tinyproxy -v prints its version; microsocks has no version flag, -h... exits 1 with usage,
  # so run it with a bad option and look for its usage text (proves it loads and links).
  local v
  v="$("$out/bin/tinyproxy" -v 2>&1)" || fail "$out/bin/tinyproxy -v failed: $v"
  [[ "$v" == *"tinyproxy 1.11.1"* ]] || fail "$out/bin/tinyproxy reports '$v', expected 1.11.1"
  v="$("$out/bin/microsocks" -Z 2>&1 || true)"
  [[ "$v" == *"MicroSocks"* ]] || fail "$out/bin/microsocks does not start: '${v:0:300}'"
}

if [[ -x "$out/bin/tinyproxy" && -x "$out/bin/microsocks" && -f "$out/.complete" ]]; then
  check_binaries
  echo "$out"
  exit 0
fi

command -v apt-get >/dev/null || fail "apt-get not found: this script needs a Debian 12 machine"
command -v dpkg >/dev/null || fail "dpkg not found"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt's sandbox user must be able to write the downloads
echo "install-proxies: downloading tinyproxy-bin=$TINYPROXY_VERSION microsocks=$MICROSOCKS_VERSION" >&2
(
  cd "$work"
  apt-get download -q "tinyproxy-bin=$TINYPROXY_VERSION" "microsocks=$MICROSOCKS_VERSION" >&2
) || fail "apt-get download failed (run 'apt-get update' if the lists are stale; are the pins still published?)"

root="$work/root"
mkdir -p "$root"
for deb in "$work"/*.deb; do
  dpkg -x "$deb" "$root"
done
[[ -x "$root/usr/bin/tinyproxy" ]] || fail "tinyproxy-bin did not contain usr/bin/tinyproxy"
[[ -x "$root/usr/bin/microsocks" ]] || fail "microsocks did not contain usr/bin/microsocks"

# The packages' declared dependencies: libc6 only (checked against the package itself).
for deb in "$work"/*.deb; do
  deps="$(dpkg-deb -f "$deb" Depends)"
  [[ "$deps" =~ ^libc6[[:space:]]\(\>=[^\)]*\)$ ]] \
    || fail "$(basename "$deb") now depends on '$deps': resolve those libraries here too"
done

rm -rf "$out.tmp"
mkdir -p "$out.tmp/bin"
cp "$root/usr/bin/tinyproxy" "$root/usr/bin/microsocks" "$out.tmp/bin/"
rm -rf "$out"
mv "$out.tmp" "$out"
check_binaries
touch "$out/.complete"
echo "install-proxies: installed $out/bin/tinyproxy and $out/bin/microsocks" >&2
echo "$out"
