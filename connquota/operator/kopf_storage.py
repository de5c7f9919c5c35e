"""kopf's diff base, stored as a digest (see `connquota.operator.settings`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import kopf


class DigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base as a digest of the essence instead of a copy of it.

    kopf compares the stored essence with the current one to tell a real change from a status
    write; a digest tells that just as well, in 64 bytes instead of up to the whole spec.
    """

    def build(self, *, body: Any, extra_fields: Iterable[Any] | None = None) -> Any:
        essence = super().build(body=body, extra_fields=extra_fields)
        canonical = json.dumps(essence, sort_keys=True, separators=(",", ":"), default=str)
        return {"digest": hashlib.sha256(canonical.encode()).hexdigest()}
