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

`--event-loops asyncio,uvloop` measures 3-5 once per event loop of the gateways (a pair of
gateway processes each; the readers and the source stay on asyncio) and prints uvloop / asyncio.
`--rounds N` then measures bare aiohttp, gateway and relay hop again N times in turn (the
first event loop's gateways) and prints the median of the rounds' ratios: on a machine whose
load comes and goes, the figures of one round see the same load.
`--profile` then samples the (first) owner gateway with py-spy while the raw counter reads it
again, and prints its top functions (own and total share of the samples).

The source and gateway helpers (`source_process`, `gateways`, `run_child`) are shared with
bench/latency.py. A stream named `p<rate>usdt@miniTicker` is paced at <rate> messages/s, each
frame stamped with its send time in microseconds (`"ts"`), instead of saturating.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

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
EVENT_LOOPS = ("asyncio", "uvloop")
EVENT_LOOP_SITE = Path(__file__).parent / "eventloop"
"""Holds the sitecustomize that makes a gateway process run its loop on uvloop."""
PACED = re.compile(r"p(\d+)usdt@")
SEND_TIME = b'"ts":'
"""The paced frames' send time (wall clock, microseconds): the first field of their data."""


def paced_stream(rate_hz: int) -> str:
    """The name of a stream the source paces at `rate_hz` messages/s."""
    return f"p{rate_hz}usdt@miniTicker"


def _ws_frame(text: bytes) -> bytes:
    if len(text) > 125:
        return struct.pack("!BBH", 0x81, 126, len(text)) + text
    return struct.pack("!BB", 0x81, len(text)) + text


def _paced_frame(stream: str, now_us: int) -> bytes:
    """One combined miniTicker frame stamped with its send time."""
    symbol = stream.split("@", 1)[0].upper()
    return _ws_frame(f'{{"stream":"{stream}","data":{{"ts":{now_us},"e":"24hrMiniTicker",'
                     f'"E":{now_us // 1000},"s":"{symbol}","c":"0.0010","o":"0.0010",'
                     f'"h":"0.0025","l":"0.0010","v":"10000","q":"18"}}}}'.encode())  # fmt: skip


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
        out.append(_ws_frame(text))
    return b"".join(out)


async def source_main(port: int) -> None:
    """Child process: the stream host. Any SUBSCRIBE is acknowledged; frames follow: as fast
    as the socket takes them for ordinary streams, at their rate for paced ones."""

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        transport = request.transport
        assert transport is not None
        saturating: list[str] = []
        senders: list[asyncio.Task[None]] = []

        def live() -> bool:
            return not ws.closed and not transport.is_closing()

        async def send() -> None:
            while live():
                transport.write(_frames(saturating))
                await request.writer.drain()

        async def send_paced(stream: str, rate: int) -> None:
            start, sent = time.perf_counter(), 0
            while live():
                due = int((time.perf_counter() - start) * rate) - sent
                if due > rate // 10 + 1:  # a stall of over 100 ms: skip, no burst
                    sent += due - 1
                    due = 1
                if due > 0:
                    transport.write(_paced_frame(stream, time.time_ns() // 1000) * due)
                    sent += due
                    await request.writer.drain()
                await asyncio.sleep(max(0.0, start + (sent + 1) / rate - time.perf_counter()))

        def add(streams: list[str]) -> None:
            for name in streams:
                paced = PACED.match(name)
                if paced:
                    senders.append(asyncio.create_task(send_paced(name, int(paced[1]))))
                elif name not in saturating:
                    saturating.append(name)
                    if len(saturating) == 1:
                        senders.append(asyncio.create_task(send()))

        add([s for s in request.query.get("streams", "").split("/") if s])
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                req = json.loads(msg.data)
                await ws.send_str(json.dumps({"result": None, "id": req.get("id")}))
                add(list(req.get("params", [])))
        for sender in senders:
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


async def run_child(script: str, *argv: str) -> dict[str, Any]:
    """Run `script` (a bench module) with `argv` in a child process; its one JSON line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, script, *argv, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} child failed ({proc.returncode})")
    doc: dict[str, Any] = json.loads(out)
    return doc


async def child(*argv: str) -> float:
    return float((await run_child(__file__, *argv))["rate"])


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


@contextlib.asynccontextmanager
async def source_process() -> AsyncIterator[str]:
    """The source in its own process, for the block; yields its base URL (`ws://...`)."""
    port = free_port()
    source = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).resolve()), "--source", str(port)
    )
    try:
        for _ in range(200):  # its port takes connections within 10 s
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        else:
            raise RuntimeError("the source did not start")
        yield f"ws://127.0.0.1:{port}"
    finally:
        source.kill()
        await source.wait()


@contextlib.contextmanager
def _event_loop_env(event_loop: str) -> Iterator[None]:
    """The environment a gateway process starts with to run on `event_loop` (its
    `asyncio.run` picks uvloop through bench/eventloop/sitecustomize.py)."""
    if event_loop not in EVENT_LOOPS:
        raise ValueError(f"unknown event loop {event_loop!r}")
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "CONNQUOTA_BENCH_EVENT_LOOP")}
    if event_loop == "uvloop":
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(EVENT_LOOP_SITE), saved["PYTHONPATH"]) if p
        )
        os.environ["CONNQUOTA_BENCH_EVENT_LOOP"] = "uvloop"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.asynccontextmanager
async def gateways(
    base: str,
    streams: list[str],
    *,
    relay: bool = True,
    event_loop: str = "asyncio",
    consumer_queue: int = 100_000,
) -> AsyncIterator[tuple[GatewayProcess, GatewayProcess | None]]:
    """An owner gateway holding `streams` upstream from the source at `base` and, with
    `relay`, a second one holding nothing that relays them from the owner; both live for the
    block, their loops on `event_loop`. Yields (owner, relaying gateway or None)."""
    workdir = Path(tempfile.mkdtemp(prefix="connquota-saturation-"))
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
    (workdir / "plan-0.json").write_text(owner_plan.model_dump_json())
    owner = GatewayProcess(workdir / "plan-0.json", 0, workdir / "state-0")
    procs = [owner]
    queue = ["--consumer-queue", str(consumer_queue)]
    hop = None
    if relay:
        relay_plan = pod_plan(profile, [], addresses=[bind_address(0)], margin_s=0.2, ordinal=1)
        (workdir / "plan-1.json").write_text(relay_plan.model_dump_json())
        hop = GatewayProcess(workdir / "plan-1.json", 1, workdir / "state-1")
        token = ["--peer-token-file", str(workdir / "token")]
        owner.extra_args = [*token, "--peer", hop.base_url]
        hop.extra_args = [*token, "--peer", owner.base_url, *queue]
        procs.append(hop)
    owner.extra_args += queue
    try:
        with _event_loop_env(event_loop):
            for gw in procs:
                gw.start()
        await wait_live(owner, len(streams))
        if hop is not None:
            await wait_linked(hop)
        yield owner, hop
    finally:
        for gw in procs:
            await gw.stop()


def top_functions(collapsed: str, n: int = 15) -> list[tuple[str, float, float]]:
    """(function, own share, total share) of py-spy's collapsed stacks (`--format raw`),
    the `n` largest by own share."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    return [(f, c / samples, total[f] / samples) for f, c in own.most_common(n)]


def _short(frame: str) -> str:
    """`func (path/to/module.py:line)` as `func (module.py)`; the line varies per sample."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({Path(path).name})" if path else name


async def profile_gateway(gw: GatewayProcess, url: str, sub: list[str], seconds: float) -> None:
    """Sample `gw` with py-spy while the raw counter reads `url` at saturation; print the top
    functions."""
    assert gw.proc is not None
    out = Path(tempfile.mkdtemp(prefix="connquota-pyspy-")) / "gateway.txt"
    spy = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(gw.proc.pid),
        "--duration", str(int(seconds)), "--rate", "200", "--format", "raw", "--nonblocking",
        "--output", str(out), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    rate = await child("--raw", url, json.dumps(sub), "--warmup", "0.5", "--seconds",
                       str(seconds + 1))  # fmt: skip
    await asyncio.wait_for(spy.wait(), seconds + 30)
    print(f"py-spy on the owner gateway ({rate:.0f} msg/s meanwhile; own and total share of "
          f"the samples):")  # fmt: skip
    print(f"| {'function':<58} | own | total |\n|---|---|---|")
    for name, own, total in top_functions(out.read_text()):
        print(f"| `{name}`{' ' * max(0, 56 - len(name))} | {own:.0%} | {total:.0%} |")


async def main(args: argparse.Namespace) -> None:
    streams = [f"s{i}usdt@miniTicker" for i in range(args.streams)]
    loops = args.event_loops.split(",")
    timing = ["--warmup", str(args.warmup), "--seconds", str(args.seconds)]
    sub = [json.dumps({"method": "SUBSCRIBE", "params": streams, "id": 1})]
    v1 = [json.dumps({"op": "subscribe", "streams": streams})]
    async with source_process() as base:
        print(f"load average at start: {os.getloadavg()[0]:.2f}; {len(streams)} stream(s), "
              f"{args.seconds:g} s per figure")  # fmt: skip
        rates: dict[str, float] = {}
        paired: list[tuple[float, float, float]] = []
        for loop in loops:
            suffix = "" if loops == ["asyncio"] else f" ({loop})"
            async with gateways(base, streams, event_loop=loop) as (owner, hop):
                assert hop is not None
                if not rates:  # read while the first owner holds the stream, as it reads too
                    rates["source"] = await child("--raw", f"{base}/ws", json.dumps(sub), *timing)
                    rates["bare aiohttp"] = await child(
                        "--bare", f"{base}/stream?streams={streams[0]}", *timing
                    )
                native = owner.base_url.replace("http", "ws") + "/ws"
                relayed = hop.base_url.replace("http", "ws") + "/ws"
                rates["gateway" + suffix] = await child("--raw", native, json.dumps(sub), *timing)
                rates["gateway /v1/ws" + suffix] = await child(
                    "--raw", owner.ws_url, json.dumps(v1), *timing
                )
                rates["relay hop" + suffix] = await child(
                    "--raw", relayed, json.dumps(sub), *timing
                )
                if args.rounds > 1 and loop == loops[0]:
                    paired = await alternate(base, streams[0], native, relayed, sub, args)
                if args.profile and loop == loops[0]:
                    await profile_gateway(owner, native, sub, args.seconds)
        for name, rate in rates.items():
            print(f"{name:>25}: {rate:>10.0f} msg/s")
        bare = rates["bare aiohttp"]
        for loop in loops:
            suffix = "" if loops == ["asyncio"] else f" ({loop})"
            gw, hop_rate = rates["gateway" + suffix], rates["relay hop" + suffix]
            print(f"gateway / bare aiohttp{suffix}: {gw / bare:.2f} (target >= 0.5)")
            print(f"relay hop / gateway{suffix}:    {hop_rate / gw:.2f} (target >= 0.6)")
        if args.rounds > 1:
            gw_bare = statistics.median(r[1] / r[0] for r in paired)
            hop_gw = statistics.median(r[2] / r[1] for r in paired)
            print(f"{args.rounds} alternating rounds (bare, gateway, relay hop; msg/s): "
                  + "; ".join(f"{b:.0f} {g:.0f} {h:.0f}" for b, g, h in paired))  # fmt: skip
            print(f"median of the rounds' ratios ({loops[0]}): gateway / bare aiohttp "
                  f"{gw_bare:.2f} (target >= 0.5), relay hop / gateway {hop_gw:.2f} "
                  "(target >= 0.6)")  # fmt: skip
        if set(loops) == set(EVENT_LOOPS):
            for name in ("gateway", "gateway /v1/ws", "relay hop"):
                gain = rates[f"{name} (uvloop)"] / rates[f"{name} (asyncio)"]
                print(f"{name} uvloop / asyncio: {gain:.2f}")
        print(f"load average at end: {os.getloadavg()[0]:.2f}")


async def alternate(
    base: str, stream: str, native: str, relayed: str, sub: list[str], args: argparse.Namespace
) -> list[tuple[float, float, float]]:
    """`--rounds` rounds of (bare aiohttp, gateway, relay hop), each figure right after the
    other, so that load that comes and goes on the machine weighs on the three of a round
    alike: the median of the rounds' ratios is what a busy machine can still compare."""
    timing = ["--warmup", str(args.warmup), "--seconds", str(args.seconds)]
    rounds = []
    for _ in range(args.rounds):
        bare = await child("--bare", f"{base}/stream?streams={stream}", *timing)
        gw = await child("--raw", native, json.dumps(sub), *timing)
        hop = await child("--raw", relayed, json.dumps(sub), *timing)
        rounds.append((bare, gw, hop))
    return rounds


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--event-loops", default="asyncio", help="asyncio, uvloop or both (a,b)")
    ap.add_argument("--profile", action="store_true", help="py-spy the owner gateway")
    ap.add_argument(
        "--rounds", type=int, default=1, help="then alternate bare/gateway/hop N times (median)"
    )
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
