"""Comparing candidate design spaces by the distribution of their trials' scores.

Following Radosavovic et al. 2019 ("On Network Design Spaces for Visual
Recognition", the pycls EDF methodology) as adopted by Chen et al. 2023 for
PEFT design spaces, a candidate constraint is judged not by its single best
trial but by the distribution of dev scores of N designs sampled under it:
the empirical distribution function (EDF), mean and median, and a bootstrap
confidence interval for its difference to the best candidate.  Candidates of a
stage share N and the seeds, so trial ``i`` of every candidate was drawn with
the same seed: a paired bootstrap removes that shared seed noise.

Failed trials have no score: non-finite values (NaN, inf, None) are excluded
from every statistic and reported as a ``failed`` count, because a crashed
trial says nothing about how good the design space is (and silently scoring it
0 would).  numpy only.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np

__all__ = ["edf", "summarize", "bootstrap_diff_ci", "paired_bootstrap_diff_ci", "compare_candidates"]

Stat = str | Callable[[np.ndarray], np.ndarray]


def _as_array(scores: Iterable[float | None]) -> np.ndarray:
    """Scores as float64, ``None`` becoming NaN (a failed trial)."""
    return np.array([np.nan if s is None else s for s in scores], dtype=np.float64).reshape(-1)


def _finite(scores: Iterable[float | None]) -> tuple[np.ndarray, int]:
    """The finite scores and how many were not finite (failed)."""
    arr = _as_array(scores)
    ok = np.isfinite(arr)
    return arr[ok], int((~ok).sum())


def _stat_fn(stat: Stat) -> Callable[[np.ndarray], np.ndarray]:
    """A statistic reducing along the last axis (so it applies to a batch of resamples at once)."""
    if callable(stat):
        return stat
    if stat == "mean":
        return lambda x: np.mean(x, axis=-1)
    if stat == "median":
        return lambda x: np.median(x, axis=-1)
    raise ValueError(f"unknown statistic {stat!r}: use 'mean', 'median' or a callable")


def edf(scores: Iterable[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """Empirical distribution function of the finite scores: sorted ``x`` and ``F(x_i) = i/n``.

    ``F`` lies in (0, 1] and ends at 1; ties keep one point each so a step plot
    (``where="post"``) jumps by the tie's full mass.  Empty input gives two empty arrays.
    """
    x, _ = _finite(scores)
    x = np.sort(x)
    n = x.size
    return x, np.arange(1, n + 1, dtype=np.float64) / max(n, 1)


def summarize(scores: Iterable[float | None]) -> dict:
    """n, failed, min, max, mean, median and sample std (ddof=1) of the finite scores.

    Statistics that are undefined (no finite score; std of one score) are NaN.
    """
    x, failed = _finite(scores)
    n = int(x.size)
    nan = float("nan")
    return {
        "n": n,
        "failed": failed,
        "min": float(x.min()) if n else nan,
        "max": float(x.max()) if n else nan,
        "mean": float(x.mean()) if n else nan,
        "median": float(np.median(x)) if n else nan,
        "std": float(x.std(ddof=1)) if n > 1 else nan,
    }


def _percentile_ci(point: float, diffs: np.ndarray, alpha: float) -> tuple[float, float, float]:
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return float(point), float(lo), float(hi)


def bootstrap_diff_ci(
    a: Sequence[float | None],
    b: Sequence[float | None],
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    stat: Stat = "mean",
) -> tuple[float, float, float]:
    """``stat(a) - stat(b)`` with a percentile bootstrap ``1 - alpha`` CI, resampling a and b independently.

    For samples with no pairing between ``a`` and ``b``.  Deterministic for
    ``seed``.  Returns ``(point, low, high)``; all NaN when either side has no
    finite score.
    """
    x, _ = _finite(a)
    y, _ = _finite(b)
    if x.size == 0 or y.size == 0:
        return (math.nan,) * 3
    f = _stat_fn(stat)
    rng = np.random.default_rng(seed)
    xs = x[rng.integers(0, x.size, size=(n_boot, x.size))]
    ys = y[rng.integers(0, y.size, size=(n_boot, y.size))]
    return _percentile_ci(f(x) - f(y), f(xs) - f(ys), alpha)


def paired_bootstrap_diff_ci(
    a: Sequence[float | None],
    b: Sequence[float | None],
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    stat: Stat = "mean",
) -> tuple[float, float, float]:
    """``stat(a) - stat(b)`` with a percentile bootstrap CI resampling *pairs* ``(a[i], b[i])``.

    For candidates that share seeds: ``a[i]`` and ``b[i]`` were sampled/trained
    with the same seed, so resampling pairs keeps the shared seed noise out of
    the interval.  Pairs with a non-finite value on either side are dropped, and
    the point estimate is taken on the remaining pairs so it agrees with its CI.
    """
    x, y = _as_array(a), _as_array(b)
    if x.size != y.size:
        raise ValueError(f"paired samples need equal lengths, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size == 0:
        return (math.nan,) * 3
    f = _stat_fn(stat)
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    return _percentile_ci(f(x) - f(y), f(x[idx]) - f(y[idx]), alpha)


def compare_candidates(
    scores: dict[str, Sequence[float | None]],
    paired: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
    higher_is_better: bool = True,
    alpha: float = 0.05,
) -> list[dict]:
    """One row per candidate, best first, with its difference in mean to the best and a bootstrap CI.

    Ranking is by mean finite score (ties broken by name, so the order is
    deterministic); candidates without any finite score go last with NaN
    statistics and a ``note``.  ``diff_to_best`` is ``mean(candidate) -
    mean(best)`` (so it is <= 0 when higher is better), with ``ci_low``/``ci_high``
    its ``1 - alpha`` percentile bootstrap interval: paired when ``paired`` and
    both score lists have the same length (trial ``i`` shares its seed), else
    unpaired.  ``significant`` says whether that interval excludes 0.  Every
    comparison uses the same bootstrap ``seed`` (common random numbers).
    """
    rows = []
    for name, values in scores.items():
        row = {"name": name, **summarize(values)}
        row["note"] = "" if row["n"] else "no finite scores"
        rows.append(row)
    sign = -1.0 if higher_is_better else 1.0
    rows.sort(key=lambda r: (r["n"] == 0, sign * r["mean"] if r["n"] else 0.0, r["name"]))
    best = rows[0] if rows and rows[0]["n"] else None
    for row in rows:
        row["is_best"] = row is best
        if best is None or row["n"] == 0:
            row.update(diff_to_best=math.nan, ci_low=math.nan, ci_high=math.nan, significant=False)
            continue
        if row is best:
            row.update(diff_to_best=0.0, ci_low=0.0, ci_high=0.0, significant=False)
            continue
        a, b = scores[row["name"]], scores[best["name"]]
        use_paired = paired and len(a) == len(b)
        if paired and not use_paired:
            row["note"] = "unpaired: score lists differ in length from the best's"
        ci = paired_bootstrap_diff_ci if use_paired else bootstrap_diff_ci
        diff, lo, hi = ci(a, b, n_boot=n_boot, alpha=alpha, seed=seed, stat="mean")
        if math.isnan(diff):  # paired, but no index where both finished
            row["note"] = "no common finite pairs: unpaired"
            diff, lo, hi = bootstrap_diff_ci(a, b, n_boot=n_boot, alpha=alpha, seed=seed, stat="mean")
        row.update(diff_to_best=diff, ci_low=lo, ci_high=hi, significant=not (lo <= 0.0 <= hi))
    return rows
