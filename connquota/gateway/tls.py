"""TLS for the consumer endpoints: a second listener serving the same endpoints over `wss://`
and `https://` with a certificate from files (a `kubernetes.io/tls` Secret's `tls.crt` and
`tls.key`, as cert-manager writes them). Several exchange clients accept only `wss://` URLs.

The certificate is reloaded when its files change (cert-manager renews it in place): new
handshakes use the new one, open connections keep theirs. A renewal caught half-written (key
and certificate not matching yet) keeps the previous pair and is retried on the next look.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

RELOAD_CHECK_S = 30.0


@dataclass(frozen=True)
class TlsFiles:
    """Where the serving certificate (chain first) and its private key are."""

    cert: Path
    key: Path

    def stamp(self) -> tuple[float, float, int, int]:
        """Changes whenever either file is replaced or rewritten."""
        a, b = self.cert.stat(), self.key.stat()
        return (a.st_mtime, b.st_mtime, a.st_ino, b.st_ino)


def _context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert, files.key)
    return context


class ServingContext:
    """The listener's context, whose certificate can be replaced atomically: every handshake
    is switched (in the ClientHello callback, with or without SNI) to the newest context that
    loaded completely, so a failed or half-done reload never touches what is served."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.stamp = files.stamp()
        """The files' stamp when `current` was loaded (taken first: a change during the load
        is seen as a change)."""
        self.current = _context(files)
        self.listener = _context(files)
        self.listener.sni_callback = self._choose

    def _choose(self, ssl_object: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        ssl_object.context = self.current

    def reload(self) -> None:
        """Load the files into a new context and serve it (raises, serving the old, on error)."""
        stamp = self.files.stamp()
        self.current = _context(self.files)
        self.stamp = stamp


def server_context(files: TlsFiles) -> ServingContext:
    """A TLS 1.2+ serving context holding the files' certificate (raises when they are bad)."""
    return ServingContext(files)


async def keep_loaded(serving: ServingContext, interval_s: float = RELOAD_CHECK_S) -> None:
    """Reload the served certificate whenever its files change, until cancelled."""
    files = serving.files
    while True:
        await asyncio.sleep(interval_s)
        try:
            if await asyncio.to_thread(files.stamp) == serving.stamp:
                continue
            await asyncio.to_thread(serving.reload)
        except (OSError, ssl.SSLError) as exc:
            log.warning("consumer TLS certificate not reloaded (kept the previous): %s", exc)
            continue
        log.info("consumer TLS certificate reloaded from %s", files.cert)
