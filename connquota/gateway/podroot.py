"""Paths inside the pod, and the in-cluster API configuration, honouring a pod root.

In a real pod every mounted path is absolute and `kubernetes.config.load_incluster_config()`
finds the ServiceAccount token where the kubelet puts it. The test pod harness
(`connquota.testing.podharness`) runs a pod as a local process and materialises its volumes
under `$CONNQUOTA_POD_ROOT` instead; these helpers map absolute paths there when it is set.
"""

from __future__ import annotations

import os
from pathlib import Path

POD_ROOT_ENV = "CONNQUOTA_POD_ROOT"


def pod_path(path: str | os.PathLike[str]) -> Path:
    """`path` inside the pod: under `$CONNQUOTA_POD_ROOT` when set and `path` is absolute."""
    text = os.fspath(path)
    root = os.environ.get(POD_ROOT_ENV)
    if root and text.startswith("/"):
        return Path(root) / text.lstrip("/")
    return Path(text)


def load_cluster_config() -> None:
    """Configure the kubernetes client: in-cluster (token under the pod root), else kubeconfig."""
    from kubernetes import config
    from kubernetes.config import incluster_config

    try:
        incluster_config.InClusterConfigLoader(  # type: ignore[no-untyped-call]
            token_filename=str(pod_path(incluster_config.SERVICE_TOKEN_FILENAME)),
            cert_filename=str(pod_path(incluster_config.SERVICE_CERT_FILENAME)),
        ).load_and_set()
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
