"""Design spaces (issue 3): definitions, sampling, budget solving, attaching, CLI.

The property tests re-state every pattern's definition here, independently of `patterns.py`, and check
every sampled design against them and every Plan against the budget. Set PEFTSPACE_RATIO_LOG=path to
dump the achieved/target ratios of the property tests as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import peftspace as ps
from peftspace.models import model_family
from peftspace.plan import BudgetError, budget_target, model_arch
from peftspace.spaces import (
    ALLOCATIONS, GROUPINGS, SPACES, STAGES, Design, Space, SpaceError, allocations, compositions, design_record,
    design_to_plan, feasible_range, groupings, parse_space,
)
from peftspace.spaces.cli import add_sample_parser, add_show_parser
from peftspace.spec import DeltaSpec

SHAPES = ["roberta-base", "t5-base", "bart-large", "gpt2", "llama-2-7b"]
BUDGETS = ["0.1%", "0.5%", "2%"]
TINY = ["tiny-roberta", "tiny-bert", "tiny-t5", "tiny-bart", "tiny-gpt2", "tiny-llama"]
RATIOS: list[dict] = []  # achieved/target of every checked plan, for the closing note
PROP = settings(max_examples=25, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def archs():
    """Each full-size shape model is built once (meta device) and reduced to its arch dict."""
    return {name: model_arch(ps.load_model(f"shape:{name}")) for name in SHAPES}


@pytest.fixture(scope="module", autouse=True)
def ratio_log():
    yield
    path = os.environ.get("PEFTSPACE_RATIO_LOG")
    if path and RATIOS:
        with open(path, "w") as f:
            json.dump(RATIOS, f)


# ---- the definitions, stated again ------------------------------------------------------------------
def is_grouping(n: tuple[int, ...], pattern: str) -> bool:
    inc = all(x <= y for x, y in zip(n, n[1:]))
    dec = all(x >= y for x, y in zip(n, n[1:]))
    mid = n[1:-1]
    return {
        "any": True,
        "uniform": max(n) - min(n) <= 1,
        "increasing": inc and n[0] != n[-1],
        "decreasing": dec and n[0] != n[-1],
        "spindle": len(n) >= 3 and all(e < m for e in (n[0], n[-1]) for m in mid),
        "bottleneck": len(n) >= 3 and all(e > m for e in (n[0], n[-1]) for m in mid),
    }[pattern]


def is_allocation(w: tuple[int, ...], pattern: str) -> bool:
    if math.gcd(*w) != 1 or not all(1 <= x <= 4 for x in w):
        return False
    return is_grouping(w, pattern) if pattern != "uniform" else len(set(w)) == 1


def check_design(space: Space, d: Design, arch: dict) -> None:
    """Every constraint of `space`, checked from the definitions above (not the library's)."""
    assert space.violations(d, arch) == []
    c = space.constraints()
    assert d.groups == space.groups
    assert {s: sum(sz) for s, sz in d.grouping} == arch["stacks"]
    for _, sz in d.grouping:
        assert len(sz) == space.groups and min(sz) >= 1
        if c["grouping"] in GROUPINGS:
            assert is_grouping(sz, c["grouping"]), (sz, c["grouping"])
        else:
            assert "+".join(map(str, sz)) == c["grouping"]
    if c["allocation"] in ALLOCATIONS:
        assert is_allocation(d.weights, c["allocation"]), (d.weights, c["allocation"])
    if c["tunable"] == "all":
        assert d.tunable == tuple(range(1, space.groups + 1))
    elif c["tunable"] != "any":
        assert ["G%d" % k for k in d.tunable] == c["tunable"].split("+")
    fixed = dict(space.strategies)
    for k, names in d.strategies:
        assert names and len(set(names)) == len(names)
        assert names == fixed[k] if k in fixed else set(names) <= set(space.pool)


def check_plan(d: Design, plan, arch: dict, budget) -> None:
    """The Plan meets the budget within 1% and places exactly the design's strategies."""
    target = budget_target(budget, arch["backbone_params"])
    assert plan.meta["target_params"] == target
    assert plan.trainable_params / target == pytest.approx(plan.meta["ratio"], abs=1e-12)  # core count = solver's
    assert abs(plan.trainable_params - target) <= 0.01 * target
    assert plan.meta["within_tolerance"]
    RATIOS.append({"model": arch["model_type"], "d_model": arch["d_model"], "budget": str(budget),
                   "ratio": plan.trainable_params / target})
    placed = {(e.stack, e.layer, e.spec.name.split("_")[0]) for e in plan.entries}
    want = set()
    for stack, _ in d.grouping:
        for layer, slot in enumerate(d.layer_map(stack)):
            if slot is not None:
                want |= {(stack, layer, s) for s in slot[2]}
    assert placed == want  # A, P, B, L apply to every layer of these models
    assert all(1 <= e.spec.size <= arch["d_model"] for e in plan.entries if e.spec.sized)


# ---- patterns ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("L,G", [(12, 4), (13, 4), (6, 4), (4, 4), (8, 3), (32, 4), (5, 2), (3, 1)])
def test_grouping_patterns_are_their_definitions(L, G):
    everything = compositions(L, G)
    assert len(everything) == math.comb(L - 1, G - 1) and len(set(everything)) == len(everything)
    for pattern in GROUPINGS:
        assert set(groupings(L, G, pattern)) == {n for n in everything if is_grouping(n, pattern)}


def test_grouping_examples():
    assert groupings(12, 4, "uniform") == ((3, 3, 3, 3),)
    assert set(groupings(6, 4, "uniform")) == set(itertools.permutations((2, 2, 1, 1)))  # sizes differ by ≤ 1
    assert (1, 5, 5, 1) in groupings(12, 4, "spindle") and (2, 3, 5, 2) in groupings(12, 4, "spindle")
    assert (2, 4, 4, 2) not in groupings(12, 4, "bottleneck") and (5, 1, 1, 5) in groupings(12, 4, "bottleneck")
    assert (3, 3, 3, 3) not in groupings(12, 4, "increasing") and (1, 2, 3, 6) in groupings(12, 4, "increasing")
    assert groupings(2, 2, "spindle") == () and groupings(4, 4, "increasing") == ()
    for pattern in ALLOCATIONS:
        assert set(allocations(4, pattern)) == {w for w in itertools.product(range(1, 5), repeat=4)
                                                 if is_allocation(w, pattern)}
    assert allocations(4, "uniform") == ((1, 1, 1, 1),)


@pytest.mark.parametrize("pattern", GROUPINGS)
def test_every_pattern_samples_every_grouping_it_admits(pattern):
    arch = {"model_type": "gpt2", "d_model": 64, "n_heads": 4, "n_kv_heads": 4, "d_head": 16, "d_ff": 256,
            "gated_ffn": False, "stacks": {"decoder": 9}, "proj_bias": True, "backbone_params": 10**7}
    space = parse_space(f"grouping={pattern},allocation=uniform,tunable=all,strategies=G1:A/G2:P/G3:B/G4:L")
    admitted = set(groupings(9, 4, pattern))
    sampled = {d.sizes("decoder") for d in space.sample(arch, n=len(admitted), seed=1)}
    assert sampled == admitted
    with pytest.raises(SpaceError, match=f"only {len(admitted)} distinct"):
        space.sample(arch, n=len(admitted) + 1, seed=1)


# ---- property tests: constraints and budgets on the full-size shapes -------------------------------
def _space_text():
    strat = st.lists(st.tuples(st.integers(1, 4), st.sets(st.sampled_from("APBL"), min_size=1)), max_size=4)
    return st.one_of(
        st.sampled_from(list(SPACES)),
        st.sampled_from([c for stage in STAGES for c in stage.candidates]).map(lambda c: f"S0,{c}"),
        st.builds(lambda g, a, t, s: f"grouping={g},allocation={a},tunable={t}"
                  + (",strategies=" + "/".join(f"G{k}:{'+'.join(sorted(v))}" for k, v in s) if s else ""),
                  st.sampled_from(GROUPINGS), st.sampled_from(ALLOCATIONS),
                  st.sampled_from(["any", "all", "G1", "G2+G3", "G1+G4"]), strat),
    )


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("model", SHAPES)
@PROP
@given(text=_space_text(), seed=st.integers(0, 2**31))
def test_sampled_designs_meet_constraints_and_budget(archs, model, budget, text, seed):
    arch = archs[model]
    space = parse_space(text)
    try:
        pairs = space.sample_plans(arch, n=3, seed=seed, budget=budget)
    except SpaceError as e:  # a narrow space may hold fewer than 3 designs (at this budget): it must say why
        msg = str(e)
        assert "gave only" in msg and ("cannot meet budget" in msg or "no closer" in msg
                                       or ("enumerated" in msg and "distinct" in msg)), msg
        return
    assert len({d.signature() for d, _ in pairs}) == 3
    for d, plan in pairs:
        check_design(space, d, arch)
        check_plan(d, plan, arch, budget)


def test_s0_covers_every_model_and_budget(archs):
    for model, budget in itertools.product(SHAPES, BUDGETS):
        pairs = parse_space("S0").sample_plans(archs[model], n=8, seed=7, budget=budget)
        assert len(pairs) == 8
        for d, plan in pairs:
            check_design(SPACES["S0"], d, archs[model])
            check_plan(d, plan, archs[model], budget)


# ---- determinism -------------------------------------------------------------------------------------
def test_same_seed_same_designs_other_seed_others(archs):
    space, arch = parse_space("S0"), archs["t5-base"]
    a = space.sample_plans(arch, n=6, seed=11, budget="0.5%")
    b = space.sample_plans(arch, n=6, seed=11, budget="0.5%")
    assert [d for d, _ in a] == [d for d, _ in b] and [p.hash for _, p in a] == [p.hash for _, p in b]
    assert [d for d, _ in space.sample_plans(arch, n=3, seed=11, budget="0.5%")] == [d for d, _ in a[:3]]
    c = space.sample(arch, n=6, seed=12, budget="0.5%")
    assert {d.key() for d, _ in a}.isdisjoint({d.key() for d in c})
    small = parse_space("chen2023-t5")  # enumerated (400 designs): deterministic too
    assert small.sample(arch, n=5, seed=3) == small.sample(arch, n=5, seed=3) != small.sample(arch, n=5, seed=4)


# ---- budget rule ---------------------------------------------------------------------------------------
def test_budget_split_rule(archs):
    """BitFit's fixed cost first; equal shares per layer (uniform allocation) and per sized strategy in
    a layer, each met to within one size step (integer sizes)."""
    arch = archs["llama-2-7b"]
    d = parse_space("grouping=uniform,allocation=uniform,tunable=all,strategies=G1:A+L/G2:P+B/G3:B+L/G4:A+P+L"
                    ).sample(arch, n=1, seed=0)[0]
    plans = {b: design_to_plan(d, arch, b) for b in ("0.5%", "2%")}
    for plan in plans.values():
        var: dict[tuple, list[int]] = {}  # (layer, strategy) -> [variable params, params of one size step]
        for e in plan.entries:
            c = plan.cost(e)
            if e.spec.sized:
                v = var.setdefault((e.layer, e.spec.name.split("_")[0]), [0, 0])
                v[0] += c.a * e.spec.size
                v[1] += c.a
        share = sum(v[0] for v in var.values()) / 32  # every one of the 32 layers the same share
        for (layer, _), (params, step) in var.items():
            k = sum(1 for (l2, _) in var if l2 == layer)  # sized strategies of this layer share it equally
            assert abs(params - share / k) <= step, (layer, params, share / k, step)
    bias = [sum(p.entry_params(e) for e in p.entries if e.spec.form == "bias") for p in plans.values()]
    assert bias[0] == bias[1] == 16 * (4 * 4096 + 2 * 11008 + 4096)  # LLaMA: new bias vectors, counted


def test_allocation_weights_shape_layer_shares(archs):
    arch = archs["llama-2-7b"]
    d = Design((("decoder", (8, 8, 8, 8)),), (1, 2, 3, 4), (1, 2, 3, 4), tuple((k, ("L",)) for k in range(1, 5)))
    plan = design_to_plan(d, arch, "1%")
    rank = {e.layer: e.spec.size for e in plan.entries}
    for g in range(4):
        assert all(abs(rank[layer] / rank[0] - (g + 1)) < 0.05 * (g + 1) for layer in range(8 * g, 8 * g + 8))


def test_infeasible_budgets_give_the_feasible_range(archs):
    arch = archs["t5-base"]
    d = SPACES["chen2023-t5"].sample(arch, n=1, seed=0)[0]
    lo, hi = feasible_range(d, arch)
    for budget in ("0.1%", "60%"):
        with pytest.raises(BudgetError) as err:
            design_to_plan(d, arch, budget)
        assert f"at least {lo:,}" in str(err.value) and f"at most {hi:,}" in str(err.value)
        assert (err.value.lowest, err.value.highest) == (lo, hi)
    assert design_to_plan(d, arch, lo).trainable_params == lo and design_to_plan(d, arch, hi).trainable_params == hi
    with pytest.raises(SpaceError, match=r"cannot meet budget 0\.1% = 222,904 parameters: the lowest count any of them allows is 2\d\d,\d{3} "):
        SPACES["chen2023-t5"].sample(arch, n=1, seed=0, budget="0.1%")
    bitfit = Design(d.grouping, (1, 1, 1, 1), (1, 2, 3, 4), tuple((k, ("B",)) for k in range(1, 5)))
    fixed = feasible_range(bitfit, arch)[0]
    assert feasible_range(bitfit, arch) == (fixed, fixed)
    assert design_to_plan(bitfit, arch, fixed).trainable_params == fixed
    with pytest.raises(BudgetError, match=f"at least {fixed:,}"):
        design_to_plan(bitfit, arch, "0.5%")


def test_coarse_steps_report_the_nearest_count(archs):
    """LoRA alone on 5 roberta-base layers at 0.1%: one rank step is 3,072 (2.5% of the budget)."""
    arch = archs["roberta-base"]
    d = Design((("encoder", (2, 4, 5, 1)),), (1, 1, 1, 1), (3,), ((3, ("L",)),))
    plan = design_to_plan(d, arch, "0.1%")
    target = plan.meta["target_params"]
    nearest = min((3072 * k for k in range(5, 5 * 768 + 1)), key=lambda x: abs(x - target))
    assert plan.trainable_params == nearest and not plan.meta["within_tolerance"]
    assert abs(nearest - target) > 0.01 * target
    space = parse_space("grouping=2+4+5+1,allocation=uniform,tunable=G3,strategies=G3:L")
    with pytest.raises(SpaceError, match="no closer"):
        space.sample(arch, n=1, budget="0.1%")


# ---- attaching to the tiny models ---------------------------------------------------------------------
@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine thread hand-offs can make
    a millisecond forward take a second."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _forward_backward(model, plan) -> None:
    ps.attach(model, plan)
    try:
        ids = torch.randint(5, 200, (2, 6), generator=torch.Generator().manual_seed(0))
        kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        kw["labels"] = torch.tensor([0, 1]) if model_family(model) == "encoder" else ids
        out = model(**kw)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        delta = [(n, p) for n, p in model.named_parameters() if ".peftspace." in f".{n}"]
        assert sum(p.numel() for _, p in delta) == plan.trainable_params
        assert all(p.requires_grad and p.grad is not None and torch.isfinite(p.grad).all() for _, p in delta)
    finally:
        ps.detach(model)
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", TINY)
def test_sampled_plans_attach_and_train_on_tiny_models(name, one_thread):
    model = ps.load_model(name)
    arch = model_arch(model)
    space = parse_space("S0,groups=2")  # the tiny models have 2 layers per stack
    for budget in (4000, "0.3%"):
        for d, plan in space.sample_plans(model, n=3, seed=5, budget=budget):
            check_design(space, d, arch)
            check_plan(d, plan, arch, budget)
            _forward_backward(model, plan)


def _deeper(name: str, layers: int = 8):
    """The tiny model with `layers` layers per stack, for 4-group spaces (same config otherwise)."""
    from peftspace.arch import ARCHS

    base = ps.load_model(name)
    cfg = base.config
    for stack in ARCHS[cfg.model_type].stacks.values():
        setattr(cfg, stack.n_layers_attr, layers)
    torch.manual_seed(0)
    return type(base)(cfg)


@pytest.mark.parametrize("name", ["tiny-t5", "tiny-llama", "tiny-bart"])
def test_four_group_spaces_attach_on_deeper_tiny_models(name, one_thread):
    model = _deeper(name)
    arch = model_arch(model)
    texts = ["chen2023-t5"] + [f"S0,grouping={g}" for g in ("increasing", "decreasing", "bottleneck")]
    for i, text in enumerate(texts):
        space = parse_space(text)
        for d, plan in space.sample_plans(model, n=2, seed=i, budget=20000):
            check_design(space, d, arch)
            check_plan(d, plan, arch, 20000)
            _forward_backward(model, plan)


# ---- spaces as data ----------------------------------------------------------------------------------
def test_named_spaces_and_stages():
    assert set(SPACES) >= {"S0", "chen2023-t5"}
    chen = SPACES["chen2023-t5"].constraints()
    assert chen == {"groups": "4", "grouping": "spindle", "allocation": "uniform", "tunable": "all",
                    "strategies": "G1:A+L/G2:A+P/G3:A+P+B/G4:P+B+L", "pool": "A+P+B+L"}
    assert [s.component for s in STAGES][:3] == ["grouping", "allocation", "tunable"]
    assert {c.split("=")[1] for c in STAGES[0].candidates} == set(GROUPINGS) - {"any"}
    assert [len(s.candidates) for s in STAGES if s.component == "strategies"] == [15] * 4
    space = SPACES["S0"]  # walk the stages, keeping the first candidate each time
    for stage in STAGES:
        space = stage.spaces(space)[0][1]
    assert space.constraints()["strategies"] == "G1:A/G2:A/G3:A/G4:A"
    assert space.constraints()["grouping"] == "increasing" and space.constraints()["tunable"] == "G1"


def test_parse_space_forms_and_round_trips(tmp_path):
    inline = parse_space("grouping=spindle,allocation=uniform,tunable=all,strategies=G1:L+A/G2:A+P/G3:B+P+A/G4:P+B+L")
    assert dataclasses.replace(inline, name="chen2023-t5") == SPACES["chen2023-t5"]
    assert dataclasses.replace(parse_space(inline.to_text()), name=inline.name) == inline
    assert parse_space("S0,grouping=spindle").constraints()["grouping"] == "spindle"
    merged = parse_space("chen2023-t5,strategies=G2:L")
    assert merged.constraints()["strategies"] == "G1:A+L/G2:L/G3:A+P+B/G4:P+B+L"
    assert parse_space("chen2023-t5,strategies=any").strategies == ()
    f = tmp_path / "mine.yaml"
    f.write_text("grouping: [1, 5, 5, 1]\nallocation: decreasing\nstrategies: {G2: [A, pa]}\npool: [A, P, pa]\n")
    s = parse_space(str(f))
    assert s.name == "mine" and s.grouping == (1, 5, 5, 1) and dict(s.strategies) == {2: ("A", "pa")}
    assert Space.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("text,needle", [
    ("S9", "named spaces: S0"), ("colour=red", "valid keys: groups, grouping"),
    ("grouping=wobbly", "valid are any, increasing, uniform"), ("allocation=spindle", "valid are any, increasing"),
    ("strategies=G1:Z", "unknown strategy 'Z'; valid: A, P, B, L"), ("tunable=G7", "subset of G1..G4"),
    ("strategies=G1:prompt", "soft prompts"), ("groups=x", "groups='x'"), ("grouping=1+2+3", "need 4 positive"),
    ("strategies=G1", "G<k>:<strategies>"),
])
def test_parse_space_errors_name_key_and_valid_values(text, needle):
    with pytest.raises(SpaceError, match=None) as err:
        parse_space(text)
    assert needle in str(err.value)


def test_design_json_and_custom_strategies(archs):
    mine = DeltaSpec("lora_ffn_in", "lora", ("ffn.in",), "parallel", "scale", size=4, s=2.0)
    space = Space(name="custom", pool=("A", "L", "pa", "mine"), custom=(("mine", (mine,)),))
    seen = set()
    for d, plan in space.sample_plans(archs["bart-large"], n=12, seed=2, budget="0.5%"):
        assert Design.from_json(d.to_json()) == d and Design.from_json(d.to_json()).hash == d.hash
        check_plan(d, plan, archs["bart-large"], "0.5%")
        seen |= {s for _, names in d.strategies for s in names}
        rec = design_record(d, plan)
        assert {"grouping", "strategies", "trainable_params", "percent", "plan", "within_tolerance"} <= set(rec)
        assert ps.Plan.from_dict(json.loads(json.dumps(rec["plan"]))).hash == plan.hash
    assert {"mine", "pa"} <= seen
    with pytest.raises(SpaceError, match="already a strategy"):
        Space(custom=(("L", (mine,)),))


def test_too_few_layers_for_the_groups_says_so():
    with pytest.raises(SpaceError, match="admits no split of the 2 layers of encoder into 4 groups"):
        SPACES["S0"].sample("tiny-bert", n=1)


# ---- CLI -----------------------------------------------------------------------------------------------
def _cli(argv):
    parser = argparse.ArgumentParser(prog="peftspace")
    sub = parser.add_subparsers(dest="command", required=True)
    add_sample_parser(sub)
    add_show_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_sample_and_show(capsys, tmp_path):
    argv = ["sample", "--model", "shape:t5-base", "--space", "chen2023-t5", "--budget", "0.5%", "--n", "2", "--seed", "0"]
    assert _cli(argv) == 0
    first = capsys.readouterr().out
    assert "grouping    encoder" in first and "G1: A+L  G2: A+P  G3: A+P+B  G4: P+B+L" in first
    assert "% of 222,903,552 backbone" in first and "within 1%: yes" in first
    assert _cli(argv) == 0 and capsys.readouterr().out == first
    assert _cli(argv[:-1] + ["1"]) == 0 and capsys.readouterr().out != first
    assert _cli(argv + ["--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 2 and all(abs(r["trainable_params"] / r["target_params"] - 1) <= 0.01 for r in records)
    assert set(records[0]["grouping"]) == {"encoder", "decoder"} and records[0]["strategies"]["G3"] == ["A", "P", "B"]
    path = tmp_path / "designs.json"
    path.write_text(json.dumps(records))
    assert _cli(["show", str(path), "--index", "1", "--png", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(ps.plan(ps.load_model("shape:gpt2"), "mam", budget="0.5%").to_json())
    assert _cli(["show", str(plan_file)]) == 0 and (tmp_path / "plan.png").exists()
    assert _cli(["sample", "--model", "shape:gpt2", "--space", "grouping=wobbly"]) == 2
    assert "valid are any, increasing" in capsys.readouterr().err
