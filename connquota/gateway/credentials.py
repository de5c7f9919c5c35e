"""API credentials read from the mounted Secret files (never env, never logged)."""

from __future__ import annotations

import asyncio

from connquota.api.plan import PlanCredential
from connquota.exchanges.dialects.base import ApiCredentials
from connquota.gateway.podroot import pod_path


class CredentialError(RuntimeError):
    """A credential's files are missing or empty (the message names files, never values)."""


def read_credentials(cred: PlanCredential) -> ApiCredentials:
    """The key, secret and passphrase in `cred.mountPath` (file names from the plan)."""
    base = pod_path(cred.mountPath)

    def read(key: str) -> str:
        path = base / key
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise CredentialError(f"credential {cred.name}: cannot read {path}") from exc
        if not value:
            raise CredentialError(f"credential {cred.name}: {path} is empty")
        return value

    passphrase = read(cred.passphraseKey) if cred.passphraseKey else None
    signed = cred.deribitAuth == "clientSignature"
    return ApiCredentials(read(cred.apiKeyKey), read(cred.apiSecretKey), passphrase, signed)


async def load_credentials(cred: PlanCredential) -> ApiCredentials:
    """`read_credentials` off the event loop."""
    return await asyncio.to_thread(read_credentials, cred)
