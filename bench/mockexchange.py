"""How many market-data messages per second the mock exchange can send on this machine.

Runs, in separate processes:
- a baseline: a bare aiohttp WebSocket server sending one pre-built Binance frame in a loop
  (the most aiohttp can push), read by the same clients;
- the mock exchange (binance-spot, combined streams), at rising per-stream rates, with one client
  on many streams and with N clients.
For each mock scenario it prints the highest demand the mock sustained (>= 95% delivered, no
connection dropped) and that rate as a ratio of the baseline measured in the same run.

    .venv/bin/python bench/mockexchange.py [--seconds 2] [--clients 8] [--streams 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

FRAME = (
    '{"stream":"btcusdt@trade","data":{"e":"trade","E":1672515782136,"s":"BTCUSDT","t":12345,'
    '"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}}'
)


async def serve_baseline(port_file: Path) -> None:
    """A bare aiohttp server: every connection gets FRAME as fast as aiohttp can send it."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)

        async def send_loop() -> None:
            try:
                while not ws.closed:
                    await ws.send_str(FRAME)
            except (ConnectionError, RuntimeError):
                pass

        sender = asyncio.create_task(send_loop())
        async for _ in ws:  # answers the client's close
            pass
        sender.cancel()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port_file.write_text(str(site._server.sockets[0].getsockname()[1]))  # type: ignore[union-attr]
    await asyncio.Event().wait()


def start_process(args: list[str], port_file: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server process and wait for the port it writes."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text()):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise SystemExit(f"server did not start: {args}")
        time.sleep(0.05)
    return process, int(port_file.read_text())


async def read_for(url: str, seconds: float, local_ip: str) -> tuple[int, bool]:
    """Messages received on one connection in ``seconds``; and whether it stayed open."""
    connector = aiohttp.TCPConnector(local_addr=(local_ip, 0))
    count = 0
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.ws_connect(url, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=1)) as ws,
    ):
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return count, True
            try:
                msg = await ws.receive(timeout=left)
            except TimeoutError:
                return count, True
            if msg.type == aiohttp.WSMsgType.TEXT:
                count += 1
            elif msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                return count, False


async def measure(urls: list[str], seconds: float) -> tuple[float, bool]:
    """Total messages per second over all ``urls`` (one client each), and whether all stayed open."""
    started = time.monotonic()
    results = await asyncio.gather(
        *(read_for(url, seconds, f"127.0.1.{i % 250 + 1}") for i, url in enumerate(urls))
    )
    elapsed = time.monotonic() - started
    return sum(c for c, _ in results) / elapsed, all(ok for _, ok in results)


async def set_rate(admin: str, rate_hz: float) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(admin + "/admin/rate", json={"ratePerStreamHz": rate_hz}) as response,
    ):
        response.raise_for_status()


async def sustained(
    base: str, clients: int, streams_each: int, seconds: float
) -> tuple[float, float]:
    """Highest per-connection demand delivered at >= 95% with no drop: (demand, delivered)/s."""
    best = (0.0, 0.0)
    for total in (2_000, 5_000, 10_000, 20_000, 30_000, 40_000, 60_000, 80_000, 160_000):
        rate_hz = total / (clients * streams_each)
        await set_rate(base.replace("ws://", "http://"), rate_hz)
        urls = []
        for c in range(clients):
            names = "/".join(f"s{c}x{i}usdt@trade" for i in range(streams_each))
            urls.append(f"{base}/stream?streams={names}")
        delivered, all_open = await measure(urls, seconds)
        print(
            f"  demand {total:>7}/s -> delivered {delivered:>9.0f}/s{'' if all_open else ' (dropped)'}"
        )
        if delivered < 0.95 * total or not all_open:
            break
        best = (float(total), delivered)
    return best


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-mockexchange-"))
    baseline_proc, baseline_port = start_process(
        [sys.executable, __file__, "--serve-baseline", str(tmp / "baseline.port")],
        tmp / "baseline.port",
    )
    limits = ["messagesPerConnection=1000/1", f"streamsPerConnection={max(1024, args.streams)}",
              "connectionAttempts:ip=100000/1", "concurrentConnections:ip=100000"]  # fmt: skip
    mock_cmd = [sys.executable, "-m", "connquota.cli", "mock-exchange", "--profile", "binance-spot",
                "--listen", "127.0.0.1:0", "--port-file", str(tmp / "mock.port"), "--log-level", "WARNING"]  # fmt: skip
    for spec in limits:
        mock_cmd += ["--limit", spec]
    mock_proc, mock_port = start_process(mock_cmd, tmp / "mock.port")
    try:
        base_url = f"ws://127.0.0.1:{baseline_port}/ws"
        one, _ = await measure([base_url], args.seconds)
        many, _ = await measure([base_url] * args.clients, args.seconds)
        print(
            f"baseline (bare aiohttp send loop): 1 client {one:.0f}/s, {args.clients} clients {many:.0f}/s"
        )
        mock = f"ws://127.0.0.1:{mock_port}"
        print(f"mock exchange, 1 client x {args.streams} streams:")
        _, got1 = await sustained(mock, 1, args.streams, args.seconds)
        per = max(1, args.streams // args.clients)
        print(f"mock exchange, {args.clients} clients x {per} streams:")
        _, got_n = await sustained(mock, args.clients, per, args.seconds)
        print()
        print(f"1 client:  sustained {got1:.0f} msg/s = {got1 / one:.2f} x baseline ({one:.0f}/s)")
        print(
            f"{args.clients} clients: sustained {got_n:.0f} msg/s = {got_n / many:.2f} x baseline ({many:.0f}/s)"
        )
    finally:
        for process in (baseline_proc, mock_proc):
            process.terminate()
            process.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per step")
    parser.add_argument("--clients", type=int, default=8, help="clients in the N-clients scenario")
    parser.add_argument("--streams", type=int, default=100, help="streams (split among clients)")
    parser.add_argument("--serve-baseline", metavar="PORT_FILE", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.serve_baseline:
        asyncio.run(serve_baseline(Path(parsed.serve_baseline)))
    else:
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        asyncio.run(main(parsed))
