"""Which of a profile's endpoints a new public connection opens: the primary, or the next
alternate while the ones before it are down.

An endpoint is *down* after an attempt there could not reach it (TCP refused or timed out,
name resolution failed, the connect timeout passed) or its handshake answered 5xx: it is
skipped for a backoff that doubles with each failure in a row (5 s up to 60 s). A 429 or 418
never marks an endpoint down: the exchange is throttling the address or the key, and every
endpoint here is planned within the same limit domain, so going elsewhere would only hide the
throttle (the session quarantines the address instead). A `separate` alternate is not here at
all (`protocol.connect_urls`): its budgets are another domain's.

Coming back: once the primary's backoff has passed, one connection on an alternate at a time
is rotated (make-before-break, through the limiter like every rotation): its new session picks
the primary. When the primary answers, every other connection on an alternate follows; when it
fails again, its backoff grows and the connections stay where they are.

Every attempt, whatever endpoint it goes to, is taken from the same limiter slices: failover
changes where a connection goes, never how many attempts or connections the pod makes (I1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

BACKOFF_BASE_S = 5.0
"""How long an endpoint is skipped after its first failure in a row."""
BACKOFF_CAP_S = 60.0
"""The longest it is skipped (the backoff doubles per failure in a row up to this)."""
RETURN_CLAIM_S = 30.0
"""How long one connection's return to an unconfirmed primary holds off the others."""


@dataclass
class EndpointState:
    """What the gateway knows of one endpoint."""

    url: str
    failures: int = 0
    """Failures in a row (reset by a connection that opened)."""
    down_until: float = 0.0
    """Monotonic time before which new connections skip it."""
    last_error: str = ""


class EndpointChooser:
    """The endpoints of one profile (primary first) and their health, shared by every public
    connection of the pod."""

    def __init__(self, urls: list[str], clock: Callable[[], float] = time.monotonic) -> None:
        assert urls, "at least the primary endpoint"
        self.endpoints = [EndpointState(url) for url in urls]
        self._by_url = {e.url: e for e in self.endpoints}
        self._clock = clock
        self._returning_until = 0.0
        """Until then a connection is on its way back to the primary (one at a time until the
        primary answers; the claim lapses if that rotation never gets to try)."""

    @property
    def primary(self) -> str:
        return self.endpoints[0].url

    def pick(self) -> str:
        """The URL a new connection opens: the first endpoint that is not down, else the one
        that comes back first (so a fleet with every endpoint down keeps trying, paced by the
        connections' own backoff and the limiter)."""
        now = self._clock()
        for endpoint in self.endpoints:
            if endpoint.down_until <= now:
                return endpoint.url
        return min(self.endpoints, key=lambda e: e.down_until).url

    def failed(self, url: str, error: str) -> None:
        """An attempt at `url` could not reach it or got a 5xx handshake. Failures while it is
        already down (attempts started before) do not lengthen its backoff."""
        endpoint = self._by_url.get(url)
        if endpoint is None:
            return
        endpoint.last_error = error
        now = self._clock()
        if endpoint.down_until > now:
            return  # an attempt that started before it went down: the same outage
        endpoint.failures += 1
        backoff = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (endpoint.failures - 1))
        endpoint.down_until = now + backoff
        if url == self.primary:
            self._returning_until = 0.0

    def opened(self, url: str) -> None:
        """A connection to `url` opened."""
        endpoint = self._by_url.get(url)
        if endpoint is None:
            return
        endpoint.failures = 0
        endpoint.down_until = 0.0
        endpoint.last_error = ""
        if url == self.primary:
            self._returning_until = 0.0

    def should_return(self, url: str) -> bool:
        """Whether a live connection on `url` should rotate now (back towards the primary).
        Claims the one return slot while the primary is unconfirmed: call it only when the
        connection will rotate if it says True."""
        if url == self.primary or url not in self._by_url:
            return False
        primary = self.endpoints[0]
        now = self._clock()
        if primary.down_until > now:
            return False
        if primary.failures == 0:
            return True  # the primary answered since it was last down: everyone goes back
        if self._returning_until > now:
            return False
        self._returning_until = now + RETURN_CLAIM_S
        return True

    def status(self) -> list[dict[str, object]]:
        """Each endpoint's health for /status."""
        now = self._clock()
        return [
            {
                "url": e.url,
                "primary": i == 0,
                "down": e.down_until > now,
                "downForSeconds": round(max(0.0, e.down_until - now), 1),
                "failuresInARow": e.failures,
                "lastError": e.last_error,
            }
            for i, e in enumerate(self.endpoints)
        ]


class EndpointBook:
    """One chooser per list of endpoints (a plan change may bring another profile)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._choosers: dict[tuple[str, ...], EndpointChooser] = {}

    def chooser(self, urls: list[str]) -> EndpointChooser:
        key = tuple(urls)
        chooser = self._choosers.get(key)
        if chooser is None:
            chooser = self._choosers[key] = EndpointChooser(list(urls), self._clock)
        return chooser

    def status(self) -> list[dict[str, object]]:
        """The endpoints of the newest chooser with alternates (empty: none)."""
        for key in reversed(list(self._choosers)):
            if len(key) > 1:
                return self._choosers[key].status()
        return []
