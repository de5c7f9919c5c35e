"""Plan a quota against a pool and print the plan (nothing is applied anywhere).

QUOTA.yaml holds an ExchangeConnectionQuota, and the ConfigMaps its `streamsFrom` names (any
other documents are ignored). Without --pool, a default pool of one proxy address is used
(the output says so). With --previous PLAN.json (a plan this command printed with -o json),
the plan sticks to it and the churn is shown: connections kept, opened and closed.

The table shows, per pod, its connections, streams and slices; per address, the
connections and slices used against the quota's share and the pool's budget, and the
recovery bound (how long reopening every connection there takes at its attempt rate); then
the unserved streams with the limit that ran out.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pydantic

    from connquota.api import QuotaPlan
    from connquota.api.limits import ExchangeProfile
    from connquota.api.pool import ExchangeEgressPoolSpec
    from connquota.api.quota import ExchangeConnectionQuota
    from connquota.planner.budgets import Budget, BudgetKey
    from connquota.planner.shares import QuotaShares

DEFAULT_POOL = {
    "addresses": [
        {
            "name": "default",
            "publicAddress": "192.0.2.1",
            "mode": "proxy",
            "proxyUrl": "http://127.0.0.1:3128",
        }
    ]
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare `connquota plan` options."""
    parser.add_argument("quota", metavar="QUOTA.yaml", help="the quota (and its ConfigMaps)")
    parser.add_argument("--pool", metavar="POOL.yaml", help="the ExchangeEgressPool to plan on")
    parser.add_argument(
        "--previous", metavar="PLAN.json", help="a previous plan (-o json) to stick to"
    )
    parser.add_argument(
        "-o", "--output", choices=("table", "json", "yaml"), default="table", help="format"
    )


class InputError(Exception):
    """An input file cannot be used; the message is the one line the user sees."""


def _documents(path: str) -> list[dict[str, Any]]:
    import yaml

    # libyaml's loader when the installed PyYAML has it: the pure-Python one spends ~0.3 ms per
    # node (5,000 explicit streams: 1.8 s of the command's 2 s).
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        try:
            return [d for d in yaml.load_all(f, Loader=loader) if isinstance(d, dict)]
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise InputError(f"{path}: not valid YAML{where}: {problem}") from None


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(the document)"


def validation_message(what: str, exc: pydantic.ValidationError) -> str:
    """One line naming the file, the field and the rule it breaks (pydantic's first error)."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{what}: {_location(tuple(first['loc']))}: {first['msg']}{more}"


def run(args: argparse.Namespace) -> int:
    """Plan and print; exit 1 with a message (no traceback) when the input cannot be planned."""
    import pydantic

    from connquota.api import ExchangeConnectionQuota, ExchangeEgressPool, QuotaPlan
    from connquota.exchanges import ProfileError, effective_profile
    from connquota.planner.errors import PlanningError

    try:
        docs = _documents(args.quota)
        quota_doc = next((d for d in docs if d.get("kind") == "ExchangeConnectionQuota"), None)
        if quota_doc is None:
            print(f"error: {args.quota} holds no ExchangeConnectionQuota", file=sys.stderr)
            return 1
        quota = _validated(ExchangeConnectionQuota, quota_doc, args.quota)
        sources = {}
        for d in docs:
            if d.get("kind") == "ConfigMap":
                for key, text in (d.get("data") or {}).items():
                    sources[f"{d['metadata']['name']}/{key}"] = text
        default_pool = args.pool is None
        if default_pool:
            pool_spec = ExchangeEgressPool.model_validate({"spec": DEFAULT_POOL}).spec
        else:
            pool_doc = next(
                (d for d in _documents(args.pool) if d.get("kind") == "ExchangeEgressPool"), None
            )
            if pool_doc is None:
                print(f"error: {args.pool} holds no ExchangeEgressPool", file=sys.stderr)
                return 1
            pool_spec = _validated(ExchangeEgressPool, pool_doc, args.pool).spec
        previous = None
        if args.previous:
            try:
                with open(args.previous, encoding="utf-8") as f:
                    text = f.read()
            except OSError as exc:
                raise InputError(f"--previous {args.previous}: {exc.strerror}") from None
            try:
                previous = QuotaPlan.model_validate_json(text)
            except pydantic.ValidationError as exc:
                raise InputError(
                    validation_message(f"--previous {args.previous}", exc)
                    + "; give a plan this command printed with -o json"
                ) from None
        profile = effective_profile(quota.spec)
        plan, shares, budgets = _plan(quota, profile, pool_spec, sources, previous)
    except (OSError, InputError, PlanningError, ProfileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # YAML errors and the like: still no traceback for the user
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(plan.model_dump_json(indent=2, exclude_none=True))
    elif args.output == "yaml":
        import yaml

        print(yaml.safe_dump(plan.model_dump(mode="json", exclude_none=True), sort_keys=False))
    else:
        print(_table(plan, pool_spec, shares, budgets, previous, default_pool))
    return 0


def _validated(model: Any, doc: dict[str, Any], path: str) -> Any:
    """`model.model_validate(doc)`, or an InputError of one line naming file, field and rule."""
    import pydantic

    try:
        return model.model_validate(doc)
    except pydantic.ValidationError as exc:
        raise InputError(validation_message(path, exc)) from None


def _plan(
    quota: ExchangeConnectionQuota,
    profile: ExchangeProfile,
    pool_spec: ExchangeEgressPoolSpec,
    sources: dict[str, str],
    previous: QuotaPlan | None,
) -> tuple[QuotaPlan, QuotaShares, dict[BudgetKey, Budget]]:
    from connquota.planner.endpoints import split_by_endpoint, with_refused
    from connquota.planner.inputs import QuotaInput
    from connquota.planner.plan import PlanRequest, plan_quota
    from connquota.planner.shares import divide_budgets
    from connquota.planner.streams import expand_streams

    meta = quota.metadata
    q = QuotaInput(meta.namespace or "default", meta.name or "quota", quota.spec, profile)
    desired = expand_streams(quota.spec, profile.dialect, sources)
    shares = divide_budgets(pool_spec, [q])
    generation = previous.generation + 1 if previous else 1
    split = split_by_endpoint(profile, desired)
    plan = plan_quota(
        PlanRequest(
            q.ref,
            q.spec,
            profile,
            pool_spec,
            shares.quotas[q.key],
            split.served,
            generation,
            previous,
        )
    )
    return with_refused(plan, split.refused), shares.quotas[q.key], shares.budgets


def _rows(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def _table(
    plan: QuotaPlan,
    pool_spec: ExchangeEgressPoolSpec,
    shares: QuotaShares,
    budgets: dict[BudgetKey, Budget],
    previous: QuotaPlan | None,
    default_pool: bool,
) -> str:
    from connquota.api.limits import LimitScope

    out = []
    if default_pool:
        out.append("(no --pool given: planned on a default pool of one proxy address)")
    streams = sum(len(c.streams) for p in plan.pods for c in p.connections)
    conns = sum(len(p.connections) for p in plan.pods)
    out.append(
        f"quota {plan.quota}  generation {plan.generation}  replicas {plan.replicas}  "
        f"connections {conns}  streams {streams} served, {len(plan.unserved)} unserved"
    )
    out.append("")
    rows = []
    for pod in plan.pods:
        ip = {(s.key, s.limit.value): s.value for s in pod.slices if s.scope == LimitScope.IP}
        addresses = ", ".join(
            f"{a.name}(conn {ip.get((a.name, 'concurrentConnections'), '-')}, "
            f"attempts {ip.get((a.name, 'connectionAttempts'), '-')})"
            for a in pod.addresses
        )
        rows.append(
            [
                pod.ordinal,
                len(pod.connections),
                sum(len(c.streams) for c in pod.connections),
                ", ".join(c.name for c in pod.credentials) or "-",
                addresses or "-",
            ]
        )
    out.append(_rows(["POD", "CONNS", "STREAMS", "CREDENTIALS", "ADDRESS SLICES"], rows))
    out.append("")
    bounds = {b.address: b for b in plan.recoveryBounds}
    public = {a.name: a.publicAddress for a in pool_spec.addresses}
    rows = []
    for a in pool_spec.addresses:
        held = [c for p in plan.pods for c in p.connections if c.address == a.name]
        uses = []
        for (key, limit), share in sorted(shares.ip.items()):
            if key != a.name:
                continue
            used = sum(
                s.value
                for p in plan.pods
                for s in p.slices
                if s.scope == LimitScope.IP and s.key == a.name and s.limit == limit
            )
            budget = next(
                (
                    b.value
                    for k, b in budgets.items()
                    if k.key == public[a.name] and k.limit == limit
                ),
                "-",
            )
            uses.append(f"{limit.value} {used}/{share}/{budget}")
        bound = bounds.get(a.name)
        rows.append(
            [
                a.name,
                a.publicAddress,
                a.mode.value,
                len(held),
                "; ".join(uses) or "-",
                f"{bound.seconds:g}s" if bound else "-",
            ]
        )
    out.append(
        _rows(["ADDRESS", "PUBLIC", "MODE", "CONNS", "SLICES/SHARE/BUDGET", "RECOVERY"], rows)
    )
    if shares.reasons:
        out.append("")
        out.append("shares smaller than asked:")
        out.extend(f"  {r}" for r in shares.reasons)
    if plan.unserved:
        out.append("")
        out.append(f"unserved streams ({len(plan.unserved)}, highest priority first):")
        for u in plan.unserved[:20]:
            out.append(f"  {u.stream} (priority {u.priority}): {u.reason}")
        if len(plan.unserved) > 20:
            out.append(f"  ... and {len(plan.unserved) - 20} more")
    if previous is not None:
        before = {c.id for p in previous.pods for c in p.connections}
        after = {c.id for p in plan.pods for c in p.connections}
        out.append("")
        out.append(
            f"churn against generation {previous.generation}: {len(before & after)} kept, "
            f"{len(after - before)} opened, {len(before - after)} closed"
        )
    return "\n".join(out)
