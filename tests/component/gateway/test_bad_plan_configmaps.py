"""Plans edited by hand into invalid content (issue 17, "Bad input"): the gateway keeps its last
good plan, its connections and its consumers' streams, and says why in `/status` (`planError`,
`message`) and in its log.

The gateway runs standalone here, its plan a file; a plan ConfigMap's `plan.json` goes through
the same `NewerPlans.accept` (connquota/gateway/plan_source.py). The cases (`bad_plans`) are
listed in docs/reliability.md ("Bad input").
"""

from __future__ import annotations

import json
from typing import Any

from conftest import Consumer, base_plan, shrunk, wait_for

GENERATION = 5


def bad_plans(good: dict[str, Any]) -> list[tuple[str, bytes, str]]:
    """(case, plan file content, what /status planError must say), each error unlike the one
    before it (so that each case is seen to take effect)."""

    def edit(**changes: Any) -> bytes:
        doc = json.loads(json.dumps(good))
        for key, value in changes.items():
            if value is _DROP:
                doc.pop(key)
            else:
                doc[key] = value
        return json.dumps(doc).encode()

    text = json.dumps(good).encode()
    quota_plan = {
        "formatVersion": good["formatVersion"],
        "generation": GENERATION + 1,
        "quota": good["quota"],
        "replicas": 2,
        "pods": [dict(good, ordinal=1, generation=GENERATION + 1)],
    }
    other_ns = dict(good["quota"], namespace="someone-else")
    other_name = dict(good["quota"], name="another-quota")
    return [
        ("not JSON", b"{oops", "plan is not JSON"),
        ("a JSON array", b"[1, 2]", "not a JSON object"),
        ("truncated JSON", text[: len(text) // 2], "plan is not JSON"),
        ("null", b"null", "not a JSON object"),
        ("empty file", b"", "plan is not JSON"),
        ("a JSON string", b'"plan"', "not a JSON object"),
        ("deeply nested JSON", b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
        ("formatVersion 99", edit(formatVersion=99, generation=GENERATION + 1), "formatVersion 99"),
        ("invalid UTF-8", b'{"formatVersion": "\xff\xfe"}', "not UTF-8"),
        ("formatVersion as a string", edit(formatVersion="1"), "formatVersion '1'"),
        ("generation negative", edit(generation=-1), "does not validate"),
        ("formatVersion missing", edit(formatVersion=_DROP), "formatVersion None"),
        ("quota missing", edit(quota=_DROP, generation=GENERATION + 1), "does not validate"),
        ("plan for another ordinal", edit(ordinal=3, generation=GENERATION + 1), "ordinal 3"),
        ("profile missing", edit(profile=_DROP, generation=GENERATION + 1), "does not validate"),
        ("quota plan without this ordinal", json.dumps(quota_plan).encode(), "no pod with ordinal"),
        (
            "connections not a list",
            edit(connections="c0", generation=GENERATION + 1),
            "does not validate",
        ),
        (
            "plan for another quota (namespace)",
            edit(quota=other_ns, generation=GENERATION + 1),
            "someone-else",
        ),
        ("slices of the wrong type", edit(slices=[{"limit": 5}]), "does not validate"),
        (
            "plan for another quota (name)",
            edit(quota=other_name, generation=GENERATION + 1),
            "another-quota",
        ),
        ("a lower generation", edit(generation=GENERATION - 2), "generation 3 is older"),
        ("a JSON number", b"17", "not a JSON object"),
    ]


_DROP = object()


async def test_invalid_plans_keep_the_last_good_plan_and_say_why(harness, tmp_path):
    await harness.start_mock("binance-spot", shrunk("binance-spot", connectionAttempts=(50, 40.0)))
    plan, names = base_plan(harness, "binance-spot", conns=2, generation=GENERATION)
    path = harness.write_plan(plan)
    gw = harness.gateway(path)
    gw.start()
    await harness.wait_live(gw, len(names), timeout_s=30)
    consumer = Consumer(harness.http, gw.ws_url)
    await consumer.connect(names)
    await wait_for(lambda: consumer.streams_seen() >= set(names), 20, "consumer frames")
    good = json.loads(plan.model_dump_json())
    cases = bad_plans(good)
    previous = ""
    for case, content, says in cases:
        assert says not in previous, f"{case}: its error must differ from the case before"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(content)
        tmp.replace(path)

        async def said(says: str = says) -> dict | None:
            st = await harness.status(gw)
            return st if st and says in st["planError"] else None

        st = await wait_for(said, 10, f"{case}: planError saying {says!r}")
        assert st["planGeneration"] == GENERATION, case
        assert st["message"].startswith("plan ignored (") and st["message"].endswith(
            f"keeping plan generation {GENERATION}"
        ), st["message"]
        assert st["streams"]["live"] == len(names), f"{case}: {st['streams']}"
        assert gw.alive(), case
        previous = st["planError"]
    print(f"{len(cases)} invalid plan cases")
    logs = "".join(p.read_text() for p in tmp_path.glob("gw-*.log"))
    for case, _, says in cases:
        assert f"ignoring plan: {says}" in logs or says in logs, f"{case}: not logged"
    assert logs.count("ignoring plan") == len(cases), logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]
    # nothing was reopened: every connection still on its first session
    st = await harness.status(gw)
    assert all(c["sessionsOpened"] == 1 for c in st["connections"]), st["connections"]
    # the consumer saw consecutive seq throughout
    seen = {s: len(q) for s, q in consumer.frames.items()}
    await wait_for(lambda: all(len(consumer.frames[s]) > seen[s] for s in names), 20, "frames")
    for stream in names:
        seqs = consumer.frames[stream]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{stream}: gap"
    # a valid newer plan is taken and clears the error
    newer = plan.model_copy(update={"generation": GENERATION + 1})
    harness.write_plan(newer)

    async def applied() -> dict | None:
        st = await harness.status(gw)
        return st if st and st["planGeneration"] == GENERATION + 1 else None

    st = await wait_for(applied, 10, "the valid plan applied")
    assert st["planError"] == "" and st["message"] == f"enforcing plan generation {GENERATION + 1}"
    await consumer.close()
    harness.assert_no_violation()
