"""The attempt log's file: recent connection attempts that survive a container restart.

The file lives in the state dir (the pod's emptyDir, or `--state-dir` standalone). It is
written atomically (tmp file + rename) before each attempt's SYN, and stamped with the boot id
(/proc/sys/kernel/random/boot_id), because the monotonic times in it only mean something
within one boot. A record is valid only when it parses, carries this boot's id and was not
written "in the future" (a wall clock stepped backwards); otherwise the gateway must start as
if its whole rate slice had just been used.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
STATE_FORMAT = 1
CLOCK_STEP_TOLERANCE_S = 2.0
"""How far the wall/monotonic offset may drift between the write and the read."""


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    """This boot's id; a fresh random id when the kernel does not expose one (never reused)."""
    try:
        return path.read_text().strip() or f"unknown-{uuid.uuid4()}"
    except OSError:
        return f"unknown-{uuid.uuid4()}"


@dataclass(frozen=True)
class AttemptRecord:
    """One connection attempt: where it counted and until when it stays in the window."""

    scope: str
    key: str
    syn_mono_s: float
    syn_wall_s: float
    expires_mono_s: float
    via: str = "direct"
    """What the attempt was: `direct` (a SYN to the exchange), or `proxy` (a CONNECT / SOCKS5
    connect sent to the address's proxy, which opens the exchange's connection)."""

    def to_json(self) -> dict[str, Any]:
        """The record as stored in the file."""
        return {
            "scope": self.scope,
            "key": self.key,
            "synMono": self.syn_mono_s,
            "synWall": self.syn_wall_s,
            "expiresMono": self.expires_mono_s,
            "via": self.via,
        }


@dataclass(frozen=True)
class LoadedAttempts:
    """What a state file gave back: the records, or why there is no valid record."""

    records: list[AttemptRecord]
    valid: bool
    reason: str
    blind_from_wall: float | None = None
    """When set: the writer counted its whole rate slice as used from this wall-clock time
    (its own full hold, not over when it wrote)."""


class AttemptLogFile:
    """Reads and atomically writes the attempt log of one gateway ordinal."""

    def __init__(self, path: Path, boot_id: str) -> None:
        self.path = path
        self.boot_id = boot_id

    def load(self, now_mono_s: float, now_wall_s: float) -> LoadedAttempts:
        """The unexpired records of this boot, or `valid=False` with the reason."""
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return LoadedAttempts([], False, "no state file")
        except OSError as exc:
            return LoadedAttempts([], False, f"state file unreadable: {exc.strerror}")
        try:
            doc = json.loads(raw)
            if doc.get("format") != STATE_FORMAT:
                return LoadedAttempts([], False, "state file of another format")
            if doc.get("bootId") != self.boot_id:
                return LoadedAttempts([], False, "state file from another boot")
            written_wall = float(doc["writtenWall"])
            written_mono = float(doc["writtenMono"])
            records = [
                AttemptRecord(
                    scope=str(r["scope"]),
                    key=str(r["key"]),
                    syn_mono_s=float(r["synMono"]),
                    syn_wall_s=float(r["synWall"]),
                    expires_mono_s=float(r["expiresMono"]),
                    via=str(r.get("via", "direct")),
                )
                for r in doc["attempts"]
            ]
        except (ValueError, KeyError, TypeError, AttributeError):
            return LoadedAttempts([], False, "state file corrupt")
        if written_mono > now_mono_s + CLOCK_STEP_TOLERANCE_S:
            return LoadedAttempts([], False, "state file written after now (monotonic)")
        offset_then = written_wall - written_mono
        offset_now = now_wall_s - now_mono_s
        if abs(offset_now - offset_then) > CLOCK_STEP_TOLERANCE_S:
            return LoadedAttempts([], False, "wall clock stepped since the state file")
        live = [r for r in records if r.expires_mono_s > now_mono_s]
        blind = doc.get("blindFrom")
        return LoadedAttempts(
            live,
            True,
            f"{len(live)} attempts still in their window",
            float(blind) if isinstance(blind, int | float) else None,
        )

    def write(
        self,
        records: list[AttemptRecord],
        now_mono_s: float,
        now_wall_s: float,
        blind_from_wall: float | None = None,
    ) -> None:
        """Write `records` atomically: a tmp file in the same dir, fsync, then rename."""
        doc: dict[str, Any] = {
            "format": STATE_FORMAT,
            "bootId": self.boot_id,
            "writtenMono": now_mono_s,
            "writtenWall": now_wall_s,
            "attempts": [r.to_json() for r in records],
        }
        if blind_from_wall is not None:
            doc["blindFrom"] = blind_from_wall
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as fh:
            json.dump(doc, fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
