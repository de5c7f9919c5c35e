"""Every Kubernetes API call the operator makes lives here (handlers and reconcile never call it).

The synchronous `kubernetes` client runs in worker threads (`asyncio.to_thread`) so the event
loop never blocks. Every write uses the one field manager `connquota-operator`; owned objects
are written with server-side apply (forced: the operator owns them), and only when the content
hash annotation of the live object differs from the built one. Writes that must not race use
`metadata.resourceVersion` as a precondition (a stale view gets 409 Conflict and the next
reconcile starts from fresh reads).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from connquota.operator import metrics, names
from connquota.operator.identity import USER_AGENT

log = logging.getLogger(__name__)


class KubeError(RuntimeError):
    """An API request failed; `status` is the HTTP status (0: no response)."""

    def __init__(self, message: str, status: int = 0, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s
        """The API server's Retry-After (seconds), when it sent one."""

    @property
    def retriable(self) -> bool:
        """Whether the same request may succeed if sent again: throttled (429), the server
        unavailable or timing out (5xx), or no response at all (0)."""
        return self.status in RETRIABLE_STATUSES


RETRIABLE_STATUSES = frozenset({0, 429, 500, 502, 503, 504})
REQUEST_RETRY_DELAYS_S = (0.5, 1.0, 2.0)
"""Delays before the second, third and fourth try of a request that failed retriably (the API
server's Retry-After, capped at MAX_RETRY_AFTER_S, replaces the delay when it sends one)."""
MAX_RETRY_AFTER_S = 10.0


def _retry_after(headers: Any) -> float | None:
    value = (headers or {}).get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


class Conflict(KubeError):
    """409: the object changed since it was read (or already exists)."""


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the REST API."""

    prefix: str
    plural: str
    namespaced: bool = True


KINDS: dict[str, Kind] = {
    "ConfigMap": Kind("/api/v1", "configmaps"),
    "Secret": Kind("/api/v1", "secrets"),
    "Service": Kind("/api/v1", "services"),
    "ServiceAccount": Kind("/api/v1", "serviceaccounts"),
    "Pod": Kind("/api/v1", "pods"),
    "Event": Kind("/api/v1", "events"),
    "StatefulSet": Kind("/apis/apps/v1", "statefulsets"),
    "PodDisruptionBudget": Kind("/apis/policy/v1", "poddisruptionbudgets"),
    "Role": Kind("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": Kind("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "Lease": Kind("/apis/coordination.k8s.io/v1", "leases"),
    names.QUOTA_KIND: Kind(f"/apis/{names.API_VERSION}", names.QUOTA_PLURAL),
    names.POOL_KIND: Kind(f"/apis/{names.API_VERSION}", names.POOL_PLURAL, namespaced=False),
}


def object_path(kind: str, namespace: str | None, name: str | None = None) -> str:
    """The REST path of an object (or of its collection when `name` is None)."""
    k = KINDS[kind]
    path = k.prefix
    if k.namespaced and namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{k.plural}"
    if name:
        path += f"/{name}"
    return path


def make_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An API client from `kubeconfig`, else in-cluster config, else the default kubeconfig."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    else:
        try:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        except config.ConfigException:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
    configuration.connection_pool_maxsize = 16
    api = client.ApiClient(configuration)
    api.user_agent = USER_AGENT
    return api


class KubeApi:
    """The operator's door to the API server: typed-enough async methods over raw REST."""

    def __init__(self, api_client: client.ApiClient, request_timeout_s: float = 30.0) -> None:
        self._api = api_client
        self._timeout_s = request_timeout_s
        self._applied: dict[tuple[str, str, str], str] = {}
        """(kind, namespace, name) -> content hash the live object is known to carry."""
        self._versions: dict[tuple[str, str, str], str] = {}
        """(kind, namespace, name) -> resourceVersion last seen by `apply`."""

    # --- raw ---------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> Any:
        url = self._api.configuration.host + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": accept, "User-Agent": self._api.user_agent}
        if body is not None:
            headers["Content-Type"] = content_type
        self._api.update_params_for_auth(headers, [], ["BearerToken"], url, method, body)
        started = time.monotonic()
        verb = method.lower()
        try:
            response = self._api.call_api(
                method,
                url,
                header_params=headers,
                # JSON content types are serialized by the client; apply-patch goes as text.
                body=json.dumps(body) if body is not None and "yaml" in content_type else body,
                _request_timeout=self._timeout_s,
            )
            status = response.status
            data = response.read()  # type: ignore[no-untyped-call]
        except ApiException as exc:
            metrics.API_REQUESTS.labels(verb=verb, code=str(exc.status)).inc()
            cls = Conflict if exc.status == 409 else KubeError
            raise cls(
                f"{method} {path}: {exc.status} {exc.reason}: {exc.body}",
                exc.status,
                _retry_after(exc.headers),
            ) from None
        except Exception as exc:  # network errors, timeouts
            metrics.API_REQUESTS.labels(verb=verb, code="0").inc()
            raise KubeError(f"{method} {path}: {exc}") from exc
        finally:
            metrics.API_LATENCY.observe(time.monotonic() - started)
        metrics.API_REQUESTS.labels(verb=verb, code=str(status)).inc()
        if status == 409:
            raise Conflict(f"{method} {path}: conflict", status)
        if status >= 300:
            raise KubeError(f"{method} {path}: {status} {data[:500]!r}", status)
        return json.loads(data) if data else None

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API request, tried again (at most len(REQUEST_RETRY_DELAYS_S) more times) when
        it failed retriably, after the server's Retry-After or the next delay.

        A POST that got no response at all is not sent again (it may have been carried out:
        a create would then fail with 409); one the server refused (429, 503) is."""
        for attempt in range(len(REQUEST_RETRY_DELAYS_S) + 1):
            try:
                return await asyncio.to_thread(self._call, method, path, **kwargs)
            except KubeError as exc:
                last = attempt == len(REQUEST_RETRY_DELAYS_S)
                if last or not exc.retriable or (method == "POST" and exc.status == 0):
                    raise
                delay = REQUEST_RETRY_DELAYS_S[attempt]
                if exc.retry_after_s is not None:
                    delay = min(exc.retry_after_s, MAX_RETRY_AFTER_S)
                metrics.API_RETRIES.inc()
                log.info("%s %s failed (%s); retrying in %.1fs", method, path, exc.status, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    # --- reads -------------------------------------------------------------------------------

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            got: dict[str, Any] | None = await self._request(
                "GET", object_path(kind, namespace, name)
            )
            return got
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, kind: str, namespace: str | None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Objects of `kind` in `namespace` (all when None) matching `label_selector`."""
        query = {"labelSelector": label_selector} if label_selector else None
        out = await self._request("GET", object_path(kind, namespace), query=query)
        return list(out.get("items") or [])

    async def exists(self, kind: str, namespace: str | None, name: str) -> bool:
        """Whether the object exists, reading metadata only (a Secret's data is never fetched)."""
        try:
            await self._request(
                "GET",
                object_path(kind, namespace, name),
                accept="application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
            )
            return True
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise

    # --- writes ------------------------------------------------------------------------------

    async def apply(self, body: dict[str, Any], *, resource_version: str | None = None) -> bool:
        """Server-side apply `body` unless the live object already carries its content hash.

        Returns True when it wrote. `resource_version` makes the write conditional.
        """
        meta = body["metadata"]
        key = (body["kind"], meta.get("namespace", ""), meta["name"])
        digest = meta.get("annotations", {}).get(names.ANNOTATION_HASH)
        if digest is None:
            raise ValueError(f"{key}: built objects carry a content hash")
        known = self._applied.get(key)
        if known is None:
            live = await self.get(body["kind"], meta.get("namespace"), meta["name"])
            if live is not None:
                known = (live["metadata"].get("annotations") or {}).get(names.ANNOTATION_HASH, "")
                self._applied[key] = known
                self._versions[key] = live["metadata"].get("resourceVersion", "")
        if known == digest:
            return False
        if resource_version is not None:
            body = {**body, "metadata": {**meta, "resourceVersion": resource_version}}
        out = await self._request(
            "PATCH",
            object_path(body["kind"], meta.get("namespace"), meta["name"]),
            query={"fieldManager": names.FIELD_MANAGER, "force": "true"},
            body=body,
            content_type="application/apply-patch+yaml",
        )
        self._applied[key] = digest
        if isinstance(out, dict):
            self._versions[key] = (out.get("metadata") or {}).get("resourceVersion", "")
        metrics.OBJECT_WRITES.labels(kind=body["kind"]).inc()
        return True

    def resource_version(self, kind: str, namespace: str, name: str) -> str | None:
        """The resourceVersion `apply` last saw for the object (None: unknown)."""
        return self._versions.get((kind, namespace, name)) or None

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """Drop what is known of an object's live hash (re-read before the next write)."""
        self._applied.pop((kind, namespace, name), None)
        self._versions.pop((kind, namespace, name), None)

    def forget_all(self) -> None:
        """Re-read every object before writing it again (drift repair)."""
        self._applied.clear()
        self._versions.clear()

    def forget_namespaces(self, namespaces: Iterable[str]) -> None:
        """Re-read the objects of `namespaces` before writing them again (after an error in a
        reconcile of their quotas); what is known of every other namespace stays."""
        drop = set(namespaces)
        for table in (self._applied, self._versions):
            for key in [k for k in table if k[1] in drop]:
                del table[key]

    async def create(self, body: dict[str, Any]) -> bool:
        """Create `body`; False when it already exists."""
        meta = body["metadata"]
        try:
            await self._request(
                "POST",
                object_path(body["kind"], meta.get("namespace")),
                query={"fieldManager": names.FIELD_MANAGER},
                body=body,
            )
        except Conflict:
            return False
        metrics.OBJECT_WRITES.labels(kind=body["kind"]).inc()
        return True

    async def merge_patch(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        patch: dict[str, Any],
        *,
        subresource: str | None = None,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """JSON merge patch; with `resource_version`, only if the object has not changed."""
        if resource_version is not None:
            patch = {
                **patch,
                "metadata": {**patch.get("metadata", {}), "resourceVersion": resource_version},
            }
        path = object_path(kind, namespace, name) + (f"/{subresource}" if subresource else "")
        out: dict[str, Any] = await self._request(
            "PATCH",
            path,
            query={"fieldManager": names.FIELD_MANAGER},
            body=patch,
            content_type="application/merge-patch+json",
        )
        metrics.OBJECT_WRITES.labels(
            kind=kind if not subresource else f"{kind}/{subresource}"
        ).inc()
        return out

    async def delete(self, kind: str, namespace: str | None, name: str) -> bool:
        """Delete an object; False when it was already gone."""
        try:
            await self._request("DELETE", object_path(kind, namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        self.forget(kind, namespace or "", name)
        return True

    async def force_delete_pod(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the Pod `uid` at once (grace 0, UID precondition): for a Terminating pod on a
        lost node, whose kubelet will never finish its deletion. False when it was gone (404)
        or is another Pod of that name (409)."""
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid},
        }
        try:
            await asyncio.to_thread(
                self._call, "DELETE", object_path("Pod", namespace, name), body=body
            )
        except KubeError as exc:
            if exc.status in (404, 409):
                return False
            raise
        metrics.OBJECT_WRITES.labels(kind="Pod/force-delete").inc()
        return True

    async def evict(self, namespace: str, name: str, uid: str) -> str:
        """Evict a Pod through the Eviction API (so its PodDisruptionBudget decides), only if it
        is still the Pod `uid`. Sent once, never retried here (the caller decides again on its
        next pass). Returns "evicted", "gone" (404, or another Pod of that name: 409), or
        "refused" (429: the PodDisruptionBudget allows no disruption now)."""
        path = object_path("Pod", namespace, name) + "/eviction"
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
            "deleteOptions": {"preconditions": {"uid": uid}},
        }
        try:
            await asyncio.to_thread(self._call, "POST", path, body=body)
        except KubeError as exc:
            if exc.status in (404, 409):
                return "gone"
            if exc.status == 429:
                return "refused"
            raise
        metrics.OBJECT_WRITES.labels(kind="Pod/eviction").inc()
        return "evicted"

    async def post_event(
        self,
        involved: dict[str, Any],
        *,
        reason: str,
        message: str,
        warning: bool = False,
    ) -> None:
        """Record a core/v1 Event on `involved` (an object body). Failures are only logged."""
        meta = involved.get("metadata", {})
        namespace = meta.get("namespace") or "default"
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{meta.get('name', 'connquota')}.",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": names.FIELD_MANAGER},
            "reportingComponent": names.FIELD_MANAGER,
            "reportingInstance": names.FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._request("POST", object_path("Event", namespace), body=body)
            metrics.OBJECT_WRITES.labels(kind="Event").inc()
        except KubeError as exc:
            log.warning("could not post event %s: %s", reason, exc)
