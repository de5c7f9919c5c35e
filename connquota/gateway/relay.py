"""Relay: a consumer on any pod gets every stream of its quota, from the pod that holds it.

Each gateway keeps one `PeerLink` (a WebSocket to the peer's `/v1/peer`, see `peers.py`) per
other pod of its quota. Every peer announces the streams it holds (`have`), so finding a
stream's owner is a lookup, and the announcements follow the plans: when a stream moves to
another pod, the new owner announces it before the old one (the planner opens the new
subscription before it closes the old one) and the relaying pod subscribes it at the new
owner while the old one still delivers. The hub delivers each message once: by the
exchange's own sequence (`useq`) when the dialect has one, else from the older holder until
it is released, so consumers see consecutive `seq` through a move.

Relaying never opens anything upstream: a peer serves only what its own plan holds (I2 is
untouched), and the relaying pod's limiter is not involved.

When a link drops, the streams it delivered get a notice on `/v1/ws` consumers
(`{"notice":"relay_lost","stream":..,"peer":..}`) and resume, with `relay_restored`, as soon as
any peer announces them again (the link reconnects with capped, jittered backoff). Consumers
of the exchange's own protocol have no notice frame in that protocol: they see a pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from typing import Any

import aiohttp
import orjson

from connquota.gateway.hub import StreamHub

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0
CONNECT_TIMEOUT_S = 5.0
MAX_FRAME_BYTES = 16 * 1024 * 1024
STREAM_KEY = '{"stream":'
DATA_KEY = ',"data":'


class PeerLink:
    """One multiplexed WebSocket to a peer pod, kept open across failures."""

    def __init__(self, relay: Relay, url: str) -> None:
        self.relay = relay
        self.url = url.rstrip("/") + "/v1/peer"
        self.announced: set[str] = set()
        """Streams the peer said it holds (empty while disconnected)."""
        self.subscribed: set[str] = set()
        """Streams asked of the peer (sent again after a reconnect)."""
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.connected = False
        self._sends: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"PeerLink({self.url})"

    def subscribe(self, streams: list[str]) -> None:
        new = [s for s in streams if s not in self.subscribed]
        self.subscribed.update(new)
        if new:
            self._send(self._subscribe_request(new))

    def unsubscribe(self, streams: list[str]) -> None:
        gone = [s for s in streams if s in self.subscribed]
        self.subscribed.difference_update(gone)
        if gone:
            self._send({"op": "unsubscribe", "streams": gone})

    def _subscribe_request(self, streams: list[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"op": "subscribe", "streams": streams}
        if self.relay.hub.last_values is not None:
            body["lastValue"] = True  # the peer's newest message: consumers need not wait
        return body

    def _send(self, body: dict[str, Any]) -> None:
        ws = self.ws
        if ws is None or ws.closed:
            return  # sent again (as `subscribed`) once connected
        task = asyncio.get_running_loop().create_task(_send(ws, body))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Connect, read, reconnect with backoff, until cancelled."""
        failures = 0
        headers = {"Authorization": f"Bearer {self.relay.token}"}
        while True:
            try:
                async with session.ws_connect(
                    self.url,
                    headers=headers,
                    heartbeat=15.0,
                    max_msg_size=MAX_FRAME_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_close=CONNECT_TIMEOUT_S),
                ) as ws:
                    failures = 0
                    self.ws = ws
                    await self._read(ws)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.debug("peer %s unreachable: %s", self.url, exc, extra=self.relay.log_extra)
            finally:
                self.ws = None
                if self.connected:
                    self.connected = False
                    self.relay.on_link_down(self)
            failures += 1
            await asyncio.sleep(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**failures)))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        hub = self.relay.hub
        publish = hub.publish
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                if msg.type == aiohttp.WSMsgType.ERROR:
                    return
                continue
            text = msg.data
            cut = text.find(DATA_KEY) if text.startswith(STREAM_KEY) else -1
            try:
                # A data frame ends with its payload (peers.py builds it so): parse only the
                # head, splice the payload through as the exchange sent it.
                body = orjson.loads(text[:cut] + "}" if cut > 0 else text)
            except orjson.JSONDecodeError:
                continue
            if type(body) is not dict:
                continue
            if cut > 0:
                publish(
                    body["stream"], None, self, body.get("useq"), text[cut + len(DATA_KEY) : -1]
                )
            elif body.get("op") == "have":
                if body.get("reset"):
                    self._on_connected(ws, body.get("streams") or [])
                else:
                    self.relay.on_have(self, body.get("add") or [], body.get("remove") or [])
            elif "error" in body:
                log.warning("peer %s: %s", self.url, body["error"], extra=self.relay.log_extra)

    def _on_connected(self, ws: aiohttp.ClientWebSocketResponse, streams: list[str]) -> None:
        self.connected = True
        previous = self.announced
        self.announced = set()
        self.relay.on_have(self, streams, sorted(previous - set(streams)))
        wanted = [s for s in self.subscribed if s in self.announced]
        self.subscribed = set(wanted)
        if wanted:
            self._send(self._subscribe_request(wanted))
        log.info("peer %s connected: it holds %d streams", self.url, len(streams),
                 extra=self.relay.log_extra)  # fmt: skip


async def _send(ws: aiohttp.ClientWebSocketResponse, body: dict[str, Any]) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_str(json.dumps(body, separators=(",", ":")))


class Relay:
    """The hub's router: which peer holds which stream, and the relayed subscriptions."""

    def __init__(self, hub: StreamHub, token: str, log_extra: dict[str, str]) -> None:
        self.hub = hub
        self.token = token
        self.log_extra = log_extra
        self.links: dict[str, PeerLink] = {}
        self.routes: dict[str, dict[PeerLink, None]] = {}
        """stream -> the links whose peer announces it (in announcement order)."""
        self.wanted: set[str] = set()
        """Streams local consumers read that this pod does not hold."""
        self.active: dict[str, PeerLink] = {}
        """stream -> the link delivering it now."""
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        hub.router = self

    # -- peers ----------------------------------------------------------------------------

    def set_peers(self, urls: list[str]) -> None:
        """Keep one link per peer URL (started, or stopped for peers that are gone)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        for url in urls:
            if url not in self.links:
                link = self.links[url] = PeerLink(self, url)
                self._tasks[url] = asyncio.get_running_loop().create_task(
                    link.run(self._session), name=f"peer {url}"
                )
        for url in [u for u in self.links if u not in urls]:
            link = self.links.pop(url)
            self._tasks.pop(url).cancel()
            if link.connected:
                link.connected = False
                self.on_link_down(link)

    async def close(self) -> None:
        """Stop every link."""
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()

    def status(self) -> dict[str, Any]:
        """For `/status`: every peer link, and the streams relayed here now."""
        return {
            "peers": {
                url: {"connected": link.connected, "holds": len(link.announced),
                      "relayed": len(link.subscribed)}
                for url, link in sorted(self.links.items())
            },
            "relayed": len(self.active),
        }  # fmt: skip

    # -- the hub's router -------------------------------------------------------------------

    def has(self, stream: str) -> bool:
        return bool(self.routes.get(stream))

    def want(self, stream: str) -> None:
        if stream in self.wanted:
            return
        self.wanted.add(stream)
        self._route(stream)

    def unwant(self, stream: str) -> None:
        if stream not in self.wanted:
            return
        self.wanted.discard(stream)
        self.active.pop(stream, None)
        for link in self.routes.get(stream, {}):
            if stream in link.subscribed:
                link.unsubscribe([stream])
                self.hub.release(stream, link)

    def _route(self, stream: str) -> None:
        links = self.routes.get(stream)
        if not links:
            return
        link = next(iter(links))
        self.active[stream] = link
        link.subscribe([stream])

    # -- announcements ------------------------------------------------------------------------

    def on_have(self, link: PeerLink, added: list[str], removed: list[str]) -> None:
        """`link`'s peer now holds `added` and no longer `removed`."""
        for stream in added:
            link.announced.add(stream)
            self.routes.setdefault(stream, {})[link] = None
            if stream not in self.wanted and self._held_for_consumers(stream):
                # Moving from this pod to the peer (the new owner announces before this pod's
                # plan lets it go): subscribe it at the new owner now, so the consumers here
                # see no gap when the local subscription closes.
                self.wanted.add(stream)
            if stream not in self.wanted:
                continue
            if stream not in self.active:
                self._route(stream)
                if stream in self.hub.known:
                    # Held here too: both deliver until the local one is released, each
                    # message once (by the exchange's sequence); nothing was ever lost.
                    self.hub.claim(stream, link)
                else:
                    self.hub.notice(stream, _notice("relay_restored", stream, link))
            elif self.active[stream] is not link:
                # Make before break: the old owner still delivers; both hold the stream in
                # the hub, which delivers each message once (by the exchange's sequence).
                link.subscribe([stream])
                self.hub.claim(stream, link)
        for stream in removed:
            link.announced.discard(stream)
            self._forget(stream, link, unsubscribe=True)

    def _held_for_consumers(self, stream: str) -> bool:
        """Held upstream here, with local consumers."""
        return stream in self.hub.known and bool(self.hub.subscribers.get(stream))

    def on_link_down(self, link: PeerLink) -> None:
        """The link dropped: everything it announced is gone until it announces again."""
        for stream in sorted(link.announced):
            self._forget(stream, link, unsubscribe=False)
        link.announced.clear()

    def _forget(self, stream: str, link: PeerLink, unsubscribe: bool) -> None:
        links = self.routes.get(stream)
        if links is not None:
            links.pop(link, None)
            if not links:
                del self.routes[stream]
        if stream in link.subscribed:
            if unsubscribe:
                link.unsubscribe([stream])
            self.hub.release(stream, link)
        if self.active.get(stream) is not link:
            return
        del self.active[stream]
        successor = next(iter(self.routes.get(stream, {})), None)
        if successor is not None:
            self.active[stream] = successor
            successor.subscribe([stream])
        elif stream in self.wanted and stream not in self.hub.known:
            self.hub.notice(stream, _notice("relay_lost", stream, link))
            log.warning("relayed stream %s lost with peer %s", stream, link.url,
                        extra=self.log_extra)  # fmt: skip


def _notice(kind: str, stream: str, link: PeerLink) -> str:
    return json.dumps({"notice": kind, "stream": stream, "peer": link.url}, separators=(",", ":"))
