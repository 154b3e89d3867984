"""Strategies that a group of layers can be assigned (Chen et al. 2023, §3, "strategy assignment").

The paper's four strategies are letters, each a core preset (so the counts and the attaching code are
the core's, checked against `numel()` there):
  A  adapter   Houlsby adapter (the paper's A): a sequential bottleneck after attention and one after
               the FFN, both of bottleneck r (on a decoder layer of an encoder-decoder the attention
               adapter sits after self- and after cross-attention, as the core places it);
  P  prefix    prefix tuning, l key/value vectors per attention, gated (He et al. Eq. 7–9);
  B  bitfit    bias vectors of every projection; a fixed cost (a model without biases, T5 or LLaMA,
               gets new bias vectors, counted like any Δh);
  L  lora      LoRA on W_q and W_v, rank r, scale s = 2.
Any other core preset name (`pa`, `spa`, `mh_pa`, `lora_ffn`, `pfeiffer`, `mam`, …) is a strategy too,
and a space may carry user-defined strategies (name → specs). Soft prompts act on a stack's input,
not on a layer, so a strategy may not contain one.

Inside a plan a strategy's spec keeps its core name prefixed by the strategy (`A_adapter_attn`,
`L_lora`, `mam_prefix`), so two strategies of one group never collide and every entry says which
strategy it belongs to.
"""

from __future__ import annotations

import re

from ..presets import PRESETS
from ..spec import DeltaSpec

LETTERS: dict[str, str] = {"A": "adapter", "P": "prefix", "B": "bitfit", "L": "lora"}
PAPER_POOL: tuple[str, ...] = ("A", "P", "B", "L")
STRATEGY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class SpaceError(ValueError):
    """A space, design or constraint is malformed; the message names the key and the valid values."""


def known_strategies(custom: dict[str, tuple[DeltaSpec, ...]] | None = None) -> list[str]:
    return list(LETTERS) + [p for p in PRESETS if p != "prompt"] + sorted(custom or {})


def strategy_specs(name: str, custom: dict[str, tuple[DeltaSpec, ...]] | None = None) -> tuple[DeltaSpec, ...]:
    """The specs of strategy `name`, renamed `<name>_<spec>` (default sizes: the preset's)."""
    custom = custom or {}
    if name in custom:
        specs = custom[name]
    elif name in LETTERS:
        specs = PRESETS[LETTERS[name]]
    elif name in PRESETS:
        specs = PRESETS[name]
    else:
        raise SpaceError(f"unknown strategy {name!r}; valid: {', '.join(known_strategies(custom))} "
                         f"(or a user-defined strategy in the space's `custom`)")
    bad = [s.name for s in specs if s.form == "prompt"]
    if bad:
        raise SpaceError(f"strategy {name!r}: spec(s) {bad} are soft prompts, which act on a stack's input, "
                         f"not on a layer group")
    return tuple(s.replace(name=f"{name}_{s.name}") for s in specs)


def check_name(name: str, custom: dict[str, tuple[DeltaSpec, ...]] | None = None) -> str:
    strategy_specs(name, custom)  # raises with the valid names
    return name


def canonical(names, custom: dict | None = None) -> tuple[str, ...]:
    """A strategy subset in canonical order: A, P, B, L (the paper's), then the rest alphabetically."""
    order = {k: i for i, k in enumerate(PAPER_POOL)}
    uniq = set(names)
    return tuple(sorted(uniq, key=lambda n: (order.get(n, len(order)), n)))


def strategy_of_spec(spec_name: str, strategies: list[str]) -> str:
    """Which strategy a plan spec name (`<strategy>_<spec>`) belongs to (longest matching prefix)."""
    hits = [s for s in strategies if spec_name.startswith(s + "_")]
    return max(hits, key=len) if hits else spec_name
