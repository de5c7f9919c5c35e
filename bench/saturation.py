"""Per-message throughput at saturation, as ratios measured in one run (issue 12 §4).

    .venv/bin/python bench/saturation.py [--seconds 5] [--warmup 1] [--streams 1]

A source process (a minimal Binance stream host) sends pre-built combined frames as fast as
its socket takes them, with a fresh event time per batch and no exchange sequence (so no
message is ever taken for a duplicate). In turn, each in its own process:

1. `source`: a raw frame counter connected straight to the source: the source's ceiling;
2. `bare aiohttp`: an aiohttp WebSocket client reading the source (`async for msg in ws`);
3. `gateway`: the raw counter on a gateway's Binance endpoint (`/ws/<stream>`), the gateway
   holding the stream upstream from the source;
4. `gateway /v1/ws`: the same through connquota's tagged protocol;
5. `relay hop`: the raw counter on a second gateway that holds nothing and relays the stream
   from the first (`/v1/peer`).

Prints messages/s of each and the ratios the issue sets targets for: gateway / bare aiohttp
(>= 0.5) and relay hop / gateway (>= 0.6), with the load average (other work on the same
cores lowers every figure; the ratios are what compares).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).parent))
from connquota.api.limits import LimitName
from connquota.api.plan import ConnectionPlan
from connquota.demo.processes import GatewayProcess, free_port
from connquota.demo.scaling import scaled_profile
from connquota.exchanges import get_profile
from connquota.testing.gateway_plans import bind_address, pod_plan
from gateway import Window, raw_consumer

BATCH = 512
"""Frames the source builds and writes per call."""


def _frames(streams: list[str]) -> bytes:
    """One batch of combined miniTicker frames, round-robin over `streams`, event time now."""
    now = int(time.time() * 1000)
    out = []
    for i in range(BATCH):
        stream = streams[i % len(streams)]
        symbol = stream.split("@", 1)[0].upper()
        text = (f'{{"stream":"{stream}","data":{{"e":"24hrMiniTicker","E":{now},'
                f'"s":"{symbol}","c":"0.0010","o":"0.0010","h":"0.0025","l":"0.0010",'
                f'"v":"10000","q":"18"}}}}').encode()  # fmt: skip
        out.append(struct.pack("!BBH", 0x81, 126, len(text)) + text if len(text) > 125
                   else struct.pack("!BB", 0x81, len(text)) + text)  # fmt: skip
    return b"".join(out)


async def source_main(port: int) -> None:
    """Child process: the stream host. Any SUBSCRIBE is acknowledged; frames follow."""

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        subscribed: list[str] = []
        wanted = [s for s in request.query.get("streams", "").split("/") if s]
        subscribed += wanted
        sender: asyncio.Task[None] | None = None

        async def send() -> None:
            transport = request.transport
            assert transport is not None
            while not ws.closed and not transport.is_closing():
                transport.write(_frames(subscribed))
                await request.writer.drain()

        if subscribed:
            sender = asyncio.create_task(send())
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                req = json.loads(msg.data)
                subscribed += [s for s in req.get("params", []) if s not in subscribed]
                await ws.send_str(json.dumps({"result": None, "id": req.get("id")}))
                if sender is None and subscribed:
                    sender = asyncio.create_task(send())
        if sender is not None:
            sender.cancel()
        return ws

    app = web.Application()
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def bare_main(url: str, warmup: float, seconds: float) -> None:
    """Child process: an aiohttp client reading every message; prints messages/s."""
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        start_at = time.time() + warmup
        end_at = start_at + seconds
        count = 0
        async for msg in ws:
            now = time.time()
            if now >= end_at:
                break
            if msg.type == aiohttp.WSMsgType.TEXT and now >= start_at:
                count += 1
    print(json.dumps({"rate": count / seconds}))


async def raw_main(url: str, sub: list[str], warmup: float, seconds: float) -> None:
    """Child process: the raw frame counter; prints messages/s."""
    window = Window(1, warmup, seconds)
    count = await raw_consumer(url, sub, window, [])
    print(json.dumps({"rate": count / seconds}))


async def child(*argv: str) -> float:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, *argv, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} child failed ({proc.returncode})")
    return float(json.loads(out)["rate"])


async def wait_live(gw: GatewayProcess, streams: int) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            st = await gw.status(http)
            if st and st["streams"]["live"] == streams:
                return
            await asyncio.sleep(0.1)
    raise RuntimeError("the gateway did not go live")


async def wait_linked(gw: GatewayProcess) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            st = await gw.status(http)
            peers = ((st or {}).get("relay") or {}).get("peers", {})
            if peers and all(p["connected"] and p["holds"] for p in peers.values()):
                return
            await asyncio.sleep(0.1)
    raise RuntimeError("the relaying gateway found no peer")


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    source = await asyncio.create_subprocess_exec(sys.executable, __file__, "--source", str(port))
    workdir = Path(tempfile.mkdtemp(prefix="connquota-saturation-"))
    streams = [f"s{i}usdt@miniTicker" for i in range(args.streams)]
    base = f"ws://127.0.0.1:{port}"
    published = get_profile("binance-spot")
    # One attempt window of a second: the gateways' fresh start waits one window.
    limits = [
        lim.model_copy(update={"value": 100_000, "windowSeconds": 1.0})
        if lim.name == LimitName.CONNECTION_ATTEMPTS
        else lim
        for lim in published.limits
    ]
    profile = scaled_profile(published.model_copy(update={"limits": limits}), 1.0, base)
    (workdir / "token").write_text("bench-peer-token\n")
    owner_plan = pod_plan(profile, [ConnectionPlan(id="c0", address="a0", streams=streams)],
                          addresses=[bind_address(0)], margin_s=0.2)  # fmt: skip
    relay_plan = pod_plan(profile, [], addresses=[bind_address(0)], margin_s=0.2, ordinal=1)
    (workdir / "plan-0.json").write_text(owner_plan.model_dump_json())
    (workdir / "plan-1.json").write_text(relay_plan.model_dump_json())
    owner = GatewayProcess(workdir / "plan-0.json", 0, workdir / "state-0")
    relay = GatewayProcess(workdir / "plan-1.json", 1, workdir / "state-1")
    token = ["--peer-token-file", str(workdir / "token")]
    owner.extra_args = [*token, "--peer", relay.base_url, "--consumer-queue", "100000"]
    relay.extra_args = [*token, "--peer", owner.base_url, "--consumer-queue", "100000"]
    owner.start()
    relay.start()
    timing = ["--warmup", str(args.warmup), "--seconds", str(args.seconds)]
    sub = [json.dumps({"method": "SUBSCRIBE", "params": streams, "id": 1})]
    v1 = [json.dumps({"op": "subscribe", "streams": streams})]
    try:
        await wait_live(owner, len(streams))
        await wait_linked(relay)
        print(f"load average at start: {os.getloadavg()[0]:.2f}; {len(streams)} stream(s), "
              f"{args.seconds:g} s per figure")  # fmt: skip
        native = owner.base_url.replace("http", "ws") + "/ws"
        relayed = relay.base_url.replace("http", "ws") + "/ws"
        rates = {
            "source": await child("--raw", f"{base}/ws", json.dumps(sub), *timing),
            "bare aiohttp": await child("--bare", f"{base}/stream?streams={streams[0]}", *timing),
            "gateway": await child("--raw", native, json.dumps(sub), *timing),
            "gateway /v1/ws": await child("--raw", owner.ws_url, json.dumps(v1), *timing),
            "relay hop": await child("--raw", relayed, json.dumps(sub), *timing),
        }
        for name, rate in rates.items():
            print(f"{name:>15}: {rate:>10.0f} msg/s")
        bare, gw, hop = rates["bare aiohttp"], rates["gateway"], rates["relay hop"]
        print(f"gateway / bare aiohttp: {gw / bare:.2f} (target >= 0.5)")
        print(f"relay hop / gateway:    {hop / gw:.2f} (target >= 0.6)")
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
    finally:
        await owner.stop()
        await relay.stop()
        source.kill()
        await source.wait()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--streams", type=int, default=1)
    # internal: the child processes
    ap.add_argument("--source", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bare", nargs=1, help=argparse.SUPPRESS)
    ap.add_argument("--raw", nargs=2, help=argparse.SUPPRESS)
    return ap.parse_args()


if __name__ == "__main__":
    ns = parse_args()
    if ns.source:
        asyncio.run(source_main(ns.source))
    elif ns.bare:
        asyncio.run(bare_main(ns.bare[0], ns.warmup, ns.seconds))
    elif ns.raw:
        asyncio.run(raw_main(ns.raw[0], json.loads(ns.raw[1]), ns.warmup, ns.seconds))
    else:
        asyncio.run(main(ns))
