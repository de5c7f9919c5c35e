"""How the operator identifies itself to the API server: one User-Agent for every request.

Both of the operator's clients send `connquota-operator/<version>`: the `kubernetes` client
(every read and write of the reconciler) and kopf's own aiohttp session (watches, finalizers,
its annotations), which kopf would otherwise send as `kopf/<version>`. The API server's audit
log records the User-Agent of each request, so an administrator (and the cluster tests) can
count exactly the operator's requests.
"""

from __future__ import annotations

import dataclasses

import kopf

from connquota import __version__
from connquota.operator import names

USER_AGENT = f"{names.USER_AGENT}/{__version__}"
"""The User-Agent header of every request the operator makes."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class OperatorConnectionInfo(kopf.ConnectionInfo):
    """kopf's connection info with the operator's User-Agent on kopf's session."""

    user_agent: str = USER_AGENT

    def as_http_headers(self) -> dict[str, str]:
        """kopf's headers (authorization) plus the User-Agent."""
        return {**super().as_http_headers(), "User-Agent": self.user_agent}


def with_user_agent(info: kopf.ConnectionInfo) -> OperatorConnectionInfo:
    """The same credentials, sent with the operator's User-Agent."""
    fields = {f.name: getattr(info, f.name) for f in dataclasses.fields(info) if f.init}
    return OperatorConnectionInfo(**fields)
