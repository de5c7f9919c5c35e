"""Gateway throughput and added latency, as ratios against consumers connected straight to the
mock exchange in the same run.

    .venv/bin/python bench/gateway.py [--consumers 1,10,100] [--streams 50] [--rate 20]
                                      [--seconds 5] [--warmup 1] [--client-procs 1]

For each consumer count K, K consumers subscribe every stream (a) directly on the mock exchange
(one upstream connection each: the baseline) and (b) through one gateway process holding one
upstream connection. The mock exchange runs in this process; the gateway in its own; the
consumers in `--client-procs` separate processes, so the reading side competes with neither.

Consumers are minimal WebSocket clients (handshake, then frames parsed straight from the socket
buffer, the event time found by a byte search) so that reading 100k frames/s is not the
bottleneck of either path. Latency is per frame: the consumer's wall clock at receipt minus the
mock's event time `E` (the same machine clock in every process). Frames received during the
warm-up are not counted. Prints delivered messages/s, latency p50/p99 (and the worst consumer's
p50), the ratio gateway/direct, the added p50, and the load average (other work shares the
cores: compare figures taken at a similar load).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from connquota.api.limits import LimitName
from connquota.api.plan import ConnectionPlan
from connquota.demo.processes import GatewayProcess
from connquota.demo.scaling import scaled_profile
from connquota.exchanges import get_profile
from connquota.mockexchange.server import MockExchange
from connquota.testing.gateway_plans import bind_address, pod_plan

EVENT_TIME = b'"E":'


def masked_text_frame(text: str) -> bytes:
    """A client->server text frame (clients must mask; a zero mask keeps the payload as is)."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return header + b"\0\0\0\0" + payload


async def raw_consumer(url: str, subscribe: list[str], window: Window, lat: list[float]) -> int:
    """Connect, subscribe, then count frames and their latencies within `window`."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .encode()
    )  # fmt: skip
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"handshake refused: {head[:80]!r}")
    for request in subscribe:
        writer.write(masked_text_frame(request))
    await window.connected()
    start_at, end_at = window.start_at, window.end_at
    count = 0
    buf = b""
    try:
        while True:
            left = end_at - time.time()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 18), left)
            except TimeoutError:
                break
            if not chunk:
                break
            now_ms = time.time() * 1000
            counting = now_ms >= start_at * 1000
            buf = buf + chunk if buf else chunk
            pos, size = 0, len(buf)
            while size - pos >= 2:
                b1, n = buf[pos], buf[pos + 1] & 0x7F
                hdr = 2
                if n == 126:
                    if size - pos < 4:
                        break
                    n, hdr = struct.unpack_from("!H", buf, pos + 2)[0], 4
                elif n == 127:
                    if size - pos < 10:
                        break
                    n, hdr = struct.unpack_from("!Q", buf, pos + 2)[0], 10
                end = pos + hdr + n
                if end > size:
                    break
                opcode = b1 & 0x0F
                if opcode == 1 and counting:
                    i = buf.find(EVENT_TIME, pos + hdr, end)
                    if i >= 0:
                        j = i + 4
                        k = j
                        while 48 <= buf[k] <= 57:
                            k += 1
                        lat.append(now_ms - int(buf[j:k]))
                        count += 1
                elif opcode == 8:
                    return count
                elif opcode == 9:  # ping: answer with a pong carrying the same payload
                    payload = buf[pos + hdr : end]
                    writer.write(struct.pack("!BB", 0x8A, 0x80 | len(payload)) + b"\0" * 4)
                    writer.write(payload)
                pos = end
            buf = buf[pos:]
    finally:
        writer.close()
    return count


class Window:
    """The measuring window of one consumer process: from `warmup` seconds after its last
    consumer subscribed, for `seconds` (so a process that starts late measures as long)."""

    def __init__(self, consumers: int, warmup_s: float, seconds: float) -> None:
        self.waiting = consumers
        self.warmup_s = warmup_s
        self.seconds = seconds
        self.start_at = self.end_at = 0.0
        self.ready = asyncio.Event()

    async def connected(self) -> None:
        """One consumer subscribed; returns once every consumer of the process has."""
        self.waiting -= 1
        if self.waiting == 0:
            self.start_at = time.time() + self.warmup_s
            self.end_at = self.start_at + self.seconds
            self.ready.set()
        await self.ready.wait()


def pct(values: list[float], q: float) -> float:
    """The q-quantile of `values` (nan when empty)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def consume_main(args: argparse.Namespace) -> None:
    """Child process: run `--k` consumers, print one JSON line of results."""
    lats: list[list[float]] = [[] for _ in range(args.k)]
    window = Window(args.k, args.warmup, args.seconds)
    counts = await asyncio.gather(
        *(raw_consumer(args.url, json.loads(args.sub), window, lat) for lat in lats)
    )
    every = [x for lat in lats for x in lat]
    print(
        json.dumps(
            {
                "frames": sum(counts),
                "per_consumer": counts,
                "p50": pct(every, 0.5),
                "p99": pct(every, 0.99),
                "worst_p50": max((pct(lat, 0.5) for lat in lats if lat), default=float("nan")),
                "samples": every[:: max(1, len(every) // 20000)],
            }
        )
    )


async def measure(url: str, subscribe: list[str], k: int, args: argparse.Namespace) -> dict:
    """K consumers in `--client-procs` processes; delivered frames/s and latency quantiles."""
    procs = max(1, min(args.client_procs, k))
    shares = [k // procs + (1 if i < k % procs else 0) for i in range(procs)]
    children = []
    for n in shares:
        argv = ["--consume", "--url", url, "--sub", json.dumps(subscribe), "--k", str(n),
                "--warmup", str(args.warmup), "--seconds", str(args.seconds)]  # fmt: skip
        children.append(
            await asyncio.create_subprocess_exec(
                sys.executable, __file__, *argv, stdout=asyncio.subprocess.PIPE
            )
        )
    results = []
    for child in children:
        out, _ = await child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"consumer process failed ({child.returncode})")
        results.append(json.loads(out))
    frames = sum(r["frames"] for r in results)
    if os.environ.get("BENCH_DEBUG"):
        print("per consumer:", [c for r in results for c in r["per_consumer"]], file=sys.stderr)
    if procs == 1:
        p50, p99 = results[0]["p50"], results[0]["p99"]
    else:
        samples = [x for r in results for x in r["samples"]]
        p50, p99 = pct(samples, 0.5), pct(samples, 0.99)
    worst = max(r["worst_p50"] for r in results)
    return {"rate": frames / args.seconds, "p50": p50, "p99": p99, "worst_p50": worst}


async def main(args: argparse.Namespace) -> None:
    profile = get_profile("binance-spot")
    attempts = profile.limit(LimitName.CONNECTION_ATTEMPTS)
    assert attempts is not None
    generous = [attempts.model_copy(update={"value": 100_000, "windowSeconds": 1.0})]
    mock = MockExchange(profile, "127.0.0.1", 0, rate_per_stream_hz=args.rate, limits=generous)
    await mock.start()
    streams = [f"b{i}usdt@trade" for i in range(args.streams)]
    workdir = Path(tempfile.mkdtemp(prefix="connquota-bench-"))
    gw_profile = scaled_profile(mock.profile, 1.0, mock.url).model_copy(
        update={"connectTimeoutSeconds": 1.0}
    )
    plan = pod_plan(gw_profile, [ConnectionPlan(id="c0", address="a0", streams=streams)],
                    addresses=[bind_address(0)], margin_s=0.2)  # fmt: skip
    (workdir / "plan.json").write_text(plan.model_dump_json())
    gw = GatewayProcess(workdir / "plan.json", 0, workdir / "state")
    gw.start()
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            st = await gw.status(http)
            if st and st["streams"]["live"] == len(streams):
                break
            await asyncio.sleep(0.1)
    # Binance takes at most 200 streams per SUBSCRIBE (and 5 messages/s): a few requests.
    direct_sub = [
        json.dumps({"method": "SUBSCRIBE", "params": streams[i : i + 200], "id": i + 1})
        for i in range(0, len(streams), 200)
    ]
    gw_sub = [json.dumps({"op": "subscribe", "streams": streams})]
    print(
        f"load average at start: {os.getloadavg()[0]:.2f}; {args.streams} streams x "
        f"{args.rate:g} Hz per consumer, {args.seconds:g} s, {args.client_procs} client procs"
    )
    print(f"{'consumers':>9} {'direct msg/s':>13} {'gw msg/s':>10} {'ratio':>6} "
          f"{'direct p50/p99 ms':>18} {'gw p50/p99 ms':>15} {'gw worst p50':>12} "
          f"{'added p50 ms':>12} {'load':>5}")  # fmt: skip
    try:
        for k in [int(x) for x in args.consumers.split(",")]:
            d = await measure(mock.url + "/stream", direct_sub, k, args)
            g = await measure(gw.ws_url, gw_sub, k, args)
            ratio = g["rate"] / d["rate"] if d["rate"] else float("nan")
            print(f"{k:>9} {d['rate']:>13.0f} {g['rate']:>10.0f} {ratio:>6.2f} "
                  f"{d['p50']:>8.1f}/{d['p99']:<9.1f} {g['p50']:>6.1f}/{g['p99']:<8.1f} "
                  f"{g['worst_p50']:>12.1f} {g['p50'] - d['p50']:>12.1f} "
                  f"{os.getloadavg()[0]:>5.2f}", flush=True)  # fmt: skip
    finally:
        await gw.stop()
        await mock.stop()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--consumers", default="1,10,100")
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--client-procs", type=int, default=1)
    # internal: the consumer child process
    ap.add_argument("--consume", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--sub", help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, help=argparse.SUPPRESS)
    return ap.parse_args()


if __name__ == "__main__":
    ns = parse_args()
    asyncio.run(consume_main(ns) if ns.consume else main(ns))
