"""Distribution statistics for comparing candidates, and the report figures built on them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peftspace.report import plots
from peftspace.search.stats import (
    bootstrap_diff_ci,
    compare_candidates,
    edf,
    paired_bootstrap_diff_ci,
    summarize,
)

# -- EDF and summaries ----------------------------------------------------------------


def test_edf_hand_values():
    x, f = edf([0.3, 0.1, float("nan"), 0.2, 0.2, None])
    np.testing.assert_array_equal(x, [0.1, 0.2, 0.2, 0.3])
    np.testing.assert_array_equal(f, [0.25, 0.5, 0.75, 1.0])
    x, f = edf([])
    assert x.size == 0 and f.size == 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=30))
def test_edf_properties(values):
    x, f = edf(values)
    n = sum(1 for v in values if math.isfinite(v))
    assert x.size == f.size == n
    assert np.all(np.diff(x) >= 0) and np.all(np.diff(f) > 0)
    if n:
        assert 0 < f[0] and f[-1] == 1.0


def test_summarize_excludes_failed():
    s = summarize([1.0, 2.0, 4.0, float("nan"), None, float("inf")])
    assert s == {"n": 3, "failed": 3, "min": 1.0, "max": 4.0, "mean": 7 / 3, "median": 2.0, "std": pytest.approx(np.std([1, 2, 4], ddof=1))}
    empty = summarize([None])
    assert empty["n"] == 0 and empty["failed"] == 1 and math.isnan(empty["mean"]) and math.isnan(empty["std"])
    assert math.isnan(summarize([5.0])["std"])


# -- bootstrap CIs --------------------------------------------------------------------


def test_bootstrap_deterministic_and_ordered():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.8, 0.05, 40), rng.normal(0.7, 0.05, 40)
    for fn in (bootstrap_diff_ci, paired_bootstrap_diff_ci):
        r1, r2 = fn(a, b, n_boot=500, seed=3), fn(a, b, n_boot=500, seed=3)
        assert r1 == r2
        assert fn(a, b, n_boot=500, seed=4) != r1
        point, lo, hi = r1
        assert lo <= point <= hi and point == pytest.approx(a.mean() - b.mean())
    point, lo, hi = bootstrap_diff_ci(a, b, stat="median", n_boot=300)
    assert point == pytest.approx(np.median(a) - np.median(b)) and lo <= point <= hi
    assert all(math.isnan(v) for v in bootstrap_diff_ci([], b))
    with pytest.raises(ValueError):
        bootstrap_diff_ci(a, b, stat="mode")


@pytest.mark.parametrize("fn", [bootstrap_diff_ci, paired_bootstrap_diff_ci])
def test_bootstrap_ci_coverage(fn):
    """A 95% percentile CI should contain the true difference in roughly 95% of repetitions."""
    rng = np.random.default_rng(12345)
    reps, n, true_diff = 200, 30, 0.02
    hits = 0
    for rep in range(reps):
        a = rng.normal(0.80 + true_diff, 0.05, n)
        b = rng.normal(0.80, 0.05, n)
        _, lo, hi = fn(a, b, n_boot=300, seed=rep)
        hits += lo <= true_diff <= hi
    coverage = hits / reps
    # Percentile intervals undercover slightly at n=30; binomial sd at 200 reps is ~1.5%.
    assert 0.88 <= coverage <= 0.99, coverage


def test_paired_is_tighter_when_seeds_share_noise():
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0, 0.05, 40)  # same seed -> same data order/init luck
    a = 0.80 + seed_effect + rng.normal(0, 0.005, 40)
    b = 0.79 + seed_effect + rng.normal(0, 0.005, 40)
    _, plo, phi = paired_bootstrap_diff_ci(a, b, n_boot=1000)
    _, ulo, uhi = bootstrap_diff_ci(a, b, n_boot=1000)
    assert phi - plo < 0.3 * (uhi - ulo)
    assert plo > 0 and ulo < 0  # only pairing resolves the 0.01 difference
    # Pairs with a failure on either side are dropped.
    a2, b2 = list(a) + [float("nan"), 0.5], list(b) + [0.5, None]
    assert paired_bootstrap_diff_ci(a2, b2, n_boot=1000) == (pytest.approx(np.mean(a - b)), plo, phi)
    with pytest.raises(ValueError):
        paired_bootstrap_diff_ci([1.0, 2.0], [1.0])


# -- comparing candidates -------------------------------------------------------------


def test_compare_candidates_ordering_and_best():
    rng = np.random.default_rng(7)
    noise = rng.normal(0, 0.01, 20)
    scores = {
        "mid": list(0.75 + noise),
        "top": list(0.80 + noise),
        "tie_b": list(0.70 + noise),
        "tie_a": list(0.70 + noise),
        "dead": [float("nan")] * 20,
        "low": list(0.60 + noise[:10]) + [None] * 10,
    }
    rows = compare_candidates(scores, n_boot=300)
    assert [r["name"] for r in rows] == ["top", "mid", "tie_a", "tie_b", "low", "dead"]
    assert [r["is_best"] for r in rows] == [True] + [False] * 5
    top, mid = rows[0], rows[1]
    assert top["diff_to_best"] == 0.0 and top["ci_low"] == top["ci_high"] == 0.0
    assert mid["diff_to_best"] == pytest.approx(-0.05) and mid["ci_high"] < 0 and mid["significant"]
    low = rows[4]
    assert (low["n"], low["failed"]) == (10, 10) and low["diff_to_best"] == pytest.approx(-0.2)
    dead = rows[-1]
    assert dead["n"] == 0 and dead["failed"] == 20 and dead["note"] == "no finite scores"
    assert all(math.isnan(dead[k]) for k in ("mean", "median", "diff_to_best", "ci_low", "ci_high"))
    expected_keys = {"name", "n", "failed", "min", "max", "mean", "median", "std", "diff_to_best", "ci_low", "ci_high", "is_best", "significant", "note"}
    assert all(set(r) == expected_keys for r in rows)
    again = compare_candidates(scores, n_boot=300)  # deterministic (NaN rows aside, which never compare equal)
    assert [(r["name"], r["ci_low"], r["ci_high"]) for r in again[:5]] == [(r["name"], r["ci_low"], r["ci_high"]) for r in rows[:5]]


def test_compare_candidates_lower_is_better_and_unpaired():
    scores = {"a": [1.0, 2.0, 3.0], "b": [2.0, 3.0, 4.0], "c": [0.5, 1.0]}
    rows = compare_candidates(scores, higher_is_better=False, n_boot=200)
    assert [r["name"] for r in rows] == ["c", "a", "b"]
    assert rows[1]["note"].startswith("unpaired") and rows[1]["diff_to_best"] == pytest.approx(1.25)
    rows = compare_candidates({"a": [1.0, 2.0, 3.0], "b": [1.5, 2.5, 3.5]}, paired=True, n_boot=200)
    assert rows[1]["ci_low"] == pytest.approx(-0.5) and rows[1]["ci_high"] == pytest.approx(-0.5)  # constant pair diff
    rows = compare_candidates({"a": [1.0, 2.0, 3.0], "b": [1.5, 2.5, 3.5]}, paired=False, n_boot=200)
    assert rows[1]["ci_low"] < -0.5 < rows[1]["ci_high"]
    assert compare_candidates({}) == []
    rows = compare_candidates({"x": [None], "y": [float("nan")]})
    assert [r["name"] for r in rows] == ["x", "y"] and not any(r["is_best"] for r in rows)


# -- figures --------------------------------------------------------------------------


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_edf_legend_and_png(tmp_path):
    scores = {"lora": [0.71, 0.75, 0.8, None], "adapter": [0.6, 0.7], "dead": [float("nan")]}
    fig = plots.edf_figure(scores, title="stage 1")
    assert plots.legend_texts(fig) == ["lora 3|0.710|0.753", "adapter 2|0.600|0.650", "dead 0|nan|nan"]
    ax = fig.axes[0]
    assert ax.get_xlabel() == "dev score" and ax.get_title() == "stage 1"
    assert ax.xaxis.get_gridlines()[0].get_visible()
    out = plots.plot_edf(scores, tmp_path / "sub" / "edf.png")
    assert out == tmp_path / "sub" / "edf.png" and _is_png(out)


def test_plot_comparison_and_allocation_png(tmp_path):
    rows = [
        {"method": "lora", "median": 0.8, "min": 0.75, "max": 0.82, "percent": 0.1},
        {"method": "full", "median": 0.83, "min": 0.8, "max": 0.84, "percent": 100.0},
    ]
    fig = plots.comparison_figure(rows)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["lora\n0.1%", "full\n100%"]
    assert _is_png(plots.plot_comparison(rows, tmp_path / "cmp.png", title="methods"))
    layers = [{"label": f"enc.{i}", "counts": {"lora": 100 * i, "adapter": 50}} for i in range(6)]
    layers.append({"label": "head", "counts": {"prefix": 10}})
    fig = plots.allocation_figure(layers)
    assert plots.legend_texts(fig) == ["lora", "adapter", "prefix"]
    assert _is_png(plots.plot_allocation(layers, tmp_path / "alloc.png", title="budget"))
