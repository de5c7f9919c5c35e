"""WebSocket text frames encoded once and written as the same bytes to every consumer.

A server's frames are never masked (RFC 6455 section 5.1), and consumer connections negotiate
no compression, so one data message is byte-for-byte the same frame on every consumer socket:
the hub builds it once per upstream message and each consumer's writer passes the bytes to its
socket, many frames per write.
"""

from __future__ import annotations

import struct

_FIN_TEXT = 0x81
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """One complete, unmasked, final text frame carrying `payload` (UTF-8 JSON)."""
    n = len(payload)
    if n < 126:
        return bytes((_FIN_TEXT, n)) + payload
    if n < 65536:
        return _LEN16.pack(_FIN_TEXT, 126, n) + payload
    return _LEN64.pack(_FIN_TEXT, 127, n) + payload


def frame_payload(frame: bytes) -> bytes:
    """The payload of a frame built by `text_frame` (for tests and diagnostics)."""
    n = frame[1] & 0x7F
    if n == 126:
        return frame[4:]
    if n == 127:
        return frame[10:]
    return frame[2:]
