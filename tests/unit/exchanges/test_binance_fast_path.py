"""The gateway's per-message path for Binance (`fast_data`) against the full parse, on
generated payloads: whatever the fast path answers is what `parse_server_message` finds
(stream, exchange sequence, payload text as sent); anything else it leaves to the full parse."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from connquota.exchanges.dialects import binance
from connquota.exchanges.dialects.base import Data

EVENTS = ["trade", "aggTrade", "depthUpdate", "kline", "24hrTicker", "bookTicker", "serverShutdown"]
NUMBERING = ["t", "a", "u", "U", "lastUpdateId", "L", "E"]

scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.none(),
    st.booleans(),
)
values = st.one_of(scalars, st.lists(st.lists(st.text(max_size=4), max_size=2), max_size=2))
kline = st.dictionaries(st.sampled_from(["L", "t", "x", "i"]), values, max_size=4)
payloads = st.fixed_dictionaries(
    {},
    optional={
        "e": st.one_of(st.sampled_from(EVENTS), scalars),
        **{key: values for key in NUMBERING},
        "k": st.one_of(kline, scalars),
        "b": values,
        "s": st.text(max_size=8),
    },
)


@settings(max_examples=400, deadline=None)
@given(
    stream=st.one_of(st.sampled_from(["btcusdt@trade", "!miniTicker@arr"]), st.text(max_size=8)),
    payload=payloads,
    spaced=st.booleans(),
)
def test_the_fast_path_agrees_with_the_full_parse(
    stream: str, payload: dict[str, Any], spaced: bool
) -> None:
    separators = (", ", ": ") if spaced else (",", ":")
    text = json.dumps({"stream": stream, "data": payload}, separators=separators)
    fast = binance.fast_data(text)
    if fast is None:
        return  # the full parse decides (tested with the dialect)
    full = binance.parse_server_message(text)
    assert isinstance(full, Data)
    assert fast == (full.stream, full.seq, full.raw)
    assert json.loads(fast[2]) == payload


def test_broken_frames_never_take_the_fast_path() -> None:
    good = '{"stream":"btcusdt@trade","data":{"e":"trade","t":7,"p":"1.0"}}'
    assert binance.fast_data(good) == ("btcusdt@trade", 7, '{"e":"trade","t":7,"p":"1.0"}')
    for broken in (
        good[:-1],  # truncated
        good.replace('"p":"1.0"', '"p":1.0.0'),  # not JSON inside the payload
        good.replace('"t":7', '"t":"7"'),  # the sequence as a string: the full parse decides
        good[:-1] + ',"x":1}',  # another key
        good.replace('"data":{', '"data":[{').replace("}}", "}]}"),  # data not an object
    ):
        assert binance.fast_data(broken) is None, broken
