"""A fleet of gateway processes that relay to each other (issue 12 §1), for the relay tests:
one gateway per list of held streams, all peers of each other with one peer token."""

from __future__ import annotations

from conftest import GW_IP, shrunk, wait_for

from connquota.api.plan import ConnectionPlan
from connquota.testing.gateway_plans import bind_address, pod_plan

TOKEN = "peer-token-0123456789abcdef"


def upstream_streams(harness) -> list[str]:
    """Every upstream subscription the exchange holds (duplicates kept)."""
    return sorted(s for c in harness.mock.websockets(GW_IP) for s in c.streams)


def fleet_plan(harness, ordinal: int, streams: list[str], generation: int = 1):
    conns = [
        ConnectionPlan(id=f"p{ordinal}c{i}", address="a0", streams=streams[i : i + 2])
        for i in range(0, len(streams), 2)
    ]
    return pod_plan(
        harness.gateway_profile(),
        conns,
        addresses=[bind_address(0, harness.egress_check())],
        margin_s=0.2,
        ordinal=ordinal,
        generation=generation,
    )


async def start_fleet(harness, tmp_path, held: list[list[str]], profile: str = "binance-spot"):
    """One gateway per entry of `held` (the streams it holds), all peers of each other."""
    await harness.start_mock(
        profile, shrunk(profile, connectionAttempts=(20, 20.0)), rate_per_stream_hz=10
    )
    token = tmp_path / "peer-token"
    token.write_text(TOKEN + "\n")
    gateways = []
    for ordinal, streams in enumerate(held):
        path = harness.write_plan(fleet_plan(harness, ordinal, streams), f"plan-{ordinal}.json")
        gateways.append(harness.gateway(path, ordinal=ordinal, state=f"state-{ordinal}"))
    for gw in gateways:
        peers = [a for other in gateways if other is not gw for a in ("--peer", other.base_url)]
        gw.extra_args += ["--peer-token-file", str(token), *peers]
        gw.start()
    for gw, streams in zip(gateways, held, strict=True):
        await harness.wait_live(gw, len(streams), timeout_s=30)
    await links_up(harness, gateways, held)
    return gateways


async def links_up(harness, gateways, held: list[list[str]]) -> None:
    """Wait until every pod's link to every other pod is up and has its announcement."""
    for gw in gateways:

        async def linked(gw=gw) -> bool:
            st = await harness.status(gw)
            peers = (st or {}).get("relay", {}).get("peers", {})
            holds = {p.base_url: len(h) for p, h in zip(gateways, held, strict=True)}
            return all(
                peers.get(url, {}).get("connected") and peers[url]["holds"] == n
                for url, n in holds.items()
                if url != gw.base_url
            )

        await wait_for(linked, 20, f"{gw.base_url}'s peer links up")
