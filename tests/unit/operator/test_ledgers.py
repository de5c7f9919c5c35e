"""The operator's ledger bookkeeping: acknowledgements, repairs, pods gone, quarantined shares."""

from __future__ import annotations

from operator_factories import make_pod_plan, make_quota

from connquota.api.limits import LimitName, LimitScope, LimitShape
from connquota.api.plan import PodPlan, QuotaPlan, QuotaRef, Slice
from connquota.api.pool import ExchangeEgressPool
from connquota.api.report import GatewayReport, Quarantine
from connquota.exchanges.profiles.binance_spot import PROFILE
from connquota.operator import ledgers, planning
from connquota.planner.ledger import QuotaLedger, holds, record_publication

REF = QuotaRef(namespace="trading", name="md")
DOMAIN = PROFILE.domain


def _pod(ordinal: int, generation: int, concurrent: int, attempts: int = 5) -> PodPlan:
    pod = make_pod_plan(ordinal)
    return pod.model_copy(
        update={
            "generation": generation,
            "slices": [
                Slice(
                    limit=LimitName.CONCURRENT_CONNECTIONS,
                    scope=LimitScope.IP,
                    key="a1",
                    value=concurrent,
                    shape=LimitShape.CONCURRENT,
                ),
                Slice(
                    limit=LimitName.CONNECTION_ATTEMPTS,
                    scope=LimitScope.IP,
                    key="a1",
                    value=attempts,
                    shape=LimitShape.SLIDING_WINDOW,
                    windowSeconds=300,
                ),
            ],
        }
    )


def _plan(generation: int, *pods: PodPlan) -> QuotaPlan:
    return QuotaPlan(generation=generation, quota=REF, replicas=len(pods), pods=list(pods))


def _report(ordinal: int, generation: int) -> GatewayReport:
    return GatewayReport(
        quota=REF, pod=f"md-gw-{ordinal}", ordinal=ordinal, bootId="b", planGeneration=generation
    )


def test_a_pod_whose_plan_content_did_not_change_acknowledges_the_newest_generation(
    pool: ExchangeEgressPool,
) -> None:
    ledger = QuotaLedger(quota="trading/md")
    ledger = record_publication(ledger, _plan(1, _pod(0, 1, 4), _pod(1, 1, 4)), pool.spec)
    ledger = record_publication(ledger, _plan(2, _pod(0, 2, 4), _pod(1, 2, 2)), pool.spec)
    # Pod 0's ConfigMap was not rewritten (same content): it still says generation 1.
    published = {0: _pod(0, 1, 4), 1: _pod(1, 2, 2)}
    assert ledgers.effective_ack(ledger, 1, published[0], pool.spec) == 2
    # Pod 1 has not picked up its new plan yet: its ack of generation 1 stays generation 1.
    assert ledgers.effective_ack(ledger, 1, published[1], pool.spec) == 1
    ledger = ledgers.record_reports(
        ledger, {0: _report(0, 1), 1: _report(1, 1)}, published, pool.spec, now=10.0, margin_s=1
    )
    held = holds(ledger, 10.0)[(DOMAIN, "ip", "127.0.0.2", "concurrentConnections")]
    assert held == {0: 4, 1: 4}  # pod 1 may still enforce its bigger generation-1 slice


def test_published_plans_newer_than_the_ledger_are_recorded_as_unacknowledged(
    pool: ExchangeEgressPool,
) -> None:
    ledger = QuotaLedger(quota="trading/md")
    repaired = ledgers.reconcile_with_published(ledger, _plan(3, _pod(0, 3, 6)), pool.spec)
    assert repaired.last_generation == 3
    assert holds(repaired, 0.0)[(DOMAIN, "ip", "127.0.0.2", "concurrentConnections")] == {0: 6}
    assert ledgers.reconcile_with_published(repaired, _plan(3, _pod(0, 3, 6)), pool.spec) is (
        repaired
    )


def test_gone_pods_are_those_at_or_above_the_replicas_without_a_pod_object(
    pool: ExchangeEgressPool,
) -> None:
    ledger = record_publication(
        QuotaLedger(quota="trading/md"),
        _plan(1, _pod(0, 1, 2), _pod(1, 1, 2), _pod(2, 1, 2)),
        pool.spec,
    )
    assert ledgers.gone_ordinals(ledger, live_ordinals=[0, 2], replicas=1) == [1]
    after = ledgers.record_gone(ledger, [1], now=5.0, margin_s=1.0)
    acked = after.acked(1)
    assert acked is not None and acked.generation == 1
    # The newest generation still counts for it: a replacement pod would enforce it.
    assert holds(after, 1e6)[(DOMAIN, "ip", "127.0.0.2", "connectionAttempts")][1] == 5


def test_a_deleted_quota_publishes_a_generation_in_which_no_pod_holds_anything(
    pool: ExchangeEgressPool,
) -> None:
    ledger = record_publication(
        QuotaLedger(quota="trading/md"), _plan(4, _pod(0, 4, 3), _pod(1, 4, 3)), pool.spec
    )
    assert ledgers.holds_anything(ledger)
    pods = {0: _pod(0, 4, 3), 1: _pod(1, 4, 3)}
    empty = ledgers.empty_plan(REF, ledger, pods, 5)
    assert [p.ordinal for p in empty.pods] == [0, 1]
    assert all(not p.connections and not p.slices and p.generation == 5 for p in empty.pods)
    assert not ledgers.holds_anything(record_publication(ledger, empty, pool.spec))


def test_the_ledger_round_trips_through_its_configmap_text(pool: ExchangeEgressPool) -> None:
    ledger = record_publication(QuotaLedger(quota="trading/md"), _plan(1, _pod(0, 1, 2)), pool.spec)
    text = ledgers.ledger_json(ledger)
    assert ledgers.parse_ledger(text, "trading/md") == ledger
    assert ledgers.parse_ledger(text, "other/md") is None
    assert ledgers.parse_ledger("{not json", "trading/md") is None


def test_a_quarantined_address_gets_no_share_so_the_plan_uses_the_other_addresses(
    pool: ExchangeEgressPool,
) -> None:
    quota = make_quota(
        egressPoolRef={"name": "pool-a"},
        streams=[{"name": f"s{i}@trade"} for i in range(8)],
    )
    qin = planning.quota_input(quota)
    shares = planning.divide(pool.spec, [qin]).quotas[qin.key]
    streams = planning.desired_streams(quota, {})
    before = planning.plan_target(qin, streams, pool.spec, shares, None)
    assert any(c.address == "a1" for p in before.pods for c in p.connections)
    banned = planning.quarantined(
        shares, [Quarantine(scope=LimitScope.IP, key="a1", statusCode=418, until=1e12)]
    )
    after = planning.plan_target(qin, streams, pool.spec, banned, before)
    assert not any(c.address == "a1" for p in after.pods for c in p.connections)
    assert not any(s.key == "a1" and s.value > 0 for p in after.pods for s in p.slices)
    served = sorted(s for p in after.pods for c in p.connections for s in c.streams)
    assert served == sorted(f"s{i}@trade" for i in range(8))


def test_fresh_certificates_only_for_ordinals_whose_rate_use_is_over(
    pool: ExchangeEgressPool,
) -> None:
    """A new Lease is certified fresh only when the ledger has seen the quota from its start
    (or longer than the longest rate memory) and the ordinal holds no rate slice that may still
    be enforced or still count."""
    margin = 1.0
    target = _plan(1, _pod(0, 1, 4), _pod(1, 1, 4), _pod(2, 1, 4))
    memory = ledgers.longest_memory_s(target, margin)
    assert memory >= 300 + margin  # binance-spot: the 5-minute attempt window and more
    new = QuotaLedger(quota="trading/md", since=0.0)
    assert ledgers.fresh_ordinals(new, target, now=10.0, wall_now=1e9, margin_s=margin) == {
        0,
        1,
        2,
    }
    # A ledger rebuilt while pods may run (since = now) vouches for nothing until every rate
    # memory it could not see has passed; one written before `since` existed neither.
    rebuilt = new.model_copy(update={"since": 1e9})
    assert ledgers.fresh_ordinals(rebuilt, target, 10.0, 1e9 + memory - 1, margin) == set()
    assert ledgers.fresh_ordinals(rebuilt, target, 10.0, 1e9 + memory, margin) == {0, 1, 2}
    unknown = new.model_copy(update={"since": None})
    assert ledgers.fresh_ordinals(unknown, target, 10.0, 1e9, margin) == set()
    # Ordinals 0 and 1 hold rate slices (unacknowledged generation 1): not fresh; 2 is new.
    held = record_publication(new, _plan(1, _pod(0, 1, 4), _pod(1, 1, 4)), pool.spec)
    grown = _plan(2, _pod(0, 2, 4), _pod(1, 2, 4), _pod(2, 2, 4))
    assert ledgers.fresh_ordinals(held, grown, 10.0, 1e9, margin) == {2}
    # Ordinal 1 scaled away: its release counts until its memory + margin is over.
    shrunk = record_publication(held, _plan(2, _pod(0, 2, 4)), pool.spec)
    shrunk = planning.record_ack(shrunk, 1, 2, at=20.0, margin_s=margin)
    release = next(r for r in shrunk.releases if r.slice.ordinal == 1)
    back = _plan(3, _pod(0, 3, 4), _pod(1, 3, 4))
    assert ledgers.fresh_ordinals(shrunk, back, release.until - 0.1, 1e9, margin) == set()
    assert ledgers.fresh_ordinals(shrunk, back, release.until, 1e9, margin) == {1}


def test_the_operator_writes_the_certificate_on_the_lease_it_creates() -> None:
    from connquota.api.lease_record import FRESH_ANNOTATION, FreshCertificate, parse_certificate
    from connquota.operator import builders

    quota = make_quota()
    plain = builders.build_lease(quota, 0)
    assert FRESH_ANNOTATION not in (plain["metadata"].get("annotations") or {})
    cert = FreshCertificate(issuedAt=1e9, generation=3)
    lease = builders.build_lease(quota, 0, cert)
    assert parse_certificate(lease["metadata"]["annotations"][FRESH_ANNOTATION]) == cert
    assert lease["spec"] == {}


def test_a_short_quarantine_its_own_gateways_reported_is_waited_out_not_planned_around() -> None:
    """The reporting quota's gateways hold off a few seconds of Retry-After by themselves; other
    quotas of the domain, and long quarantines, are planned around."""
    from connquota.api.plan import QuotaRef
    from connquota.api.report import GatewayReport

    now = 1_000.0
    short = Quarantine(scope=LimitScope.IP, key="a0", statusCode=429, until=now + 2)
    long = Quarantine(scope=LimitScope.IP, key="a1", statusCode=418, until=now + 600)
    other = Quarantine(scope=LimitScope.IP, key="a2", statusCode=429, until=now + 2)
    report = GatewayReport(
        quota=QuotaRef(namespace="trading", name="md"),
        pod="md-gw-0",
        ordinal=0,
        bootId="b",
        planGeneration=1,
        quarantines=[short, long],
    )
    domain = [short, long, other]
    assert planning.planned_quarantines(domain, [report], now) == [long, other]
    assert planning.planned_quarantines(domain, [], now) == domain
    # Once the short one has less time left than the threshold it stays waited out; a long one
    # reported by the quota itself is still planned around.
    assert long in planning.planned_quarantines(domain, [report], now + 590 - 20)
