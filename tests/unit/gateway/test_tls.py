"""The consumer TLS listener's certificate comes from files and follows their renewal (what
cert-manager does to a kubernetes.io/tls Secret): new handshakes get the new certificate, and a
half-written renewal keeps the previous one."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from connquota.gateway.tls import TlsFiles, keep_loaded, server_context
from connquota.testing.tlsca import TestCA
from connquota.testing.waiting import wait_until


async def _handshake(port: int, trusting: TestCA) -> bool:
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=trusting.client_context()), 5
        )
    except (ssl.SSLError, OSError):
        return False
    writer.close()
    return True


async def test_a_renewed_certificate_is_served_to_new_handshakes(tmp_path) -> None:
    first, second = TestCA.create("first CA"), TestCA.create("second CA")
    paths = first.write(tmp_path)
    files = TlsFiles(paths["cert"], paths["key"])
    context = server_context(files)

    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context.listener)
    port = server.sockets[0].getsockname()[1]
    reload: asyncio.Task[None] | None = None
    try:
        assert await _handshake(port, first)
        assert not await _handshake(port, second)
        # half-written: a certificate without its key fails to load and the served pair stays
        cert, _ = second.issue(["127.0.0.1"])
        paths["cert"].write_bytes(cert)
        with pytest.raises(ssl.SSLError):
            context.reload()
        assert await _handshake(port, first)
        # the whole renewal, seen by the watcher: new handshakes get the new certificate
        reload = asyncio.create_task(keep_loaded(context, interval_s=0.05))
        second.write(tmp_path)

        async def renewed() -> bool:
            return await _handshake(port, second)

        await wait_until(renewed, 10, "the renewed certificate served")
        assert not await _handshake(port, first)
    finally:
        if reload is not None:
            reload.cancel()
        server.close()
        await server.wait_closed()
