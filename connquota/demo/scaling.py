"""Scale a profile's durations by a time scale, as the mock exchange does.

The mock exchange divides every duration of its profile by `time_scale` (a 5-minute window at
scale 60 lasts 5 s). A gateway talking to it must plan with the same wall-clock durations, so
the plan's profile is the mock's effective profile with every duration divided likewise.
"""

from __future__ import annotations

from typing import Any

from connquota.api.limits import ExchangeProfile, LimitShape


def scaled_profile(profile: ExchangeProfile, time_scale: float, endpoint: str) -> ExchangeProfile:
    """`profile` with windows, ages, heartbeats and timeouts divided by `time_scale`."""
    limits = []
    for limit in profile.limits:
        update: dict[str, Any] = {}
        if limit.windowSeconds is not None:
            update["windowSeconds"] = limit.windowSeconds / time_scale
        if limit.shape == LimitShape.DURATION:
            update["value"] = limit.value / time_scale
        limits.append(limit.model_copy(update=update))
    heartbeat = profile.heartbeat.model_copy(
        update={
            "intervalSeconds": profile.heartbeat.intervalSeconds / time_scale,
            "timeoutSeconds": profile.heartbeat.timeoutSeconds / time_scale,
        }
    )
    return profile.with_endpoint(endpoint).model_copy(
        update={
            "limits": limits,
            "heartbeat": heartbeat,
            "connectTimeoutSeconds": profile.connectTimeoutSeconds / time_scale,
            "deadConnectionTimeoutSeconds": profile.deadConnectionTimeoutSeconds / time_scale,
        }
    )
