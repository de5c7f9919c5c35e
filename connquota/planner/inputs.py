"""The planner's inputs: a quota as the planner sees it, and one desired stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from connquota.api.limits import ExchangeProfile, LimitScope
from connquota.api.plan import QuotaRef
from connquota.api.quota import ExchangeConnectionQuotaSpec


class DesiredStream(NamedTuple):
    """A stream the quota wants served: its name, priority and (private streams) credential.

    A named tuple (immutable, like the frozen dataclass it was): equality and hashing run at C
    speed, so an incremental replan can compare 10^5 streams with the previous list in a few
    milliseconds (see `incremental.py`).
    """

    name: str
    priority: int = 0
    credential: str | None = None


@dataclass(frozen=True)
class QuotaInput:
    """A quota with its effective profile (built-in + endpoint + limit overrides applied)."""

    namespace: str
    name: str
    spec: ExchangeConnectionQuotaSpec
    profile: ExchangeProfile
    uid: str = ""
    """The quota object's uid (empty when it has none, e.g. `connquota plan`): a replan keeps
    the previous plan's index only for the same object, never for a re-created namesake."""

    @property
    def key(self) -> str:
        """`namespace/name`: the quota's identity in shares, ledgers and reasons."""
        return f"{self.namespace}/{self.name}"

    @property
    def ref(self) -> QuotaRef:
        """The quota reference plans carry."""
        return QuotaRef(namespace=self.namespace, name=self.name)

    @property
    def domain(self) -> str:
        """The limit domain whose budgets this quota draws from."""
        return self.profile.domain

    def identities(self, scope: LimitScope) -> list[str]:
        """What the quota's credentials are counted by in `scope` (account ids or key ids;
        sorted, unique)."""
        return sorted({c.identity(scope) for c in self.spec.credentials})
