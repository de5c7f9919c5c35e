"""A stand-in for kube-proxy in the pod harness: a Service's address for clients.

The harness runs pods as local processes on loopback Pod IPs; nothing routes a Service's
ClusterIP there, and EndpointSlices cannot hold loopback addresses. `ServiceProxy` listens on
one loopback address and forwards every new TCP connection to one of the Service's ready
endpoints, chosen as kube-proxy chooses them: the Pods its `spec.selector` selects that are
Ready and not terminating, at random, each connection on its own. So a client pointed at the
Service's address lands on any pod, as in a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from kubernetes import client


def ready_pod_ips(core: Any, namespace: str, service: str) -> list[str]:
    """Pod IPs of the ready, not terminating Pods the Service's selector selects."""
    selector = core.read_namespaced_service(service, namespace).spec.selector or {}
    label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    out = []
    for pod in core.list_namespaced_pod(namespace, label_selector=label_selector).items:
        if pod.metadata.deletion_timestamp is not None or not pod.status.pod_ip:
            continue
        conditions = pod.status.conditions or []
        if any(c.type == "Ready" and c.status == "True" for c in conditions):
            out.append(pod.status.pod_ip)
    return out


class ServiceProxy:
    """Forwards TCP connections on `host:port` to the Service's ready pods (`target_port` on
    each), in its own thread. `picked` counts the pod each connection went to."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        service: str,
        target_port: int,
        host: str = "127.0.0.1",
        choose: Callable[[list[str]], str] = random.choice,
    ) -> None:
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.service = service
        self.target_port = target_port
        self.host = host
        self.port = 0
        self.choose = choose
        self.picked: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="service-proxy", daemon=True)

    def start(self) -> ServiceProxy:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the service proxy did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._forward, self.host, 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ips = await asyncio.to_thread(ready_pod_ips, self.core, self.namespace, self.service)
            if not ips:
                return  # no endpoint: the connection is refused, as by kube-proxy's reject
            ip = self.choose(ips)
            self.picked[ip] += 1
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(ip, self.target_port), 5
            )
        except Exception:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    @property
    def address(self) -> str:
        """`host:port` clients connect to (the Service's address)."""
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
