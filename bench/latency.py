"""Delivery latency through one gateway (issue 12 §4), as figures measured in one run.

    .venv/bin/python bench/latency.py [--seconds 5] [--warmup 1] [--fanout-rate 20]
        [--consumers 1000] [--slow 1] [--slow-mode never|slow] [--rate 10000]
        [--client-procs 1] [--event-loops asyncio,uvloop]

The source of bench/saturation.py paces a stream (`p<rate>usdt@miniTicker`) and stamps every
frame with its send time in microseconds; latency is a consumer's wall clock at receipt minus
that stamp (one machine, one clock). For each event loop of the gateway (a fresh gateway
process per part, holding the paced stream upstream):

1. Fan-out: consumers of one stream paced at `--fanout-rate` through one gateway
   (`/stream?streams=<stream>`), read by minimal WebSocket readers (an asyncio Protocol each,
   many per process, uvloop when installed, in `--client-procs` processes of their own):
   10 consumers, then `--consumers` (1,000), then `--consumers` of which `--slow` are slow
   (`never`: they never read, with a 4 KiB receive buffer; `slow`: they read one buffer a
   second). Prints the fast consumers' p50/p99 and the ratio of the last p99 to the
   10-consumer p99 (target <= 2), and the 1,000-consumer p99 without a slow one, so the cost of
   the fan-out itself and the slow consumers' effect read apart; and the gateway process's CPU
   time per frame it queued (from /proc and its /status) for each case.
2. Added latency at `--rate` (10,000) messages/s: a bare aiohttp client reads the stream
   straight from the source while the same client, in another process, reads it through the
   gateway (at the same time, so that other work on the machine weighs on both); prints both
   p50/p99 and the added p99 (target < 2 ms).
3. The machine's floor for the fan-out: a bare fan-out server (an asyncio Protocol per
   consumer, uvloop when installed, no routing, no envelope, no accounting: one prebuilt frame
   written to every socket per message) fed by the same source and read by the same readers,
   10 then `--consumers`. Its 1,000/10 ratio is what any single-process server reaches on this
   machine; the gateway's 1,000-consumer p99 over the floor's is how far the gateway is from it.

Prints, with two event loops, uvloop / asyncio of each p99.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp

from connquota.demo.processes import GatewayProcess
from connquota.gateway.wsframe import text_frame

sys.path.insert(0, str(Path(__file__).parent))
from saturation import (
    EVENT_LOOPS,
    SEND_TIME,
    gateways,
    paced_stream,
    run_child,
    source_process,
)

from gateway import Window, pct

SLOW_RCVBUF = 4096
"""Receive buffer of a slow consumer's socket (bytes): the gateway's backlog builds at once."""
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
"""RFC 6455's handshake GUID (the floor server answers handshakes by hand)."""
CONNECTS_AT_ONCE = 50
"""Handshakes a consumer process runs concurrently (the gateway's accept backlog is 128)."""


class LatencyReader(asyncio.Protocol):
    """One consumer: the WebSocket handshake, then every frame parsed straight from the
    socket's data; the send time of each text frame received within the window is turned
    into a latency (microseconds) in `lat`. A slow one never reads, or reads a buffer a second."""

    def __init__(self, host: str, target: str, window: Window, lat: list[int], slow: str) -> None:
        self.request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}"
            "\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.window = window
        self.lat = lat
        self.slow = slow
        self.upgraded = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.frames = 0
        self.closed_by_gateway = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before the handshake"))
        self.closed_by_gateway = True

    def data_received(self, data: bytes) -> None:
        now_us = time.time_ns() // 1000
        buf = self.buf + data if self.buf else data
        if not self.upgraded.done():
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if not sep:
                self.buf = buf
                return
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self.upgraded.set_exception(RuntimeError(f"refused: {head[:80]!r}"))
                return
            self.upgraded.set_result(None)
            buf = rest
            if self.slow == "never" and self.transport is not None:
                self.transport.pause_reading()
        window = self.window
        counting = window.start_at * 1e6 <= now_us < window.end_at * 1e6
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b1, n = buf[pos], buf[pos + 1] & 0x7F
            hdr = 2
            if n == 126:
                if size - pos < 4:
                    break
                n, hdr = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, hdr = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            end = pos + hdr + n
            if end > size:
                break
            opcode = b1 & 0x0F
            if opcode == 1:
                i = buf.find(SEND_TIME, pos + hdr, end)
                if counting and i >= 0:
                    j = k = i + len(SEND_TIME)
                    while 48 <= buf[k] <= 57:
                        k += 1
                    self.lat.append(now_us - int(buf[j:k]))
                    self.frames += 1
            elif opcode == 8:
                self.closed_by_gateway = True
            elif opcode == 9 and self.transport is not None:  # ping: pong, same payload
                self.transport.write(bytes([0x8A, 0x80 | n]) + b"\0\0\0\0" + buf[pos + hdr : end])
            pos = end
        self.buf = buf[pos:]
        if self.slow == "slow" and self.transport is not None:
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(1.0, self.transport.resume_reading)


async def open_reader(
    url: str, window: Window, lat: list[int], slow: str, gate: asyncio.Semaphore
) -> LatencyReader:
    """Connect one consumer (a slow one with a small receive buffer); returns it upgraded."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()
    async with gate:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if slow:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 10)
        _, reader = await loop.create_connection(
            lambda: LatencyReader(f"{host}:{port}", target, window, lat, slow),
            sock=sock,
        )
        await asyncio.wait_for(reader.upgraded, 10)
    await window.connected()
    return reader


async def fanout_main(args: argparse.Namespace) -> None:
    """Child process: `--k` consumers of `--url`, the first `--slow-k` of them slow; prints
    the fast ones' latencies (µs) and frame counts, and how many slow ones the gateway closed."""
    window = Window(args.k, args.warmup, args.seconds)
    fast_lat: list[int] = []
    gate = asyncio.Semaphore(CONNECTS_AT_ONCE)
    readers = await asyncio.gather(
        *(
            open_reader(
                args.url,
                window,
                [] if i < args.slow_k else fast_lat,
                args.slow_mode if i < args.slow_k else "",
                gate,
            )
            for i in range(args.k)
        )
    )
    await asyncio.sleep(max(0.0, window.end_at - time.time()) + 0.05)
    for reader in readers:
        if reader.transport is not None:
            reader.transport.abort()
    fast, slow = readers[args.slow_k :], readers[: args.slow_k]
    print(json.dumps({
        "lat": fast_lat,
        "min_frames": min((r.frames for r in fast), default=0),
        "max_frames": max((r.frames for r in fast), default=0),
        "fast_closed": sum(r.closed_by_gateway for r in fast),
        "slow_closed": sum(r.closed_by_gateway for r in slow),
    }))  # fmt: skip


async def bare_main(args: argparse.Namespace) -> None:
    """Child process: a bare aiohttp client reading `--url`; prints its latencies (µs)."""
    lat: list[int] = []
    marker = SEND_TIME.decode()
    async with aiohttp.ClientSession() as http, http.ws_connect(args.url, max_msg_size=0) as ws:
        start_us = (time.time() + args.warmup) * 1e6
        end_us = start_us + args.seconds * 1e6
        async for msg in ws:
            now_us = time.time_ns() // 1000
            if now_us >= end_us:
                break
            if msg.type == aiohttp.WSMsgType.TEXT and now_us >= start_us:
                i = msg.data.find(marker) + len(marker)
                j = msg.data.find(",", i)
                lat.append(now_us - int(msg.data[i:j]))
    print(json.dumps({"lat": lat}))


class FloorConsumer(asyncio.Protocol):
    """One consumer of the bare fan-out server: a WebSocket handshake answered by hand, then
    frames written by the server; nothing read after the handshake but pings' pongs, ignored."""

    def __init__(self, consumers: set[asyncio.Transport]) -> None:
        self.consumers = consumers
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport in self.consumers:
            return
        self.buf += data
        head, sep, _ = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.consumers.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.consumers.discard(cast(asyncio.Transport, self.transport))


async def floor_main(args: argparse.Namespace) -> None:
    """Child process: the bare fan-out server. Prints its port, then relays every text frame
    of `--url` to every consumer as one prebuilt frame, until its stdin closes."""
    loop = asyncio.get_running_loop()
    consumers: set[asyncio.Transport] = set()
    server = await loop.create_server(lambda: FloorConsumer(consumers), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    async with aiohttp.ClientSession() as http, http.ws_connect(args.url, max_msg_size=0) as ws:

        async def relay() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    frame = text_frame(msg.data.encode())
                    for transport in consumers:
                        transport.write(frame)

        task = asyncio.create_task(relay())
        await stdin.read()
        task.cancel()
    server.close()


async def floor(url: str, args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """The fan-out of the bare server: 10 then `--consumers` consumers of `url`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--floor", "--url", url,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    try:
        port = int(await asyncio.wait_for(proc.stdout.readline(), 30))
        floor_url = f"ws://127.0.0.1:{port}/"
        return {k: await fanout(floor_url, k, 0, args) for k in (10, args.consumers)}
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def fanout(url: str, k: int, slow: int, args: argparse.Namespace) -> dict[str, Any]:
    """`k` consumers of `url` (`slow` of them slow) in `--client-procs` processes."""
    procs = max(1, min(args.client_procs, k))
    shares = [k // procs + (1 if i < k % procs else 0) for i in range(procs)]
    slow_shares = [slow // procs + (1 if i < slow % procs else 0) for i in range(procs)]
    timing = ["--warmup", str(args.warmup), "--seconds", str(args.seconds)]
    results = await asyncio.gather(
        *(
            run_child(
                __file__,
                "--fanout",
                "--url",
                url,
                "--k",
                str(n),
                "--slow-k",
                str(s),
                "--slow-mode",
                args.slow_mode,
                *timing,
            )
            for n, s in zip(shares, slow_shares, strict=True)
        )
    )
    lat = [x for r in results for x in r["lat"]]
    return {
        "p50": pct(lat, 0.5) / 1000,
        "p99": pct(lat, 0.99) / 1000,
        "frames": (min(r["min_frames"] for r in results), max(r["max_frames"] for r in results)),
        "fast_closed": sum(r["fast_closed"] for r in results),
        "slow_closed": sum(r["slow_closed"] for r in results),
    }


async def gateway_work(gw: GatewayProcess) -> tuple[float, int]:
    """(CPU seconds the gateway process has used, frames it has queued to consumers)."""
    assert gw.proc is not None
    fields = Path(f"/proc/{gw.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    async with aiohttp.ClientSession() as http:
        st = await gw.status(http)
    return cpu_s, int((st or {}).get("framesOut", 0))


async def bare(url: str, args: argparse.Namespace) -> dict[str, float]:
    """p50 and p99 (ms) of a bare aiohttp client reading `url`."""
    timing = ["--warmup", str(args.warmup), "--seconds", str(args.seconds)]
    lat = (await run_child(__file__, "--bare", "--url", url, *timing))["lat"]
    return {"p50": pct(lat, 0.5) / 1000, "p99": pct(lat, 0.99) / 1000, "n": len(lat)}


async def measure(base: str, event_loop: str, args: argparse.Namespace) -> dict[str, float]:
    """Both parts on a gateway running `event_loop`; prints them, returns the p99s."""
    stream = paced_stream(args.fanout_rate)
    cases = [(10, 0), (args.consumers, 0), (args.consumers, args.slow)]
    rows = {}
    async with gateways(base, [stream], relay=False, event_loop=event_loop,
                        consumer_queue=args.consumer_queue) as (gw, _):  # fmt: skip
        url = gw.base_url.replace("http", "ws") + f"/stream?streams={stream}"
        for k, slow in cases:
            cpu_s, frames = await gateway_work(gw)
            rows[(k, slow)] = await fanout(url, k, slow, args)
            cpu_after, frames_after = await gateway_work(gw)
            rows[(k, slow)]["cpu_us"] = 1e6 * (cpu_after - cpu_s) / max(1, frames_after - frames)
    print(f"fan-out, one stream at {args.fanout_rate} msg/s, gateway on {event_loop} "
          f"(load {os.getloadavg()[0]:.2f}):")  # fmt: skip
    print(f"  {'consumers':>16} {'fast p50 ms':>11} {'fast p99 ms':>11} "
          f"{'frames/fast consumer':>20} {'closed fast/slow':>16} {'gateway CPU/frame':>17}")  # fmt: skip
    for (k, slow), r in rows.items():
        label = f"{k}" + (f" ({slow} {args.slow_mode})" if slow else "")
        print(f"  {label:>16} {r['p50']:>11.2f} {r['p99']:>11.2f} "
              f"{r['frames'][0]:>9}-{r['frames'][1]:<10} "
              f"{r['fast_closed']:>7}/{r['slow_closed']:<8} {r['cpu_us']:>14.1f} µs")  # fmt: skip
    base_p99 = rows[cases[0]]["p99"]
    many_p99, slow_p99 = rows[cases[1]]["p99"], rows[cases[2]]["p99"]
    print(f"  p99 {args.consumers} with {args.slow} slow / p99 10: {slow_p99 / base_p99:.2f} "
          f"(target <= 2); {args.consumers} without a slow one / 10: "
          f"{many_p99 / base_p99:.2f}")  # fmt: skip

    stream = paced_stream(args.rate)
    async with gateways(base, [stream], relay=False, event_loop=event_loop,
                        consumer_queue=args.consumer_queue) as (gw, _):  # fmt: skip
        # Both at once, so that what else runs on the machine meanwhile weighs on both.
        direct, through = await asyncio.gather(
            bare(f"{base}/stream?streams={stream}", args),
            bare(gw.base_url.replace("http", "ws") + f"/stream?streams={stream}", args),
        )
    added = through["p99"] - direct["p99"]
    print(f"added latency at {args.rate} msg/s, gateway on {event_loop} "
          f"(load {os.getloadavg()[0]:.2f}):")  # fmt: skip
    print(f"  bare aiohttp from the source: p50 {direct['p50']:.2f} ms, p99 {direct['p99']:.2f} "
          f"ms ({direct['n'] / args.seconds:.0f} msg/s)")  # fmt: skip
    print(f"  the same through the gateway: p50 {through['p50']:.2f} ms, p99 {through['p99']:.2f}"
          f" ms ({through['n'] / args.seconds:.0f} msg/s)")  # fmt: skip
    print(f"  added p99: {added:.2f} ms (target < 2 ms)")
    return {"fanout p99 10": base_p99, f"fanout p99 {args.consumers}": many_p99,
            "fanout p99 with slow": slow_p99, "added p99": added}  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    loops = args.event_loops.split(",")
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {args.seconds:g} s per figure, "
          f"{args.client_procs} consumer process(es)")  # fmt: skip
    figures = {}
    async with source_process() as base:
        for loop in loops:
            figures[loop] = await measure(base, loop, args)
        bare_fanout = await floor(f"{base}/stream?streams={paced_stream(args.fanout_rate)}", args)
    ten, many = bare_fanout[10], bare_fanout[args.consumers]
    print(f"floor: a bare fan-out server (no gateway work) at {args.fanout_rate} msg/s "
          f"(load {os.getloadavg()[0]:.2f}):")  # fmt: skip
    print(f"  10 consumers p50 {ten['p50']:.2f} ms, p99 {ten['p99']:.2f} ms; {args.consumers} "
          f"consumers p50 {many['p50']:.2f} ms, p99 {many['p99']:.2f} ms: "
          f"{many['p99'] / ten['p99']:.2f}x its 10-consumer p99")  # fmt: skip
    for loop in loops:
        gw_p99 = figures[loop][f"fanout p99 {args.consumers}"]
        print(f"  gateway on {loop}, {args.consumers} consumers: p99 {gw_p99:.2f} ms = "
              f"{gw_p99 / many['p99']:.2f}x the floor's")  # fmt: skip
    if set(loops) == set(EVENT_LOOPS):
        print("uvloop / asyncio:", ", ".join(
            f"{name} {figures['uvloop'][name] / figures['asyncio'][name]:.2f}"
            for name in figures["asyncio"]
        ))  # fmt: skip
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--fanout-rate", type=int, default=20, help="msg/s of the fanned-out stream")
    ap.add_argument("--consumers", type=int, default=1000)
    ap.add_argument("--slow", type=int, default=1, help="slow consumers among --consumers")
    ap.add_argument("--slow-mode", choices=["never", "slow"], default="never")
    ap.add_argument("--rate", type=int, default=10_000, help="msg/s for the added latency")
    ap.add_argument("--consumer-queue", type=int, default=10_000, help="the gateway's default")
    ap.add_argument("--client-procs", type=int, default=1)
    ap.add_argument("--event-loops", default="asyncio", help="asyncio, uvloop or both (a,b)")
    # internal: the child processes
    ap.add_argument("--fanout", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--slow-k", type=int, default=0, help=argparse.SUPPRESS)
    return ap.parse_args()


if __name__ == "__main__":
    ns = parse_args()
    if ns.fanout or ns.floor:
        try:  # the consumers' side is cheaper on uvloop when it is installed
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
        asyncio.run(fanout_main(ns) if ns.fanout else floor_main(ns))
    elif ns.bare:
        asyncio.run(bare_main(ns))
    else:
        asyncio.run(main(ns))
