"""Component-test parts: the mock exchange (in this process), gateway processes, consumers.

Every scenario shrinks the limit it tests and scales time (the mock divides every profile
duration by `TIME_SCALE`), so it drives that limit to >= 90% within seconds; the gateways get
the same scaled profile in their plan.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connquota.api.limits import ExchangeProfile, Limit, LimitName, LimitScope
from connquota.api.pool import EgressCheck, EgressCheckMethod
from connquota.demo.processes import GatewayProcess
from connquota.demo.scaling import scaled_profile
from connquota.exchanges import get_profile
from connquota.mockexchange.server import MockExchange
from connquota.testing.ipecho import IpEchoServer
from connquota.testing.waiting import wait_until

TIME_SCALE = 20.0
DIALECT_PROFILES = ["binance-spot", "binance-usdm", "okx", "bybit", "kraken", "deribit", "coinbase"]


def stream_names(profile: str, count: int, tag: str = "s") -> list[str]:
    """`count` valid public stream names for `profile`'s dialect."""
    if profile == "binance-usdm":  # a /market channel (the profile's endpoint)
        return [f"{tag}{i}usdt@aggTrade" for i in range(count)]
    if profile.startswith("binance"):
        return [f"{tag}{i}usdt@trade" for i in range(count)]
    if profile == "okx":
        return [f"tickers:{tag.upper()}{i}-USDT" for i in range(count)]
    if profile == "kraken":
        return [f"ticker:{tag.upper()}{i}/USD" for i in range(count)]
    if profile == "coinbase":
        return [f"ticker:{tag.upper()}{i}-USD" for i in range(count)]
    if profile == "deribit":
        return [f"ticker.{tag.upper()}{i}-PERPETUAL.100ms" for i in range(count)]
    return [f"publicTrade.{tag.upper()}{i}USDT" for i in range(count)]


async def wait_for(
    probe: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.1
) -> Any:
    """``wait_until`` polling every 0.1 s by default: most probes here are HTTP status calls."""
    return await wait_until(probe, timeout_s, what, step_s)


def shrunk(profile_name: str, **values: tuple[float, float | None]) -> list[Limit]:
    """Overrides of `profile_name`'s ip/connection limits: name=(value, windowSeconds)."""
    base = get_profile(profile_name)
    out = []
    for name, (value, window) in values.items():
        lname = LimitName(name)
        limit = base.limit(lname)
        assert limit is not None, f"{profile_name} has no {name}"
        update: dict[str, Any] = {"value": value}
        if window is not None:
            update["windowSeconds"] = window
        out.append(limit.model_copy(update=update))
    return out


class Harness:
    """A mock exchange plus gateway processes for one test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.mock: MockExchange | None = None
        self.time_scale = TIME_SCALE
        self.gateways: list[GatewayProcess] = []
        self.http = aiohttp.ClientSession()
        self.echo = IpEchoServer()
        """The IP-echo service the plans' addresses are verified through (never the exchange)."""

    def egress_check(self) -> EgressCheck:
        """The pool's check: GET the echo service through the address."""
        return EgressCheck(method=EgressCheckMethod.URL, url=self.echo.url, timeoutSeconds=3)

    async def start_mock(
        self,
        profile_name: str,
        limits: list[Limit],
        time_scale: float = TIME_SCALE,
        **kw: Any,
    ) -> MockExchange:
        """The mock exchange for `profile_name` with `limits` overriding the published ones;
        `time_scale` for a test whose deadlines must leave a loaded machine room."""
        self.time_scale = time_scale
        self.mock = MockExchange(
            get_profile(profile_name), "127.0.0.1", 0, time_scale=time_scale, limits=limits, **kw
        )
        await self.mock.start()
        return self.mock

    def gateway_profile(self) -> ExchangeProfile:
        """The mock's effective profile, durations scaled, endpoint pointing at the mock."""
        assert self.mock is not None
        endpoint = self.mock.url + _path_of(self.mock.profile.endpoint)
        return scaled_profile(self.mock.profile, self.time_scale, endpoint)

    def write_plan(self, plan: Any, name: str = "plan.json") -> Path:
        """Write a PodPlan/QuotaPlan atomically (the gateway watches the file)."""
        path = self.tmp_path / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(plan.model_dump_json())
        tmp.replace(path)
        return path

    def gateway(
        self, plan_path: Path, ordinal: int = 0, state: str = "state", **kw: Any
    ) -> GatewayProcess:
        """A gateway process (not started)."""
        gw = GatewayProcess(
            plan_path,
            ordinal,
            self.tmp_path / state,
            log_path=self.tmp_path / f"gw-{ordinal}-{len(self.gateways)}.log",
            extra_args=[
                "--backoff-base",
                "0.1",
                "--backoff-cap",
                "1",
                "--linger",
                "0.3",
                *kw.pop("args", []),
            ],
        )
        self.gateways.append(gw)
        return gw

    async def status(self, gw: GatewayProcess) -> dict[str, Any] | None:
        """The gateway's /status."""
        return await gw.status(self.http)

    async def wait_live(self, gw: GatewayProcess, streams: int, timeout_s: float = 30) -> dict:
        """Wait until the gateway has `streams` live streams."""

        async def probe() -> dict | None:
            st = await self.status(gw)
            return st if st and st["streams"]["live"] >= streams else None

        return await wait_for(probe, timeout_s, f"{streams} live streams on gateway {gw.ordinal}")

    def assert_no_violation(self) -> None:
        """The referee recorded no violation."""
        assert self.mock is not None
        violations = [v.to_json() for v in self.mock.violations()]
        assert violations == [], json.dumps(violations, indent=1)[:3000]

    def assert_peak_at_least(
        self, name: LimitName, scope: LimitScope, fraction: float = 0.9
    ) -> float:
        """The scenario drove the limit it tests to at least `fraction` of its value."""
        assert self.mock is not None
        got = self.mock.peak_fraction(name, scope)
        assert got >= fraction, (
            f"{name} peaked at {got:.0%} of its value; the scenario must reach {fraction:.0%}"
        )
        return got

    def logs(self) -> str:
        """Every gateway log, for failure messages."""
        return "\n".join(p.read_text()[-4000:] for p in self.tmp_path.glob("gw-*.log"))

    async def close(self) -> None:
        """Stop every gateway (SIGKILL if needed) and the mock."""
        for gw in self.gateways:
            if gw.alive():
                await gw.kill()
        await self.http.close()
        await self.echo.stop()
        if self.mock is not None:
            await self.mock.stop()


def _path_of(endpoint: str) -> str:
    rest = endpoint.split("://", 1)[1]
    return "/" + rest.split("/", 1)[1] if "/" in rest else ""


@pytest.fixture
async def harness(tmp_path: Path):
    h = Harness(tmp_path)
    await h.echo.start()
    try:
        yield h
    finally:
        await h.close()


class Consumer:
    """A consumer of a gateway's /v1/ws that records every frame per stream."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.frames: dict[str, list[int]] = {}
        self.trade_ids: dict[str, list[int]] = {}
        self.data: dict[str, list[Any]] = {}
        """Every frame's ``data`` (the exchange's payload) per stream."""
        self.errors: list[dict] = []
        self.replies: list[dict] = []
        self.close_code: int | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task | None = None

    async def connect(self, streams: list[str]) -> None:
        """Connect and subscribe `streams`."""
        self.ws = await self.http.ws_connect(self.url)
        await self.ws.send_str(json.dumps({"op": "subscribe", "streams": streams}))
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            doc = json.loads(msg.data)
            if "stream" in doc:
                self.frames.setdefault(doc["stream"], []).append(doc["seq"])
                data = doc.get("data")
                self.data.setdefault(doc["stream"], []).append(data)
                if isinstance(data, dict) and isinstance(data.get("t"), int):
                    self.trade_ids.setdefault(doc["stream"], []).append(data["t"])
            elif "error" in doc:
                self.errors.append(doc)
            else:
                self.replies.append(doc)
        self.close_code = self.ws.close_code

    def streams_seen(self) -> set[str]:
        """Streams with at least one frame."""
        return {s for s, seqs in self.frames.items() if seqs}

    async def close(self) -> None:
        """Close the consumer."""
        if self.ws is not None:
            await self.ws.close()
        if self._task is not None:
            self._task.cancel()


def base_plan(harness: Harness, profile: str, conns: int = 12, per_conn: int = 2, **kw: Any):
    """`conns` connections on a0 (127.0.0.2) with `per_conn` streams each, full slices."""
    from connquota.api.plan import ConnectionPlan
    from connquota.testing.gateway_plans import bind_address, pod_plan

    names = stream_names(profile, conns * per_conn, kw.pop("tag", "s"))
    connections = [
        ConnectionPlan(id=f"c{i}", address="a0", streams=names[i * per_conn : (i + 1) * per_conn])
        for i in range(conns)
    ]
    check = kw.pop("egress_check", None) or harness.egress_check()
    plan = pod_plan(
        harness.gateway_profile(),
        connections,
        addresses=[bind_address(0, check)],
        margin_s=0.2,
        **kw,
    )
    return plan, names


GW_IP = "127.0.0.2"


async def gateway_metric(harness: Harness, gw: GatewayProcess, name: str) -> dict[str, float]:
    """Samples of ``connquota_gateway_<name>`` from the gateway's /metrics, by their label
    text (``{endpoint="v1",reason="bad_json"}``; ``""`` for an unlabelled sample)."""
    async with harness.http.get(gw.base_url + "/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    prefix = "connquota_gateway_" + name
    for line in text.splitlines():
        if line.startswith(prefix):
            key, _, value = line.rpartition(" ")
            out[key[len(prefix) :]] = float(value)
    return out


def mock_attempts(mock: MockExchange, ip: str = GW_IP) -> float:
    """Attempts the referee counted from `ip`."""
    value = mock.metrics.registry.get_sample_value(
        "mockexchange_connection_attempts_total", {"ip": ip}
    )
    return value or 0.0


def mock_frames(mock: MockExchange) -> float:
    """Frames the referee received from every client (pings and pongs included)."""
    return mock.metrics.registry.get_sample_value("mockexchange_frames_received_total") or 0.0


def attempts_in_window(mock: MockExchange, ip: str = GW_IP) -> int:
    """Attempts from `ip` in the referee's current window."""
    return int(mock.stats()["attemptsInWindowPerIp"].get(ip, 0))
