"""Malformed exchange frames and protocol violations from the mock, at random points of a
session, for the dialects whose own gateway tests do not inject them (Coinbase, Deribit and
Kraken: their `test_*_gateway.py`): each is counted in `exchange_frames_dropped_total` and
dropped, the session goes on (no reconnect), and a consumer keeps getting consecutive `seq`.

The cases (`BAD_FRAMES`, and a data frame for a stream nobody subscribed) are listed in
docs/reliability.md ("Bad input").
"""

from __future__ import annotations

import json
import random

import pytest
from conftest import GW_IP, Consumer, base_plan, shrunk, wait_for

BAD_FRAMES = {
    "JSON array": "[1, 2, 3]",
    "JSON number": "42",
    "JSON null": "null",
    "empty object": "{}",
    "object of an unknown shape": '{"unexpected": "shape", "n": [1, {"a": null}]}',
    "empty text frame": "",
    "deeply nested JSON (5,000 levels)": "[" * 5000 + "]" * 5000,
    "a string of 100 kB": json.dumps("x" * 100_000),
}
"""Injected on every connection; plus broken JSON (the mock's `send_malformed`)."""

UNSUBSCRIBED = {
    "binance-spot": '{"stream":"zzzusdt@trade","data":{"e":"trade","s":"ZZZUSDT","t":1}}',
    "binance-usdm": '{"stream":"zzzusdt@aggTrade","data":{"e":"aggTrade","s":"ZZZUSDT","a":1}}',
    "okx": '{"arg":{"channel":"tickers","instId":"ZZZ-USDT"},"data":[{"instId":"ZZZ-USDT"}]}',
    "bybit": '{"topic":"publicTrade.ZZZUSDT","type":"snapshot","ts":1,"data":[]}',
}
"""A data frame for a stream no connection subscribed: must never reach a consumer."""

BURSTS = 3


async def _dropped(harness, gw) -> dict[str, float]:
    """`exchange_frames_dropped_total` by reason."""
    async with harness.http.get(gw.base_url + "/metrics") as resp:
        text = await resp.text()
    prefix = "connquota_gateway_exchange_frames_dropped_total"
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            key, _, value = line.rpartition(" ")
            out[key[len(prefix) :]] = float(value)
    return out


async def _reconnects(harness, gw) -> float:
    async with harness.http.get(gw.base_url + "/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("connquota_gateway_reconnects_total")
    )


@pytest.mark.parametrize("profile", ["binance-spot", "binance-usdm", "okx", "bybit"])
async def test_malformed_exchange_frames_are_counted_and_dropped_without_ending_the_session(
    harness, profile, tmp_path
):
    mock = await harness.start_mock(profile, shrunk(profile, connectionAttempts=(50, 40.0)))
    plan, names = base_plan(harness, profile, conns=2, per_conn=2)
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    await harness.wait_live(gw, len(names), timeout_s=30)
    consumer = Consumer(harness.http, gw.ws_url)
    await consumer.connect(names)
    await wait_for(lambda: consumer.streams_seen() >= set(names), 20, "consumer frames")
    conns = len(mock.websockets(GW_IP))
    assert conns == 2
    rng = random.Random(f"{profile}-bad-frames")
    per_burst = (len(BAD_FRAMES) + 1) * conns
    total = 0.0
    for burst in range(BURSTS):
        # a random point of the session: after 1 to 15 more frames on a random stream
        stream = rng.choice(names)
        target = len(consumer.frames[stream]) + rng.randint(1, 15)
        await wait_for(lambda s=stream, t=target: len(consumer.frames[s]) >= t, 20, "progress")
        before = sum((await _dropped(harness, gw)).values())
        frames = [*BAD_FRAMES.values(), UNSUBSCRIBED[profile]]
        rng.shuffle(frames)
        assert mock.send_malformed(ip=GW_IP, count=1) == conns
        for conn in mock.websockets(GW_IP):
            for text in frames:
                conn.send_later(text)

        async def counted(before: float = before) -> float | None:
            now = sum((await _dropped(harness, gw)).values())
            return now if now - before >= per_burst else None

        try:
            total = await wait_for(counted, 10, f"burst {burst}: {per_burst} drops counted")
        except Exception as exc:
            raise AssertionError(f"{exc}: counted {await _dropped(harness, gw)}") from None
    dropped = await _dropped(harness, gw)
    print(f"{profile}: dropped by reason {dropped}")
    assert total >= BURSTS * per_burst
    assert dropped.get('{reason="unsubscribed"}') == BURSTS * conns, dropped
    seen = {s: len(q) for s, q in consumer.frames.items()}
    await wait_for(lambda: all(len(consumer.frames[s]) > seen[s] for s in names), 20, "frames")
    assert await _reconnects(harness, gw) == 0, "a bad frame ended a session"
    assert "zzz" not in json.dumps(consumer.frames).lower()
    assert set(consumer.frames) == set(names) and not consumer.errors
    for stream in names:
        seqs = consumer.frames[stream]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{stream}: gap"
    st = await harness.status(gw)
    assert st["streams"]["live"] == len(names) and gw.alive()
    logs = "".join(p.read_text() for p in tmp_path.glob("gw-*.log"))
    assert "Traceback" not in logs, logs[-3000:]
    await consumer.close()
    harness.assert_no_violation()
