"""Real forward-proxy processes for proxy-egress tests: tinyproxy and squid (HTTP CONNECT) and
microsocks (SOCKS5), installed by `hack/install-proxies.sh` from pinned Debian packages.

Each proxy listens on its own loopback address and binds its outgoing connections to another
(tinyproxy `Bind`, squid `tcp_outgoing_address`, microsocks `-b`), so the mock exchange sees one
source IP per proxy, the picture of a real proxy pool. `proxy_binaries()` finds (or installs)
the binaries; with `CI=true` a missing binary is an error, never a skip.

squid started as root drops to an unprivileged user (`cache_effective_user`), which then runs
its auth helper and reads its error pages and password file. The install usually sits under a
0700 home and pytest's temporary directories are 0700 too, so each squid process gets its own
run directory under the system temp dir (0755, removed when the process is killed) holding
the helper, the pages, the configuration, the password file and a log directory owned by that
user; its cache.log is appended to the process's log in `workdir` when it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / "hack" / "install-proxies.sh"


class ProxyUnavailable(RuntimeError):
    """The proxy binaries are not installed and could not be installed here."""


def proxy_binaries() -> Path:
    """The directory holding bin/tinyproxy, bin/microsocks and bin/squid (installs them when
    missing).

    `$CONNQUOTA_PROXIES_DIR` names an existing install; otherwise the install script runs
    (idempotent: it only checks the binaries when they are there).
    """
    configured = os.environ.get("CONNQUOTA_PROXIES_DIR")
    if configured:
        base = Path(configured)
    else:
        if not INSTALL_SCRIPT.exists():
            raise ProxyUnavailable(f"{INSTALL_SCRIPT} not found (not a source checkout)")
        run = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=300
        )
        if run.returncode != 0:
            raise ProxyUnavailable(f"hack/install-proxies.sh failed: {run.stderr.strip()[-600:]}")
        base = Path(run.stdout.strip().splitlines()[-1])
    for name in ("tinyproxy", "microsocks", "squid"):
        if not os.access(base / "bin" / name, os.X_OK):
            raise ProxyUnavailable(f"{base / 'bin' / name} is missing")
    return base


def free_port(host: str) -> int:
    """A TCP port free on `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def md5_crypt(password: str) -> str:
    """`password` as an MD5-crypt (`$1$`) hash, by the system's libcrypt: the library squid's
    basic_ncsa_auth links and checks the password file with, so both agree on the format."""
    try:
        lib = ctypes.CDLL("libcrypt.so.1")
    except OSError as exc:
        raise ProxyUnavailable(f"libcrypt.so.1 (squid's auth helper needs it): {exc}") from None
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = "$1$" + secrets.token_hex(4) + "$"
    hashed = lib.crypt(password.encode(), salt.encode())
    if not hashed or not hashed.startswith(salt.encode()):
        raise RuntimeError("libcrypt could not hash with MD5-crypt")
    return str(hashed.decode())


def _squid_user() -> pwd.struct_passwd | None:
    """The user squid runs as when started by root (`proxy`, Debian's, else `nobody`)."""
    if os.geteuid() != 0:
        return None
    for name in ("proxy", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ProxyUnavailable("running as root, but neither user proxy nor nobody exists for squid")


@dataclass
class ProxyProcess:
    """One proxy server process: `kind` is "http" (tinyproxy), "squid" (HTTP CONNECT as well)
    or "socks5" (microsocks)."""

    kind: str
    binaries: Path
    listen_ip: str
    egress_ip: str
    workdir: Path
    username: str | None = None
    password: str | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)
    rundir: Path | None = None

    @property
    def url(self) -> str:
        """The pool's `proxyUrl` (no credentials: those go in the Secret files)."""
        scheme = "socks5" if self.kind == "socks5" else "http"
        return f"{scheme}://{self.listen_ip}:{self.port}"

    def _squid_command(self) -> list[str]:
        """squid in the foreground on a configuration of its own: CONNECT only (to any port:
        the mock listens on high ones), Basic auth when a username is set, no cache, no DNS
        beyond a hosts file naming `localhost`, logs and pid file in its run directory."""
        user = _squid_user()
        run = Path(tempfile.mkdtemp(prefix=f"connquota-squid-{self.listen_ip}-"))
        self.rundir = run
        run.chmod(0o755)
        helper = run / "basic_ncsa_auth"
        shutil.copy2(self.binaries / "libexec" / "squid" / "basic_ncsa_auth", helper)
        shutil.copytree(self.binaries / "share" / "squid", run / "share")
        (run / "hosts").write_text("127.0.0.1 localhost\n")
        var = run / "var"
        var.mkdir()
        auth: list[str] = []
        access = ["http_access allow CONNECT"]
        if self.username is not None:
            passwd = run / "passwd"
            passwd.write_text(f"{self.username}:{md5_crypt(self.password or '')}\n")
            auth = [
                f"auth_param basic program {helper} {passwd}",
                "auth_param basic children 2 startup=1 idle=1",
                "auth_param basic realm connquota",
                "acl authed proxy_auth REQUIRED",
            ]
            access = ["http_access allow CONNECT authed"]
        lines = [
            f"http_port {self.listen_ip}:{self.port}",
            f"tcp_outgoing_address {self.egress_ip}",
            *auth,
            "acl CONNECT method CONNECT",
            "http_access deny !CONNECT",
            *access,
            "http_access deny all",
            "cache deny all",
            "cache_mem 0 MB",
            f"pid_filename {var / 'squid.pid'}",
            f"cache_log {var / 'cache.log'}",
            f"access_log stdio:{var / 'access.log'}",
            f"coredump_dir {var}",
            "netdb_filename none",
            f"mime_table {run / 'share' / 'mime.conf'}",
            f"icon_directory {run / 'share' / 'icons'}",
            f"error_directory {run / 'share' / 'errors' / 'en'}",
            # Checked to exist at start-up, never run without a cache_dir.
            f"unlinkd_program {self.binaries / 'libexec' / 'squid' / 'unlinkd'}",
            f"hosts_file {run / 'hosts'}",
            "pinger_enable off",
            "via off",
            "forwarded_for delete",
            "max_filedescriptors 4096",
            "shutdown_lifetime 0 seconds",
        ]
        if user is not None:
            lines.append(f"cache_effective_user {user.pw_name}")
            os.chown(var, user.pw_uid, user.pw_gid)
        conf = run / "squid.conf"
        conf.write_text("\n".join(lines) + "\n")
        for path in [run, *run.rglob("*")]:
            if path != var:
                path.chmod(0o755 if path.is_dir() or path == helper else 0o644)
        return [str(self.binaries / "bin" / "squid"), "-N", "-d", "1", "-f", str(conf)]

    def _command(self) -> list[str]:
        if self.kind == "socks5":
            cmd = [str(self.binaries / "bin" / "microsocks"), "-i", self.listen_ip]
            cmd += ["-p", str(self.port), "-b", self.egress_ip]
            if self.username is not None:
                cmd += ["-u", self.username, "-P", self.password or ""]
            return cmd
        if self.kind == "squid":
            return self._squid_command()
        conf = self.workdir / f"tinyproxy-{self.listen_ip}.conf"
        lines = [
            f"Port {self.port}",
            f"Listen {self.listen_ip}",
            f"Bind {self.egress_ip}",
            "Timeout 600",
            "MaxClients 1000",
            "LogLevel Notice",
            "Allow 127.0.0.0/8",
            "DisableViaHeader Yes",
        ]
        if self.username is not None:
            lines.append(f"BasicAuth {self.username} {self.password}")
        conf.write_text("\n".join(lines) + "\n")
        return [str(self.binaries / "bin" / "tinyproxy"), "-d", "-c", str(conf)]

    async def start(self, timeout_s: float = 10.0) -> None:
        """Start the process and wait until it accepts TCP connections (bounded)."""
        if self.port == 0:
            self.port = free_port(self.listen_ip)
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"{self.kind}-{self.listen_ip}.log", "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(self._command(), stdout=log, stderr=log)
        except BaseException:
            self._remove_rundir()
            raise
        finally:
            log.close()
        self.starts += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                self._remove_rundir()
                raise RuntimeError(f"{self.kind} proxy exited {code} at start (see its log)")
            try:
                _, writer = await asyncio.open_connection(self.listen_ip, self.port)
            except OSError:
                if loop.time() > deadline:
                    raise TimeoutError(f"{self.url} did not listen within {timeout_s} s") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return

    async def kill(self) -> None:
        """SIGKILL the process (every tunnel through it drops) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait, 10)
        self.proc = None
        self._remove_rundir()

    def _remove_rundir(self) -> None:
        """squid's run directory goes; its cache.log is kept in the process's log."""
        if self.rundir is None:
            return
        cache_log = self.rundir / "var" / "cache.log"
        if cache_log.exists():
            with open(self.workdir / f"{self.kind}-{self.listen_ip}.log", "ab") as log:
                log.write(b"--- squid cache.log ---\n" + cache_log.read_bytes())
        shutil.rmtree(self.rundir, ignore_errors=True)
        self.rundir = None

    def alive(self) -> bool:
        """Whether the process runs."""
        return self.proc is not None and self.proc.poll() is None
