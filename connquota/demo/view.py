"""The demo's live terminal view and closing summary (plain text, no dependencies)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from connquota.api.limits import LimitName, LimitScope

if TYPE_CHECKING:
    from connquota.demo.run import DemoState


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def render_screen(state: DemoState, compact: bool = False) -> str:
    """One screen of the live view (or one compact line when stdout is not a terminal)."""
    mock, world = state.mock, state.world
    attempts = world.profile.limit(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP)
    concurrent = world.profile.limit(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP)
    violations = len(mock.violations())
    desired = len(world.streams)
    live = state.live_streams()
    p50, p99 = state.latency_ms(0.5), state.latency_ms(0.99)
    if compact:
        in_window = mock.stats()["attemptsInWindowPerIp"]
        per_ip = " ".join(
            f"{a.publicAddress}:{len(mock.connections(a.publicAddress))}c/"
            f"{in_window.get(a.publicAddress, 0)}a"
            for a in world.pool.addresses
        )
        return (
            f"[{state.elapsed_s():5.1f}s] {state.phase:<24} streams {live}/{desired} "
            f"msg/s {state.messages_per_s():.0f} p50 {_fmt_ms(p50)} p99 {_fmt_ms(p99)} "
            f"{per_ip} violations {violations}"
        )
    window_real = attempts.windowSeconds if attempts and attempts.windowSeconds else 0
    lines = [
        f"connquota demo — {world.profile.name} on the mock exchange, time x{state.time_scale:g} "
        f"({window_real:g} s window = {window_real / state.time_scale:.1f} s)",
        f"t={state.elapsed_s():5.1f}s   phase: {state.phase}",
        f"limits shrunk for the demo: {'; '.join(world.overrides)}",
        "",
        f"streams live/desired {live}/{desired}   delivered to consumers: {len(state.streams_seen)}"
        f"   messages/s {state.messages_per_s():.0f}   latency p50 {_fmt_ms(p50)}  p99 {_fmt_ms(p99)}",
        f"VIOLATIONS RECORDED BY THE EXCHANGE: {violations}",
        "",
        f"{'address':<10} {'public':<11} {'connections':>12} {'attempts in window':>20} {'peak':>14}",
    ]
    in_window = mock.stats()["attemptsInWindowPerIp"]
    for a in world.pool.addresses:
        ip = a.publicAddress
        limit_a = int(attempts.value) if attempts else 0
        limit_c = int(concurrent.value) if concurrent else 0
        peak = mock.peak(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP, ip)
        frac = peak / limit_a if limit_a else 0.0
        lines.append(
            f"{a.name:<10} {ip:<11} {len(mock.connections(ip)):>5}/{limit_c:<6} "
            f"{in_window.get(ip, 0):>11}/{limit_a:<8} {int(peak):>5}/{limit_a} {frac:4.0%}"
        )
    lines.append("")
    for acct in ("acct-1", "acct-2"):
        lines.append(f"account {acct}: 0 connections (the demo's streams are public)")
    lines.append("")
    lines.append(f"{'gateway':<9} {'ready':<6} {'gen':>4} {'conns':>6} {'live streams':>13}  note")
    for ordinal, st in sorted(state.statuses.items()):
        if st is None:
            lines.append(f"gw-{ordinal:<6} {'down':<6}")
            continue
        conns = sum(1 for c in st["connections"] if c["state"] == "live")
        waiting = next(iter(st.get("waiting", {}).values()), "")
        lines.append(
            f"gw-{ordinal:<6} {str(st['ready']).lower():<6} {st['planGeneration'] or 0:>4} "
            f"{conns:>3}/{len(st['connections']):<3} {st['streams']['live']:>6}/{st['streams']['desired']:<6}  "
            f"{waiting[:60]}"
        )
    return "\n".join(lines)


def render_summary(
    state: DemoState,
    violations: list[Any],
    peaks: dict[str, float],
    exit_codes: list[int | None],
    workdir: Path,
    accounts: tuple[str, ...],
) -> str:
    """The closing summary."""
    world = state.world
    attempts = world.profile.limit(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP)
    bounds = {b.address: b.seconds / state.time_scale for b in world.plan.recoveryBounds}
    lines = [
        "",
        "=" * 78,
        f"connquota demo summary — {world.profile.name}, {len(world.streams)} streams, "
        f"{len(state.gateways)} gateways, {len(world.pool.addresses)} addresses, "
        f"accounts {', '.join(accounts)}",
        f"ran {state.elapsed_s():.1f} s at time x{state.time_scale:g}",
        "",
    ]
    for phase in state.phases:
        took = (
            f"all streams live after {phase.recovered_s - phase.started_s:.1f} s"
            if phase.recovered_s is not None
            else "did not finish within the demo's duration"
        )
        lines.append(f"  {phase.name:<55} {took}")
    lines.append("")
    lines.append("  connection attempts per address (the exchange's own count):")
    for a in world.pool.addresses:
        frac = peaks.get(a.publicAddress, 0.0)
        limit = int(attempts.value) if attempts else 0
        bound = bounds.get(a.name)
        bound_text = f", planned recovery bound {bound:.1f} s" if bound is not None else ""
        lines.append(
            f"    {a.name} ({a.publicAddress}): peak {frac * limit:.0f}/{limit} in one window "
            f"= {frac:.0%} of the limit{bound_text}"
        )
    lines.append("  egress checks (through the IP-echo service, never the exchange):")
    for a in world.pool.addresses:
        seen = sorted(
            {
                str(st.get("egress", {}).get(a.name, {}).get("state", "pending"))
                for st in state.statuses.values()
                if st and a.name in st.get("egress", {})
            }
        )
        lines.append(
            f"    {a.name} ({a.publicAddress}): {', '.join(seen) or 'not used'}; "
            f"{state.echo_requests.get(a.publicAddress, 0)} echo requests"
        )
    lines.append("")
    lines.append(
        f"  streams delivered to consumers: {len(state.streams_seen)}/{len(world.streams)}; "
        f"frames {state.frames_total}; latency p50 {_fmt_ms(state.latency_ms(0.5))}, "
        f"p99 {_fmt_ms(state.latency_ms(0.99))}"
    )
    lines.append(f"  gateway exit codes after SIGTERM: {exit_codes}")
    lines.append(f"  violations recorded by the exchange: {len(violations)}")
    for v in violations[:10]:
        lines.append(f"    {v.to_json()}")
    if violations or any(c not in (0, None) for c in exit_codes):
        lines.append(f"  logs and state kept in {workdir}")
    lines.append("  RESULT: " + ("OK — every limit kept" if not violations else "FAILED"))
    lines.append("=" * 78)
    return "\n".join(lines)
