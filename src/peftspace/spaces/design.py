"""A design: one point of a design space (Chen et al. 2023, Figure 1), as frozen, hashable JSON data.

It fixes every component: the group sizes of each stack, the allocation weight of each group, the
tuned groups and the strategies of each tuned group. With a model's `arch` dict and a budget it
becomes a Plan (`solve.design_to_plan`). Groups are numbered 1…G; group i of every stack of an
encoder-decoder shares the weight, the tuned flag and the strategies (each stack is split apart).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..spec import DeltaSpec
from .patterns import layer_groups
from .strategies import SpaceError, canonical, check_name

FORMAT = "peftspace.design/1"


@dataclass(frozen=True)
class Design:
    grouping: tuple[tuple[str, tuple[int, ...]], ...]  # (stack, group sizes), in the model's stack order
    weights: tuple[int, ...]  # allocation weight of each group (per-layer share ∝ weight)
    tunable: tuple[int, ...]  # tuned groups, 1-based, ascending
    strategies: tuple[tuple[int, tuple[str, ...]], ...]  # (group, strategies) for every tuned group
    custom: tuple[tuple[str, tuple[DeltaSpec, ...]], ...] = ()  # user-defined strategies it uses
    space: str = field(default="", compare=False)  # provenance: the space it was sampled from

    def __post_init__(self) -> None:
        # canonical stack order (encoder before decoder) so a JSON round trip gives an equal design
        order = {"encoder": 0, "decoder": 1}
        object.__setattr__(self, "grouping", tuple(sorted(((str(st), tuple(int(n) for n in sz)) for st, sz in self.grouping),
                                                          key=lambda x: (order.get(x[0], 2), x[0]))))
        object.__setattr__(self, "weights", tuple(int(w) for w in self.weights))
        object.__setattr__(self, "custom", tuple(sorted(self.custom, key=lambda x: x[0])))
        g = len(self.weights)
        if g < 1 or any(int(w) < 1 for w in self.weights):
            raise SpaceError(f"design weights must be ≥ 1 for each of ≥ 1 groups, got {list(self.weights)}")
        for stack, sizes in self.grouping:
            if len(sizes) != g or any(n < 1 for n in sizes):
                raise SpaceError(f"design grouping of {stack}: {list(sizes)} is not {g} positive group sizes")
        if not self.tunable or sorted(set(self.tunable)) != list(self.tunable) or not all(1 <= t <= g for t in self.tunable):
            raise SpaceError(f"design tunable groups {list(self.tunable)}: need a non-empty ascending subset of 1..{g}")
        if [k for k, _ in self.strategies] != list(self.tunable):
            raise SpaceError(f"design strategies are given for groups {[k for k, _ in self.strategies]}, "
                             f"the tuned groups are {list(self.tunable)}")
        custom = dict(self.custom)
        for k, names in self.strategies:
            if not names:
                raise SpaceError(f"design group G{k}: needs at least one strategy")
            if tuple(names) != canonical(names):
                raise SpaceError(f"design group G{k}: strategies {list(names)} not in canonical order {list(canonical(names))}")
            for n in names:
                check_name(n, custom)

    # ---- views ------------------------------------------------------------------------------------
    @property
    def groups(self) -> int:
        return len(self.weights)

    @property
    def strategies_by_group(self) -> dict[int, tuple[str, ...]]:
        return dict(self.strategies)

    @property
    def custom_specs(self) -> dict[str, tuple[DeltaSpec, ...]]:
        return dict(self.custom)

    def sizes(self, stack: str) -> tuple[int, ...]:
        return dict(self.grouping)[stack]

    def layer_map(self, stack: str) -> list[tuple[int, int, tuple[str, ...]] | None]:
        """Per layer of `stack`: (group, weight, strategies) if its group is tuned, else None."""
        strat = self.strategies_by_group
        return [(g, self.weights[g - 1], strat[g]) if g in strat else None for g in layer_groups(self.sizes(stack))]

    def signature(self) -> tuple:
        """What the Plan depends on: per layer the strategies and the share weight (up to a common
        factor). Two designs with one signature give the same Plan at every budget (e.g. they differ
        only in the weight of an untuned group), so sampling treats them as one design."""
        tuned_w = [self.weights[g - 1] for g in self.tunable]
        d = math.gcd(*tuned_w)
        per_stack = tuple((stack, tuple(None if x is None else (x[2], x[1] // d) for x in self.layer_map(stack)))
                          for stack, _ in self.grouping)
        return per_stack, self.custom

    def key(self) -> str:
        """A short, readable, canonical text of the design (stable across runs)."""
        grp = " ".join(f"{st}={'+'.join(map(str, sz))}" for st, sz in self.grouping)
        strat = "/".join(f"G{k}:{'+'.join(v)}" for k, v in self.strategies)
        return f"{grp} | w={':'.join(map(str, self.weights))} | {strat}"

    @property
    def hash(self) -> str:
        body = json.dumps({k: v for k, v in self.to_dict().items() if k != "space"}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    # ---- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "groups": self.groups,
            "grouping": {st: list(sz) for st, sz in self.grouping},
            "weights": list(self.weights),
            "tunable": [f"G{k}" for k in self.tunable],
            "strategies": {f"G{k}": list(v) for k, v in self.strategies},
            "custom": {n: [s.to_dict() for s in specs] for n, specs in self.custom},
            "space": self.space,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Design":
        if d.get("format") != FORMAT:
            raise SpaceError(f"not a peftspace design (format {d.get('format')!r}, expected {FORMAT!r})")
        custom = tuple((n, tuple(DeltaSpec.from_dict(s, where=f"custom[{n}]") for s in specs))
                       for n, specs in sorted(d.get("custom", {}).items()))
        tun = tuple(sorted(int(str(k).lstrip("G")) for k in d["tunable"]))
        strat = tuple(sorted((int(k.lstrip("G")), tuple(v)) for k, v in d["strategies"].items()))
        return cls(tuple((st, tuple(int(x) for x in sz)) for st, sz in d["grouping"].items()),
                   tuple(int(w) for w in d["weights"]), tun, strat, custom, str(d.get("space", "")))

    @classmethod
    def from_json(cls, text: str) -> "Design":
        return cls.from_dict(json.loads(text))
