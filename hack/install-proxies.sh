#!/usr/bin/env bash
# Install pinned real forward-proxy servers for the proxy-egress tests, without root and
# without touching the system: `apt-get download` the pinned Debian 12 packages, `dpkg -x`
# them into a cache outside the repository, check each binary runs, print the directory.
#
#   bash hack/install-proxies.sh          # install if missing, print the cache directory
#
# Layout: ${CONNQUOTA_CACHE:-$HOME/.cache/connquota}/proxies/<hash>/
#   bin/tinyproxy bin/microsocks    the packages' binaries
#   bin/squid                       a wrapper: exec sbin/squid with LD_LIBRARY_PATH=lib
#   sbin/squid                      squid's binary
#   lib/                            squid's libraries the machine lacks (pinned .debs below)
#   libexec/squid/basic_ncsa_auth   squid's Basic-auth helper (htpasswd-style file), unlinkd
#   share/squid/{mime.conf,icons/,errors/en/}   squid-common, squid-langpack (English)
# (<hash> covers the pinned versions and the layout, so a new pin installs next to the old
# one). Idempotent: a complete install is left alone (its binaries are checked again). The
# tests find it through the same command (connquota.testing.proxies). tinyproxy and
# microsocks depend only on libc6; squid's libraries are either on the machine (checked) or
# extracted from pinned .debs into lib/. The script runs every binary (`squid -v`, the auth
# helper on known passwords), so a missing shared library fails here, loudly.
#
#   tinyproxy  HTTP CONNECT with BasicAuth; `Bind` sets the outgoing source address
#   squid      HTTP CONNECT with Basic auth (basic_ncsa_auth); `tcp_outgoing_address`
#   microsocks SOCKS5 with username/password; `-b` sets the outgoing source address
set -euo pipefail

# Debian 12 (bookworm) versions; change together with the tests if a pin moves.
TINYPROXY_VERSION="${TINYPROXY_VERSION:-1.11.1-2.1+deb12u1}"
MICROSOCKS_VERSION="${MICROSOCKS_VERSION:-1.0.3-2}"
SQUID_VERSION="${SQUID_VERSION:-5.7-2+deb12u6}"  # squid and squid-common (bookworm-security)
# squid's error pages and the libraries squid links that a minimal Debian 12 lacks. The other
# libraries in squid's Depends (gnutls, krb5, ldap, sasl, pam, systemd, cap, nettle, crypt ...)
# must be on the machine: `squid -v` fails below if one is not.
SQUID_EXTRA=(
  "squid-langpack=20220130-1"
  "libecap3=1.0.1-3.4"
  "libltdl7=2.4.7-7~deb12u1"
  "libnetfilter-conntrack3=1.0.9-3"
  "libnfnetlink0=1.0.2-2"
  "libmnl0=1.0.4-3"
)
PACKAGES=(
  "tinyproxy-bin=$TINYPROXY_VERSION"
  "microsocks=$MICROSOCKS_VERSION"
  "squid=$SQUID_VERSION"
  "squid-common=$SQUID_VERSION"
  "${SQUID_EXTRA[@]}"
)

cache="${CONNQUOTA_CACHE:-$HOME/.cache/connquota}"
# LAYOUT changes when this script installs different files from the same packages.
LAYOUT=2
hash="$(printf '%s\n' "layout=$LAYOUT" "${PACKAGES[@]}" | sha256sum | cut -c1-12)"
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
  v="$("$out/bin/squid" -v 2>&1)" || fail "$out/bin/squid -v failed (a library?): ${v:0:600}"
  [[ "$v" == *"Squid Cache: Version 5.7"* ]] \
    || fail "$out/bin/squid reports '${v:0:300}', expected 5.7"
  # The auth helper on known entries: MD5-crypt as the tests write it (libcrypt, like
  # `openssl passwd -1 -salt cqcheck check-pass`) and Apache MD5 (`-apr1`). "OK" proves it
  # links, reads the file and checks a password; a wrong one must be refused.
  local pw
  pw="$(mktemp)"
  printf '%s\n' 'md5:$1$cqcheck$CfV.20HhQPzJCZCN5Lx3p1' \
    'apr1:$apr1$cqcheck$qfUk5zZ7ejPm/iF9iG9qX/' >"$pw"
  v="$(printf 'md5 check-pass\napr1 check-pass\nmd5 wrong-pass\n' \
    | "$out/libexec/squid/basic_ncsa_auth" "$pw" 2>&1 || true)"
  rm -f "$pw"
  [[ "$v" == OK*$'\n'OK*$'\n'ERR* ]] \
    || fail "$out/libexec/squid/basic_ncsa_auth does not work: '${v:0:300}'"
  for f in libexec/squid/unlinkd share/squid/mime.conf \
    share/squid/errors/en/ERR_CACHE_ACCESS_DENIED; do
    [[ -f "$out/$f" ]] || fail "$out/$f is missing"
  done
}

if [[ -x "$out/bin/tinyproxy" && -x "$out/bin/microsocks" && -x "$out/bin/squid" \
  && -f "$out/.complete" ]]; then
  check_binaries
  echo "$out"
  exit 0
fi

command -v apt-get >/dev/null || fail "apt-get not found: this script needs a Debian 12 machine"
command -v dpkg >/dev/null || fail "dpkg not found"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt's sandbox user must be able to write the downloads
echo "install-proxies: downloading ${PACKAGES[*]}" >&2
(
  cd "$work"
  apt-get download -q "${PACKAGES[@]}" >&2
) || fail "apt-get download failed (run 'apt-get update' if the lists are stale; are the pins still published?)"

[[ "$(find "$work" -maxdepth 1 -name '*.deb' | wc -l)" == "${#PACKAGES[@]}" ]] \
  || fail "apt-get download did not fetch all of ${PACKAGES[*]}"

root="$work/root"
mkdir -p "$root"
for deb in "$work"/*.deb; do
  dpkg -x "$deb" "$root"
done
[[ -x "$root/usr/bin/tinyproxy" ]] || fail "tinyproxy-bin did not contain usr/bin/tinyproxy"
[[ -x "$root/usr/bin/microsocks" ]] || fail "microsocks did not contain usr/bin/microsocks"
[[ -x "$root/usr/sbin/squid" ]] || fail "squid did not contain usr/sbin/squid"
[[ -x "$root/usr/lib/squid/basic_ncsa_auth" ]] || fail "squid did not contain basic_ncsa_auth"
[[ -f "$root/usr/share/squid-langpack/en/ERR_CACHE_ACCESS_DENIED" ]] \
  || fail "squid-langpack did not contain its English error pages"

# tinyproxy's and microsocks' declared dependencies: libc6 only (checked against the package).
for deb in "$work"/tinyproxy-bin_*.deb "$work"/microsocks_*.deb; do
  deps="$(dpkg-deb -f "$deb" Depends)"
  [[ "$deps" =~ ^libc6[[:space:]]\(\>=[^\)]*\)$ ]] \
    || fail "$(basename "$deb") now depends on '$deps': resolve those libraries here too"
done

rm -rf "$out.tmp"
mkdir -p "$out.tmp/bin" "$out.tmp/sbin" "$out.tmp/lib" "$out.tmp/libexec/squid" \
  "$out.tmp/share/squid/errors"
cp "$root/usr/bin/tinyproxy" "$root/usr/bin/microsocks" "$out.tmp/bin/"
cp "$root/usr/sbin/squid" "$out.tmp/sbin/"
# unlinkd: squid checks it exists at start-up (never runs it without a cache_dir).
cp "$root/usr/lib/squid/basic_ncsa_auth" "$root/usr/lib/squid/unlinkd" \
  "$out.tmp/libexec/squid/"
cp -a "$root"/usr/lib/x86_64-linux-gnu/*.so* "$out.tmp/lib/"
cp -a "$root/usr/share/squid/mime.conf" "$root/usr/share/squid/icons" "$out.tmp/share/squid/"
cp -a "$root/usr/share/squid-langpack/en" "$out.tmp/share/squid/errors/"
cat >"$out.tmp/bin/squid" <<'WRAPPER'
#!/bin/sh
# squid with the libraries install-proxies.sh extracted next to it (exec: the pid is squid's).
here="$(cd "$(dirname "$0")/.." && pwd)"
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
exec "$here/sbin/squid" "$@"
WRAPPER
chmod 755 "$out.tmp/bin/squid"
# Readable by all: squid, started as root, drops to an unprivileged user that reads its helper
# and pages (connquota.testing.proxies copies those into a world-readable run directory, since
# the cache usually sits under a 0700 home).
chmod -R a+rX "$out.tmp"
rm -rf "$out"
mv "$out.tmp" "$out"
check_binaries
touch "$out/.complete"
echo "install-proxies: installed tinyproxy, microsocks and squid in $out" >&2
echo "$out"
