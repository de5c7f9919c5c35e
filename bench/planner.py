"""Planner benchmark: plan time and connections reopened, fresh and incremental.

For 10^2 .. 10^6 streams over 1 .. 256 addresses and 1 .. 64 accounts (binance-spot limits;
a fifth of the streams private, spread over the accounts' credentials), it times a fresh plan
and four incremental replans (one stream added, one address removed, pods doubled, a second
quota joining the pool), and prints for each the connections reopened beside the lower bound
of reopens, and the time as a ratio to a trivial baseline measured in the same run (building
and sorting the stream list by priority and name - the least any planner must do).

Run: .venv/bin/python bench/planner.py [--max-streams N] [--repeat R]
"""

from __future__ import annotations

import argparse
import gc
import math
import time

from connquota.api.pool import ExchangeEgressPoolSpec
from connquota.api.quota import Credential, ExchangeConnectionQuotaSpec, GatewaySpec, SecretKeyRef
from connquota.exchanges import get_profile
from connquota.planner.inputs import DesiredStream, QuotaInput
from connquota.planner.plan import PlanRequest, plan_quota
from connquota.planner.shares import divide_budgets

PROFILE = get_profile("binance-spot")


def make_pool(n: int) -> ExchangeEgressPoolSpec:
    return ExchangeEgressPoolSpec.model_validate(
        {
            "addresses": [
                {
                    "name": f"a{i}",
                    "publicAddress": f"10.{i // 250}.{i % 250}.1",
                    "mode": "proxy",
                    "proxyUrl": f"http://proxy-{i}:3128",
                }
                for i in range(n)
            ]
        }
    )


def make_quota(name: str, accounts: int, max_replicas: int = 1000) -> QuotaInput:
    spec = ExchangeConnectionQuotaSpec(
        exchange="binance-spot",
        egressPoolRef={"name": "pool"},
        credentials=[
            Credential(name=f"k{i}", secretRef=SecretKeyRef(name=f"k{i}"), accountId=f"acct-{i}")
            for i in range(accounts)
        ],
        gateway=GatewaySpec(connectionsPerPod=50, minReplicas=1, maxReplicas=max_replicas),
    )
    return QuotaInput("bench", name, spec, PROFILE)


def make_streams(n: int, accounts: int) -> list[DesiredStream]:
    out = []
    for i in range(n):
        if i % 5 == 4:
            out.append(DesiredStream(f"sym{i:07d}@depth", i % 3, f"k{i % accounts}"))
        else:
            out.append(DesiredStream(f"sym{i:07d}@trade", i % 3, None))
    return out


def baseline(n: int, accounts: int) -> float:
    t0 = time.perf_counter()
    streams = make_streams(n, accounts)
    streams.sort(key=lambda s: (-s.priority, s.name))
    return time.perf_counter() - t0


def timed(fn, repeat: int):
    best = math.inf
    result = None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def conn_ids(plan) -> dict[str, str]:
    return {c.id: c.address for p in plan.pods for c in p.connections}


def plan(q, pool, quotas, streams, previous, generation):
    shares = divide_budgets(pool, quotas).quotas[q.key]
    return plan_quota(
        PlanRequest(q.ref, q.spec, q.profile, pool, shares, streams, generation, previous)
    )


def run_case(n: int, addresses: int, accounts: int, repeat: int) -> list[tuple]:
    pool = make_pool(addresses)
    q = make_quota("first", accounts)
    streams = make_streams(n, accounts)
    base = min(baseline(n, accounts) for _ in range(repeat))
    rows = []

    t, fresh = timed(lambda: plan(q, pool, [q], streams, None, 1), repeat)
    n_conns = len(conn_ids(fresh))
    rows.append(("fresh", t, base, len(conn_ids(fresh)), n_conns))

    added = [*streams, DesiredStream("zzz-new@trade", 0, None)]
    t, p = timed(lambda: plan(q, pool, [q], added, fresh, 2), repeat)
    cap = next(s.value for s in fresh.pods[0].slices if s.limit.value == "streamsPerConnection")
    public_conns = [
        len(c.streams) for pod in fresh.pods for c in pod.connections if c.credential is None
    ]
    lower = 0 if any(x < cap for x in public_conns) else 1
    rows.append(("+1 stream", t, base, len(set(conn_ids(p)) - set(conn_ids(fresh))), lower))

    if addresses > 1:
        smaller = ExchangeEgressPoolSpec(addresses=pool.addresses[1:])
        t, p = timed(lambda: plan(q, smaller, [q], streams, fresh, 2), repeat)
        on_removed = sum(1 for a in conn_ids(fresh).values() if a == "a0")
        rows.append(
            ("-1 address", t, base, len(set(conn_ids(p)) - set(conn_ids(fresh))), on_removed)
        )

    doubled = QuotaInput(
        q.namespace,
        q.name,
        q.spec.model_copy(
            update={"gateway": q.spec.gateway.model_copy(update={"connectionsPerPod": 100})}
        ),
        q.profile,
    )
    t, p = timed(lambda: plan(doubled, pool, [doubled], streams, fresh, 2), repeat)
    rows.append(("pods x2", t, base, len(set(conn_ids(p)) - set(conn_ids(fresh))), 0))

    second = make_quota("second", accounts)
    t, p = timed(lambda: plan(q, pool, [q, second], streams, fresh, 2), repeat)
    per_address: dict[str, int] = {}
    for a in conn_ids(fresh).values():
        per_address[a] = per_address.get(a, 0) + 1
    shares = divide_budgets(pool, [q, second]).quotas[q.key]
    lower = 0
    for a, k in per_address.items():
        share = shares.ip.get((a, PROFILE.limits[1].name), 0)
        lower += max(0, k - math.floor(0.8 * share))
    rows.append(("2nd quota", t, base, len(set(conn_ids(p)) - set(conn_ids(fresh))), lower))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-streams", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cases = [
        (100, 1, 1),
        (1_000, 4, 4),
        (10_000, 16, 16),
        (10_000, 256, 64),
        (100_000, 64, 16),
        (100_000, 256, 64),
        (1_000_000, 256, 64),
    ]
    header = (
        f"{'streams':>9} {'addr':>4} {'acct':>4} {'change':<11} {'time ms':>9} "
        f"{'baseline ms':>11} {'ratio':>7} {'reopened':>8} {'lower bd':>8}"
    )
    print(header)
    print("-" * len(header))
    for n, addresses, accounts in cases:
        if n > args.max_streams:
            continue
        repeat = 1 if n >= 1_000_000 else args.repeat
        for change, t, base, reopened, lower in run_case(n, addresses, accounts, repeat):
            print(
                f"{n:>9} {addresses:>4} {accounts:>4} {change:<11} {t * 1000:>9.1f} "
                f"{base * 1000:>11.1f} {t / base:>7.2f} {reopened:>8} {lower:>8}",
                flush=True,
            )


if __name__ == "__main__":
    main()
