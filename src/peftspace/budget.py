"""Integer sizing under a parameter budget, shared by presets (`plan.solve_sizes`) and designs
(`spaces.solve`)."""

from __future__ import annotations

import numpy as np


def solve_integer_sizes(a: np.ndarray, c: np.ndarray, cap: np.ndarray, fixed: int, target: int,
                        tolerance: float = 0.01) -> np.ndarray:
    """Integer sizes s (1 ≤ s ≤ cap) closest to proportional to `c` with fixed + Σ a·s nearest `target`.

    Counts are affine in each size, so the total is monotone in a common scale λ: bisect on λ,
    distribute the remainders, then step single entries (and, while outside `tolerance`, pairs).
    """
    def sizes(lam: float) -> np.ndarray:
        return np.clip(np.floor(lam * c + 0.5), 1, cap).astype(np.int64)

    def total(s: np.ndarray) -> int:
        return fixed + int((a * s).sum())

    lo, hi = 0.0, float(((cap + 0.5) / c).max())
    for _ in range(64):
        mid = (lo + hi) / 2
        if total(sizes(mid)) < target:
            lo = mid
        else:
            hi = mid
    # Largest remainders: from the floors of the ideal sizes λ·c, raise the sizes with the largest
    # fractional parts one by one, as far as that brings the count closest to the target.
    x = np.clip(hi * c, 1, cap)
    s = np.floor(x).astype(np.int64)
    order = np.argsort(-(x - s), kind="stable")
    order = order[s[order] < cap]
    totals = total(s) + np.concatenate(([0], np.cumsum(a[order])))
    s[order[:int(np.argmin(np.abs(totals - target)))]] += 1
    s = min((sizes(lo), sizes(hi), s), key=lambda x: abs(total(x) - target))
    # Then ±1 steps on single entries while one lands closer; only if the count is still outside the
    # tolerance, steps on pairs of entries (−1 LoRA rank + 1 adapter unit reaches counts no single step
    # does). Per (unit cost, direction) the candidate is the entry whose size lags its ideal most.
    units = sorted(set(a.tolist()))
    while True:
        diff = target - total(s)
        if diff == 0:
            break
        lag = hi * c - s
        opts = []  # (change of the count, entry, step)
        for u in units:
            for d in (1, -1):
                ok = (a == u) & (s + d >= 1) & (s + d <= cap)
                if ok.any():
                    i = int(np.flatnonzero(ok)[np.argmax((d * lag)[ok])])
                    opts.append((u * d, i, d))
        best, move = abs(diff), None
        for dc, i, d in opts:
            if abs(diff - dc) < best:
                best, move = abs(diff - dc), ((i, d),)
        if move is None and abs(diff) > tolerance * target:
            for k, (dc, i, d) in enumerate(opts):
                for dc2, j, d2 in opts[k + 1:]:
                    if i != j and abs(diff - dc - dc2) < best:
                        best, move = abs(diff - dc - dc2), ((i, d), (j, d2))
        if move is None:
            break
        for i, d in move:
            s[i] += d
    return s
