"""Volumes: Secret, ConfigMap, downward API, projected and ServiceAccount token files written
under the Pod root (atomically, unchanged files untouched), and emptyDir directories.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from connquota.testing.podharness.common import ALL_KINDS, PodConfigError, RawBody
from connquota.testing.podharness.environment import PodSources


class VolumeWriter(PodSources):
    """Materialises a Pod's volumeMounts under its root directory."""

    def _token(self, pod: dict[str, Any], source: Mapping[str, Any]) -> tuple[bytes, float]:
        sa = pod["spec"].get("serviceAccountName") or "default"
        expiration = int(source.get("expirationSeconds") or 3607)
        body: RawBody = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [source["audience"]] if source.get("audience") else None,
                "expirationSeconds": expiration,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.name,
                    "uid": self.uid,
                },
            },
        }
        try:
            resp = self.harness.core.create_namespaced_service_account_token(
                sa, self.namespace, body
            )
        except ApiException as err:
            raise PodConfigError(f"TokenRequest for {self.namespace}/{sa}: {err.reason}") from err
        token = resp.status.token if resp.status else None
        if not token:
            raise PodConfigError(f"TokenRequest for {self.namespace}/{sa}: no token in the answer")
        return token.encode(), expiration * 0.8

    def _source_files(
        self, pod: dict[str, Any], source: Mapping[str, Any], kind: str
    ) -> dict[str, tuple[bytes, int | None]]:
        """Files (relative path -> content, mode) of one volume or projection source."""
        files: dict[str, tuple[bytes, int | None]] = {}
        if kind in ("secret", "configMap"):
            name = source.get("secretName") if kind == "secret" else source.get("name")
            optional = bool(source.get("optional"))
            getter = self._secret if kind == "secret" else self._config_map
            data = getter(self.namespace, str(name), optional) or {}
            items = source.get("items")
            if items:
                for item in items:
                    if item["key"] not in data:
                        if optional:
                            continue
                        raise PodConfigError(f"key {item['key']!r} not found in {name!r}")
                    files[item["path"]] = (data[item["key"]], item.get("mode"))
            else:
                files.update({k: (v, None) for k, v in data.items()})
        elif kind == "downwardAPI":
            for item in source.get("items") or []:
                if item.get("fieldRef"):
                    value = self._field(pod, item["fieldRef"]["fieldPath"])
                else:
                    value = self._resource_field(self.container, item["resourceFieldRef"])
                files[item["path"]] = (value.encode(), item.get("mode"))
        elif kind == "serviceAccountToken":
            token, refresh_s = self._token(pod, source)
            files[source["path"]] = (token, None)
            refresh_at = time.monotonic() + refresh_s
            if self.token_refresh_at is None or refresh_at < self.token_refresh_at:
                self.token_refresh_at = refresh_at
        return files

    def _volume_files(
        self, pod: dict[str, Any], volume: Mapping[str, Any], kinds: frozenset[str]
    ) -> tuple[dict[str, tuple[bytes, int | None]], int] | None:
        """Files of one volume (of the sources in ``kinds``) and its default mode.

        None for a directory volume (emptyDir).
        """
        for kind in ("secret", "configMap", "downwardAPI"):
            if volume.get(kind):
                if kind not in kinds:
                    return {}, 0o644
                src = volume[kind]
                return self._source_files(pod, src, kind), int(src.get("defaultMode") or 0o644)
        if volume.get("projected"):
            projected = volume["projected"]
            files: dict[str, tuple[bytes, int | None]] = {}
            for source in projected.get("sources") or []:
                for kind in ("secret", "configMap", "downwardAPI", "serviceAccountToken"):
                    if source.get(kind) and kind in kinds:
                        files.update(self._source_files(pod, source[kind], kind))
            return files, int(projected.get("defaultMode") or 0o644)
        return None

    def _write_volumes(self, pod: dict[str, Any], kinds: frozenset[str]) -> None:
        """Write the files of the volume sources in ``kinds``; unchanged files are not touched."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        if "serviceAccountToken" in kinds:
            self.token_refresh_at = None
        for mount in self.container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"])
            if volume is None:
                raise PodConfigError(f"volumeMount {mount['name']!r} names no volume")
            target = self.root / mount["mountPath"].lstrip("/")
            if mount.get("subPath"):
                target = target.parent / f".{target.name}.subpath"  # not supported: keep apart
            content = self._volume_files(pod, volume, kinds)
            if content is None:
                if volume.get("emptyDir") is not None or "emptyDir" in volume:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if kinds != ALL_KINDS:
                    continue
                raise PodConfigError(f"volume {mount['name']!r}: unsupported volume type")
            files, default_mode = content
            target.mkdir(parents=True, exist_ok=True)
            for rel, (data, mode) in files.items():
                path = target / rel
                with contextlib.suppress(OSError):
                    if path.read_bytes() == data:
                        continue
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_bytes(data)
                tmp.chmod(int(mode) if mode is not None else default_mode)
                os.replace(tmp, path)
