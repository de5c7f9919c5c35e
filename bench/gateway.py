"""Gateway throughput and added latency, as ratios against consumers connected straight to the
mock exchange in the same run.

    .venv/bin/python bench/gateway.py [--consumers 1,10,100] [--streams 50] [--rate 20] [--seconds 5]

For each consumer count: K consumers subscribe every stream (a) directly on the mock exchange
(one upstream connection each: the baseline) and (b) through one gateway process holding one
upstream connection. Prints delivered messages/s and latency p50/p99 (exchange event time to
consumer receipt) for both, and the ratios gateway/direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from connquota.api.limits import LimitName
from connquota.api.plan import ConnectionPlan
from connquota.demo.processes import GatewayProcess
from connquota.demo.scaling import scaled_profile
from connquota.exchanges import get_profile
from connquota.mockexchange.server import MockExchange

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "unit" / "gateway"))
from gateway_plan_factory import bind_address, pod_plan


async def consume(
    url: str, subscribe: str, seconds: float, lat: list[float], counts: list[int]
) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        await ws.send_str(subscribe)
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            try:
                msg = await ws.receive(timeout=max(0.01, end - time.monotonic()))
            except TimeoutError:
                break
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            doc = json.loads(msg.data)
            data = doc.get("data")
            if isinstance(data, dict) and "E" in data:
                n += 1
                lat.append(time.time() * 1000 - data["E"])
        counts.append(n)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def measure(url: str, subscribe: str, k: int, seconds: float) -> tuple[float, float, float]:
    lat: list[float] = []
    counts: list[int] = []
    await asyncio.gather(*(consume(url, subscribe, seconds, lat, counts) for _ in range(k)))
    return sum(counts) / seconds, pct(lat, 0.5), pct(lat, 0.99)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--consumers", default="1,10,100")
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
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
    direct_sub = json.dumps({"method": "SUBSCRIBE", "params": streams, "id": 1})
    gw_sub = json.dumps({"op": "subscribe", "streams": streams})
    print(f"{'consumers':>9} {'direct msg/s':>13} {'gw msg/s':>10} {'ratio':>6} "
          f"{'direct p50/p99 ms':>18} {'gw p50/p99 ms':>15} {'added p50 ms':>12}")  # fmt: skip
    for k in [int(x) for x in args.consumers.split(",")]:
        d_rate, d50, d99 = await measure(mock.url + "/stream", direct_sub, k, args.seconds)
        g_rate, g50, g99 = await measure(gw.ws_url, gw_sub, k, args.seconds)
        ratio = g_rate / d_rate if d_rate else float("nan")
        print(f"{k:>9} {d_rate:>13.0f} {g_rate:>10.0f} {ratio:>6.2f} "
              f"{d50:>8.1f}/{d99:<9.1f} {g50:>6.1f}/{g99:<8.1f} {g50 - d50:>12.1f}")  # fmt: skip
    await gw.stop()
    await mock.stop()


if __name__ == "__main__":
    asyncio.run(main())
