"""A design space: constraints on the four components of Chen et al. (2023), as frozen data.

Each component is free or constrained:
  groups       G, the number of layer groups per stack (default 4, as in the paper);
  grouping     a pattern (`patterns.GROUPINGS`) or explicit sizes `1+5+5+1` (for every stack);
  allocation   a pattern (`patterns.ALLOCATIONS`) or explicit weights `1+2+2+1`;
  tunable      `any` (any non-empty subset of groups), `all`, or fixed groups `G1+G3`;
  strategies   per group either fixed (`G1:A+L/G2:A+P`) or free: any non-empty subset of `pool`;
  pool         the strategies a free group draws from (default A, P, B, L; any core preset name or a
               `custom` strategy may be added).
Inline text: `grouping=spindle,allocation=uniform,tunable=all`, optionally after a named space:
`S0,grouping=spindle`. `parse_space` takes a name, inline text, or a YAML/JSON file.

Sampling draws each component uniformly among the values its constraint admits (enumerated, see
`patterns.py`): the grouping of each stack independently, then the weights, the tuned set, and the
strategies of each tuned group. Designs with the same per-layer assignment are one design
(`Design.signature`); with a budget, designs that cannot meet it are skipped.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

from ..plan import BudgetError, Plan, budget_target
from ..spec import DeltaSpec, SpecError
from . import patterns as P
from .design import Design
from .strategies import LETTERS, PAPER_POOL, SpaceError, STRATEGY_NAME, canonical, check_name, known_strategies

KEYS = ("groups", "grouping", "allocation", "tunable", "strategies", "pool")
ENUMERATE_BELOW = 5000  # spaces with fewer raw designs are enumerated and shuffled, larger ones drawn


def max_draws(n: int) -> int:  # random draws before a large space is declared short of n designs
    return 1000 + 100 * n


def _sizes_text(t: tuple[int, ...]) -> str:
    return "+".join(map(str, t))


@dataclass(frozen=True)
class Space:
    name: str = "custom"
    groups: int = 4
    grouping: str | tuple[int, ...] = "any"
    allocation: str | tuple[int, ...] = "any"
    tunable: str | tuple[int, ...] = "any"
    strategies: tuple[tuple[int, tuple[str, ...]], ...] = ()  # groups whose strategies are fixed
    pool: tuple[str, ...] = PAPER_POOL
    custom: tuple[tuple[str, tuple[DeltaSpec, ...]], ...] = ()  # user-defined strategies
    description: str = dataclasses.field(default="", compare=False)

    def __post_init__(self) -> None:
        g = self.groups
        if not isinstance(g, int) or isinstance(g, bool) or g < 1:
            raise SpaceError(f"groups={g!r}: expected an integer ≥ 1")
        custom = dict(self.custom)
        for n in custom:
            if not STRATEGY_NAME.match(n) or n in LETTERS or n in known_strategies():
                raise SpaceError(f"custom strategy name {n!r}: must be an identifier that is not already a "
                                 f"strategy ({', '.join(known_strategies())})")
        object.__setattr__(self, "custom", tuple(sorted((n, tuple(s)) for n, s in self.custom)))
        if isinstance(self.grouping, str):
            if self.grouping not in P.GROUPINGS:
                raise SpaceError(f"grouping={self.grouping!r}: valid are {', '.join(P.GROUPINGS)} or group sizes like 1+5+5+1")
        else:
            sz = tuple(int(x) for x in self.grouping)
            if len(sz) != g or min(sz) < 1:
                raise SpaceError(f"grouping={_sizes_text(sz)}: need {g} positive group sizes (groups={g})")
            object.__setattr__(self, "grouping", sz)
        if isinstance(self.allocation, str):
            if self.allocation not in P.ALLOCATIONS:
                raise SpaceError(f"allocation={self.allocation!r}: valid are {', '.join(P.ALLOCATIONS)} or weights like 1+2+2+1")
        else:
            w = tuple(int(x) for x in self.allocation)
            if len(w) != g or min(w) < 1:
                raise SpaceError(f"allocation={_sizes_text(w)}: need {g} positive integer weights (groups={g})")
            d = math.gcd(*w)
            object.__setattr__(self, "allocation", tuple(x // d for x in w))
        if isinstance(self.tunable, str):
            if self.tunable not in ("any", "all"):
                raise SpaceError(f"tunable={self.tunable!r}: valid are any, all, or groups like G1+G3 (of G1..G{g})")
        else:
            t = tuple(sorted(set(int(x) for x in self.tunable)))
            if not t or not all(1 <= x <= g for x in t):
                raise SpaceError(f"tunable={list(self.tunable)}: need a non-empty subset of G1..G{g}")
            object.__setattr__(self, "tunable", t)
        if not self.pool:
            raise SpaceError("pool: needs at least one strategy")
        for s in self.pool:
            check_name(s, custom)
        object.__setattr__(self, "pool", canonical(self.pool))
        fixed = {}
        for k, names in self.strategies:
            if not 1 <= int(k) <= g:
                raise SpaceError(f"strategies: group G{k} does not exist (groups={g}: G1..G{g})")
            if not names:
                raise SpaceError(f"strategies: group G{k} needs at least one strategy")
            for s in names:
                check_name(s, custom)
            fixed[int(k)] = canonical(names)
        object.__setattr__(self, "strategies", tuple(sorted(fixed.items())))

    # ---- text and data ----------------------------------------------------------------------------
    def constraints(self) -> dict[str, str]:
        """The components as inline values (also what `to_dict` writes)."""
        def val(x):
            return x if isinstance(x, str) else _sizes_text(x)

        tun = self.tunable if isinstance(self.tunable, str) else "+".join(f"G{k}" for k in self.tunable)
        strat = "/".join(f"G{k}:{'+'.join(v)}" for k, v in self.strategies) or "any"
        return {"groups": str(self.groups), "grouping": val(self.grouping), "allocation": val(self.allocation),
                "tunable": tun, "strategies": strat, "pool": "+".join(self.pool)}

    def to_text(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.constraints().items())

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, **self.constraints()}
        d["groups"] = self.groups
        if self.custom:
            d["custom"] = {n: [s.to_dict() for s in specs] for n, specs in self.custom}
        if self.description:
            d["description"] = self.description
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str | None = None) -> "Space":
        d = dict(d)
        custom = d.pop("custom", {}) or {}
        base = cls(name=str(d.pop("name", name or "custom")), description=str(d.pop("description", "")),
                   custom=tuple((n, tuple(DeltaSpec.from_dict(s, where=f"custom[{n}]") for s in
                                          (specs if isinstance(specs, list) else [specs])))
                                for n, specs in custom.items()))
        return dataclasses.replace(base.refine(d, name=base.name), description=base.description)

    def refine(self, constraints: "str | dict[str, Any]", name: str | None = None) -> "Space":
        """This space with more constraints: `space.refine("grouping=spindle")`. Fixed strategies merge
        per group (`strategies=G2:A+P` keeps a fixed G1); `strategies=any` frees them all."""
        items = _parse_items(constraints) if isinstance(constraints, str) else {
            str(k): _value_text(str(k), v) for k, v in constraints.items()}
        unknown = [k for k in items if k not in KEYS]
        if unknown:
            raise SpaceError(f"unknown space key(s) {unknown}; valid keys: {', '.join(KEYS)}")
        ch: dict[str, Any] = {}
        groups = self.groups
        if "groups" in items:
            try:
                groups = int(items["groups"])
            except ValueError:
                raise SpaceError(f"groups={items['groups']!r}: expected an integer ≥ 1") from None
            ch["groups"] = groups
            if groups != self.groups:  # fixed per-group values do not carry over to another G
                for k in ("grouping", "allocation", "tunable"):
                    if not isinstance(getattr(self, k), str):
                        ch[k] = "any"
                ch["strategies"] = ()
        if "grouping" in items:
            ch["grouping"] = _pattern_or_sizes("grouping", items["grouping"], P.GROUPINGS)
        if "allocation" in items:
            ch["allocation"] = _pattern_or_sizes("allocation", items["allocation"], P.ALLOCATIONS)
        if "tunable" in items:
            ch["tunable"] = _tunable(items["tunable"], groups)
        if "pool" in items:
            ch["pool"] = tuple(x for x in str(items["pool"]).split("+") if x)
        if "strategies" in items:
            v = items["strategies"]
            fixed = {} if v == "any" else dict(ch.get("strategies", self.strategies))
            if v != "any":
                fixed.update(_strategies(v))
            ch["strategies"] = tuple(sorted(fixed.items()))
        text = constraints if isinstance(constraints, str) else ",".join(f"{k}={v}" for k, v in items.items())
        return dataclasses.replace(self, name=name or f"{self.name},{text}", description="", **ch)

    # ---- membership -------------------------------------------------------------------------------
    def grouping_options(self, n_layers: int) -> tuple[tuple[int, ...], ...]:
        if isinstance(self.grouping, str):
            return P.groupings(n_layers, self.groups, self.grouping)
        return (self.grouping,) if sum(self.grouping) == n_layers else ()

    def weight_options(self) -> tuple[tuple[int, ...], ...]:
        return P.allocations(self.groups, self.allocation) if isinstance(self.allocation, str) else (self.allocation,)

    def tunable_options(self) -> list[tuple[int, ...]]:
        g = range(1, self.groups + 1)
        if self.tunable == "all":
            return [tuple(g)]
        if self.tunable == "any":
            return [c for r in range(1, self.groups + 1) for c in itertools.combinations(g, r)]
        return [self.tunable]  # type: ignore[list-item]

    def strategy_options(self, group: int) -> list[tuple[str, ...]]:
        fixed = dict(self.strategies)
        if group in fixed:
            return [fixed[group]]
        return [canonical(c) for r in range(1, len(self.pool) + 1) for c in itertools.combinations(self.pool, r)]

    def violations(self, design: Design, arch: dict | None = None) -> list[str]:
        """Every constraint of this space that `design` breaks (empty: the design is in the space)."""
        out = []
        if design.groups != self.groups:
            return [f"design has {design.groups} groups, the space {self.groups}"]
        stacks = dict(arch["stacks"]) if arch else {st: sum(sz) for st, sz in design.grouping}
        for st, sz in design.grouping:
            if st not in stacks or sum(sz) != stacks[st]:
                out.append(f"grouping of {st} {list(sz)} does not split its {stacks.get(st)} layers")
            elif sz not in self.grouping_options(stacks[st]):
                out.append(f"grouping of {st} {_sizes_text(sz)} is not {self.constraints()['grouping']}")
        if arch and sorted(stacks) != sorted(st for st, _ in design.grouping):
            out.append(f"design groups stacks {[st for st, _ in design.grouping]}, the model has {list(stacks)}")
        if design.weights not in self.weight_options():
            out.append(f"weights {_sizes_text(design.weights)} are not allocation={self.constraints()['allocation']}")
        if design.tunable not in self.tunable_options():
            out.append(f"tuned groups {list(design.tunable)} are not tunable={self.constraints()['tunable']}")
        for k, names in design.strategies:
            if names not in self.strategy_options(k):
                out.append(f"G{k} strategies {'+'.join(names)} not allowed (fixed: {dict(self.strategies).get(k)}, pool: {'+'.join(self.pool)})")
        return out

    def count(self, arch: dict) -> int:
        """Number of designs the components admit on this model (before merging equivalent ones)."""
        n = 1
        for L in arch["stacks"].values():
            n *= len(self.grouping_options(L))
        n *= len(self.weight_options())
        return n * sum(math.prod(len(self.strategy_options(k)) for k in t) for t in self.tunable_options())

    # ---- sampling ---------------------------------------------------------------------------------
    def sample(self, arch_or_model, n: int = 1, seed: int = 0, budget=None, *, allow_fewer: bool = False) -> list[Design]:
        """`n` distinct designs of this space, the same for the same seed (and n' < n gives a prefix).

        With `budget`, only designs whose Plan meets it within the tolerance (1%) are returned. If the
        space holds fewer than `n` such designs, raises SpaceError saying how many there are (or, with
        `allow_fewer=True`, warns and returns those)."""
        return [d for d, _ in self.sample_plans(arch_or_model, n, seed, budget, allow_fewer=allow_fewer)]

    def sample_plans(self, arch_or_model, n: int = 1, seed: int = 0, budget=None, *,
                     allow_fewer: bool = False) -> list[tuple[Design, Plan | None]]:
        """Like `sample`, with each design's Plan (None when no budget is given)."""
        from .solve import TOLERANCE, design_to_plan

        arch = as_arch(arch_or_model)
        if n < 1:
            raise SpaceError(f"n={n}: ask for at least one design")
        stacks = dict(arch["stacks"])
        opts = {st: self.grouping_options(L) for st, L in stacks.items()}
        for st, o in opts.items():
            if not o:
                raise SpaceError(f"space {self.name!r}: grouping={self.constraints()['grouping']} admits no split of the "
                                 f"{stacks[st]} layers of {st} into {self.groups} groups (each ≥ 1 layer); "
                                 f"use fewer groups (groups=…) or another grouping")
        if not self.weight_options():
            raise SpaceError(f"space {self.name!r}: allocation={self.allocation} admits no weights for {self.groups} group(s)")
        rng = random.Random(seed)
        bb = int(arch.get("backbone_params", 0))
        total = self.count(arch)
        source = self._enumerated(opts, rng) if total <= ENUMERATE_BELOW else self._drawn(opts, rng, max_draws(n))
        seen: set = set()
        out: list[tuple[Design, Plan | None]] = []
        infeasible, coarse, lowest, highest = 0, 0, math.inf, 0
        for design in source:
            sig = design.signature()
            if sig in seen:
                continue
            seen.add(sig)
            plan = None
            if budget is not None:
                try:
                    plan = design_to_plan(design, arch, budget)
                except BudgetError as e:
                    infeasible += 1
                    lowest, highest = min(lowest, e.lowest), max(highest, e.highest or 0)
                    continue
                if not plan.meta["within_tolerance"]:
                    coarse += 1
                    continue
            out.append((design, plan))
            if len(out) == n:
                return out
        how = ("all of them enumerated" if total <= ENUMERATE_BELOW
               else f"after {max_draws(n)} random draws")
        msg = (f"space {self.name!r} gave only {len(out)} distinct design(s) of the {n} asked for on this "
               f"{arch['model_type']} model: it admits {total} design(s), {len(seen)} distinct ({how})"
               + (f"; {coarse} get no closer to budget {budget} than {TOLERANCE:.0%} (size steps too coarse)" if coarse else "")
               + (f"; {infeasible} cannot meet budget {budget} = {budget_target(budget, bb):,} parameters: the lowest "
                  f"count any of them allows is {_count(lowest, bb)}, the highest {_count(highest, bb)} "
                  f"(one design's own range: feasible_range(design, arch))" if infeasible else ""))
        if allow_fewer:
            warnings.warn(msg, stacklevel=2)
            return out
        raise SpaceError(msg)

    def _draw(self, opts: dict, rng: random.Random) -> Design:
        grouping = tuple((st, rng.choice(o)) for st, o in opts.items())
        weights = rng.choice(self.weight_options())
        tunable = rng.choice(self.tunable_options())
        strategies = tuple((k, rng.choice(self.strategy_options(k))) for k in tunable)
        return Design(grouping, weights, tunable, strategies, self._custom_used(strategies), self.name)

    def _drawn(self, opts: dict, rng: random.Random, draws: int) -> Iterator[Design]:
        for _ in range(draws):
            yield self._draw(opts, rng)

    def _enumerated(self, opts: dict, rng: random.Random) -> Iterator[Design]:
        stacks = list(opts)
        combos = []
        for grouping in itertools.product(*(opts[st] for st in stacks)):
            for weights in self.weight_options():
                for tunable in self.tunable_options():
                    for strat in itertools.product(*(self.strategy_options(k) for k in tunable)):
                        combos.append((grouping, weights, tunable, strat))
        rng.shuffle(combos)
        for grouping, weights, tunable, strat in combos:
            strategies = tuple(zip(tunable, strat))
            yield Design(tuple(zip(stacks, grouping)), weights, tunable, strategies, self._custom_used(strategies), self.name)

    def _custom_used(self, strategies) -> tuple:
        used = {s for _, names in strategies for s in names}
        return tuple((n, specs) for n, specs in self.custom if n in used)


def _count(n: float, backbone: int) -> str:
    return f"{int(n):,}" + (f" ({100 * n / backbone:.4f}%)" if backbone else "")


# ---- parsing --------------------------------------------------------------------------------------
def _parse_items(text: str) -> dict[str, str]:
    items: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        k, eq, v = part.partition("=")
        if not eq:
            raise SpaceError(f"{part!r}: expected key=value; valid keys: {', '.join(KEYS)}")
        items[k.strip()] = v.strip()
    return items


def _value_text(key: str, v: Any) -> str:
    """A YAML/JSON value as its inline text: [1, 5, 5, 1] → 1+5+5+1; {G1: [A, L]} → G1:A+L."""
    if isinstance(v, dict):
        return "/".join(f"{g}:{_value_text(key, x)}" for g, x in v.items())
    if isinstance(v, (list, tuple)):
        return "+".join(str(x) for x in v)
    return str(v)


def _pattern_or_sizes(key: str, value: str, valid: tuple[str, ...]):
    if value in valid:
        return value
    try:
        return tuple(int(x) for x in value.split("+"))
    except ValueError:
        example = "1+5+5+1" if key == "grouping" else "1+2+2+1"
        raise SpaceError(f"{key}={value!r}: valid are {', '.join(valid)}, or explicit values like {example}") from None


def _group(token: str, key: str) -> int:
    t = token.strip()
    if t[:1] in ("G", "g"):
        t = t[1:]
    try:
        return int(t)
    except ValueError:
        raise SpaceError(f"{key}: {token!r} is not a group; groups are written G1, G2, …") from None


def _tunable(value: str, groups: int):
    if value in ("any", "all"):
        return value
    return tuple(_group(x, f"tunable={value}") for x in value.split("+") if x)


def _strategies(value: str) -> dict[int, tuple[str, ...]]:
    out = {}
    for part in value.split("/"):
        if not part.strip():
            continue
        g, colon, names = part.partition(":")
        if not colon:
            raise SpaceError(f"strategies={value!r}: {part!r} should read G<k>:<strategies>, e.g. G1:A+L/G2:A+P")
        k = _group(g, f"strategies={value}")
        out[k] = tuple(x.strip() for x in names.split("+") if x.strip())
        if not out[k]:
            raise SpaceError(f"strategies={value!r}: group G{k} needs at least one strategy of "
                             f"{', '.join(known_strategies())}")
    return out


def as_arch(arch_or_model) -> dict:
    """An `arch` dict from a dict, a Plan, a model, or a model name for `peftspace.load_model`."""
    from ..plan import model_arch

    if isinstance(arch_or_model, dict):
        return arch_or_model
    if isinstance(arch_or_model, Plan):
        return arch_or_model.arch
    if isinstance(arch_or_model, str):
        from ..models import load_model

        return model_arch(load_model(arch_or_model))
    return model_arch(arch_or_model)


def parse_space(text_or_name: "str | Space | dict") -> Space:
    """A Space from a name (`S0`, `chen2023-t5`, …), inline constraints, `name,key=value,…`, a YAML or
    JSON file, or a dict. Errors name the bad key or value and list the valid ones."""
    from .library import SPACES

    if isinstance(text_or_name, Space):
        return text_or_name
    if isinstance(text_or_name, dict):
        return Space.from_dict(text_or_name)
    text = str(text_or_name).strip()
    if text.endswith((".yaml", ".yml", ".json")):
        return _load_file(text)
    first, _, rest = text.partition(",")
    if "=" not in first:
        if first not in SPACES:
            raise SpaceError(f"unknown space {first!r}; named spaces: {', '.join(SPACES)}; or inline constraints "
                             f"key=value,… with keys {', '.join(KEYS)}")
        base = SPACES[first]
        return base.refine(rest) if rest.strip() else base
    return Space(name=text).refine(text, name=text)


def _load_file(path: str) -> Space:
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise SpaceError(f"space file {path!r} does not exist")
    raw = p.read_text(encoding="utf-8")
    if p.suffix == ".json":
        data = json.loads(raw)
    else:
        import yaml

        data = yaml.safe_load(raw)
    if not isinstance(data, dict):
        raise SpaceError(f"{path}: expected a mapping of space keys ({', '.join(KEYS)}, custom, name)")
    try:
        return Space.from_dict(data, name=p.stem)
    except (SpaceError, SpecError) as e:
        raise SpaceError(f"{path}: {e}") from None
