"""Exact arithmetic helpers: fractions from decimal floats, integer splits that never overshoot."""

from __future__ import annotations

from fractions import Fraction

INFINITE = 1 << 62
"""Stands for 'no limit' in integer capacities."""


def exact(x: float) -> Fraction:
    """The decimal value a user wrote (0.29 is 29/100, not the nearest binary float)."""
    return Fraction(repr(float(x)))


def split_units(total: int, minimums: list[int], weights: list[int]) -> list[int]:
    """Split `total` integer units: each part first gets its minimum, the rest goes in
    proportion to `weights` (largest remainder, ties to the earlier part). Never sums above
    `total`; when the minimums alone exceed it, parts are cut from the end (callers plan so
    this does not happen)."""
    n = len(minimums)
    parts = list(minimums)
    need = sum(minimums)
    if need > total:
        over = need - total
        for i in range(n - 1, -1, -1):
            cut = min(over, parts[i])
            parts[i] -= cut
            over -= cut
            if not over:
                break
        return parts
    rest = total - need
    weight_sum = sum(weights)
    if rest == 0 or n == 0:
        return parts
    if weight_sum == 0:
        weights = [1] * n
        weight_sum = n
    shares = [rest * w // weight_sum for w in weights]
    remainders = [rest * w % weight_sum for w in weights]
    left = rest - sum(shares)
    order = sorted(range(n), key=lambda i: (-remainders[i], i))
    for i in order[:left]:
        shares[i] += 1
    return [p + s for p, s in zip(parts, shares, strict=True)]
