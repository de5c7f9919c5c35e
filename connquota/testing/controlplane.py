"""A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) on loopback.

The binaries are built from pinned Go modules by ``hack/build-control-plane.sh`` and cached
outside the repository; :func:`find_binaries` locates them. :func:`start_control_plane` starts
the three processes on free ports of 127.0.0.1 with freshly generated certificates and a
service-account signing key, waits until they are healthy (polling, with a deadline), and
returns a :class:`ControlPlane` whose :meth:`ControlPlane.stop` stops exactly those processes
and deletes every file they wrote.

Nothing here talks to anything but 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from connquota.testing.tlsca import TestCA, pem_key

BIN_DIR_ENV = "CONNQUOTA_CONTROLPLANE_BIN"
CACHE_ENV = "CONNQUOTA_CACHE"
TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")
BUILD_HINT = "run `bash hack/build-control-plane.sh` (or `make controlplane`)"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"


AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
"""
"""Every request at level Metadata, once (when the response is complete)."""


class ControlPlaneError(RuntimeError):
    """The control plane could not be found, started or stopped; the message says why."""


class ControlPlaneUnavailable(ControlPlaneError):
    """The control plane binaries are missing: build them with hack/build-control-plane.sh."""


def cache_dir() -> Path:
    """The directory the build script caches binaries in (``$CONNQUOTA_CACHE`` or default)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "connquota"


def find_binaries(expected_dir: Path | None = None) -> Path:
    """Return the directory holding etcd, kube-apiserver, kube-controller-manager, kubectl, helm.

    ``$CONNQUOTA_CONTROLPLANE_BIN`` wins; otherwise ``expected_dir`` (the directory the build
    script would use for the current pins) when given, else the directory the build script
    last recorded in ``<cache>/controlplane-bin-dir``. Raises :class:`ControlPlaneUnavailable`
    with instructions when a binary is missing.
    """
    env = os.environ.get(BIN_DIR_ENV)
    if env:
        candidate, origin = Path(env), f"${BIN_DIR_ENV}"
    elif expected_dir is not None:
        candidate, origin = expected_dir, "the current pins (hack/controlplane/)"
    else:
        record = cache_dir() / "controlplane-bin-dir"
        if not record.is_file():
            raise ControlPlaneUnavailable(f"no control plane has been built yet: {BUILD_HINT}")
        candidate, origin = Path(record.read_text().strip()), str(record)
    missing = [t for t in TOOLS if not os.access(candidate / t, os.X_OK)]
    if missing:
        raise ControlPlaneUnavailable(
            f"{', '.join(missing)} missing in {candidate} (from {origin}): {BUILD_HINT}"
        )
    return candidate


def expected_bin_dir(repo: Path, timeout_s: float = 60.0) -> Path | None:
    """Ask ``hack/build-control-plane.sh --print-dir`` in ``repo`` where the current pins build to.

    Returns None when the script is absent or cannot tell (for example Go is missing).
    """
    script = repo / "hack" / "build-control-plane.sh"
    if not script.is_file():
        return None
    try:
        out = subprocess.run(
            ["bash", str(script), "--print-dir"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        )
    except (subprocess.SubprocessError, OSError):
        return None
    text = out.stdout.strip()
    return Path(text) if text else None


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --- certificates --------------------------------------------------------------------------


def _write_pki(pki: Path) -> dict[str, Path]:
    """Generate the CA, serving and client certificates (all from one TestCA) and the
    service-account signing key."""
    pki.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    def save(name: str, cert_pem: bytes, key_pem: bytes) -> None:
        paths[f"{name}.crt"] = pki / f"{name}.crt"
        paths[f"{name}.key"] = pki / f"{name}.key"
        paths[f"{name}.crt"].write_bytes(cert_pem)
        paths[f"{name}.key"].write_bytes(key_pem)
        paths[f"{name}.key"].chmod(0o600)

    ca = TestCA.create("connquota-test-ca")
    save("ca", ca.cert_pem, pem_key(ca.key))
    apiserver_hosts = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "127.0.0.1",
        "10.0.0.1",
    ]
    save("apiserver", *ca.issue_leaf("kube-apiserver", hosts=apiserver_hosts))
    save("admin", *ca.issue_leaf("connquota-admin", organizations=["system:masters"], client=True))
    save("controller-manager", *ca.issue_leaf("system:kube-controller-manager", client=True))
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    paths["sa.key"] = pki / "sa.key"
    paths["sa.pub"] = pki / "sa.pub"
    paths["sa.key"].write_bytes(pem_key(sa_key))
    paths["sa.key"].chmod(0o600)
    paths["sa.pub"].write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return paths


def _kubeconfig(server: str, ca: Path, cert: Path, key: Path, user: str) -> str:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "connquota-test",
                "cluster": {"server": server, "certificate-authority": str(ca)},
            }
        ],
        "users": [
            {"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}
        ],
        "contexts": [
            {"name": "connquota-test", "context": {"cluster": "connquota-test", "user": user}}
        ],
        "current-context": "connquota-test",
    }
    return json.dumps(doc, indent=2)  # JSON is YAML


# --- processes -----------------------------------------------------------------------------


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def _stop_proc(proc: _Proc, timeout_s: float = 10.0) -> None:
    """SIGTERM the process we started, SIGKILL its process group after ``timeout_s``."""
    popen = proc.popen
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=timeout_s)
    # The process group was created by us (start_new_session): reap anything left in it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=timeout_s)


def _ssl_context(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    if ca is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(ca))
    if cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _get(url: str, ctx: ssl.SSLContext | None, timeout_s: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout_s) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode(errors="replace")
    except (OSError, ssl.SSLError) as err:
        return 0, str(err)


# --- the control plane ---------------------------------------------------------------------


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver + kube-controller-manager on 127.0.0.1.

    ``kubeconfig`` is an admin (system:masters) kubeconfig; ``env`` is an environment for
    kubectl and helm (KUBECONFIG, PATH with the pinned binaries first, kubectl/helm caches in
    the data dir).
    """

    bin_dir: Path
    data_dir: Path
    server: str
    kubeconfig: Path
    ca_file: Path
    apiserver_port: int
    etcd_url: str
    env: dict[str, str]
    pki: dict[str, Path]
    _procs: list[_Proc] = field(default_factory=list, repr=False)
    audit_log: Path | None = None
    """The API server's JSON-lines audit log (``start_control_plane(audit=True)``), else None."""

    @property
    def kubectl_path(self) -> Path:
        """The pinned kubectl binary."""
        return self.bin_dir / "kubectl"

    @property
    def helm_path(self) -> Path:
        """The pinned helm binary."""
        return self.bin_dir / "helm"

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout_s: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this control plane and return the completed process."""
        return self._run([str(self.kubectl_path), *args], input, check, timeout_s)

    def helm(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout_s: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned helm against this control plane and return the completed process."""
        return self._run([str(self.helm_path), *args], input, check, timeout_s)

    def _run(
        self, argv: list[str], input: str | None, check: bool, timeout_s: float
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout_s,
            check=False,
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def api_client(self) -> Any:
        """A new ``kubernetes.client.ApiClient`` authenticated as cluster admin."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig), client_configuration=configuration
        )
        configuration.connection_pool_maxsize = 32
        return client.ApiClient(configuration)

    def audit_events(self, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Audit events logged from byte ``offset`` of the audit log on, and the offset after them.

        Only complete lines are read (the server may be writing the next one); an ``offset``
        inside a line (e.g. the file's size a moment ago) starts at the next line. Raises
        :class:`ControlPlaneError` when the control plane was started without ``audit=True``.
        """
        if self.audit_log is None:
            raise ControlPlaneError("the control plane was started without audit=True")
        with contextlib.suppress(FileNotFoundError), self.audit_log.open("rb") as f:
            if offset > 0:
                f.seek(offset - 1)
                if f.read(1) != b"\n":
                    rest = f.readline()
                    if not rest.endswith(b"\n"):
                        return [], offset
                    offset += len(rest)
            data = f.read()
            end = data.rfind(b"\n") + 1
            events = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
            return events, offset + end
        return [], offset

    def is_running(self) -> dict[str, bool]:
        """Whether each started process is still alive, by name."""
        return {p.name: p.popen.poll() is None for p in self._procs}

    def logs(self, name: str, lines: int = 60) -> str:
        """The last ``lines`` lines of one component's log (etcd, kube-apiserver, ...)."""
        for proc in self._procs:
            if proc.name == name:
                return proc.tail(lines)
        return ""

    def stop_components(self, *names: str) -> None:
        """Stop some of the processes (e.g. ``kube-apiserver``, ``etcd``), newest first; their
        data stays, so `start_components` brings them back as they were."""
        for proc in reversed(self._procs):
            if proc.name in names:
                _stop_proc(proc)

    def start_components(self, *names: str, timeout_s: float = 90.0) -> None:
        """Start stopped processes again with their own arguments, in the order they first
        started, and wait until etcd and the API server are healthy again."""
        deadline = time.monotonic() + timeout_s
        for i, proc in enumerate(self._procs):
            if proc.name in names and proc.popen.poll() is not None:
                argv = [str(a) for a in proc.popen.args]  # type: ignore[union-attr]
                fresh = _spawn(proc.name, argv, self.data_dir, [])
                self._procs[i] = fresh
        admin_ctx = _ssl_context(self.ca_file, self.pki["admin.crt"], self.pki["admin.key"])

        def healthy() -> bool | tuple[int, str]:
            status, body = _get(f"{self.etcd_url}/health", None)
            if status != 200:
                return (status, body[-300:])
            status, body = _get(f"{self.server}/readyz", admin_ctx)
            return True if status == 200 else (status, body[-300:])

        _wait_until("etcd and kube-apiserver back", healthy, deadline, self._procs)

    def stop(self) -> None:
        """Stop exactly the processes this control plane started, newest first; delete its data."""
        for proc in reversed(self._procs):
            _stop_proc(proc)
        self._procs.clear()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_until(
    what: str,
    check: Any,
    deadline: float,
    procs: Sequence[_Proc],
    interval_s: float = 0.1,
) -> Any:
    """Poll ``check()`` until it returns True; fail on the deadline or when a process dies."""
    last: Any = None
    while True:
        last = check()
        if last is True:
            return True
        for proc in procs:
            if proc.popen.poll() is not None:
                raise ControlPlaneError(
                    f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}:\n"
                    f"{proc.tail()}"
                )
        if time.monotonic() > deadline:
            detail = "\n\n".join(f"--- {p.name} ---\n{p.tail(20)}" for p in procs)
            raise ControlPlaneError(f"timed out waiting for {what} (last: {last!r})\n{detail}")
        time.sleep(interval_s)


def start_control_plane(
    bin_dir: Path | None = None,
    *,
    timeout_s: float = 120.0,
    controller_manager_args: Sequence[str] = (),
    apiserver_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    parent_dir: Path | None = None,
    audit: bool = False,
) -> ControlPlane:
    """Start etcd, kube-apiserver and kube-controller-manager on 127.0.0.1 and wait until ready.

    ``controller_manager_args`` and ``apiserver_args`` are appended to the defaults (a later
    flag wins), e.g. ``["--node-monitor-grace-period=8s"]``. The data dir (etcd data, PKI,
    kubeconfigs, logs) is a new directory in ``parent_dir`` (default: the system temp dir).
    With ``audit=True`` the API server writes every request (level Metadata: who, user agent,
    verb, object; no bodies) as JSON lines to ``ControlPlane.audit_log``, e.g. to count one
    client's requests by user agent (``apiserver_request_total`` has no such label).
    Everything is started within
    ``timeout_s``; on any failure the processes already started are stopped and the data dir
    deleted before :class:`ControlPlaneError` is raised.
    """
    bin_dir = bin_dir or find_binaries()
    data_dir = Path(tempfile.mkdtemp(prefix="connquota-cp-", dir=parent_dir))
    procs: list[_Proc] = []
    deadline = time.monotonic() + timeout_s
    try:
        return _start(
            bin_dir,
            data_dir,
            procs,
            deadline,
            controller_manager_args,
            apiserver_args,
            extra_env or {},
            audit,
        )
    except BaseException:
        for proc in reversed(procs):
            _stop_proc(proc)
        shutil.rmtree(data_dir, ignore_errors=True)
        raise


def _spawn(name: str, argv: list[str], data_dir: Path, procs: list[_Proc]) -> _Proc:
    log = data_dir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:  # a restarted component appends to its log
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
            start_new_session=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(data_dir)},
        )
    proc = _Proc(name, popen, log)
    procs.append(proc)
    return proc


def _start(
    bin_dir: Path,
    data_dir: Path,
    procs: list[_Proc],
    deadline: float,
    controller_manager_args: Sequence[str],
    apiserver_args: Sequence[str],
    extra_env: Mapping[str, str],
    audit: bool = False,
) -> ControlPlane:
    pki = _write_pki(data_dir / "pki")
    host = "127.0.0.1"
    audit_log = data_dir / "logs" / "audit.jsonl" if audit else None
    audit_args: list[str] = []
    if audit_log is not None:
        policy = data_dir / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        audit_args = [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
        ]

    # etcd
    etcd_port, peer_port = free_port(), free_port()
    etcd_url = f"http://{host}:{etcd_port}"
    peer_url = f"http://{host}:{peer_port}"
    etcd = _spawn(
        "etcd",
        [
            str(bin_dir / "etcd"),
            "--name=connquota",
            f"--data-dir={data_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=connquota={peer_url}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ],
        data_dir,
        procs,
    )

    def etcd_healthy() -> bool:
        status, body = _get(f"{etcd_url}/health", None)
        return status == 200 and '"health":"true"' in body.replace(" ", "")

    _wait_until("etcd /health", etcd_healthy, deadline, [etcd])

    # kube-apiserver
    api_port = free_port()
    server = f"https://{host}:{api_port}"
    apiserver = _spawn(
        "kube-apiserver",
        [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={host}",
            f"--advertise-address={host}",
            f"--secure-port={api_port}",
            f"--cert-dir={data_dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki['apiserver.crt']}",
            f"--tls-private-key-file={pki['apiserver.key']}",
            f"--client-ca-file={pki['ca.crt']}",
            "--authorization-mode=RBAC",
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki['sa.pub']}",
            f"--service-account-signing-key-file={pki['sa.key']}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
            *audit_args,
            *apiserver_args,
        ],
        data_dir,
        procs,
    )
    admin_ctx = _ssl_context(pki["ca.crt"], pki["admin.crt"], pki["admin.key"])

    def api_ready() -> bool | tuple[int, str]:
        status, body = _get(f"{server}/readyz", admin_ctx)
        if status != 200:
            return (status, body[-300:])
        status, body = _get(f"{server}/healthz", admin_ctx)
        return True if status == 200 else (status, body[-300:])

    _wait_until("kube-apiserver /readyz and /healthz", api_ready, deadline, [etcd, apiserver])

    kubeconfig = data_dir / "admin.kubeconfig"
    kubeconfig.write_text(
        _kubeconfig(server, pki["ca.crt"], pki["admin.crt"], pki["admin.key"], "admin")
    )
    kcm_kubeconfig = data_dir / "controller-manager.kubeconfig"
    kcm_kubeconfig.write_text(
        _kubeconfig(
            server,
            pki["ca.crt"],
            pki["controller-manager.crt"],
            pki["controller-manager.key"],
            "system:kube-controller-manager",
        )
    )

    # kube-controller-manager
    kcm_port = free_port()
    _spawn(
        "kube-controller-manager",
        [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kcm_kubeconfig}",
            f"--authentication-kubeconfig={kcm_kubeconfig}",
            f"--authorization-kubeconfig={kcm_kubeconfig}",
            f"--bind-address={host}",
            f"--secure-port={kcm_port}",
            f"--cert-dir={data_dir / 'kcm-certs'}",
            "--leader-elect=false",
            f"--service-account-private-key-file={pki['sa.key']}",
            f"--root-ca-file={pki['ca.crt']}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--use-service-account-credentials=true",
            "--controllers=*",
            "--profiling=false",
            "--v=1",
            *controller_manager_args,
        ],
        data_dir,
        procs,
    )

    def kcm_healthy() -> bool | tuple[int, str]:
        status, body = _get(f"https://{host}:{kcm_port}/healthz", _ssl_context(None))
        return True if status == 200 else (status, body[-300:])

    _wait_until("kube-controller-manager /healthz", kcm_healthy, deadline, procs)

    # The ServiceAccount controller creating default/default shows the controllers really run;
    # Pods cannot be created before it exists.
    def default_sa_exists() -> bool | tuple[int, str]:
        status, body = _get(
            f"{server}/api/v1/namespaces/default/serviceaccounts/default", admin_ctx
        )
        return True if status == 200 else (status, body[-200:])

    _wait_until("the default ServiceAccount", default_sa_exists, deadline, procs)

    env = dict(os.environ)
    env.update(
        {
            "KUBECONFIG": str(kubeconfig),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "KUBECACHEDIR": str(data_dir / "kubectl-cache"),
            "HELM_CACHE_HOME": str(data_dir / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(data_dir / "helm" / "config"),
            "HELM_DATA_HOME": str(data_dir / "helm" / "data"),
        }
    )
    env.update(extra_env)
    return ControlPlane(
        bin_dir=bin_dir,
        data_dir=data_dir,
        server=server,
        kubeconfig=kubeconfig,
        ca_file=pki["ca.crt"],
        apiserver_port=api_port,
        etcd_url=etcd_url,
        env=env,
        pki=pki,
        _procs=list(procs),
        audit_log=audit_log,
    )


@contextlib.contextmanager
def running_control_plane(bin_dir: Path | None = None, **kwargs: Any) -> Iterator[ControlPlane]:
    """Context manager: start a control plane, yield it, always stop it."""
    plane = start_control_plane(bin_dir, **kwargs)
    try:
        yield plane
    finally:
        plane.stop()
