"""Design + model arch + budget → Plan, with integer sizes solved to the budget.

The budget rule (what each layer and each strategy gets):
 1. Fixed costs come first: BitFit's bias vectors (on T5 and LLaMA new ones, counted like any Δh)
    and the size-independent part b of every sized spec (adapter up-projection biases, gates).
 2. The rest of the budget is shared among the tuned layers that carry a sized strategy, each layer
    in proportion to its group's allocation weight (uniform allocation: equal shares).
 3. A layer's share is split equally among its group's sized strategies (B has no size and takes no
    share); inside one strategy, its specs keep the preset's size ratio (A: attention and FFN adapters
    get the same r; `mam`: l : r = 30 : 512).
 4. Sizes are integers in [1, cap] with cap = d_model: a LoRA rank or an adapter bottleneck wider than
    the model is no longer low-rank, and a prefix longer than d_model is far beyond any published one.
    The shares are met by one common scale λ (size_e = clamp(round(λ·c_e), 1, cap)), the count being
    monotone in λ: a bisection on λ finds λ*, the sizes λ*·c are rounded by largest remainders, then ±1 steps on one
    entry (the size lagging its ideal most) move it closer until none helps; if it is still outside
    the tolerance, steps on pairs of entries too.
Feasible counts run from every size at 1 to every size at cap. A budget farther than the tolerance
(1%) outside that range raises `BudgetError` with the range; inside it, the count is within 1% of the
budget unless the per-unit steps are coarser than that (e.g. LoRA alone on 5 layers of roberta-base at
0.1%: one rank is 3,072 parameters, 2.5% of the budget), and then the plan holds the closest count the
solver reached, marked `within_tolerance: false` in its meta and record (`Space.sample` skips such
designs: every sampled design meets the budget within the tolerance).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..arch import ARCHS, Dims
from ..budget import solve_integer_sizes as _solve
from ..plan import BudgetError, Plan, PlanEntry, budget_target
from ..sites import Cost, spec_cost
from .design import Design
from .strategies import SpaceError, strategy_specs

TOLERANCE = 0.01


def arch_dims(arch_dict: dict) -> Dims:
    return Dims(**{k: v for k, v in arch_dict.items() if k in Dims.__dataclass_fields__})


def check_design_fits(design: Design, arch_dict: dict) -> None:
    stacks = dict(arch_dims(arch_dict).stacks)
    got = {st: sum(sz) for st, sz in design.grouping}
    if got != stacks:
        raise SpaceError(f"design groups layers as {got} (layers per stack); this model has {stacks}")


def _layout(design: Design, arch_dict: dict) -> list[dict[str, Any]]:
    """One item per (layer, spec) the design places, with its affine cost and share coefficient."""
    check_design_fits(design, arch_dict)
    dims = arch_dims(arch_dict)
    arch = ARCHS[dims.model_type]
    custom = design.custom_specs
    specs = {n: strategy_specs(n, custom) for _, names in design.strategies for n in names}
    cost: dict[tuple[str, str], Cost] = {}
    items: list[dict[str, Any]] = []
    for stack in dims.stacks:
        for layer, slot in enumerate(design.layer_map(stack)):
            if slot is None:
                continue
            group, weight, names = slot
            here = []
            for name in names:
                for sp in specs[name]:
                    k = (sp.name, stack)
                    if k not in cost:
                        cost[k] = spec_cost(sp, arch, dims, stack)
                    if cost[k] != Cost(0, 0):  # e.g. a cross-attention-only spec on an encoder layer
                        here.append({"stack": stack, "layer": layer, "group": group, "strategy": name,
                                     "spec": sp, "a": cost[k].a if sp.sized else 0, "b": cost[k].b,
                                     "weight": weight})
            sized = sorted({x["strategy"] for x in here if x["a"] > 0})
            for name in sized:
                mine = [x for x in here if x["strategy"] == name and x["a"] > 0]
                unit = sum(x["a"] * x["spec"].size for x in mine)  # preset sizes give the ratio inside
                for x in mine:  # ideal size = λ · c (params ∝ weight / number of sized strategies)
                    x["c"] = weight / len(sized) * x["spec"].size / unit
            items.extend(here)
    if not items:
        raise SpaceError(f"design {design.key()} places no Δh on this {dims.model_type} model")
    return items


def design_to_plan(design: Design, arch_dict: dict, budget, *, tolerance: float = TOLERANCE) -> Plan:
    """The Plan of `design` on a model with this `arch` dict (Plan.arch / `model_arch(model)`) whose
    trainable count is within `tolerance` of `budget` ('0.5%', 0.005 or a count such as 120000).
    `arch_dict` may also be a model or a Plan (see `space.as_arch`)."""
    from .space import as_arch

    arch_dict = as_arch(arch_dict)
    items = _layout(design, arch_dict)
    dims = arch_dims(arch_dict)
    target = budget_target(budget, int(arch_dict.get("backbone_params", 0)))
    var = [x for x in items if x["a"] > 0]
    fixed = sum(x["b"] for x in items)
    a = np.array([x["a"] for x in var], dtype=np.int64)
    cap = np.full(len(var), dims.d_model, dtype=np.int64)
    lowest, highest = fixed + int(a.sum()), fixed + int((a * cap).sum())
    meta_base = {"method": f"design:{design.space or 'custom'}", "budget": str(budget), "budget_params": target}
    if lowest > target * (1 + tolerance) or highest < target * (1 - tolerance):
        probe = Plan(dict(arch_dict), (), meta_base)
        err = BudgetError(target, lowest, highest, probe)
        err.args = (f"{err.args[0]} (every size between 1 and the cap d_model={dims.d_model}) for design "
                    f"{design.key()}; budgets within {tolerance:.0%} of that range are feasible",)
        raise err
    if var:
        c = np.array([x["c"] for x in var], dtype=np.float64)
        sizes = _solve(a, c, cap, fixed, target, tolerance)
        for x, s in zip(var, sizes):
            x["size"] = int(s)
    entries = tuple(PlanEntry(x["stack"], x["layer"], x["spec"].with_size(x["size"]) if "size" in x else x["spec"])
                    for x in items)
    total = fixed + sum(x["a"] * x.get("size", 0) for x in items)
    meta = {**meta_base, "design": design.to_dict(), "design_key": design.key(),
            "strategy_of": {x["spec"].name: x["strategy"] for x in items},
            "target_params": target, "ratio": total / target if target else float("nan"),
            "within_tolerance": abs(total - target) <= tolerance * target, "tolerance": tolerance,
            "feasible_params": [lowest, highest]}
    # Entries are valid by construction (each modifies something, names unique per layer); the tests
    # check that the core's count of the plan equals the solver's (`meta.ratio`).
    return Plan(dict(arch_dict), entries, meta)


def feasible_range(design: Design, arch_dict: dict) -> tuple[int, int]:
    """Lowest and highest trainable counts of `design` on this model (sizes 1 … d_model)."""
    items = _layout(design, arch_dict)
    d = arch_dims(arch_dict).d_model
    fixed = sum(x["b"] for x in items)
    a = sum(x["a"] for x in items)
    return fixed + a, fixed + a * d


def design_record(design: Design, plan: Plan) -> dict[str, Any]:
    """What a sample prints and a search stores: the design, its counts, and its Plan."""
    return {
        "design_hash": design.hash,
        "key": design.key(),
        "space": design.space,
        "grouping": {st: list(sz) for st, sz in design.grouping},
        "weights": list(design.weights),
        "tunable": [f"G{k}" for k in design.tunable],
        "strategies": {f"G{k}": list(v) for k, v in design.strategies},
        "trainable_params": plan.trainable_params,
        "target_params": plan.meta.get("target_params"),
        "percent": plan.percent,
        "ratio": plan.meta.get("ratio"),
        "within_tolerance": plan.meta.get("within_tolerance"),
        "feasible_params": plan.meta.get("feasible_params"),
        "plan_hash": plan.hash,
        "design": design.to_dict(),
        "plan": plan.to_dict(),
    }
