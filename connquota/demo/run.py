"""Run the demo: mock exchange, gateway processes, consumers, a scenario and a live view.

The scenario: start-up (every gateway waits one window, then opens its connections within
its slices), steady state, a mass disconnect (every connection dropped at once), a gateway
SIGKILLed and restarted with its state kept, steady state again, and a closing summary. The
exit code is 0 when the exchange recorded no violation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from connquota.api.limits import LimitName, LimitScope
from connquota.demo.processes import GatewayProcess, free_port
from connquota.demo.setup import DEMO_ACCOUNTS, DemoWorld, build_world
from connquota.demo.view import render_screen, render_summary
from connquota.exchanges import get_profile
from connquota.exchanges.dialects.kraken import parse_time_ms
from connquota.mockexchange.server import MockExchange
from connquota.testing.ipecho import IpEchoServer
from connquota.testing.proxies import ProxyProcess, proxy_binaries

CONSUMER_BATCH = 400


@dataclass
class DemoOptions:
    """The demo's knobs (see `connquota demo --help`)."""

    profile: str = "binance-spot"
    streams: int = 3000
    gateways: int = 3
    addresses: int = 3
    duration_s: float = 60.0
    time_scale: float | None = None
    rate_hz: float = 0.2
    attempts: int = 20
    workdir: Path | None = None
    keep: bool = False
    egress: str = "bind"
    """bind, or proxy: one real proxy process per address (tinyproxy and microsocks in turn)."""


@dataclass
class Phase:
    """One step of the scenario and how long recovery took."""

    name: str
    started_s: float
    recovered_s: float | None = None


@dataclass
class DemoState:
    """What the view shows, refreshed every second."""

    options: DemoOptions
    world: DemoWorld
    time_scale: float
    mock: MockExchange
    gateways: list[GatewayProcess]
    started_mono: float = field(default_factory=time.monotonic)
    phase: str = "start-up"
    phases: list[Phase] = field(default_factory=list)
    statuses: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=20_000))
    frames_total: int = 0
    # 10 s of samples (every 0.25 s): feeds tick in bursts, a shorter window reads 0 between them.
    rate_window: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=40))
    streams_seen: set[str] = field(default_factory=set)
    window_peak: dict[str, int] = field(default_factory=dict)
    echo_requests: dict[str, int] = field(default_factory=dict)
    """Requests the IP-echo service served per caller address (the gateways' egress checks)."""

    def elapsed_s(self) -> float:
        """Seconds since the demo started."""
        return time.monotonic() - self.started_mono

    def live_streams(self) -> int:
        """Streams live upstream, summed over the gateways' reports."""
        return sum((st or {}).get("streams", {}).get("live", 0) for st in self.statuses.values())

    def messages_per_s(self) -> float:
        """Frames per second delivered to the consumers (over the last 10 seconds)."""
        if len(self.rate_window) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.rate_window[0], self.rate_window[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def latency_ms(self, q: float) -> float | None:
        """A delivery-latency quantile (exchange event time to consumer receipt)."""
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _event_time_ms(data: Any) -> int | None:
    if isinstance(data, dict):
        for key in ("E", "ts"):
            value = data.get(key)
            if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
                return int(value)
        stamp = parse_time_ms(data.get("timestamp"))  # Kraken: RFC3339
        if stamp is not None:
            return stamp
        stamp_ms = data.get("timestamp")  # Deribit: epoch milliseconds
        if isinstance(stamp_ms, int) and not isinstance(stamp_ms, bool):
            return stamp_ms
        params = data.get("params")  # Deribit: {"method":"subscription","params":{"data":..}}
        if isinstance(params, dict):
            return _event_time_ms(params.get("data"))
        inner = data.get("data")
        if isinstance(inner, list) and inner and isinstance(inner[0], dict):
            return _event_time_ms(inner[0])
    if isinstance(data, list) and data and isinstance(data[0], dict):  # Deribit trades
        return _event_time_ms(data[0])
    return None


async def _consume(state: DemoState, gw: GatewayProcess, streams: list[str]) -> None:
    """One consumer per gateway: subscribe its streams, measure rate and latency; reconnect."""
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.ws_connect(gw.ws_url, max_msg_size=0) as ws:
                    for i in range(0, len(streams), CONSUMER_BATCH):
                        batch = streams[i : i + CONSUMER_BATCH]
                        await ws.send_str(json.dumps({"op": "subscribe", "streams": batch}))
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        doc = json.loads(msg.data)
                        stream = doc.get("stream")
                        if stream is None:
                            continue
                        state.frames_total += 1
                        state.streams_seen.add(stream)
                        event_ms = _event_time_ms(doc.get("data"))
                        if event_ms is not None:
                            state.latencies_ms.append(max(0.0, time.time() * 1000 - event_ms))
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.5)


async def _poll(state: DemoState, http: aiohttp.ClientSession) -> None:
    while True:
        results = await asyncio.gather(*(gw.status(http) for gw in state.gateways))
        for gw, st in zip(state.gateways, results, strict=True):
            state.statuses[gw.ordinal] = st
        state.rate_window.append((time.monotonic(), state.frames_total))
        in_window = state.mock.stats()["attemptsInWindowPerIp"]
        for ip, n in in_window.items():
            state.window_peak[ip] = max(state.window_peak.get(ip, 0), int(n))
        await asyncio.sleep(0.25)


async def _wait_all_live(state: DemoState, timeout_s: float) -> float | None:
    """Seconds until every planned stream is live again (None on timeout)."""
    t0 = time.monotonic()
    desired = len(state.world.streams)
    while time.monotonic() - t0 < timeout_s:
        if state.live_streams() >= desired and all(
            st is not None and st.get("ready") for st in state.statuses.values()
        ):
            return time.monotonic() - t0
        await asyncio.sleep(0.2)
    return None


async def _scenario(state: DemoState, duration_s: float, window_s: float) -> None:
    deadline = state.started_mono + duration_s
    recover_s = max(6 * window_s, 20.0)

    def left() -> float:
        return deadline - time.monotonic()

    start = Phase("start-up", state.elapsed_s())
    state.phases.append(start)
    took = await _wait_all_live(state, max(1.0, left()))
    start.recovered_s = None if took is None else state.elapsed_s()
    if took is None:
        return
    state.phase = "steady"
    await asyncio.sleep(min(max(2.0, window_s), max(0.0, left())))
    if left() < recover_s / 2:
        return
    state.phase = "mass disconnect"
    storm = Phase("mass disconnect (every connection dropped)", state.elapsed_s())
    state.phases.append(storm)
    await state.mock.disconnect(abrupt=True)
    await asyncio.sleep(0.5)
    took = await _wait_all_live(state, recover_s)
    storm.recovered_s = None if took is None else state.elapsed_s()
    state.phase = "steady"
    await asyncio.sleep(min(max(2.0, window_s), max(0.0, left())))
    if left() < recover_s / 2:
        return
    victim = state.gateways[0]
    state.phase = f"gateway {victim.ordinal} SIGKILLed"
    crash = Phase(
        f"gateway {victim.ordinal} SIGKILLed, restarted with its state", state.elapsed_s()
    )
    state.phases.append(crash)
    await victim.kill()
    victim.start()
    await asyncio.sleep(0.5)
    took = await _wait_all_live(state, recover_s)
    crash.recovered_s = None if took is None else state.elapsed_s()
    state.phase = "steady"


async def _view(state: DemoState, tty: bool) -> None:
    last_plain = 0.0
    while True:
        if tty:
            sys.stdout.write("\x1b[H\x1b[2J" + render_screen(state) + "\n")
            sys.stdout.flush()
        elif time.monotonic() - last_plain >= 5.0:
            last_plain = time.monotonic()
            print(render_screen(state, compact=True), flush=True)
        await asyncio.sleep(1.0)


async def start_demo_proxies(
    options: DemoOptions, workdir: Path, proxies: list[ProxyProcess]
) -> None:
    """One proxy per address, tinyproxy and microsocks in turn: listening on 127.0.0.<20+i>,
    sending from 127.0.0.<2+i> (the address the exchange sees), with credentials the gateways
    read from files, as from a mounted Secret."""
    binaries = proxy_binaries()
    password = secrets.token_urlsafe(12)
    secret_dir = workdir / "proxy-secrets"
    os.environ["CONNQUOTA_PROXY_CREDENTIALS_DIR"] = str(secret_dir)  # the gateways inherit it
    for i in range(options.addresses):
        kind = "http" if i % 2 == 0 else "socks5"
        proxy = ProxyProcess(
            kind, binaries, f"127.0.0.{20 + i}", f"127.0.0.{2 + i}", workdir, "demo", password
        )
        proxies.append(proxy)
        await proxy.start()
        files = secret_dir / f"px-{i + 2}"
        files.mkdir(parents=True, exist_ok=True)
        (files / "username").write_text("demo")
        (files / "password").write_text(password)


def default_time_scale(profile_name: str) -> float:
    """Scale so the attempt window lasts about 5 s and a connect timeout about 1 s (an attempt
    stays counted for connect timeout + window + margin), never slower than real time."""
    profile = get_profile(profile_name)
    limit = profile.limit(LimitName.CONNECTION_ATTEMPTS)
    window = limit.windowSeconds if limit is not None and limit.windowSeconds else 5.0
    return max(1.0, window / 5.0, profile.connectTimeoutSeconds)


async def run_demo(options: DemoOptions) -> int:
    """Run the whole demo; returns 0 when the exchange recorded no violation."""
    proxies: list[ProxyProcess] = []
    try:
        return await _run_demo(options, proxies)
    finally:
        for proxy in proxies:  # whatever happened: no proxy process outlives the demo
            await proxy.kill()


async def _run_demo(options: DemoOptions, proxies: list[ProxyProcess]) -> int:
    time_scale = options.time_scale or default_time_scale(options.profile)
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="connquota-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = get_profile(options.profile)
    path = base.endpoint.split("://", 1)[1]
    path = "/" + path.split("/", 1)[1] if "/" in path else ""
    endpoint = f"ws://127.0.0.1:{port}{path}"
    echo = IpEchoServer("127.0.0.1", 0)
    await echo.start()
    if options.egress == "proxy":
        await start_demo_proxies(options, workdir, proxies)
    world = build_world(
        options.profile,
        options.streams,
        options.gateways,
        options.addresses,
        time_scale,
        endpoint,
        options.attempts,
        echo.url,
        [p.url for p in proxies] or None,
    )
    mock = MockExchange(
        world.profile.model_copy(update={"endpoint": base.endpoint}),
        "127.0.0.1",
        port,
        time_scale=time_scale,
        rate_per_stream_hz=options.rate_hz,
    )
    await mock.start()
    plan_path = workdir / "plan.json"
    plan_path.write_text(world.plan.model_dump_json())
    gateways = [
        GatewayProcess(plan_path, pod.ordinal, workdir / f"state-{pod.ordinal}")
        for pod in world.plan.pods
    ]
    state = DemoState(options, world, time_scale, mock, gateways)
    for gw in gateways:
        gw.start()
    attempts = world.profile.limit(LimitName.CONNECTION_ATTEMPTS)
    window_s = (attempts.windowSeconds or 1.0) / time_scale if attempts else 1.0
    tasks: list[asyncio.Task[None]] = []
    http = aiohttp.ClientSession()
    try:
        tasks.append(asyncio.create_task(_poll(state, http)))
        for gw, pod in zip(gateways, world.plan.pods, strict=True):
            streams = [s for c in pod.connections for s in c.streams]
            tasks.append(asyncio.create_task(_consume(state, gw, streams)))
        tasks.append(asyncio.create_task(_view(state, sys.stdout.isatty())))
        scenario = asyncio.create_task(_scenario(state, options.duration_s, window_s))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(scenario), timeout=options.duration_s)
        if not scenario.done():
            scenario.cancel()
        remaining = options.duration_s - state.elapsed_s()
        if remaining > 0:
            await asyncio.sleep(remaining)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        codes = await asyncio.gather(*(gw.stop(10.0) for gw in gateways))
        await http.close()
    state.echo_requests = dict(echo.requests)
    violations = mock.violations()
    peaks = {
        a.publicAddress: mock.peak_fraction(
            LimitName.CONNECTION_ATTEMPTS, LimitScope.IP, a.publicAddress
        )
        for a in world.pool.addresses
    }
    print(render_summary(state, violations, peaks, codes, workdir, DEMO_ACCOUNTS))
    await mock.stop()
    await echo.stop()
    if not options.keep and options.workdir is None and not violations:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if not violations else 1
