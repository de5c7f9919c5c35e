"""Expand a quota spec into its ordered, de-duplicated list of desired streams.

Order: explicit `streams`, then every `streamSets` entry (symbol-major), then `streamsFrom`
(ConfigMap contents are an input: the operator reads them, never the planner). A name declared
twice with the same priority and credential counts once; with a different priority or
credential it is an error naming both places.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from connquota.api.quota import MAX_STREAMS_PER_QUOTA, ExchangeConnectionQuotaSpec
from connquota.planner.errors import (
    DuplicateStreamError,
    MissingStreamSourceError,
    TooManyStreamsError,
    UnknownCredentialError,
)
from connquota.planner.inputs import DesiredStream

Compose = Callable[[str, str], str]
"""Composes (symbol, channel) into the exchange's stream name."""


def binance_compose(symbol: str, channel: str) -> str:
    """Binance spelling: `btcusdt@depth@100ms` (the default when no dialect is given)."""
    return f"{symbol}@{channel}"


def source_key(configmap: str, key: str) -> str:
    """The key of `streamsFrom` contents in the `sources` mapping: `configmap/key`."""
    return f"{configmap}/{key}"


def parse_stream_lines(text: str) -> list[str]:
    """Stream names from a ConfigMap value: one per line; blank lines and `#` comments skipped."""
    names = []
    for line in text.splitlines():
        name = line.strip()
        if name and not name.startswith("#"):
            names.append(name)
    return names


def expand_streams(
    spec: ExchangeConnectionQuotaSpec,
    sources: Mapping[str, str] | None = None,
    compose: Compose = binance_compose,
    max_streams: int = MAX_STREAMS_PER_QUOTA,
) -> list[DesiredStream]:
    """Every stream the quota declares, in declaration order, each once.

    `sources` maps `configmap/key` (see `source_key`) to the ConfigMap value. Raises a
    `StreamSpecError` subclass with a message saying what to change.
    """
    sources = sources or {}
    credentials = {c.name for c in spec.credentials}
    seen: dict[str, tuple[DesiredStream, str]] = {}
    out: list[DesiredStream] = []

    def add(name: str, priority: int, credential: str | None, where: str) -> None:
        previous = seen.get(name)
        if previous is not None:
            first, first_where = previous
            if first.priority != priority or first.credential != credential:
                raise DuplicateStreamError(
                    f"stream {name!r} is declared twice differently: {first_where} "
                    f"(priority {first.priority}, credential {first.credential or 'none'}) and "
                    f"{where} (priority {priority}, credential {credential or 'none'}); "
                    "declare it once, or give both the same priority and credential"
                )
            return
        stream = DesiredStream(name, priority, credential)
        seen[name] = (stream, where)
        out.append(stream)
        if len(out) > max_streams:
            raise TooManyStreamsError(
                f"the quota declares more than {max_streams} streams (the supported maximum "
                "per quota); split it into several quotas"
            )

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
        add(s.name, s.priority, s.credential, where)
    for i, ss in enumerate(spec.streamSets):
        where = f"spec.streamSets[{i}]"
        check_credential(ss.credential, where)
        for symbol in ss.symbols:
            for channel in ss.channels:
                add(compose(symbol, channel), ss.priority, ss.credential, where)
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
        for name in parse_stream_lines(text):
            add(name, sf.priority, sf.credential, where)
    return out
