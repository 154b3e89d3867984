"""Layer grouping and parameter allocation patterns (Chen et al. 2023, Figure 1), as predicates.

A pattern is a predicate on a tuple; a space samples uniformly among *all* tuples its pattern admits,
found by enumeration (so a pattern can never miss a grouping it admits). Exact definitions:

Layer grouping — the L consecutive layers of one stack are split into G groups, a composition
n = (n_1, …, n_G) of L into positive parts (Σ n_i = L, n_i ≥ 1); group i holds the next n_i layers.
  any         every composition (C(L−1, G−1) of them).
  uniform     max(n) − min(n) ≤ 1. When G divides L this is the one split L/G each; otherwise every
              arrangement of the L mod G larger groups is admitted (e.g. L=6, G=4: (2,2,1,1), (2,1,2,1), …).
  increasing  n_1 ≤ n_2 ≤ … ≤ n_G and n_1 < n_G (non-decreasing, not constant).
  decreasing  n_1 ≥ n_2 ≥ … ≥ n_G and n_1 > n_G.
  spindle     G ≥ 3; both end groups are strictly smaller than every middle group:
              max(n_1, n_G) < min(n_2, …, n_{G−1}). The ends may differ from each other, the middles too.
  bottleneck  G ≥ 3; both end groups are strictly larger than every middle group:
              min(n_1, n_G) > max(n_2, …, n_{G−1}).
With L mod G ≠ 0 the patterns can overlap (L=13, G=4: (3,3,3,4) is uniform and increasing); with
G divides L they are disjoint. Some admit nothing for small L (L = G: only uniform (1,…,1)); sampling
then fails with a message saying so.

Parameter allocation — a positive integer weight w_i per group, w ∈ {1, …, W_MAX}^G with gcd(w) = 1
(so no two weight vectors are the same shares). Every layer of group i gets a share ∝ w_i of the
budget left after fixed costs (see `solve.py`); shares are constant within a group.
  any         every such w.
  uniform     w = (1, …, 1): every tuned layer the same share.
  increasing  w_1 ≤ … ≤ w_G and w_1 < w_G: per-layer shares non-decreasing with depth, not constant.
  decreasing  w_1 ≥ … ≥ w_G and w_1 > w_G.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable

GROUPINGS = ("any", "increasing", "uniform", "decreasing", "spindle", "bottleneck")
ALLOCATIONS = ("any", "increasing", "uniform", "decreasing")
W_MAX = 4  # allocation weights are drawn from {1, …, W_MAX}: shares between groups differ by ≤ 4×


def _nondecreasing(n: tuple[int, ...]) -> bool:
    return all(a <= b for a, b in zip(n, n[1:]))


def _increasing(n: tuple[int, ...]) -> bool:
    return _nondecreasing(n) and n[0] < n[-1]


def _decreasing(n: tuple[int, ...]) -> bool:
    return _increasing(n[::-1])


def _uniform_grouping(n: tuple[int, ...]) -> bool:
    return max(n) - min(n) <= 1


def _spindle(n: tuple[int, ...]) -> bool:
    return len(n) >= 3 and max(n[0], n[-1]) < min(n[1:-1])


def _bottleneck(n: tuple[int, ...]) -> bool:
    return len(n) >= 3 and min(n[0], n[-1]) > max(n[1:-1])


GROUPING_RULES: dict[str, Callable[[tuple[int, ...]], bool]] = {
    "any": lambda n: True,
    "increasing": _increasing,
    "uniform": _uniform_grouping,
    "decreasing": _decreasing,
    "spindle": _spindle,
    "bottleneck": _bottleneck,
}

ALLOCATION_RULES: dict[str, Callable[[tuple[int, ...]], bool]] = {
    "any": lambda w: True,
    "increasing": _increasing,
    "uniform": lambda w: len(set(w)) == 1,
    "decreasing": _decreasing,
}


def compositions(total: int, parts: int) -> list[tuple[int, ...]]:
    """All compositions of `total` into `parts` positive integers, in lexicographic order."""
    if parts < 1 or total < parts:
        return []
    out = []
    for cuts in itertools.combinations(range(1, total), parts - 1):  # cut points between layers
        bounds = (0, *cuts, total)
        out.append(tuple(b - a for a, b in zip(bounds, bounds[1:])))
    return out


@functools.lru_cache(maxsize=256)
def groupings(n_layers: int, n_groups: int, pattern: str) -> tuple[tuple[int, ...], ...]:
    """Every grouping of `n_layers` into `n_groups` that `pattern` admits (lexicographic order)."""
    rule = GROUPING_RULES[pattern]
    return tuple(c for c in compositions(n_layers, n_groups) if rule(c))


@functools.lru_cache(maxsize=64)
def allocations(n_groups: int, pattern: str) -> tuple[tuple[int, ...], ...]:
    """Every allocation weight vector over `n_groups` groups that `pattern` admits."""
    rule = ALLOCATION_RULES[pattern]
    return tuple(w for w in itertools.product(range(1, W_MAX + 1), repeat=n_groups)
                 if math.gcd(*w) == 1 and rule(w))


def grouping_patterns_of(n: tuple[int, ...]) -> list[str]:
    """The grouping patterns (besides `any`) that admit `n`."""
    return [p for p in GROUPINGS if p != "any" and GROUPING_RULES[p](n)]


def allocation_patterns_of(w: tuple[int, ...]) -> list[str]:
    return [p for p in ALLOCATIONS if p != "any" and ALLOCATION_RULES[p](w)]


def layer_groups(sizes: tuple[int, ...]) -> list[int]:
    """Group index (1-based) of each layer for group sizes `sizes`: (1, 2) → [1, 2, 2]."""
    return [g for g, n in enumerate(sizes, start=1) for _ in range(n)]
