"""The Plan: which Δh specs, of which sizes, at which layer of which stack.

The one currency between layers of peftspace: presets, design spaces and the budget solver produce
a Plan; attaching, training, the trial store and the reports consume it. A Plan is JSON (round-trip
exact), has a stable content hash, and prints as a table. It carries the dimensions of the model it
was made for, so counts and percentages need no model, and a plan is refused by another architecture.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .arch import ARCHS, Dims, arch_for, dims_from_config
from .presets import parse_method
from .sites import Cost, spec_cost
from .spec import DeltaSpec, SpecError

STACK_LEVEL = -1  # layer index of stack-level entries (soft prompts at the stack input)


@dataclass(frozen=True)
class PlanEntry:
    stack: str
    layer: int  # 0-based layer index in its stack, or STACK_LEVEL
    spec: DeltaSpec

    def to_dict(self) -> dict:
        return {"stack": self.stack, "layer": self.layer, "spec": self.spec.to_dict()}


@dataclass(frozen=True)
class Plan:
    arch: dict  # Dims.to_dict() + backbone_params
    entries: tuple[PlanEntry, ...]
    meta: dict = field(default_factory=dict, compare=False)  # method, budget, design: provenance only

    # ---- identity ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": "peftspace.plan/1", "arch": self.arch, "entries": [e.to_dict() for e in self.entries],
                "meta": self.meta}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, where: str = "plan") -> "Plan":
        if d.get("format") != "peftspace.plan/1":
            raise SpecError(f"{where}: not a peftspace plan (format {d.get('format')!r}, expected 'peftspace.plan/1')")
        entries = []
        for i, e in enumerate(d["entries"]):
            entries.append(PlanEntry(e["stack"], int(e["layer"]), DeltaSpec.from_dict(e["spec"], where=f"{where}: entries[{i}].spec")))
        plan = cls(dict(d["arch"]), tuple(entries), dict(d.get("meta", {})))
        plan.validate()
        return plan

    @classmethod
    def from_json(cls, text: str, where: str = "plan") -> "Plan":
        return cls.from_dict(json.loads(text), where)

    @property
    def hash(self) -> str:
        """Content hash over the architecture and the entries (not the provenance in `meta`)."""
        body = json.dumps({"arch": self.arch, "entries": [e.to_dict() for e in self.entries]}, sort_keys=True,
                          separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    # ---- structure --------------------------------------------------------------------------------
    @property
    def dims(self) -> Dims:
        a = {k: v for k, v in self.arch.items() if k in Dims.__dataclass_fields__}
        return Dims(**a)

    def validate(self) -> None:
        dims = self.dims
        if dims.model_type not in ARCHS:
            arch_for(type("C", (), {"model_type": dims.model_type})())  # raises the standard message
        arch = ARCHS[dims.model_type]
        seen: set[tuple[str, int, str]] = set()
        for e in self.entries:
            if e.stack not in dims.stacks:
                raise SpecError(f"plan entry {e.spec.name!r}: stack {e.stack!r} not in this model (stacks: {list(dims.stacks)})")
            if e.layer != STACK_LEVEL and not 0 <= e.layer < dims.stacks[e.stack]:
                raise SpecError(f"plan entry {e.spec.name!r}: layer {e.layer} out of range for {e.stack} "
                                f"(0..{dims.stacks[e.stack] - 1})")
            key = (e.stack, e.layer, e.spec.name)
            if key in seen:
                raise SpecError(f"plan: two entries named {e.spec.name!r} at {e.stack} layer {e.layer}; names must be unique per layer")
            seen.add(key)
            if self.cost(e) == Cost(0, 0):
                where = "the stack input" if e.layer == STACK_LEVEL else f"{e.stack} layer {e.layer}"
                raise SpecError(
                    f"plan entry {e.spec.name!r} ({e.spec.describe()}) modifies nothing at {where} of a "
                    f"{arch.family} model: e.g. a cross-attention site on a model without cross-attention, or "
                    f"a soft prompt on a stack that takes no token input (attention kinds here: {list(arch.stacks[e.stack].kinds)})")

    def cost(self, e: PlanEntry) -> Cost:
        arch = ARCHS[self.arch["model_type"]]
        return spec_cost(e.spec, arch, self.dims, e.stack, layer_level=e.layer != STACK_LEVEL)

    def entry_params(self, e: PlanEntry) -> int:
        return self.cost(e).at(e.spec.size)

    @property
    def trainable_params(self) -> int:
        """Inference-time Δh parameters (the budget currency, He et al. Appendix B)."""
        return sum(self.entry_params(e) for e in self.entries)

    @property
    def training_only_params(self) -> int:
        return sum(self.cost(e).train_only_at(e.spec.size) for e in self.entries)

    @property
    def backbone_params(self) -> int:
        return int(self.arch.get("backbone_params", 0))

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable_params / self.backbone_params if self.backbone_params else float("nan")

    def layers(self) -> list[dict]:
        """One row per layer (stack input first), with its specs and counts."""
        rows: dict[tuple[str, int], dict] = {}
        for stack, n in self.dims.stacks.items():
            if any(e.stack == stack and e.layer == STACK_LEVEL for e in self.entries):
                rows[(stack, STACK_LEVEL)] = {"stack": stack, "layer": STACK_LEVEL, "specs": [], "params": 0}
            for i in range(n):
                rows[(stack, i)] = {"stack": stack, "layer": i, "specs": [], "params": 0}
        for e in self.entries:
            p = self.entry_params(e)
            row = rows[(e.stack, e.layer)]
            row["specs"].append({"name": e.spec.name, "form": e.spec.form, "size": e.spec.size,
                                 "sites": list(e.spec.sites), "params": p, "describe": e.spec.describe()})
            row["params"] += p
        return list(rows.values())

    def summary(self) -> dict[str, Any]:
        return {
            "plan_hash": self.hash,
            "model_type": self.arch["model_type"],
            "trainable_params": self.trainable_params,
            "training_only_params": self.training_only_params,
            "backbone_params": self.backbone_params,
            "percent": self.percent,
            "layers": self.layers(),
            "meta": self.meta,
            "plan": self.to_dict(),
        }

    def table(self, title: str | None = None):
        from rich.table import Table

        t = Table(title=title or f"plan {self.hash}  ({self.arch['model_type']})", show_lines=False)
        for col in ("stack", "layer", "specs", "params"):
            t.add_column(col, justify="right" if col in ("layer", "params") else "left")
        for row in self.layers():
            if not row["specs"]:
                continue
            specs = "; ".join(f"{s['name']}: {s['describe']}" for s in row["specs"])
            t.add_row(row["stack"], "input" if row["layer"] == STACK_LEVEL else str(row["layer"]), specs,
                      f"{row['params']:,}")
        target = self.meta.get("budget_params")
        t.caption = (f"trainable {self.trainable_params:,} = {self.percent:.4f}% of {self.backbone_params:,} backbone"
                     + (f"; budget {self.meta.get('budget')} = {target:,}, achieved/target "
                        f"{self.trainable_params / target:.4f} (nearest with uniform integer sizes)" if target else "")
                     + (f"; training-only {self.training_only_params:,}" if self.training_only_params else ""))
        return t


# ---- building plans -------------------------------------------------------------------------------
def model_arch(model) -> dict:
    from .models import backbone_params

    dims = dims_from_config(model.config)
    return {**dims.to_dict(), "backbone_params": int(backbone_params(model))}


def parse_budget(budget: "float | int | str | None") -> tuple[str, float] | None:
    """'0.5%' or 0.005 → ('fraction', 0.005); an integer ≥ 1 (or '120000') → ('count', 120000)."""
    if budget is None:
        return None
    if isinstance(budget, str):
        b = budget.strip()
        try:
            if b.endswith("%"):
                return ("fraction", float(b[:-1]) / 100.0)
            v = float(b)
        except ValueError:
            raise SpecError(f"budget {budget!r}: expected a percent ('0.5%'), a fraction (0.005) or a count (120000)") from None
        budget = int(v) if v >= 1 and v == int(v) else v
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
        raise SpecError(f"budget {budget!r}: must be positive")
    if isinstance(budget, int) or budget >= 1:
        return ("count", float(int(budget)))
    return ("fraction", float(budget))


def budget_target(budget, backbone: int) -> int:
    kind, v = parse_budget(budget)
    return int(round(v * backbone)) if kind == "fraction" else int(v)


def plan_layers(arch_dict: dict, specs: tuple[DeltaSpec, ...], layers: dict[str, list[int]] | None = None) -> list[PlanEntry]:
    """Place every spec on every layer (or the given layers) of every stack where it modifies something."""
    dims = Dims(**{k: v for k, v in arch_dict.items() if k in Dims.__dataclass_fields__})
    arch = ARCHS[dims.model_type]
    entries: list[PlanEntry] = []
    for sp in specs:
        placed = 0
        for stack, n in dims.stacks.items():
            if sp.form == "prompt":
                if spec_cost(sp, arch, dims, stack, layer_level=False) != Cost(0, 0):
                    entries.append(PlanEntry(stack, STACK_LEVEL, sp))
                    placed += 1
                continue
            if spec_cost(sp, arch, dims, stack) == Cost(0, 0):
                continue
            for i in (layers or {}).get(stack, range(n)):
                entries.append(PlanEntry(stack, i, sp))
                placed += 1
        if not placed:
            have = sorted({k for s in arch.stacks.values() for k in s.kinds})
            why = (f"it modifies attention kinds {list(sp.attn_kinds)} and this model has {have}"
                   + (" (no cross-attention)" if "cross" not in have else "")) if any(
                s.startswith("attn") for s in sp.sites) else f"its sites {list(sp.sites)} do not exist here"
            raise SpecError(f"spec {sp.name!r} ({sp.describe()}) applies to no layer of this {arch.family} model "
                            f"({dims.model_type}): {why}")
    return entries


def solve_sizes(plan: Plan, target: int, tolerance: float = 0.01) -> Plan:
    """Size the sized specs of a plan (one integer size per spec name, so layers stay uniform) to the
    count nearest `target` (see `budget.py`). What remains after fixed costs (biases, BitFit) is
    shared equally among the specs, the rule the design spaces use too; for `mam` on RoBERTa-base at
    0.5% this gives prefix l≈r of the scaled PA, as in He et al.'s GLUE script (l=16, r=16)."""
    import numpy as np

    from .budget import solve_integer_sizes

    names: list[str] = []
    for e in plan.entries:
        if e.spec.sized and e.spec.name not in names:
            names.append(e.spec.name)
    if not names:
        return plan
    a = np.zeros(len(names), dtype=np.int64)
    c = np.zeros(len(names))
    fixed = 0
    for e in plan.entries:
        cost = plan.cost(e)
        fixed += cost.b if e.spec.sized else cost.at(e.spec.size)
        if e.spec.sized:
            k = names.index(e.spec.name)
            a[k] += cost.a
    c = 1.0 / a  # equal parameter shares: size_k ∝ 1 / (per-unit cost of spec k)
    lowest = fixed + int(a.sum())
    if target < lowest:
        raise BudgetError(target, lowest, None, plan)
    cap = np.full(len(names), 1 << 20, dtype=np.int64)
    sizes = solve_integer_sizes(a, c, cap, fixed, target, tolerance)
    by_name = dict(zip(names, (int(x) for x in sizes)))
    entries = tuple(PlanEntry(e.stack, e.layer, e.spec.with_size(by_name[e.spec.name])) if e.spec.sized else e
                    for e in plan.entries)
    return Plan(plan.arch, entries, plan.meta)


class BudgetError(SpecError):
    def __init__(self, target: int, lowest: int, highest: int | None, plan: Plan | None = None):
        bb = plan.backbone_params if plan is not None else 0
        pct = (lambda n: f" ({100 * n / bb:.4f}%)") if bb else (lambda n: "")
        rng = f"at least {lowest:,}{pct(lowest)}" + (f" and at most {highest:,}{pct(highest)}" if highest else "")
        super().__init__(f"budget of {target:,} parameters{pct(target)} cannot be met: the assigned strategies need {rng}")
        self.target, self.lowest, self.highest = target, lowest, highest


def make_plan(model_or_arch, method, budget=None, layers: dict[str, list[int]] | None = None) -> Plan:
    """`ps.plan(model, "mam", budget=0.005)`, `ps.plan(model, "lora:r=8")`, `ps.plan(model, "mam:l=30,r=512")`."""
    arch_dict = model_or_arch if isinstance(model_or_arch, dict) else model_arch(model_or_arch)
    specs, label = parse_method(method)
    plan = Plan(arch_dict, tuple(plan_layers(arch_dict, specs, layers)), {"method": label})
    plan.validate()
    if budget is not None:
        target = budget_target(budget, plan.backbone_params)
        plan = solve_sizes(plan, target)
        plan = Plan(plan.arch, plan.entries, {**plan.meta, "budget": str(budget), "budget_params": target})
    return plan
