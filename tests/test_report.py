"""Search reports (issue 5) on stores built by hand: no training, so every case is quick.

The end-to-end report of a real (tiny) search is checked in test_search.py; here: the allocation
picture's numbers equal the Plan's, the EDF legends read n|min|mean, unfinished and empty stores.
"""

from __future__ import annotations

import math

import pytest

from peftspace.plan import model_arch
from peftspace.report.plots import edf_figure, legend_texts
from peftspace.report.search_report import allocation_layers, stage_table_rows, write_report
from peftspace.search.refine import decide, decision_key, search_key
from peftspace.search.spec import StageSpec
from peftspace.search.store import Trial, TrialStore
from peftspace.spaces import parse_space

from helpers import tiny

SEARCH = "hand:made:0"
STAGE = StageSpec("stage1-grouping", "grouping", ("grouping=uniform", "grouping=any"))


@pytest.fixture(scope="module")
def arch():
    return model_arch(tiny("tiny-bert"))


def _plan(arch, space="S0,groups=2", seed=0):
    return parse_space(space).sample_plans(arch, n=1, seed=seed, budget="3072")[0]


def test_allocation_layers_match_the_plan(arch):
    design, plan = _plan(arch, "S0,groups=2,tunable=G2")
    layers = allocation_layers(plan)
    assert [layer["params"] for layer in layers] == [row["params"] for row in plan.layers()]
    assert sum(sum(layer["counts"].values()) for layer in layers) == plan.trainable_params
    assert layers[0]["counts"] == {} and layers[0]["label"] == "enc 0 G1"  # untuned layer: shown, empty
    assert set(layers[1]["counts"]) == set(design.strategies_by_group[2])


def _store_with_one_stage(tmp_path, arch, scores):
    store = TrialStore(tmp_path / "trials.sqlite")
    base = parse_space("S0,groups=2")
    trials = []
    for cand, vals in scores.items():
        for i, v in enumerate(vals):
            design, plan = _plan(arch, f"S0,groups=2,{cand}", seed=i)
            t = Trial.new(SEARCH, STAGE.name, cand, i, i, {"c": cand}, design={"key": design.key()},
                          plan=plan.to_dict())
            store.add(t)
            if v is None:
                store.fail(t.id, "RuntimeError: boom")
            else:
                store.complete(t.id, {"metric": "accuracy", "higher_is_better": True}, v)
            trials.append(store.get(t.id))
    dec = {**decide(STAGE, base, trials, 3), "stage": STAGE.name, "component": STAGE.component,
           "base_text": base.to_text(), "samples": 3, "trial_ids": [t.id for t in trials], "skipped": None}
    key = decision_key(SEARCH, STAGE, base)
    store.set_meta(key, dec)
    store.set_meta(search_key(SEARCH), {"search": SEARCH, "stages": [key], "status": "running",
                                        "spec": {"model": "tiny-bert", "trial": {"steps": 1}, "final": {}}})
    return store, dec


def test_unfinished_store_report(tmp_path, arch):
    store, dec = _store_with_one_stage(tmp_path, arch, {"grouping=uniform": [0.8, 0.7, None],
                                                         "grouping=any": [0.6, 0.65, 0.5]})
    store.close()
    assert dec["winner"] == "grouping=uniform" and dec["rows"][0]["failed"] == 1
    rows = stage_table_rows(dec)
    assert rows[0][1] == "grouping=uniform" and rows[0][-1] == "✓" and rows[1][-1] == ""
    assert rows[1][8] == f"{0.625 - 0.75:.4f}"  # paired on indices 0 and 1 (both finished): (0.6+0.65)/2 - 0.75
    paths = write_report(tmp_path / "trials.sqlite")
    html = paths["html"].read_text(encoding="utf-8")
    assert "Best design so far" in html and "Final comparison" not in html
    assert "RuntimeError: boom" in html and "<td>grouping=any</td>" in html
    assert len(paths["images"]) == 2 and all(p.is_file() for p in paths["images"])  # EDF + allocation


def test_edf_legend_reads_n_min_mean():
    fig = edf_figure({"a": [0.5, 0.7, None], "b": [0.6, 0.6, 0.9]})
    assert legend_texts(fig) == ["a 2|0.500|0.600", "b 3|0.600|0.700"]


def test_empty_store_report(tmp_path):
    TrialStore(tmp_path / "t.sqlite").close()
    paths = write_report(tmp_path / "t.sqlite", tmp_path / "out")
    assert "no trials yet" in paths["md"].read_text(encoding="utf-8")
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "missing.sqlite")


def test_nan_free_tables():
    row = {"name": "x", "n": 0, "failed": 2, "mean": math.nan, "median": math.nan, "min": math.nan,
           "max": math.nan, "diff_to_best": math.nan, "ci_low": math.nan, "ci_high": math.nan, "is_best": False,
           "chosen": False}
    assert "nan" not in " ".join(stage_table_rows({"rows": [row]})[0])
