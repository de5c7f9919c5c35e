"""A proxy that accepts connections and never answers the CONNECT: each attempt the gateway
took is spent (the exchange could have seen it), and each has its outcome on the address,
`upstream-timeout`, when the connect timeout ends it; the limiter paces the retries within
the slice, so nothing is exceeded."""

from __future__ import annotations

import asyncio

from conftest import wait_for
from test_proxy_egress import gateway_attempts, plan_on, start_mock

from connquota.api.pool import EgressAddress, EgressCheck, EgressCheckMethod, EgressMode

HOLE = "127.0.0.36"


async def test_a_proxy_that_never_answers_has_every_attempt_counted_as_an_upstream_timeout(
    harness,
):
    mock, profile = await start_mock(harness, tls=False)
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # read the CONNECT, never answer it
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(swallow, HOLE, 0)
    port = server.sockets[0].getsockname()[1]
    address = EgressAddress(
        name="p-hole",
        publicAddress="127.0.0.46",
        mode=EgressMode.PROXY,
        proxyUrl=f"http://{HOLE}:{port}",
        egressCheck=EgressCheck(method=EgressCheckMethod.NONE, reason="a proxy that never answers"),
    )
    plan, _ = plan_on(profile, [address], conns=2)
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    try:

        async def timed_out() -> bool:
            st = await harness.status(gw)
            outcomes = (st or {}).get("proxies", {}).get("p-hole", {}).get("attempts", {})
            return outcomes.get("upstream-timeout", 0) >= 3

        await wait_for(timed_out, 30, "three attempts ended by the connect timeout")
        st = await harness.status(gw)
        outcomes = st["proxies"]["p-hole"]["attempts"]
        taken = await gateway_attempts(harness, gw, "p-hole")
        # One outcome per attempt taken; none opened. (An attempt still waiting for its
        # answer at the moment of reading may be one ahead of the outcomes.)
        assert "opened" not in outcomes, outcomes
        assert taken - 2 <= sum(outcomes.values()) <= taken, (outcomes, taken)
        assert len(held) >= 3  # every CONNECT reached the proxy
    finally:
        server.close()
        for writer in held:
            writer.close()
    assert mock.websockets() == []
    harness.assert_no_violation()
