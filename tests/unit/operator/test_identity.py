"""The operator identifies every request with one User-Agent, kopf's session included."""

from __future__ import annotations

import kopf

from connquota import __version__
from connquota.operator.identity import USER_AGENT, with_user_agent


def test_kopf_requests_carry_the_operator_user_agent_and_keep_their_credentials() -> None:
    info = kopf.ConnectionInfo(
        server="https://127.0.0.1:6443", token="t0k", ca_path="/ca.crt", priority=20
    )
    ours = with_user_agent(info)
    assert f"connquota-operator/{__version__}" == USER_AGENT
    assert ours.as_http_headers() == {"Authorization": "Bearer t0k", "User-Agent": USER_AGENT}
    assert (ours.server, ours.ca_path, ours.priority) == (info.server, info.ca_path, 20)
    assert isinstance(ours, kopf.ConnectionInfo)
