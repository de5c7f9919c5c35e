"""The chaos suite's instruments (issue 17): what a scenario measures while it breaks things,
and the row it leaves in the table docs/reliability.md keeps.

- `StreamWatch` samples the mock exchange (the referee) every 50 ms from its own thread: which
  planned streams are subscribed upstream, on how many connections at once. It gives the most
  streams down at one moment, each stream's longest outage, and upstream duplicates (a stream
  subscribed on more than one connection beyond a make-before-break overlap).
- `SeqConsumer` reads a gateway pod's `/v1/ws` in a thread and counts gaps in each stream's
  `seq` (the gap detector) and the relay notices it gets.
- `ChaosRow` is one scenario's result; `record_row` appends it (one JSON line) to the file
  named by `CONNQUOTA_CHAOS_RESULTS` (default `.chaos-results.jsonl` at the repository root),
  which `hack/chaos-table.py` renders into docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from connquota.gateway.wsframe import text_frame

SAMPLE_S = 0.05
"""How often the watch samples the referee."""
OVERLAP_S = 5.0
"""How long a stream may be subscribed twice (a make-before-break move) before it counts as an
upstream duplicate."""
RESULTS_ENV = "CONNQUOTA_CHAOS_RESULTS"


class StreamWatch:
    """Planned streams as the exchange sees them, sampled every `SAMPLE_S` in a thread.

    `subscriptions` returns {connection id: streams subscribed on it} (the mock's view)."""

    def __init__(
        self, subscriptions: Callable[[], dict[str, frozenset[str]]], planned: Iterable[str]
    ) -> None:
        self._subscriptions = subscriptions
        self.planned = frozenset(planned)
        self.samples = 0
        self.max_down = 0
        self.longest_outage_s = 0.0
        self.duplicates = 0
        """Streams seen subscribed twice for longer than `OVERLAP_S` (each counted once)."""
        self.episodes: list[tuple[str, float, float]] = []
        """Every outage that ended: (stream, down since, back at), monotonic seconds."""
        self._down_since: dict[str, float] = {}
        self._twice_since: dict[str, float] = {}
        self._duplicated: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-watch", daemon=True)

    def __enter__(self) -> StreamWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def down_now(self) -> set[str]:
        """Planned streams not subscribed upstream at the last sample."""
        return set(self._down_since)

    def back_at(self, stream: str, after: float) -> float | None:
        """When `stream` was next subscribed upstream at or after `after` (monotonic): the end
        of the outage that covers `after` or starts within `OVERLAP_S` of it (a fault's effect
        reaches the exchange a moment later); `after` itself if there was none; None while
        that outage lasts."""
        for name, since, back in self.episodes:
            if name == stream and back >= after and since <= after + OVERLAP_S:
                return back
        down = self._down_since.get(stream)
        if down is not None and down <= after + OVERLAP_S:
            return None
        return after

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                subs = self._subscriptions()
            except Exception:  # the referee busy or stopping: the next sample decides
                self._stop.wait(SAMPLE_S)
                continue
            self._observe(subs, time.monotonic())
            self._stop.wait(SAMPLE_S)

    def _observe(self, subs: dict[str, frozenset[str]], now: float) -> None:
        counts: dict[str, int] = {}
        for streams in subs.values():
            for stream in streams:
                counts[stream] = counts.get(stream, 0) + 1
        self.samples += 1
        down = [s for s in self.planned if counts.get(s, 0) == 0]
        self.max_down = max(self.max_down, len(down))
        for stream in self.planned:
            if counts.get(stream, 0) == 0:
                self._down_since.setdefault(stream, now)
            elif stream in self._down_since:
                since = self._down_since.pop(stream)
                self.longest_outage_s = max(self.longest_outage_s, now - since)
                self.episodes.append((stream, since, now))
            if counts.get(stream, 0) > 1:
                since = self._twice_since.setdefault(stream, now)
                if now - since > OVERLAP_S and stream not in self._duplicated:
                    self._duplicated.add(stream)
                    self.duplicates += 1
            else:
                self._twice_since.pop(stream, None)
        for since in self._down_since.values():
            self.longest_outage_s = max(self.longest_outage_s, now - since)


class SeqConsumer:
    """A `/v1/ws` consumer of `streams` on one gateway pod, in a thread: each stream's gateway
    `seq` and exchange trade id (`t`, where the data has one), the gaps in `seq` (a jump of
    more than one: the gap detector), relay notices, and error frames or a lost socket in
    `errors`."""

    def __init__(self, url: str, streams: list[str]) -> None:
        self.url = url
        self.streams = streams
        self.seqs: dict[str, list[int]] = {s: [] for s in streams}
        self.trade_ids: dict[str, list[int]] = {s: [] for s in streams}
        self.trade_times: dict[str, list[float]] = {s: [] for s in streams}
        """Monotonic receive time of each entry of `trade_ids` (to place a break in time)."""
        self.frames = 0
        self.gaps = 0
        self.notices: list[dict[str, Any]] = []
        self.errors: list[Any] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="seq-consumer", daemon=True)
        self._thread.start()

    @classmethod
    def on_pod(cls, ip: str, streams: list[str]) -> SeqConsumer:
        """The consumer of the gateway pod at `ip` (its consumer port)."""
        return cls(f"ws://{ip}:8080/v1/ws", streams)

    def _run(self) -> None:
        from websockets.sync.client import connect

        try:
            with connect(self.url, open_timeout=10) as ws:
                ws.send(json.dumps({"op": "subscribe", "streams": self.streams, "id": 1}))
                while not self._stop.is_set():
                    try:
                        doc = json.loads(ws.recv(timeout=0.5))
                    except TimeoutError:
                        continue
                    with self._lock:
                        self._take(doc)
        except Exception as exc:  # the pod went away: reported, the scenario decides
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _take(self, doc: dict[str, Any]) -> None:
        if "seq" in doc:
            seqs = self.seqs.setdefault(doc["stream"], [])
            if seqs and doc["seq"] != seqs[-1] + 1:
                self.gaps += 1
            seqs.append(doc["seq"])
            data = doc.get("data")
            if isinstance(data, dict) and "t" in data:
                self.trade_ids.setdefault(doc["stream"], []).append(data["t"])
                self.trade_times.setdefault(doc["stream"], []).append(time.monotonic())
            self.frames += 1
        elif "notice" in doc:
            self.notices.append(doc)
        elif "error" in doc:
            self.errors.append(doc)

    def trade_id_breaks(self, stream: str) -> list[tuple[int, int, float]]:
        """Where `stream`'s exchange trade ids are not consecutive: (previous id, next id,
        monotonic receive time of the next), for a failure message that says when."""
        with self._lock:
            ids, times = self.trade_ids.get(stream, []), self.trade_times.get(stream, [])
            return [
                (ids[i - 1], ids[i], times[i])
                for i in range(1, len(ids))
                if ids[i] != ids[i - 1] + 1
            ]

    def counts(self) -> dict[str, int]:
        """Frames received per stream so far."""
        with self._lock:
            return {s: len(v) for s, v in self.seqs.items()}

    def all_grew(self, since: dict[str, int], by: int) -> bool:
        """Every stream got at least `by` frames more than `since` counted."""
        now = self.counts()
        return all(now.get(s, 0) >= since.get(s, 0) + by for s in self.streams)

    def noticed(self, kind: str) -> set[str]:
        """Streams a relay notice of `kind` (relay_lost, relay_restored) named."""
        with self._lock:
            return {n["stream"] for n in self.notices if n["notice"] == kind}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the consumer thread did not stop"


class ConsumerFlood:
    """A consumer flood (scenario 12), in a thread with its own event loop: `readers`
    `/v1/ws` consumers that each read 2 streams and count `seq` gaps, and `idle` consumers
    that subscribe to every stream and then never read (a 4 KiB receive buffer, so the
    gateway's queue for them fills within seconds). All connect at once, spread over `urls`.
    """

    def __init__(self, urls: list[str], streams: list[str], readers: int, idle: int) -> None:
        self.urls, self.streams = urls, streams
        self.readers, self.idle = readers, idle
        self.acked = 0
        """Readers whose subscription was acknowledged."""
        self.idle_open = 0
        """Idle consumers whose handshake and subscribe went through."""
        self.frames = 0
        self.gaps = 0
        self.reader_errors: list[str] = []
        self.last: dict[tuple[int, str], int] = {}
        self.frames_since: dict[int, int] = {}
        """Per reader: frames since `mark()`."""
        self._stop: Any = None
        self._loop: Any = None
        self._thread = threading.Thread(target=self._run, name="consumer-flood", daemon=True)
        self._thread.start()

    def mark(self) -> None:
        """Start counting each reader's frames afresh (e.g. after an upstream disconnect)."""
        self.frames_since = {i: 0 for i in range(self.readers)}

    def readers_fed_since_mark(self) -> int:
        return sum(1 for n in self.frames_since.values() if n > 0)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        import asyncio

        asyncio.run(self._main())

    async def _main(self) -> None:
        import asyncio

        import aiohttp

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            tasks = [asyncio.create_task(self._reader(http, i)) for i in range(self.readers)]
            tasks += [asyncio.create_task(self._idle(i)) for i in range(self.idle)]
            await self._stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _reader(self, http: Any, i: int) -> None:
        import aiohttp

        picked = [self.streams[i % len(self.streams)], self.streams[(i + 1) % len(self.streams)]]
        try:
            async with http.ws_connect(
                self.urls[i % len(self.urls)], timeout=aiohttp.ClientWSTimeout(ws_close=5)
            ) as ws:
                await ws.send_str(json.dumps({"op": "subscribe", "streams": picked, "id": 1}))
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    doc = json.loads(msg.data)
                    if doc.get("op") == "subscribed":
                        self.acked += 1
                    elif "seq" in doc:
                        key = (i, doc["stream"])
                        last = self.last.get(key)
                        if last is not None and doc["seq"] != last + 1:
                            self.gaps += 1
                        self.last[key] = doc["seq"]
                        self.frames += 1
                        if i in self.frames_since:
                            self.frames_since[i] += 1
                if not self._stop.is_set():
                    self.reader_errors.append(f"reader {i} closed: {ws.close_code}")
        except Exception as exc:  # reported: the scenario asserts there are none
            if not self._stop.is_set():
                self.reader_errors.append(f"reader {i}: {type(exc).__name__}: {exc}")

    async def _idle(self, i: int) -> None:
        import asyncio
        import base64
        import socket
        from urllib.parse import urlsplit

        url = urlsplit(self.urls[i % len(self.urls)])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (url.hostname, url.port)), 30)
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            )
            await loop.sock_sendall(sock, request.encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 1), 30)
                if not chunk:
                    return
                head += chunk
            if not head.startswith(b"HTTP/1.1 101"):
                return
            body = json.dumps({"op": "subscribe", "streams": self.streams, "id": 1}).encode()
            await loop.sock_sendall(sock, masked_text_frame(body))
            self.idle_open += 1
            await self._stop.wait()  # never reads again
        except (OSError, TimeoutError):
            return
        finally:
            sock.close()


def masked_text_frame(payload: bytes) -> bytes:
    """One client-to-server WebSocket text frame: the gateway's own frame with the mask bit
    set and the payload masked (RFC 6455 requires it of clients)."""
    frame = text_frame(payload)
    head = bytearray(frame[: len(frame) - len(payload)])
    head[1] |= 0x80
    mask = os.urandom(4)
    return bytes(head) + mask + bytes(b ^ mask[j % 4] for j, b in enumerate(payload))


class ChaosRow(BaseModel):
    """One scenario's line in docs/reliability.md."""

    scenario: str
    tightestLimit: str
    peakPercent: float
    violations: int
    maxStreamsDown: int
    longestOutageSeconds: float
    boundSeconds: float
    upstreamDuplicates: int
    consumerGaps: int
    notes: str = ""


def results_path() -> Path:
    default = Path(__file__).resolve().parents[2] / ".chaos-results.jsonl"
    return Path(os.environ.get(RESULTS_ENV) or default)


def record_row(row: ChaosRow) -> None:
    """Append `row` to the results file (one JSON document per line)."""
    path = results_path()
    with path.open("a", encoding="utf-8") as out:
        out.write(row.model_dump_json() + "\n")


def read_rows(path: Path) -> list[ChaosRow]:
    """The rows in `path`, the last one of each scenario (a rerun replaces its row)."""
    rows: dict[str, ChaosRow] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = ChaosRow.model_validate_json(line)
            rows[row.scenario] = row
    return list(rows.values())


def render_table(rows: list[ChaosRow]) -> str:
    """The rows as the markdown table docs/reliability.md keeps."""
    head = (
        "| scenario | tightest limit | peak use | violations | streams down at most | longest "
        "outage | recovery bound | upstream duplicates | consumer seq gaps | notes |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r.scenario} | {r.tightestLimit} | {r.peakPercent:.0f}% | {r.violations} | "
        f"{r.maxStreamsDown} | {r.longestOutageSeconds:.1f} s | {r.boundSeconds:.1f} s | "
        f"{r.upstreamDuplicates} | {r.consumerGaps} | {r.notes} |\n"
        for r in rows
    )
    return head + body
