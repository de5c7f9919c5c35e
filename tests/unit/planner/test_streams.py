"""Expanding a quota's declared streams into the ordered list the planner serves."""

from __future__ import annotations

import pytest
from planner_factories import credential, spec

from connquota.api.limits import Dialect
from connquota.api.quota import StreamSet, StreamsFromRef, StreamSpec
from connquota.planner.errors import (
    DuplicateStreamError,
    MissingStreamSourceError,
    TooManyStreamsError,
    UnknownCredentialError,
)
from connquota.planner.inputs import DesiredStream
from connquota.planner.streams import expand_streams, source_key


def test_explicit_then_sets_then_configmaps_in_declaration_order():
    s = spec(streams=["x@trade"]).model_copy(
        update={
            "streamSets": [
                StreamSet(symbols=["btc", "eth"], channels=["trade", "depth"], priority=5)
            ],
            "streamsFrom": [StreamsFromRef(configMapRef={"name": "cm"}, key="list")],
        }
    )
    got = expand_streams(s, Dialect.BINANCE, {source_key("cm", "list"): "# comment\nzzz@kline\n\n"})
    assert [x.name for x in got] == [
        "x@trade",
        "btc@trade",
        "btc@depth",
        "eth@trade",
        "eth@depth",
        "zzz@kline",
    ]
    assert got[1] == DesiredStream("btc@trade", 5, None)


@pytest.mark.parametrize(
    ("dialect", "symbol", "channel", "name"),
    [
        (Dialect.BINANCE, "btcusdt", "depth@100ms", "btcusdt@depth@100ms"),
        (Dialect.OKX, "BTC-USDT", "books", "books:BTC-USDT"),
        (Dialect.BYBIT, "BTCUSDT", "orderbook.50", "orderbook.50.BTCUSDT"),
        (Dialect.COINBASE, "BTC-USD", "ticker", "ticker:BTC-USD"),
        (Dialect.KRAKEN, "BTC/USD", "trade", "trade:BTC/USD"),
    ],
)
def test_stream_sets_are_spelled_the_way_the_quotas_exchange_spells_them(
    dialect, symbol, channel, name
):
    s = spec().model_copy(update={"streamSets": [StreamSet(symbols=[symbol], channels=[channel])]})
    assert [x.name for x in expand_streams(s, dialect)] == [name]


def test_stream_sets_on_deribit_put_the_instrument_inside_the_channel_name():
    # the deribit wire format spells them (the default interval 100ms, candles 1 minute)
    channels = ["trades", "book.agg2", "chart.trades"]
    s = spec().model_copy(
        update={"streamSets": [StreamSet(symbols=["BTC-PERPETUAL"], channels=channels)]}
    )
    assert [x.name for x in expand_streams(s, Dialect.DERIBIT)] == [
        "trades.BTC-PERPETUAL.100ms",
        "book.BTC-PERPETUAL.agg2",
        "chart.trades.BTC-PERPETUAL.1",
    ]


def test_expanding_stream_sets_needs_the_dialect():
    with pytest.raises(TypeError):
        expand_streams(spec())  # type: ignore[call-arg]


def test_same_stream_declared_twice_identically_counts_once():
    s = spec(streams=["btc@trade", "b"]).model_copy(
        update={"streamSets": [StreamSet(symbols=["btc"], channels=["trade"])]}
    )
    assert [x.name for x in expand_streams(s, Dialect.BINANCE)] == ["btc@trade", "b"]


def test_same_stream_with_a_different_priority_is_an_error_naming_both_places():
    s = spec().model_copy(
        update={"streams": [StreamSpec(name="a"), StreamSpec(name="a", priority=3)]}
    )
    with pytest.raises(DuplicateStreamError, match=r"spec.streams\[0\].*spec.streams\[1\]"):
        expand_streams(s, Dialect.BINANCE)


def test_private_stream_with_an_undeclared_credential_is_an_error():
    s = spec().model_copy(update={"streams": [StreamSpec(name="a", credential="k9")]})
    with pytest.raises(UnknownCredentialError, match="k9"):
        expand_streams(s, Dialect.BINANCE)
    ok = spec(credentials=[credential("k9")]).model_copy(
        update={"streams": [StreamSpec(name="a", credential="k9")]}
    )
    assert expand_streams(ok, Dialect.BINANCE) == [DesiredStream("a", 0, "k9")]


def test_missing_configmap_stalls_unless_optional():
    ref = StreamsFromRef(configMapRef={"name": "cm"})
    with pytest.raises(MissingStreamSourceError, match="create the ConfigMap"):
        expand_streams(spec().model_copy(update={"streamsFrom": [ref]}), Dialect.BINANCE)
    optional = ref.model_copy(update={"optional": True})
    assert (
        expand_streams(spec().model_copy(update={"streamsFrom": [optional]}), Dialect.BINANCE) == []
    )


def test_more_streams_than_supported_is_an_error_saying_to_split_the_quota():
    with pytest.raises(TooManyStreamsError, match="split it"):
        expand_streams(spec(streams=11), Dialect.BINANCE, max_streams=10)
