"""Plan application: turn the newest PodPlan into upstream connections, as a diff.

Unchanged connections (same id, address and credential) are not touched; their stream sets
are updated in place (a leaving stream lingers before its unsubscribe). Connections that left
the plan are closed before the new generation counts as enforced, so the generation the pod
reports is an honest acknowledgement that it holds no more than the new slices.
"""

from __future__ import annotations

import asyncio
import logging

from connquota.api.plan import ConnectionPlan, PodPlan, identities_of
from connquota.gateway.upstream import UpstreamConnection, UpstreamContext

log = logging.getLogger(__name__)


class Fleet:
    """The pod's upstream connections, kept equal to its current plan."""

    def __init__(self, ctx: UpstreamContext) -> None:
        self.ctx = ctx
        self.plan: PodPlan | None = None
        self.enforced_generation: int | None = None
        self.connections: dict[str, UpstreamConnection] = {}
        self._apply_lock = asyncio.Lock()

    async def apply(self, plan: PodPlan) -> None:
        """Enforce `plan`: slices first, then close, update and open connections."""
        async with self._apply_lock:
            ctx = self.ctx
            previous = self.plan
            self.plan = plan
            ctx.limiter.configure(plan)
            ctx.egress.set_addresses(plan.addresses)
            ctx.credentials = {c.name: c for c in plan.credentials}
            ctx.hub.set_known(s for c in plan.connections for s in c.streams)
            wanted: dict[str, ConnectionPlan] = {c.id: c for c in plan.connections}
            closing = []
            for conn_id, conn in list(self.connections.items()):
                new = wanted.get(conn_id)
                if (
                    new is None
                    or new.address != conn.address
                    or new.credential != conn.credential
                    or identities_of(ctx.credentials.get(new.credential or "")) != conn.identities
                ):
                    closing.append(conn)
                    del self.connections[conn_id]
            await asyncio.gather(*(c.stop() for c in closing))
            opened = updated = 0
            for conn_id, cp in wanted.items():
                held = self.connections.get(conn_id)
                if held is None:
                    conn = UpstreamConnection(ctx, cp)
                    self.connections[conn_id] = conn
                    conn.start()
                    opened += 1
                elif cp != held.plan:
                    held.update(cp)
                    updated += 1
            self.enforced_generation = plan.generation
            log.info(
                "plan generation %d applied: %d connections opened, %d updated, %d closed, "
                "%d unchanged",
                plan.generation,
                opened,
                updated,
                len(closing),
                len(wanted) - opened - updated,
                extra={**ctx.log_extra, "generation": str(plan.generation)},
            )
            del previous

    async def stop(self) -> None:
        """Close every connection one after another (no burst), with close code 1001."""
        async with self._apply_lock:
            for conn in list(self.connections.values()):
                await conn.stop(code=1001)
            self.connections.clear()

    def live_connections(self) -> int:
        """Connections with an open session."""
        return sum(1 for c in self.connections.values() if c.current is not None)

    def live_connections_by_key(self) -> dict[str, int]:
        """Open connections per 'ip/<address name>', 'account/<account id>' and
        'apiKey/<key id>'."""
        out: dict[str, int] = {}
        for c in self.connections.values():
            if c.current is None:
                continue
            out[f"ip/{c.address}"] = out.get(f"ip/{c.address}", 0) + 1
            for scope, key in c.identities:
                out[f"{scope.value}/{key}"] = out.get(f"{scope.value}/{key}", 0) + 1
        return out

    def live_streams(self) -> int:
        """Streams with an acknowledged subscription."""
        return self.ctx.hub.live_streams()

    def desired_streams(self) -> int:
        """Streams the plan gives this pod."""
        return len(self.ctx.hub.known)
