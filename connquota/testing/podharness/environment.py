"""A container's environment: ``env``/``envFrom`` values, downward API ``fieldRef``,
Secret and ConfigMap reads, and the kubelet's ``$(VAR)`` expansion.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from connquota.testing.podharness.common import POD_ROOT_ENV, PodConfigError
from connquota.testing.podharness.state import RunnerState

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(NAME)`` like the kubelet: unknown references stay as they are, ``$$`` is ``$``."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(repl, text)


class PodSources(RunnerState):
    """Reads what a Pod's env and volumes refer to: fields, resources, Secrets, ConfigMaps."""

    def _field(self, pod: dict[str, Any], path: str) -> str:
        meta = pod["metadata"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": pod["spec"].get("nodeName") or self.harness.node_name,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName") or "default",
            "status.podIP": self.pod_ip,
            "status.podIPs": self.pod_ip,
            "status.hostIP": self.harness.host_ip,
            "status.hostIPs": self.harness.host_ip,
        }
        if path in simple:
            return str(simple[path])
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            items = sorted((meta.get(path.split(".")[1]) or {}).items())
            return "\n".join(f'{k}="{v}"' for k, v in items)
        raise PodConfigError(f"unsupported fieldRef {path!r}")

    def _resource_field(self, container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
        resource = ref["resource"]  # e.g. limits.cpu
        kind, _, name = resource.partition(".")
        value = ((container.get("resources") or {}).get(kind) or {}).get(name)
        return str(value) if value is not None else "0"

    def _secret(self, namespace: str, name: str, optional: bool) -> dict[str, bytes] | None:
        try:
            secret = self.harness.core.read_namespaced_secret(name, namespace)
        except ApiException as err:
            if err.status == 404 and optional:
                return None
            raise PodConfigError(f"secret {namespace}/{name}: {err.reason}") from err
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    def _config_map(self, namespace: str, name: str, optional: bool) -> dict[str, bytes] | None:
        try:
            cm = self.harness.core.read_namespaced_config_map(name, namespace)
        except ApiException as err:
            if err.status == 404 and optional:
                return None
            raise PodConfigError(f"configmap {namespace}/{name}: {err.reason}") from err
        data = {k: v.encode() for k, v in (cm.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
        return data

    def _build_env(self, pod: dict[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
        h = self.harness
        ns = self.namespace
        api_host, api_port = h.api_address(pod["spec"].get("nodeName") or h.node_name)
        env: dict[str, str] = {
            "PATH": h.path_env,
            "HOSTNAME": self.name,
            "KUBERNETES_SERVICE_HOST": api_host,
            "KUBERNETES_SERVICE_PORT": str(api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(api_port),
            POD_ROOT_ENV: str(self.root),
        }
        for src in container.get("envFrom") or []:
            prefix = src.get("prefix") or ""
            if src.get("configMapRef"):
                ref = src["configMapRef"]
                data = self._config_map(ns, ref["name"], bool(ref.get("optional")))
            elif src.get("secretRef"):
                ref = src["secretRef"]
                data = self._secret(ns, ref["name"], bool(ref.get("optional")))
            else:
                continue
            for key, value in (data or {}).items():
                env[prefix + key] = value.decode(errors="replace")
        for var in container.get("env") or []:
            name = var["name"]
            if "valueFrom" not in var or not var["valueFrom"]:
                env[name] = expand_vars(var.get("value") or "", env)
                continue
            source = var["valueFrom"]
            if source.get("fieldRef"):
                env[name] = self._field(pod, source["fieldRef"]["fieldPath"])
            elif source.get("resourceFieldRef"):
                env[name] = self._resource_field(container, source["resourceFieldRef"])
            elif source.get("secretKeyRef") or source.get("configMapKeyRef"):
                is_secret = bool(source.get("secretKeyRef"))
                ref = source["secretKeyRef"] if is_secret else source["configMapKeyRef"]
                optional = bool(ref.get("optional"))
                getter = self._secret if is_secret else self._config_map
                data = getter(ns, ref["name"], optional)
                if data is None or ref["key"] not in data:
                    if optional:
                        continue
                    raise PodConfigError(f"key {ref['key']!r} not found in {ref['name']!r}")
                env[name] = data[ref["key"]].decode(errors="replace")
        return env
