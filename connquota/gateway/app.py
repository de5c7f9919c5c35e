"""The gateway process: wires limiter, lease, plan source, fleet, hub and HTTP together.

Start-up order: HTTP server (probes answer at once), attempt log reloaded, plan applied as it
arrives (connections wait in the limiter), Lease (or lock) taken, then the limiter opens the
door. Shutdown (SIGTERM): readiness goes false, consumers get close code 1012, upstream
connections are closed one after another, the final report is written, the Lease released.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from connquota.api.plan import FORMAT_VERSION, QuotaRef
from connquota.api.report import GatewayReport
from connquota.gateway.attempt_log import AttemptLogFile, read_boot_id
from connquota.gateway.clock import SystemClock
from connquota.gateway.consumers import close_all
from connquota.gateway.egress import EgressPool
from connquota.gateway.fleet import Fleet
from connquota.gateway.http import build_app
from connquota.gateway.hub import StreamHub
from connquota.gateway.lease import KubeLease
from connquota.gateway.limiter import Limiter
from connquota.gateway.metrics import delivery_histogram, make_registry
from connquota.gateway.plan_source import PlanError
from connquota.gateway.relay import Relay
from connquota.gateway.reservations import Inheritance, ReservationBook
from connquota.gateway.tls import TlsFiles, keep_loaded, server_context
from connquota.gateway.upstream import ConnectionState, UpstreamContext, UpstreamSettings

log = logging.getLogger(__name__)


class OrdinalLease(Protocol):
    """FileLease or KubeLease."""

    held: bool
    taken: Inheritance | None
    """What the version of the fence this process replaced hands down (None standalone)."""

    async def acquire(self, on_wait: Any = None) -> None: ...
    async def keep(self, on_lost: Any, on_close: Any, on_regained: Any = None) -> None: ...
    async def publish(self, report_json: str) -> None: ...
    async def release(self) -> None: ...


@dataclass
class GatewaySettings:
    """Everything `connquota gateway` is configured with."""

    ordinal: int
    state_dir: Path
    pod: str = ""
    quota: str = ""
    namespace: str = ""
    host: str = "0.0.0.0"
    port: int = 8080
    consumer_token_file: Path | None = None
    tls: TlsFiles | None = None
    """Serve the consumer endpoints over TLS too, with this certificate (see `tls`)."""
    tls_port: int = 8443
    last_value_cache: bool = False
    """Keep each stream's newest message for consumers that ask for it when they subscribe."""
    peer_token_file: Path | None = None
    """The quota's peer token: with it, other pods may relay this pod's streams and this pod
    relays theirs (`peers`, `relay`)."""
    peers: list[str] = field(default_factory=list)
    """Base URLs of the quota's other gateway pods."""
    report_interval_s: float = 2.0
    max_loop_lag_s: float = 5.0
    consumer_queue_frames: int = 10_000
    slow_consumer_policy: str = "close"
    consumer_send_buffer_bytes: int = 0
    """SO_SNDBUF of every accepted connection (set on the listeners, which accepted sockets
    inherit); 0 leaves the kernel's autotuning (up to net.ipv4.tcp_wmem's maximum)."""
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)


class Gateway:
    """One gateway pod (or standalone process) for one ordinal of one quota."""

    def __init__(
        self,
        settings: GatewaySettings,
        plans: AsyncIterator[Any],
        lease: OrdinalLease,
        peers: AsyncIterator[list[str]] | None = None,
    ) -> None:
        self.settings = settings
        self.plans = plans
        self.lease = lease
        self.peers = peers
        """The quota's other pods as they come and go (in cluster); None: `settings.peers`."""
        self.clock = SystemClock()
        self.boot_id = read_boot_id()
        self.process_id = str(uuid.uuid4())
        log_file = AttemptLogFile(
            settings.state_dir / f"gateway-{settings.ordinal}.attempts.json", self.boot_id
        )
        self.limiter = Limiter(self.clock, log_file)
        if isinstance(lease, KubeLease):
            holder = lease.holder
            self.limiter.book = ReservationBook(
                self.clock, lease.write_record, lambda: holder, lease.renew_every_s
            )
        self.hub = StreamHub(
            settings.consumer_queue_frames, settings.slow_consumer_policy, settings.last_value_cache
        )
        self.egress = EgressPool()
        self.ctx = UpstreamContext(
            limiter=self.limiter,
            hub=self.hub,
            egress=self.egress,
            settings=settings.upstream,
            log_extra={"quota": settings.quota, "pod": settings.pod},
        )
        self.fleet = Fleet(self.ctx)
        self.delivery_seconds = delivery_histogram()
        self.registry = make_registry(self)
        self.consumer_token: str | None = None
        self.peer_token: str | None = None
        self.relay: Relay | None = None
        self.consumer_sockets: set[web.WebSocketResponse] = set()
        self.slow_consumers = 0
        self.loop_lag_s = 0.0
        self.draining = False
        self.message = "starting"
        self.lease_message = "not yet taken"
        self.plan_error = ""
        """Why the newest plan text was not applied ("" when the newest plan is in force)."""
        self.http_port: int | None = None
        self.https_port: int | None = None
        self._stop = asyncio.Event()
        self._last_report: str | None = None

    # -- state for probes, status and report -----------------------------------------------

    def ready(self) -> bool:
        """Can serve consumers: a plan is applied and the gateway is not shutting down."""
        return self.fleet.enforced_generation is not None and not self.draining

    def last_upstream_data_age_s(self) -> float | None:
        """Seconds since the last upstream data message, or None before the first."""
        if self.hub.last_data_mono is None:
            return None
        return time.monotonic() - self.hub.last_data_mono

    def report(self) -> GatewayReport:
        """The report for the Lease (or the report file)."""
        plan = self.fleet.plan
        quota = (
            plan.quota
            if plan
            else QuotaRef(namespace=self.settings.namespace or "-", name=self.settings.quota or "-")
        )
        return GatewayReport(
            planFormats=[FORMAT_VERSION],
            quota=quota,
            pod=self.settings.pod,
            ordinal=self.settings.ordinal,
            bootId=self.boot_id,
            planGeneration=self.fleet.enforced_generation or 0,
            ready=self.ready(),
            connections=self.fleet.live_connections(),
            streams=self.fleet.live_streams(),
            attempts=self.limiter.attempt_windows(),
            quarantines=self.limiter.quarantines(),
            throttles=self.limiter.throttles(),
            egressChecks=self.egress.results(),
            liveConnections=self.fleet.live_connections_by_key(),
            authRefused={
                c.credential: (c.auth_error or "refused")[:256]
                for c in self.fleet.connections.values()
                if c.credential and c.state == ConnectionState.AUTH_REFUSED
            },
            message=self.message,
        )

    def _connection_status(self, conn: Any) -> str:
        """What the connection waits for now (the limiter's live reason while it waits)."""
        if conn.state in (ConnectionState.WAITING, ConnectionState.CONNECTING):
            why = self.limiter.waiting.get(getattr(conn, "opening_slot_id", ""))
            if why:
                return str(why)
        return str(conn.status)

    def status(self) -> dict[str, Any]:
        """The /status document."""
        conns = []
        for conn in self.fleet.connections.values():
            conns.append(
                {
                    "id": conn.id,
                    "address": conn.address,
                    "credential": conn.credential,
                    "state": conn.state,
                    "status": self._connection_status(conn),
                    "streams": len(conn.streams),
                    "liveStreams": conn.live_streams(),
                    "sessionsOpened": conn.sessions_opened,
                }
            )
        return {
            "pod": self.settings.pod,
            "ordinal": self.settings.ordinal,
            "bootId": self.boot_id,
            "ready": self.ready(),
            "leaseHeld": self.lease.held,
            "lease": self.lease_message,
            "message": self.message,
            "planError": self.plan_error,
            "attemptLog": self.limiter.start_reason,
            "leaseWrites": dict(getattr(self.lease, "writes", {})),
            "planGeneration": self.fleet.enforced_generation,
            "streams": {
                "desired": self.fleet.desired_streams(),
                "live": self.fleet.live_streams(),
            },
            "usage": self.limiter.usage(),
            "limiterCounts": {
                "attempts": {f"{s}/{k}": n for (s, k), n in self.limiter.stats.attempts.items()},
                "messages": dict(self.limiter.stats.messages),
                "echoRequests": self.egress.echo_requests,
            },
            "quarantines": [q.to_wire() for q in self.limiter.quarantines()],
            "waiting": dict(self.limiter.waiting),
            "connections": conns,
            "consumers": len(self.hub.consumers),
            "relay": self.relay.status() if self.relay is not None else None,
            "messagesIn": self.hub.messages_in,
            "framesOut": self.hub.frames_out,
            "egressReport": [r.to_wire() for r in self.egress.results()],
            "egress": {
                n: {
                    "state": c.state.value,
                    "usable": c.usable,
                    "seen": c.seen,
                    "message": c.message,
                }
                for n, c in self.egress.checks.items()
            },
            "proxies": self.egress.proxy_status(),
            "upstreamEndpoints": self.ctx.endpoints.status(),
        }

    # -- tasks --------------------------------------------------------------------------------

    async def _follow_peers(self, relay: Relay, peers: AsyncIterator[list[str]]) -> None:
        async for urls in peers:
            relay.set_peers(urls)

    async def _apply_plans(self) -> None:
        async for plan in self.plans:
            if isinstance(plan, PlanError):
                self.plan_error = str(plan)
                kept = self.fleet.enforced_generation
                self.message = f"plan ignored ({plan}); " + (
                    f"keeping plan generation {kept}" if kept is not None else "no plan yet"
                )
                continue
            await self.fleet.apply(plan)
            self.plan_error = ""
            self.message = f"enforcing plan generation {plan.generation}"

    async def _take_lease(self) -> None:
        """Hold the fence: no attempt before it is held; after losing it, take it anew."""

        def waiting(why: str) -> None:
            self.lease_message = why
            self.limiter.set_attempts_allowed(False, why)

        def lost() -> None:
            self.lease_message = "not renewed: new attempts stopped"
            self.limiter.set_attempts_allowed(False, "lease not renewed")

        def regained() -> None:
            self.lease_message = "held"
            self.limiter.set_attempts_allowed(True)

        async def close() -> None:
            self.lease_message = "lost: closing connections"
            count = len(self.fleet.connections)
            started = time.monotonic()
            await self.fleet.stop()
            self.lease_message = "lost: connections closed"
            log.warning(
                "lease lost: %d upstream connections closed in %.2fs",
                count,
                time.monotonic() - started,
            )

        while True:
            self.limiter.set_attempts_allowed(False, "waiting for the lease")
            await self.lease.acquire(on_wait=waiting)
            # Only the holder reads the attempt log: a predecessor may have written it until now.
            self.limiter.load_state(self.lease.taken)
            self.limiter.set_attempts_allowed(True)
            self.lease_message = "held"
            if self.fleet.plan is not None and not self.fleet.connections:
                await self.fleet.apply(self.fleet.plan)  # reopen after a lost lease
            await self.lease.keep(lost, close, regained)

    async def _report_loop(self) -> None:
        while True:
            await self._publish_report()
            await asyncio.sleep(self.settings.report_interval_s)

    async def _publish_report(self) -> None:
        try:
            text = json.dumps(self.report().to_wire(), sort_keys=True, separators=(",", ":"))
        except Exception:
            # A report that cannot be built must not end the report loop (the operator would
            # wait for this pod's acknowledgement for ever): log it and try again next round.
            log.exception("the gateway report could not be built")
            return
        if text != self._last_report:
            with contextlib.suppress(Exception):
                await self.lease.publish(text)
                self._last_report = text

    async def _lag_monitor(self) -> None:
        interval = 0.5
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(interval)
            self.loop_lag_s = max(0.0, time.monotonic() - t0 - interval)

    def stop(self) -> None:
        """Ask the gateway to shut down gracefully."""
        self._stop.set()

    async def run(self) -> int:
        """Run until stopped; returns the exit code."""
        if self.settings.consumer_token_file is not None:
            self.consumer_token = (
                await asyncio.to_thread(self.settings.consumer_token_file.read_text)
            ).strip()
        if self.settings.peer_token_file is not None:
            token = await asyncio.to_thread(self.settings.peer_token_file.read_text)
            self.peer_token = token.strip() or None
        if self.peer_token:
            self.relay = Relay(self.hub, self.peer_token, self.ctx.log_extra)
            self.relay.set_peers(self.settings.peers)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        runner = web.AppRunner(build_app(self), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.http_port = server.sockets[0].getsockname()[1]
            self._bound_send_buffers(server.sockets)
        log.info("serving on %s:%s", self.settings.host, self.http_port)
        tasks = [
            asyncio.create_task(self._lag_monitor(), name="lag"),
            asyncio.create_task(self._take_lease(), name="lease"),
            asyncio.create_task(self._apply_plans(), name="plans"),
            asyncio.create_task(self._report_loop(), name="report"),
            asyncio.create_task(self.egress.probe_unreachable_proxies(), name="proxy-probe"),
        ]
        if self.settings.tls is not None:
            tasks.append(await self._serve_tls(runner, self.settings.tls))
        if self.relay is not None and self.peers is not None:
            tasks.append(asyncio.create_task(self._follow_peers(self.relay, self.peers)))
        stopper = asyncio.create_task(self._stop.wait())
        await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        code = 0
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("gateway task %s failed: %r", task.get_name(), task.exception())
                code = 1
        await self.shutdown(tasks, runner)
        return code

    def _bound_send_buffers(self, listeners: Any) -> None:
        """Give every connection accepted from now on a fixed send buffer (Linux copies the
        listener's SO_SNDBUF to each accepted socket): a consumer that stops reading then
        holds at most that much kernel memory, and its frames back up into its own queue, where
        the slow-consumer policy sees them, within seconds instead of megabytes later."""
        size = self.settings.consumer_send_buffer_bytes
        if size <= 0:
            return
        for sock in listeners:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)

    async def _serve_tls(self, runner: web.AppRunner, files: TlsFiles) -> asyncio.Task[None]:
        """The TLS listener; returns the task that reloads its certificate when it changes."""
        context = await asyncio.to_thread(server_context, files)
        site = web.TCPSite(
            runner, self.settings.host, self.settings.tls_port, ssl_context=context.listener
        )
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.https_port = server.sockets[0].getsockname()[1]
            self._bound_send_buffers(server.sockets)
        log.info("serving TLS on %s:%s", self.settings.host, self.https_port)
        return asyncio.create_task(keep_loaded(context), name="tls")

    async def shutdown(self, tasks: list[asyncio.Task[Any]], runner: web.AppRunner) -> None:
        """Readiness false, consumers moved away, upstream closed one by one, report, lease."""
        self.draining = True
        self.message = "shutting down"
        log.info("shutting down: consumers told to reconnect elsewhere")
        await close_all(self)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.relay is not None:
            await self.relay.close()
        await self.fleet.stop()
        await self._publish_report()
        await self.egress.close()
        await self.lease.release()
        await runner.cleanup()
