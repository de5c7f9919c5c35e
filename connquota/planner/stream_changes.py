"""Which streams were added and removed between two lists, at C speed.

A replan of 10^5 streams must not spend Python-level work per stream. `stream_changes` walks
the two lists in step: equal runs are compared in C (`operator.indexOf` over `map(ne, ...)` of
two tuple iterators finds the first difference without copying), and at each mismatch the nearer of "these new streams were inserted" and "these old streams were
removed" is found with `tuple.index` over growing windows. The result is one valid edit
script (old minus `removed` plus `added`, in list order); when the lists were reordered, or a
stream changed its priority or credential, the script shows it as a removal plus an addition
of the same name, which the caller treats as a change it cannot take incrementally.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import indexOf, ne
from typing import Any

from connquota.planner.inputs import DesiredStream

SEARCH_WINDOWS = (16, 1024, None)
"""How far ahead a mismatch looks for the stream it replaced, widening (None: to the end)."""


@dataclass(frozen=True)
class StreamChanges:
    """Streams only in the new list (`added`, new-list order) and only in the old one
    (`removed`, old-list order), as far as an edit script between the two lists shows."""

    added: list[DesiredStream]
    removed: list[DesiredStream]


def _common_run(
    old: tuple[DesiredStream, ...], i: int, new: tuple[DesiredStream, ...], j: int
) -> int:
    """How many elements old[i:] and new[j:] have equal at their start (one C-speed pass)."""
    a: Any = iter(old)
    b: Any = iter(new)
    a.__setstate__(i)  # tuple iterators start where they are told: no slice is copied
    b.__setstate__(j)
    try:
        return indexOf(map(ne, a, b), True)
    except ValueError:
        return min(len(old) - i, len(new) - j)


def _find(seq: tuple[DesiredStream, ...], x: DesiredStream, start: int, stop: int) -> int | None:
    try:
        return seq.index(x, start, stop)
    except ValueError:
        return None


def stream_changes(
    old: tuple[DesiredStream, ...], new: tuple[DesiredStream, ...], max_work: int | None = None
) -> StreamChanges | None:
    """The streams added to and removed from `old` to give `new`; None when finding them
    would compare more than `max_work` elements in searches (default: 4 x both lengths),
    i.e. when the lists differ in too many places for an incremental replan to pay."""
    budget = 4 * (len(old) + len(new)) + 1024 if max_work is None else max_work
    added: list[DesiredStream] = []
    removed: list[DesiredStream] = []
    i = j = 0
    while True:
        k = _common_run(old, i, new, j)
        i += k
        j += k
        if i == len(old):
            added.extend(new[j:])
            break
        if j == len(new):
            removed.extend(old[i:])
            break
        d = e = None
        for window in SEARCH_WINDOWS:
            stop_new = len(new) if window is None else min(len(new), j + 1 + window)
            stop_old = len(old) if window is None else min(len(old), i + 1 + window)
            budget -= (stop_new - j) + (stop_old - i)
            if budget < 0:
                return None
            d = _find(new, old[i], j + 1, stop_new)  # new[j:d] were inserted before old[i]
            e = _find(old, new[j], i + 1, stop_old)  # old[i:e] were removed before new[j]
            if d is not None or e is not None:
                break
        if d is None and e is None:
            removed.append(old[i])
            added.append(new[j])
            i += 1
            j += 1
        elif e is None or (d is not None and d - j <= e - i):
            assert d is not None
            added.extend(new[j:d])
            j = d
        else:
            removed.extend(old[i:e])
            i = e
    return StreamChanges(added, removed)
