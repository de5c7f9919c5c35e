"""A harness that plays kubelet and scheduler for selected Pods, running them as local processes.

No kubelet and no scheduler run in the test control plane. :class:`PodHarness` registers a
fake Node, or several (Ready, each with a Lease in ``kube-node-lease`` that it keeps renewing
so the node lifecycle controller never taints or evicts it), binds every pending Pod matching
its label selector to the first of its Nodes that the Pod's ``nodeSelector`` and required node
affinity admit and that is not cordoned (``spec.unschedulable``, unless the Pod tolerates it;
with ``spread=True``, the one of those with the fewest Pods), and runs the Pod's single container as a local subprocess:

* argv: the container's ``command`` + ``args`` (``$(VAR)`` references expanded as the kubelet
  does). A container without ``command`` uses ``image_commands[image]``; there is no image.
* env: exactly the container's ``env`` and ``envFrom`` (values, downward API ``fieldRef``,
  ``secretKeyRef``, ``configMapKeyRef``, ``resourceFieldRef``), plus what the kubelet and a
  container runtime add: ``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT`` (the
  loopback API server), ``HOSTNAME`` (the Pod name) and ``PATH`` (the harness's PATH with the
  current interpreter's directory first, so the venv's console scripts resolve). And one
  harness variable: ``CONNQUOTA_POD_ROOT``.
* volumes: a process cannot mount at absolute paths, so every ``volumeMount`` is materialised
  under the Pod's root directory: ``mountPath: /etc/connquota/plan`` is the directory
  ``$CONNQUOTA_POD_ROOT/etc/connquota/plan``. A program that reads a mounted file opens
  ``os.path.join(os.environ.get("CONNQUOTA_POD_ROOT", "/"), path.lstrip("/"))`` (the working
  directory is the Pod root as well). Secret, ConfigMap, downward API and projected volumes
  (including the ServiceAccount token, obtained with a TokenRequest bound to the Pod and
  refreshed at 80 % of its lifetime) are written as files; ``emptyDir`` is a directory that
  survives a container restart and is wiped when the Pod is replaced (it lives in the Pod's
  root, which is per Pod UID).
* status: ``Running``, ``podIP`` (one loopback address per Pod, ``127.0.10.x``, or one fixed
  address), container state and restart count, and ``Ready`` from the readiness probe
  (``httpGet``, ``tcpSocket`` or ``exec``; ready as soon as it runs when there is none).
  A container that exits, or fails its liveness probe, is restarted per ``restartPolicy``
  after a short, capped backoff (``restart_backoff_s`` doubling up to
  ``max_restart_backoff_s``, not the kubelet's 10 s .. 5 min).
* Secret, ConfigMap and downward API files are refreshed every ``volume_refresh_s`` (changed
  keys are rewritten atomically; removed keys are left in place; None turns refreshing off,
  e.g. for benchmarks that count API requests).
* deletion: when the Pod gets a ``deletionTimestamp``: SIGTERM, wait the deletion grace
  period, SIGKILL the process group, then the final delete (grace 0, UID precondition). A Pod
  deleted with grace 0 is killed the same way, with its ``terminationGracePeriodSeconds``.
  A successor Pod with the same namespace and name starts only after the old process exited.

Each Pod gets its own loopback address, and all share the host's network namespace: a server
in a Pod must listen on its Pod IP (``status.podIP`` through the downward API), not 0.0.0.0,
or the second Pod of a StatefulSet cannot bind the same port.

Not supported: more than one container or init containers (the Pod is left alone and an error
recorded in :attr:`PodHarness.errors`), lifecycle hooks, startup probes, ``subPath`` mounts,
resource limits and security contexts (ignored). :attr:`PodHarness.history` records every
process the harness ran, for tests to assert on.

Where each concern lives (a package; everything public is re-exported here):

* ``harness``: :class:`PodHarness`: construction, start/stop, queries for tests, the Pod watch
* ``nodes``: the fake Nodes, their Ready status and Lease renewals
* ``binding``: which node admits a Pod (nodeSelector, required node affinity, not cordoned),
  the Binding
* ``podips``: one loopback Pod IP per Pod, locked against other harnesses on the machine
* ``relay``: a node's path to the API server (``partitionable=True``), which
  :meth:`PodHarness.lose_node` cuts while the node's processes keep running (a node lost:
  no Lease, status or kubelet work; :meth:`PodHarness.heal_node` kills the orphans)
* ``runner``: one Pod's thread: start, restart with backoff, liveness restarts, refreshes
* ``environment`` and ``volumes``: what the container sees: env, mounted files, tokens
* ``probes``: readiness and liveness probes; ``status``: the Pod status the harness reports
* ``deletion``: SIGTERM, grace, SIGKILL, and the final delete
* ``state`` and ``common``: the runner's shared state and the harness-wide vocabulary
"""

from connquota.testing.podharness.common import (
    CONTAINER_LOG,
    DEFAULT_NODE_NAME,
    LEASE_NAMESPACE,
    POD_ROOT_ENV,
    PodConfigError,
    ProcessRecord,
)
from connquota.testing.podharness.environment import expand_vars
from connquota.testing.podharness.harness import PodHarness
from connquota.testing.podharness.podips import POD_IP_LOCK_DIR
from connquota.testing.podharness.status import qos_class

__all__ = [
    "CONTAINER_LOG",
    "DEFAULT_NODE_NAME",
    "LEASE_NAMESPACE",
    "POD_IP_LOCK_DIR",
    "POD_ROOT_ENV",
    "PodConfigError",
    "PodHarness",
    "ProcessRecord",
    "expand_vars",
    "qos_class",
]
