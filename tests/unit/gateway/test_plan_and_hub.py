"""Plan parsing keeps the last good plan; the hub numbers frames and switches owners cleanly."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from connquota.api.plan import QuotaPlan
from connquota.api.report import GatewayReport
from connquota.gateway.egress import address_matches, parse_echo
from connquota.gateway.hub import SLOW_CONSUMER_DROP, StreamHub
from connquota.gateway.lease import FileLease
from connquota.gateway.plan_source import NewerPlans, PlanError, parse_plan
from connquota.gateway.upstream import backoff_delay_s, retry_after_s
from connquota.testing.gateway_plans import connections, pod_plan, small_profile


def plan_text(generation: int, ordinal: int = 0) -> str:
    plan = pod_plan(small_profile(), connections(2, 2), generation=generation, ordinal=ordinal)
    return plan.model_dump_json()


def test_a_quota_plan_file_gives_each_ordinal_its_own_pod_plan():
    pods = [
        pod_plan(small_profile(), connections(1, 1, prefix=f"p{i}-"), ordinal=i) for i in range(3)
    ]
    qp = QuotaPlan(generation=1, quota=pods[0].quota, replicas=3, pods=pods)
    assert parse_plan(qp.model_dump_json(), 2).connections[0].id == "p2-0"


def test_unknown_format_version_or_garbage_keeps_the_last_good_plan():
    newer = NewerPlans()
    assert newer.accept(plan_text(3), 0).generation == 3
    future = json.loads(plan_text(4))
    future["formatVersion"] = 99
    future["somethingNew"] = True
    assert newer.accept(json.dumps(future), 0) is None
    assert "formatVersion 99" in newer.last_error
    assert newer.accept("{oops", 0) is None
    assert newer.accept(plan_text(2), 0) is None  # generations only grow
    assert newer.generation == 3
    assert newer.accept(plan_text(5), 0).generation == 5


def test_plan_for_another_ordinal_is_refused():
    newer = NewerPlans()
    assert newer.accept(plan_text(1, ordinal=1), 0) is None
    assert "ordinal" in newer.last_error


async def test_a_make_before_break_switch_delivers_each_upstream_message_once_in_order():
    hub = StreamHub()
    hub.set_known(["s"])
    consumer = hub.add_consumer()
    hub.subscribe(consumer, ["s"])
    old, new = object(), object()
    hub.claim("s", old)
    hub.publish("s", {"n": 1}, old, 1)
    hub.publish("s", {"n": 2}, new, 2)  # the replacement is not acknowledged yet
    hub.publish("s", {"n": 2}, old, 2)
    hub.claim("s", new)  # both hold the stream now
    hub.publish("s", {"n": 3}, new, 3)  # the replacement is ahead
    hub.publish("s", {"n": 3}, old, 3)  # a duplicate
    hub.publish("s", {"n": 4}, old, 4)  # the original is ahead
    hub.release_all(old)
    hub.publish("s", {"n": 4}, new, 4)  # a duplicate
    hub.publish("s", {"n": 5}, new, 5)
    frames = [json.loads(text) for text in consumer.queued_texts()]
    assert [(f["seq"], f["data"]["n"]) for f in frames] == [(i, i) for i in range(1, 6)]


async def test_a_slow_consumer_is_closed_or_drops_without_slowing_the_others():
    hub = StreamHub(queue_frames=3)
    hub.set_known(["s"])
    slow, fast = hub.add_consumer(), hub.add_consumer()
    hub.subscribe(slow, ["s"])
    hub.subscribe(fast, ["s"])
    for i in range(5):
        hub.claim("s", hub)
        hub.publish("s", i, hub)
        fast.take(1)
    assert slow.too_slow and not fast.too_slow
    dropper = StreamHub(queue_frames=2, policy=SLOW_CONSUMER_DROP)
    dropper.set_known(["s"])
    c = dropper.add_consumer()
    dropper.subscribe(c, ["s"])
    dropper.claim("s", dropper)
    for i in range(5):
        dropper.publish("s", i, dropper)
    assert c.dropped == 3
    assert [json.loads(text)["seq"] for text in c.queued_texts()] == [4, 5]


def test_every_frame_format_carries_the_exchanges_bytes_as_received():
    """The payload is spliced into each format as the exchange sent it (spacing, number
    spelling, key order), encoded once per format for every subscriber of that format."""
    from connquota.gateway.hub import FMT_COMBINED, FMT_ENVELOPE, FMT_PAYLOAD, FMT_PEER
    from connquota.gateway.wsframe import frame_payload

    hub = StreamHub()
    hub.set_known(["btcusdt@trade"])
    raw = '{"e": "trade", "t": 7, "p": "1.10"}'
    readers = {fmt: hub.add_consumer(fmt) for fmt in (FMT_ENVELOPE, FMT_PAYLOAD, FMT_COMBINED,
                                                      FMT_PEER)}  # fmt: skip
    also_raw = hub.add_consumer(FMT_PAYLOAD)
    for consumer in (*readers.values(), also_raw):
        hub.subscribe(consumer, ["btcusdt@trade"])
    assert hub.publish("btcusdt@trade", json.loads(raw), "session", 7, raw)
    texts = {fmt: frame_payload(c.frames[0]).decode() for fmt, c in readers.items()}
    assert texts[FMT_PAYLOAD] == raw
    assert texts[FMT_COMBINED] == '{"stream":"btcusdt@trade","data":' + raw + "}"
    assert texts[FMT_PEER] == '{"stream":"btcusdt@trade","seq":1,"useq":7,"data":' + raw + "}"
    envelope = json.loads(texts[FMT_ENVELOPE])
    assert texts[FMT_ENVELOPE].endswith(',"data":' + raw + "}") and envelope["seq"] == 1
    assert also_raw.frames[0] is readers[FMT_PAYLOAD].frames[0]  # one encoding per format


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after_s({"Retry-After": "17"}, 0) == 17
    assert retry_after_s({"Retry-After": "Thu, 01 Jan 1970 00:01:40 GMT"}, 40) == 60
    assert retry_after_s({}, 0) is None


def test_backoff_has_full_jitter_under_a_cap():
    rng = random.Random(1)
    delays = [backoff_delay_s(n, 0.5, 30, rng) for n in range(20) for _ in range(20)]
    assert max(delays) <= 30
    assert min(delays) >= 0
    assert len({round(d, 3) for d in delays}) > 300  # jittered, not a fixed ladder


def test_echo_answers_are_compared_with_the_public_address():
    assert parse_echo('{"address":"127.0.0.3"}') == "127.0.0.3"
    assert parse_echo('{"ip":"127.0.0.3"}') == "127.0.0.3"
    assert parse_echo('{"origin":"127.0.0.3, 10.0.0.1"}') == "127.0.0.3"
    assert parse_echo("127.0.0.3\n") == "127.0.0.3"
    assert address_matches("127.0.0.3", "127.0.0.3")
    assert not address_matches("127.0.0.4", "127.0.0.3")
    assert address_matches("2001:db8::5", "2001:db8::/64")


async def test_a_second_process_for_the_same_ordinal_waits_for_the_lock(tmp_path):
    first, second = FileLease(tmp_path, 0, poll_s=0.01), FileLease(tmp_path, 0, poll_s=0.01)
    await first.acquire()
    waits: list[str] = []
    task = asyncio.create_task(second.acquire(on_wait=waits.append))
    for _ in range(100):
        if waits:
            break
        await asyncio.sleep(0.01)
    assert waits and not task.done()
    await first.release()
    await asyncio.wait_for(task, 2)
    assert second.held
    await second.release()


def test_rotation_follows_the_plans_max_age_after_headroom_not_the_profiles():
    from connquota.api.limits import LimitName
    from connquota.exchanges import get_profile
    from connquota.gateway.upstream import plan_max_age_s, rotation_after_s

    profile = get_profile("binance-spot")  # maxConnectionAge 86,400 s
    published = profile.limit(LimitName.MAX_CONNECTION_AGE)
    assert published is not None and published.value == 86400
    plan = pod_plan(profile, [])
    # The planner's connection slice at headroom 0.8: floor(0.8 x 86,400) = 69,120 s.
    slices = [
        s.model_copy(update={"value": 69120}) if s.limit == LimitName.MAX_CONNECTION_AGE else s
        for s in plan.slices
    ]
    plan = plan.model_copy(update={"slices": slices})
    assert plan_max_age_s(plan) == 69120
    after = rotation_after_s(69120, profile.connectTimeoutSeconds, 0.05)
    assert after == 69120 * 0.95 and after < 69120, "rotated within the plan's age"
    # A plan without the slice (an older operator) falls back to the profile's value.
    bare = plan.model_copy(
        update={"slices": [s for s in plan.slices if s.limit != LimitName.MAX_CONNECTION_AGE]}
    )
    assert plan_max_age_s(bare) == 86400


def test_an_idle_consumer_with_a_direct_write_gets_frames_at_once_and_in_order() -> None:
    """`offer` uses the writer's direct write only with nothing queued; a refused direct
    write queues the frame, and once anything is queued every later frame queues behind it."""
    from connquota.gateway.hub import Consumer

    written: list[bytes] = []
    accept = [True]

    def direct(frame: bytes) -> bool:
        if accept[0]:
            written.append(frame)
        return accept[0]

    consumer = Consumer(1, max_frames=10)
    consumer.direct = direct
    consumer.offer(b"a", 1.0)
    assert written == [b"a"] and not consumer.frames
    accept[0] = False
    consumer.offer(b"b", 2.0)
    accept[0] = True
    consumer.offer(b"c", 3.0)
    assert written == [b"a"] and list(consumer.frames) == [b"b", b"c"]
    assert consumer.since == 2.0


def test_the_delivery_histogram_counts_in_plain_integers_and_exposes_cumulative_buckets() -> None:
    from connquota.gateway.metrics import DeliveryHistogram

    histogram = DeliveryHistogram(buckets=(0.001, 0.01))
    histogram.observe_immediate()
    histogram.observe(0.001)
    histogram.observe(0.005)
    histogram.observe(3.0)
    (family,) = histogram.collect()
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("connquota_gateway_delivery_seconds_bucket", "0.001")] == 2
    assert samples[("connquota_gateway_delivery_seconds_bucket", "0.01")] == 3
    assert samples[("connquota_gateway_delivery_seconds_bucket", "+Inf")] == 4
    assert samples[("connquota_gateway_delivery_seconds_count", None)] == 4
    assert samples[("connquota_gateway_delivery_seconds_sum", None)] == 3.006


def test_frames_closer_than_the_direct_gap_queue_to_leave_in_one_batch() -> None:
    from connquota.gateway.hub import DIRECT_GAP_S, Consumer

    written: list[bytes] = []
    consumer = Consumer(1, max_frames=10)
    consumer.direct = lambda frame: written.append(frame) is None
    consumer.offer(b"x", 5.0)
    consumer.offer(b"y", 5.0 + DIRECT_GAP_S / 2)
    assert written == [b"x"] and list(consumer.frames) == [b"y"]


def test_an_older_gateway_reads_a_newer_operators_plan_of_the_same_format():
    """The plan format rule: within one formatVersion, new fields are optional and a gateway
    that does not know them ignores them (at every depth); a new formatVersion is refused and
    the last good plan stays (the operator publishes one only when every running pod reports
    that it reads it: GatewayReport.planFormats)."""
    plan = pod_plan(small_profile(attempts=5, attempt_window_s=10), connections(1, 1))
    doc = json.loads(plan.model_dump_json())
    doc["rolloutHint"] = {"maxSurge": 1}  # fields a newer operator might add
    doc["profile"]["limits"][0]["confidenceNote"] = "secondary"
    doc["slices"][0]["burstSeconds"] = 2
    doc["connections"][0]["priority"] = 3
    assert parse_plan(json.dumps(doc), plan.ordinal) == plan
    doc["formatVersion"] = 2
    with pytest.raises(PlanError, match="unknown plan formatVersion 2"):
        parse_plan(json.dumps(doc), plan.ordinal)
    # Reports from gateways written before `planFormats` existed read format 1 only.
    old = GatewayReport(
        quota=plan.quota, pod="p-0", ordinal=0, bootId="b", planGeneration=1
    ).model_dump(exclude={"planFormats"})
    assert GatewayReport.model_validate(old).planFormats == [1]
