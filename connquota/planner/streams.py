"""Expand a quota spec into its ordered, de-duplicated list of desired streams.

Order: explicit `streams`, then every `streamSets` entry (symbol-major), then `streamsFrom`
(ConfigMap contents are an input: the operator reads them, never the planner). A name declared
twice with the same priority and credential counts once; with a different priority or
credential it is an error naming both places.

`streamSets` entries are spelled the way the quota's exchange spells stream names: the caller
passes the profile's dialect (there is no default, so the operator and `connquota plan` cannot
disagree), and `stream_naming` finds the dialect's function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import repeat

from connquota.api.limits import Dialect
from connquota.api.quota import MAX_STREAMS_PER_QUOTA, ExchangeConnectionQuotaSpec
from connquota.exchanges.dialects import formats
from connquota.planner.errors import (
    DuplicateStreamError,
    MissingStreamSourceError,
    StreamSpecError,
    TooManyStreamsError,
    UnknownCredentialError,
)
from connquota.planner.inputs import DesiredStream

Compose = Callable[[str, str], str]
"""Composes (symbol, channel) into the exchange's stream name."""


def channel_colon_symbol(symbol: str, channel: str) -> str:
    """`ticker:BTC-USD`: dialects that subscribe with a channel and a product list (Coinbase
    Advanced Trade, Kraken v2) and have no wire format of their own yet."""
    return f"{channel}:{symbol}"


def _deribit(symbol: str, channel: str) -> str:
    raise StreamSpecError(
        "spec.streamSets cannot spell Deribit channels (the instrument sits inside the "
        f"channel name, e.g. trades.{symbol}.100ms); list them in spec.streams instead"
    )


_NAMING_WITHOUT_WIRE_FORMAT: dict[Dialect, Compose] = {
    Dialect.COINBASE: channel_colon_symbol,
    Dialect.KRAKEN: channel_colon_symbol,
    Dialect.DERIBIT: _deribit,
}


def stream_naming(dialect: Dialect | str) -> Compose:
    """How `dialect` spells symbol x channel: the wire format's `stream_name` (Binance
    `btcusdt@trade`, OKX `tickers:BTC-USDT`, Bybit `orderbook.50.BTCUSDT`), else the
    planner's spelling for a dialect without a wire format (`channel:symbol`)."""
    d = Dialect(dialect)
    wire = formats.get(d)
    if wire is not None:
        naming: Compose = wire.stream_name
        return naming
    return _NAMING_WITHOUT_WIRE_FORMAT[d]


def source_key(configmap: str, key: str) -> str:
    """The key of `streamsFrom` contents in the `sources` mapping: `configmap/key`."""
    return f"{configmap}/{key}"


def parse_stream_lines(text: str) -> list[str]:
    """Stream names from a ConfigMap value: one per line; blank lines and `#` comments skipped."""
    return [name for name in map(str.strip, text.splitlines()) if name and name[0] != "#"]


def expand_streams(
    spec: ExchangeConnectionQuotaSpec,
    dialect: Dialect | str,
    sources: Mapping[str, str] | None = None,
    *,
    max_streams: int = MAX_STREAMS_PER_QUOTA,
) -> list[DesiredStream]:
    """Every stream the quota declares, in declaration order, each once.

    `dialect`: the effective profile's dialect, which spells `streamSets` names (see
    `stream_naming`). `sources` maps `configmap/key` (see `source_key`) to the ConfigMap
    value. Raises a `StreamSpecError` subclass with a message saying what to change.
    """
    compose = stream_naming(dialect)
    sources = sources or {}
    credentials = {c.name for c in spec.credentials}
    seen: dict[str, DesiredStream] = {}
    where_of: dict[str, str] = {}
    out: list[DesiredStream] = []

    def add(names: list[str], priority: int, credential: str | None, where: str) -> None:
        """Add `names` (declared at `where`) in order; each list costs C-speed dict work plus
        one tuple per new stream, so 10^5 names take milliseconds."""
        unique = dict.fromkeys(names)
        repeated = unique.keys() & seen.keys()
        if repeated:
            for name in (n for n in unique if n in repeated):
                first = seen[name]
                if first.priority != priority or first.credential != credential:
                    raise DuplicateStreamError(
                        f"stream {name!r} is declared twice differently: {where_of[name]} "
                        f"(priority {first.priority}, credential {first.credential or 'none'}) "
                        f"and {where} (priority {priority}, credential {credential or 'none'}); "
                        "declare it once, or give both the same priority and credential"
                    )
            fresh = [n for n in unique if n not in repeated]
        else:
            fresh = list(unique)
        if len(out) + len(fresh) > max_streams:
            raise TooManyStreamsError(
                f"the quota declares more than {max_streams} streams (the supported maximum "
                "per quota); split it into several quotas"
            )
        streams = list(map(DesiredStream, fresh, repeat(priority), repeat(credential)))
        out.extend(streams)
        seen.update(zip(fresh, streams, strict=True))
        where_of.update(dict.fromkeys(fresh, where))

    def check_credential(credential: str | None, where: str) -> None:
        if credential is not None and credential not in credentials:
            known = ", ".join(sorted(credentials)) or "none declared"
            raise UnknownCredentialError(
                f"{where} names credential {credential!r}, which spec.credentials does not "
                f"declare (declared: {known}); add it or fix the name"
            )

    for i, s in enumerate(spec.streams):
        where = f"spec.streams[{i}]"
        check_credential(s.credential, where)
        add([s.name], s.priority, s.credential, where)
    for i, ss in enumerate(spec.streamSets):
        where = f"spec.streamSets[{i}]"
        check_credential(ss.credential, where)
        names = [compose(symbol, channel) for symbol in ss.symbols for channel in ss.channels]
        add(names, ss.priority, ss.credential, where)
    for i, sf in enumerate(spec.streamsFrom):
        where = f"spec.streamsFrom[{i}] (ConfigMap {sf.configMapRef.name}, key {sf.key})"
        check_credential(sf.credential, where)
        text = sources.get(source_key(sf.configMapRef.name, sf.key))
        if text is None:
            if sf.optional:
                continue
            raise MissingStreamSourceError(
                f"{where} is missing; create the ConfigMap with that key, or mark the "
                "reference optional"
            )
        add(parse_stream_lines(text), sf.priority, sf.credential, where)
    return out
