"""The gateway StatefulSet and its PodDisruptionBudget.

Choices (see docs/operator.md):

- `podManagementPolicy: Parallel` and `updateStrategy: OnDelete`: the operator, not the
  StatefulSet controller, decides when a pod is replaced, draining it through the plan first.
- Credentials are Secret volumes mounted read-only as files (one directory per credential);
  no secret is ever an environment variable. So are the proxy credentials of every `proxy`
  address of the pool with a `proxySecretRef` (one directory per address, at the path the
  gateway reads): the Secret is the one of that name in the quota's own namespace, since a pod
  can mount no other. Every such address of the pool is mounted, not only the ones the plan
  uses now: plans move connections between addresses without replacing pods (`OnDelete`).
- An emptyDir holds the gateway's attempt log (it survives a container restart and is wiped
  when the pod is replaced, which is exactly when the gateway must start conservatively).
- The restricted Pod Security profile: non-root, RuntimeDefault seccomp, no capabilities, no
  privilege escalation, read-only root filesystem (a small emptyDir backs /tmp).
- Egress: all pods share one template, so per-ordinal egress cannot live in it. `bind` pods are
  pinned (required node affinity) to the nodes holding the bind addresses the quota uses;
  `podLabel` puts the `connquota.io/egress` label on the template when the quota uses a single
  podLabel address, and otherwise the operator labels each pod with its ordinal's address
  (`pod_egress_label`). Either way the gateway checks the address the exchange sees before
  its first attempt and refuses on a mismatch, so a pod that is not (yet) labelled or placed
  right makes no attempt from a wrong address.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from connquota.api.plan import PROXY_CREDENTIALS_MOUNT_DIR, PodPlan, credential_mount_path
from connquota.api.pool import EgressAddress, EgressMode
from connquota.api.quota import ExchangeConnectionQuota
from connquota.operator import names
from connquota.operator.builders.common import object_meta, quota_ids, with_hash
from connquota.operator.builders.services import (
    GATEWAY_PORT,
    GATEWAY_PORT_NAME,
    GATEWAY_TLS_PORT,
    GATEWAY_TLS_PORT_NAME,
)

CONTAINER_NAME = "gateway"
STATE_DIR = "/var/lib/connquota/state"
"""The gateway's attempt log lives here (an emptyDir)."""
CONSUMER_AUTH_DIR = "/var/run/connquota/consumer-auth"
"""The consumer bearer-token Secret (key `token`) is mounted here when configured."""
PEER_TOKEN_DIR = "/var/run/connquota/peer"
"""The quota's peer-token Secret (key `token`): the pods relay streams to each other with it."""
CONSUMER_TLS_DIR = "/var/run/connquota/consumer-tls"
"""The consumer TLS Secret (`tls.crt`, `tls.key`) is mounted here when configured (a whole
directory, not subPath files, so a renewal reaches the running pod)."""
TERMINATION_GRACE_S = 60
"""Seconds a gateway gets after SIGTERM: readiness drops, consumers are told to move, upstream
connections are closed one by one without a burst of messages."""
RUN_AS_USER = 65532
SECRET_FILE_MODE = 0o440
HOSTNAME_LABEL = "kubernetes.io/hostname"


def gateway_command() -> list[str]:
    """The gateway container's command: the gateway reads everything else from its env."""
    return ["connquota", "gateway", "--in-cluster"]


DEFAULT_CONSUMER_QUEUE = 10_000
DEFAULT_SLOW_CONSUMER = "close"
"""The gateway's own defaults (`--consumer-queue`, `--slow-consumer`)."""


def gateway_env(
    quota_name: str,
    consumer_auth: bool,
    consumer_tls: bool = False,
    last_values: bool = False,
    consumer_queue: int = DEFAULT_CONSUMER_QUEUE,
    slow_consumer: str = DEFAULT_SLOW_CONSUMER,
    send_buffer: int | None = None,
) -> list[dict[str, Any]]:
    """Environment of the gateway container: identity from the downward API, paths. No secrets."""
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        # Listen on the Pod IP: probes, Services and peers reach it there (and the test pod
        # harness, which runs every pod in one network namespace, needs one address per pod).
        {"name": "CONNQUOTA_HOST", "value": "$(POD_IP)"},
        {"name": "CONNQUOTA_QUOTA", "value": quota_name},
        {"name": "CONNQUOTA_STATE_DIR", "value": STATE_DIR},
        {"name": "CONNQUOTA_PORT", "value": str(GATEWAY_PORT)},
        {"name": "CONNQUOTA_PEER_TOKEN_FILE", "value": f"{PEER_TOKEN_DIR}/token"},
    ]
    if consumer_auth:
        env.append({"name": "CONNQUOTA_CONSUMER_TOKEN_FILE", "value": f"{CONSUMER_AUTH_DIR}/token"})
    if last_values:
        env.append({"name": "CONNQUOTA_LAST_VALUE_CACHE", "value": "true"})
    # Only when not the gateway's defaults: an existing fleet's pod template (and so its
    # rollout hash) stays as it was.
    if consumer_queue != DEFAULT_CONSUMER_QUEUE:
        env.append({"name": "CONNQUOTA_CONSUMER_QUEUE", "value": str(consumer_queue)})
    if slow_consumer != DEFAULT_SLOW_CONSUMER:
        env.append({"name": "CONNQUOTA_SLOW_CONSUMER", "value": slow_consumer})
    if send_buffer is not None:
        env.append({"name": "CONNQUOTA_CONSUMER_SEND_BUFFER", "value": str(send_buffer)})
    if consumer_tls:
        env += [
            {"name": "CONNQUOTA_TLS_CERT_FILE", "value": f"{CONSUMER_TLS_DIR}/tls.crt"},
            {"name": "CONNQUOTA_TLS_KEY_FILE", "value": f"{CONSUMER_TLS_DIR}/tls.key"},
            {"name": "CONNQUOTA_TLS_PORT", "value": str(GATEWAY_TLS_PORT)},
        ]
    return env


def _credential_volumes(
    quota: ExchangeConnectionQuota,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for index, cred in enumerate(quota.spec.credentials):
        keys = [cred.secretRef.apiKeyKey, cred.secretRef.apiSecretKey]
        if cred.secretRef.passphraseKey:
            keys.append(cred.secretRef.passphraseKey)
        volume = f"credential-{index}"
        volumes.append(
            {
                "name": volume,
                "secret": {
                    "secretName": cred.secretRef.name,
                    "items": [{"key": k, "path": k} for k in keys],
                    "defaultMode": SECRET_FILE_MODE,
                },
            }
        )
        mounts.append(
            {"name": volume, "mountPath": credential_mount_path(cred.name), "readOnly": True}
        )
    return volumes, mounts


def proxy_volume_name(address: str) -> str:
    """The volume of `address`'s proxy Secret: `proxy-<address>` (a DNS label, at most 63
    characters; a longer address name is shortened with a digest)."""
    name = f"proxy-{address}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(address.encode()).hexdigest()[:10]
    return f"proxy-{address[:46].rstrip('-')}-{digest}"


def proxy_credential_volumes(
    pool_addresses: Sequence[EgressAddress],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts) for the `proxySecretRef` of every `proxy` address in the pool.

    Each address gets its own Secret volume holding only the two referenced keys, as files
    named after the keys (what the gateway reads), mounted read-only at
    `PROXY_CREDENTIALS_MOUNT_DIR/<address name>` with the credential mounts' file mode.
    """
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for address in sorted(pool_addresses, key=lambda a: a.name):
        ref = address.proxySecretRef
        if address.mode != EgressMode.PROXY or ref is None:
            continue
        volume = proxy_volume_name(address.name)
        keys = list(dict.fromkeys([ref.usernameKey, ref.passwordKey]))
        volumes.append(
            {
                "name": volume,
                "secret": {
                    "secretName": ref.name,
                    "items": [{"key": k, "path": k} for k in keys],
                    "defaultMode": SECRET_FILE_MODE,
                },
            }
        )
        mounts.append(
            {
                "name": volume,
                "mountPath": f"{PROXY_CREDENTIALS_MOUNT_DIR}/{address.name}",
                "readOnly": True,
            }
        )
    return volumes, mounts


def egress_node_affinity(addresses: list[EgressAddress]) -> dict[str, Any] | None:
    """Required node affinity to the nodes holding the `bind` addresses, or None."""
    nodes = sorted({a.node for a in addresses if a.mode == EgressMode.BIND and a.node})
    if not nodes:
        return None
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": HOSTNAME_LABEL, "operator": "In", "values": nodes}
                        ]
                    }
                ]
            }
        }
    }


def template_egress_label(addresses: list[EgressAddress]) -> str | None:
    """The single podLabel value all pods share, or None (none, or one per ordinal)."""
    values = sorted(
        {a.podLabel for a in addresses if a.mode == EgressMode.POD_LABEL and a.podLabel}
    )
    return values[0] if len(values) == 1 else None


def pod_egress_label(pod_plan: PodPlan) -> str | None:
    """The `connquota.io/egress` value a pod needs for its plan (podLabel mode), or None."""
    used = {c.address for c in pod_plan.connections}
    values = sorted(
        {
            a.podLabel
            for a in pod_plan.addresses
            if a.mode == EgressMode.POD_LABEL and a.podLabel and (not used or a.name in used)
        }
    )
    return values[0] if values else None


def _container(quota: ExchangeConnectionQuota, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    _, quota_name, _ = quota_ids(quota)
    gw = quota.spec.gateway
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": gw.image,
        "imagePullPolicy": gw.imagePullPolicy,
        "command": gateway_command(),
        "env": gateway_env(
            quota_name,
            gw.consumerAuthSecretRef is not None,
            gw.consumerTLSSecretRef is not None,
            gw.lastValueCache,
            gw.consumerQueueFrames,
            gw.slowConsumer,
            gw.consumerSendBufferBytes,
        ),
        "ports": [{"name": GATEWAY_PORT_NAME, "containerPort": GATEWAY_PORT, "protocol": "TCP"}]
        + (
            [{"name": GATEWAY_TLS_PORT_NAME, "containerPort": GATEWAY_TLS_PORT, "protocol": "TCP"}]
            if gw.consumerTLSSecretRef is not None
            else []
        ),
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": GATEWAY_PORT_NAME},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": GATEWAY_PORT_NAME},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 6,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }
    if gw.resources is not None:
        container["resources"] = gw.resources.to_wire()
    else:
        container["resources"] = {"requests": {"cpu": "100m", "memory": "128Mi"}}
    return container


def build_statefulset(
    quota: ExchangeConnectionQuota,
    replicas: int,
    addresses: list[EgressAddress],
    pool_addresses: Sequence[EgressAddress] = (),
) -> dict[str, Any]:
    """The gateway StatefulSet of `quota` with `replicas` pods.

    `addresses` are the pool addresses the quota's plan uses (for egress placement);
    `pool_addresses` are all of the pool's (every proxy Secret among them is mounted).
    """
    _, quota_name, _ = quota_ids(quota)
    gw = quota.spec.gateway
    overrides = gw.podOverrides
    cred_volumes, cred_mounts = _credential_volumes(quota)
    proxy_volumes, proxy_mounts = proxy_credential_volumes(pool_addresses)
    volumes: list[dict[str, Any]] = [
        {"name": "state", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        {
            "name": "peer-token",
            "secret": {
                "secretName": names.peer_secret_name(quota_name),
                "items": [{"key": "token", "path": "token"}],
                "defaultMode": SECRET_FILE_MODE,
            },
        },
        *cred_volumes,
        *proxy_volumes,
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "state", "mountPath": STATE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "peer-token", "mountPath": PEER_TOKEN_DIR, "readOnly": True},
        *cred_mounts,
        *proxy_mounts,
    ]
    if gw.consumerAuthSecretRef is not None:
        volumes.append(
            {
                "name": "consumer-auth",
                "secret": {
                    "secretName": gw.consumerAuthSecretRef.name,
                    "items": [{"key": "token", "path": "token"}],
                    "defaultMode": SECRET_FILE_MODE,
                },
            }
        )
        mounts.append({"name": "consumer-auth", "mountPath": CONSUMER_AUTH_DIR, "readOnly": True})
    if gw.consumerTLSSecretRef is not None:
        volumes.append(
            {
                "name": "consumer-tls",
                "secret": {
                    "secretName": gw.consumerTLSSecretRef.name,
                    "items": [
                        {"key": "tls.crt", "path": "tls.crt"},
                        {"key": "tls.key", "path": "tls.key"},
                    ],
                    "defaultMode": SECRET_FILE_MODE,
                },
            }
        )
        mounts.append({"name": "consumer-tls", "mountPath": CONSUMER_TLS_DIR, "readOnly": True})

    pod_labels: dict[str, str] = dict(overrides.labels) if overrides else {}
    pod_labels.update(names.common_labels(quota_name))
    egress_label = template_egress_label(addresses)
    if egress_label:
        pod_labels[names.LABEL_EGRESS] = egress_label
    pod_spec: dict[str, Any] = {
        "serviceAccountName": names.service_account_name(quota_name),
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(quota, mounts)],
        "volumes": volumes,
    }
    affinity = egress_node_affinity(addresses)
    if affinity:
        pod_spec["affinity"] = affinity
    if overrides:
        if overrides.nodeSelector:
            pod_spec["nodeSelector"] = dict(overrides.nodeSelector)
        if overrides.tolerations:
            pod_spec["tolerations"] = list(overrides.tolerations)
        if overrides.priorityClassName:
            pod_spec["priorityClassName"] = overrides.priorityClassName
    template_meta: dict[str, Any] = {"labels": pod_labels}
    if overrides and overrides.annotations:
        template_meta["annotations"] = dict(overrides.annotations)
    template_meta["annotations"] = {
        **template_meta.get("annotations", {}),
        names.ANNOTATION_TEMPLATE_HASH: template_hash(
            {"metadata": template_meta, "spec": pod_spec}
        ),
    }
    body = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": object_meta(quota, names.statefulset_name(quota_name)),
        "spec": {
            "replicas": replicas,
            "serviceName": names.headless_service_name(quota_name),
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": names.selector_labels(quota_name)},
            "template": {"metadata": template_meta, "spec": pod_spec},
        },
    }
    return with_hash(body)


def template_hash(template: dict[str, Any]) -> str:
    """A digest of a gateway pod template without its placement-only parts: the
    `connquota.io/egress` label and the node affinity follow the addresses the plan uses, and a
    rebalance that changes them must not replace pods (the operator labels each pod itself, and
    a pod placed by an older affinity keeps serving: its gateway checks its egress before any
    attempt). Any other change (image, resources, env, mounts, podOverrides) is rolled out."""
    meta = dict(template.get("metadata") or {})
    labels = dict(meta.get("labels") or {})
    labels.pop(names.LABEL_EGRESS, None)
    annotations = dict(meta.get("annotations") or {})
    annotations.pop(names.ANNOTATION_TEMPLATE_HASH, None)
    spec = dict(template.get("spec") or {})
    spec.pop("affinity", None)
    canonical = json.dumps(
        {"labels": labels, "annotations": annotations, "spec": spec},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def build_pod_disruption_budget(quota: ExchangeConnectionQuota) -> dict[str, Any]:
    """The quota's single PodDisruptionBudget: it selects only the gateway pods labelled
    `connquota.io/holds-connections=true` (the operator sets the label while a pod's published
    plan gives it connections and removes it once the pod let them go, or when its
    break-before-make turn comes), with `maxUnavailable: 0`. So a voluntary eviction (`kubectl
    drain`) of a pod still holding connections is refused until the operator has moved them
    (docs/operator.md, "Evictions and node drains"); a pod holding nothing is not selected and
    goes at once. The operator's own rollouts keep `gateway.maxUnavailable` themselves
    (`rollout.decide`). Not Ready pods may always be evicted (they serve nothing)."""
    _, quota_name, _ = quota_ids(quota)
    body = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(quota, names.statefulset_name(quota_name)),
        "spec": {
            "maxUnavailable": 0,
            "selector": {
                "matchLabels": {
                    **names.selector_labels(quota_name),
                    names.LABEL_HOLDS_CONNECTIONS: "true",
                }
            },
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
    return with_hash(body)
