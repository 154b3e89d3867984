"""Methods as data: each preset is a named point (a tuple of Δh specs) in He et al.'s design space.

Adding a method is one entry here (and one row in the test matrix). `mam` is `prefix` + `spa`.
Defaults follow the papers: LoRA on W_q and W_v (Hu et al.), Houlsby adapters after attention and
after the FFN, Pfeiffer after the FFN, the parallel adapter on the FFN (He et al. §4.3 finds it the
best placement), the scaled PA with s = 4, and MAM = prefix l=30 on attention + scaled PA r=512 on FFN
(He et al. §4.6). Prefix vectors are direct parameters by default; `prefix:reparam=800` gives the MLP
reparameterisation of §A.3 (its MLP is training-only and reported apart from the budget).

A method string is `name[:key=value,...]`; `r` sets the size of bottleneck/LoRA specs, `l` that of
prefix/prompt specs, any other key a spec field of every spec that has it (e.g. `lora:r=8,s=4`).
"""

from __future__ import annotations

from typing import Any, Iterable

from .spec import DeltaSpec, SpecError, coerce_value

LIN = ("attn.q", "attn.k", "attn.v", "attn.o", "ffn.in", "ffn.out")

_PREFIX = DeltaSpec("prefix", "prefix", ("attn.heads",), "parallel", "gate", size=30)
_SPA = DeltaSpec("spa", "bottleneck", ("ffn",), "parallel", "scale", size=64, s=4.0)

PRESETS: dict[str, tuple[DeltaSpec, ...]] = {
    "lora": (DeltaSpec("lora", "lora", ("attn.q", "attn.v"), "parallel", "scale", size=8, s=2.0),),
    "lora_ffn": (DeltaSpec("lora_ffn", "lora", ("ffn.in", "ffn.out"), "parallel", "scale", size=8, s=2.0),),
    "adapter": (DeltaSpec("adapter_attn", "bottleneck", ("attn",), "sequential", "add", size=64),
                DeltaSpec("adapter_ffn", "bottleneck", ("ffn",), "sequential", "add", size=64)),
    "pfeiffer": (DeltaSpec("pfeiffer", "bottleneck", ("ffn",), "sequential", "add", size=64),),
    "prefix": (_PREFIX,),
    "prompt": (DeltaSpec("prompt", "prompt", ("embed",), size=20),),
    "bitfit": (DeltaSpec("bitfit", "bias", LIN),),
    "pa": (DeltaSpec("pa", "bottleneck", ("ffn",), "parallel", "add", size=64),),
    "mh_pa": (DeltaSpec("mh_pa", "bottleneck", ("attn.heads",), "parallel", "add", size=16),),
    "spa": (_SPA,),
    "mam": (_PREFIX, _SPA.replace(size=512)),
}

DESCRIPTIONS = {
    "lora": "LoRA on W_q, W_v (Hu et al. 2021)",
    "lora_ffn": "LoRA on both FFN projections (He et al. Table 6)",
    "adapter": "Houlsby adapter: sequential after attention and after FFN",
    "pfeiffer": "Pfeiffer adapter: sequential after FFN",
    "prefix": "prefix tuning on every attention (Li & Liang 2021)",
    "prompt": "prompt tuning at the input (Lester et al. 2021)",
    "bitfit": "BitFit: bias vectors of every projection (Ben Zaken et al. 2021)",
    "pa": "parallel adapter on FFN (He et al. §3.3)",
    "mh_pa": "multi-head parallel adapter on head attention (He et al. §3.3)",
    "spa": "scaled parallel adapter on FFN, s=4 (He et al. §3.3)",
    "mam": "MAM adapter: prefix l=30 + scaled PA r=512 (He et al. §4.6)",
}

# Preset-specific learning rates (documented defaults for `peftspace train`; None = the task default).
DEFAULT_LR: dict[str, float] = {"prefix": 5e-3, "prompt": 3e-2, "bitfit": 1e-3, "lora": 5e-4, "lora_ffn": 5e-4,
                                "mam": 5e-4, "pa": 5e-4, "spa": 5e-4, "mh_pa": 1e-3, "adapter": 5e-4,
                                "pfeiffer": 5e-4, "full": 5e-5}
# A mixed plan (a design-space design, a plan file, a list of specs) trains each Δh at the rate of the
# preset of its form (a bottleneck on attention heads: mh_pa's), the task head at the adapters' rate.
FORM_LR: dict[str, float] = {"lora": DEFAULT_LR["lora"], "bottleneck": DEFAULT_LR["adapter"],
                             "bottleneck@attn.heads": DEFAULT_LR["mh_pa"], "prefix": DEFAULT_LR["prefix"],
                             "bias": DEFAULT_LR["bitfit"], "prompt": DEFAULT_LR["prompt"]}
OTHER_LR = DEFAULT_LR["adapter"]


def parse_method(method: "str | DeltaSpec | Iterable[DeltaSpec] | dict | list") -> tuple[tuple[DeltaSpec, ...], str]:
    """Resolve a method string, a spec, a tuple of specs, or a dict/list (YAML/JSON) to specs and a label."""
    if isinstance(method, DeltaSpec):
        return (method,), method.name
    if isinstance(method, dict):
        if "specs" in method:
            specs = tuple(DeltaSpec.from_dict(d, where=f"specs[{i}]") for i, d in enumerate(method["specs"]))
            return specs, str(method.get("name", "+".join(s.name for s in specs)))
        sp = DeltaSpec.from_dict(method)
        return (sp,), sp.name
    if isinstance(method, (list, tuple)):
        specs = tuple(m if isinstance(m, DeltaSpec) else DeltaSpec.from_dict(m, where=f"specs[{i}]")
                      for i, m in enumerate(method))
        return specs, "+".join(s.name for s in specs)
    if not isinstance(method, str):
        raise SpecError(f"method must be a preset string, a DeltaSpec or a list of specs, got {type(method).__name__}")
    text = method.strip()
    name, _, args = text.partition(":")
    if "+" in name:  # "lora+pa": concatenation of presets, as mam = prefix + spa
        specs: list[DeltaSpec] = []
        for part in name.split("+"):
            specs.extend(parse_method(part + (":" + args if args else ""))[0])
        return tuple(specs), text
    if name not in PRESETS:
        raise SpecError(f"unknown method {name!r}; presets: {', '.join(PRESETS)} (or a YAML/JSON file of specs)")
    specs = list(PRESETS[name])
    if args:
        overrides = _parse_kv(args, text)
        specs = [_override(sp, overrides, text) for sp in specs]
        unused = set(overrides) - {k for sp in specs for k in _applicable(sp, overrides)}
        if unused:
            raise SpecError(f"{text!r}: no spec of {name!r} has field(s) {sorted(unused)}")
    return tuple(specs), text


def _parse_kv(args: str, text: str) -> dict[str, Any]:
    out = {}
    for item in args.split(","):
        if not item.strip():
            continue
        k, eq, v = item.partition("=")
        if not eq:
            raise SpecError(f"{text!r}: expected key=value, got {item!r}")
        k = k.strip()
        out[k] = coerce_value(k, v.strip())
    return out


def _applicable(sp: DeltaSpec, overrides: dict[str, Any]) -> list[str]:
    keys = []
    for k in overrides:
        if k == "r" and sp.form in ("lora", "bottleneck"):
            keys.append(k)
        elif k == "l" and sp.form in ("prefix", "prompt"):
            keys.append(k)
        elif k not in ("r", "l") and k in sp.__dataclass_fields__:
            if k == "s" and sp.composition == "add":
                continue
            if k == "reparam" and sp.form != "prefix":
                continue
            keys.append(k)
    return keys


def _override(sp: DeltaSpec, overrides: dict[str, Any], text: str) -> DeltaSpec:
    changes = {}
    for k in _applicable(sp, overrides):
        changes["size" if k in ("r", "l") else k] = overrides[k]
    try:
        return sp.replace(**changes) if changes else sp
    except SpecError as e:
        raise SpecError(f"{text!r}: {e}") from None


def load_method_file(path: str) -> tuple[tuple[DeltaSpec, ...], str]:
    """A user-defined method in YAML or JSON: a spec, a list of specs, or {name:, specs: [...]}."""
    import json
    from pathlib import Path

    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    try:
        return parse_method(data)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
