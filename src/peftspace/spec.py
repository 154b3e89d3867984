"""A Δh spec: one point in the design space of He et al. (2022), §3.2 and Table 1.

Every parameter-efficient method is a modification Δh of a hidden representation h, described by
four design dimensions — *functional form*, *insertion form*, *modified representation* and
*composition function* — plus a size (r or l) and an initialisation. A `DeltaSpec` records exactly
those, as frozen data; nothing here knows about Hugging Face modules (see `arch.py` for where the
sites live in a model, and `forms.py` for the modules that compute Δh).

Invalid combinations fail when the spec is built, with a message naming the rule that is broken.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Functional forms (He et al. Table 1, Eq. 4–10, plus BitFit and prompt tuning):
FORMS = {
    "lora": "low-rank linear  Δh = x·W_down·W_up                      (Eq. 6)",
    "bottleneck": "adapter         Δh = f(h·W_down)·W_up, f ∈ relu/gelu/tanh/silu/identity (Eq. 4)",
    "prefix": "prefix attention Δh = softmax(x·W_q·P_kᵀ)·P_v            (Eq. 9)",
    "bias": "bias vectors    Δh = b (BitFit)",
    "prompt": "soft prompt     l vectors prepended to the stack's input (prompt tuning)",
}
INSERTIONS = ("parallel", "sequential")
COMPOSITIONS = {
    "add": "h ← h + Δh",
    "scale": "h ← h + s·Δh (fixed s)",
    "learned": "h ← h + s·Δh (s a learned scalar, initialised to the given s)",
    "gate": "h ← (1−λ)·h + λ·Δh (Eq. 10); prefix: λ(x) of Eq. 8, others: λ = σ(x·w_g + b_g)",
}
ACTIVATIONS = ("relu", "gelu", "tanh", "silu", "identity")
INITS = ("lora", "bert")

# Modified representations. Linear sites are single projections; block sites are whole sub-layers
# (x = the sub-layer's input, h = its output before the residual); head sites live inside the
# attention computation; `embed` is the input of a stack.
LINEAR_SITES = ("attn.q", "attn.k", "attn.v", "attn.o", "ffn.in", "ffn.out")
BLOCK_SITES = ("attn", "ffn")
HEAD_SITES = ("attn.heads",)
STACK_SITES = ("embed",)
SITES = LINEAR_SITES + BLOCK_SITES + HEAD_SITES + STACK_SITES
ATTN_KINDS = ("self", "cross")


class SpecError(ValueError):
    """A Δh spec breaks a rule of the design space; the message names the rule."""


@dataclass(frozen=True)
class DeltaSpec:
    """One Δh module type, with its size, over the four design dimensions of He et al. (2022).

    `name` keys the spec inside a plan (unique per layer); `sites` are the modified representations
    it applies to in every layer it is placed on; `attn_kinds` picks encoder/decoder self-attention
    ("self") and decoder cross-attention ("cross") for `attn*` sites.
    """

    name: str
    form: str
    sites: tuple[str, ...]
    insertion: str = "parallel"
    composition: str = "add"
    size: int = 0  # r (rank / bottleneck) or l (prefix / prompt length); 0 for bias
    s: float = 1.0  # scale for "scale", initial value for "learned"
    act: str = "relu"
    init: str = "lora"  # LoRA init (Kaiming-uniform down, zero up) or BERT init (N(0, 0.02)), He et al. §A.3
    bias: bool = True  # bottleneck projections carry biases
    reparam: int = 0  # prefix: hidden size of the MLP reparameterisation (He et al. §A.3); 0 = direct
    attn_kinds: tuple[str, ...] = ATTN_KINDS
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", tuple(self.sites))
        object.__setattr__(self, "attn_kinds", tuple(self.attn_kinds))
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "reparam", int(self.reparam))
        object.__setattr__(self, "s", float(self.s))
        _validate(self)

    # ----------------------------------------------------------------------------------------------
    @property
    def size_symbol(self) -> str:
        return {"prefix": "l", "prompt": "l", "bias": "-"}.get(self.form, "r")

    @property
    def sized(self) -> bool:
        return self.form != "bias"

    def with_size(self, size: int) -> "DeltaSpec":
        return dataclasses.replace(self, size=int(size))

    def replace(self, **changes: Any) -> "DeltaSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sites"] = list(self.sites)
        d["attn_kinds"] = list(self.attn_kinds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "spec") -> "DeltaSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(f"{where}: unknown field(s) {unknown}; valid fields are {sorted(known)}")
        missing = [k for k in ("name", "form", "sites") if k not in d]
        if missing:
            raise SpecError(f"{where}: missing required field(s) {missing}")
        d = dict(d)
        if isinstance(d["sites"], str):
            d["sites"] = [x.strip() for x in d["sites"].split(",") if x.strip()]
        if isinstance(d.get("attn_kinds"), str):
            d["attn_kinds"] = [x.strip() for x in d["attn_kinds"].split(",") if x.strip()]
        try:
            return cls(**d)
        except SpecError as e:
            raise SpecError(f"{where}: {e}") from None

    def describe(self) -> str:
        size = "" if not self.sized else f" {self.size_symbol}={self.size}"
        comp = self.composition + (f"(s={self.s:g})" if self.composition in ("scale", "learned") else "")
        return f"{self.form}{size} {self.insertion} @{'+'.join(self.sites)} {comp}"


def _fail(rule: str, spec: DeltaSpec, detail: str) -> None:
    raise SpecError(f"spec {spec.name!r}: rule '{rule}': {detail}")


def _validate(sp: DeltaSpec) -> None:
    if not sp.name or not sp.name.replace("_", "").replace("-", "").isalnum():
        _fail("name", sp, f"name must be a non-empty identifier, got {sp.name!r}")
    if sp.form not in FORMS:
        _fail("form", sp, f"unknown functional form {sp.form!r}; valid: {sorted(FORMS)}")
    if sp.insertion not in INSERTIONS:
        _fail("insertion", sp, f"unknown insertion form {sp.insertion!r}; valid: {list(INSERTIONS)}")
    if sp.composition not in COMPOSITIONS:
        _fail("composition", sp, f"unknown composition {sp.composition!r}; valid: {sorted(COMPOSITIONS)}")
    if not sp.sites:
        _fail("sites", sp, "at least one modified representation is needed")
    bad = [s for s in sp.sites if s not in SITES]
    if bad:
        _fail("sites", sp, f"unknown site(s) {bad}; valid: {list(SITES)}")
    if len(set(sp.sites)) != len(sp.sites):
        _fail("sites", sp, f"duplicate sites {list(sp.sites)}")
    badk = [k for k in sp.attn_kinds if k not in ATTN_KINDS]
    if badk or not sp.attn_kinds:
        _fail("attn_kinds", sp, f"attention kinds must be a non-empty subset of {list(ATTN_KINDS)}, got {list(sp.attn_kinds)}")
    if sp.act not in ACTIVATIONS:
        _fail("act", sp, f"unknown nonlinearity {sp.act!r}; valid: {list(ACTIVATIONS)}")
    if sp.init not in INITS:
        _fail("init", sp, f"unknown initialisation {sp.init!r}; valid: {list(INITS)}")
    if sp.sized and sp.size < 1:
        _fail("size", sp, f"{sp.form} needs {sp.size_symbol} ≥ 1, got {sp.size}")
    if not sp.sized and sp.size != 0:
        _fail("size", sp, "bias vectors have no size; leave size at 0")
    if sp.composition == "add" and sp.s != 1.0:
        _fail("scale", sp, "composition 'add' has no scale; use composition 'scale' or 'learned' to set s")
    if sp.composition in ("scale", "learned") and not sp.s > 0:
        _fail("scale", sp, f"s must be > 0, got {sp.s}")
    if not 0.0 <= sp.dropout < 1.0:
        _fail("dropout", sp, f"dropout must be in [0, 1), got {sp.dropout}")
    if sp.reparam and sp.form != "prefix":
        _fail("reparam", sp, "the MLP reparameterisation (He et al. §A.3) applies to prefix vectors only")
    if sp.reparam < 0:
        _fail("reparam", sp, "reparam must be ≥ 0")

    if sp.form == "lora":
        # Eq. 6: LoRA reads the input x of a weight matrix and adds to its output: parallel by nature.
        if sp.insertion != "parallel":
            _fail("lora-parallel", sp, "a low-rank update of a weight is parallel insertion (He et al. §3.2); use form 'bottleneck' for a sequential module")
        off = [s for s in sp.sites if s not in LINEAR_SITES]
        if off:
            _fail("lora-sites", sp, f"LoRA modifies weight matrices: sites must be among {list(LINEAR_SITES)}, got {off}")
    elif sp.form == "bottleneck":
        if "embed" in sp.sites:
            _fail("bottleneck-sites", sp, "adapters do not apply to the stack input ('embed')")
        if "attn.heads" in sp.sites:
            if sp.insertion != "parallel":
                _fail("heads-parallel", sp, "the multi-head adapter (He et al. §3.3) runs in parallel with head attention")
            if sp.composition == "gate":
                _fail("heads-gate", sp, "a learned gate on per-head adapters is not supported; use add, scale or learned")
    elif sp.form == "prefix":
        if sp.sites != ("attn.heads",):
            _fail("prefix-sites", sp, "prefix vectors extend the keys and values of head attention: sites must be ['attn.heads']")
        if sp.insertion != "parallel":
            _fail("prefix-parallel", sp, "prefix tuning is a parallel insertion of head attention (He et al. Eq. 9)")
    elif sp.form == "bias":
        off = [s for s in sp.sites if s not in LINEAR_SITES]
        if off:
            _fail("bias-sites", sp, f"bias vectors belong to projections: sites must be among {list(LINEAR_SITES)}, got {off}")
        if sp.composition != "add" or sp.insertion != "parallel":
            _fail("bias-composition", sp, "a bias vector is added to a projection's output: insertion 'parallel', composition 'add'")
    elif sp.form == "prompt":
        if sp.sites != ("embed",):
            _fail("prompt-sites", sp, "soft prompts are prepended to the input of a stack: sites must be ['embed']")
        if sp.composition != "add" or sp.insertion != "parallel":
            _fail("prompt-composition", sp, "soft prompts have no composition function: leave insertion 'parallel', composition 'add'")
    if sp.composition == "gate" and sp.form in ("bias", "prompt"):
        _fail("gate", sp, f"form {sp.form!r} cannot be gated")


def coerce_value(key: str, raw: str) -> Any:
    """Parse a `key=value` override from the command line or a method string."""
    if key in ("sites", "attn_kinds"):
        return tuple(x for x in raw.replace("+", ",").split(",") if x)
    if key in ("size", "reparam", "r", "l"):
        try:
            return int(raw)
        except ValueError:
            raise SpecError(f"{key}={raw!r}: expected an integer") from None
    if key in ("s", "dropout"):
        try:
            return float(raw)
        except ValueError:
            raise SpecError(f"{key}={raw!r}: expected a number") from None
    if key == "bias":
        if raw.lower() in ("1", "true", "yes"):
            return True
        if raw.lower() in ("0", "false", "no"):
            return False
        raise SpecError(f"bias={raw!r}: expected true or false")
    return raw


__all__ = [
    "DeltaSpec", "SpecError", "FORMS", "INSERTIONS", "COMPOSITIONS", "ACTIVATIONS", "INITS",
    "SITES", "LINEAR_SITES", "BLOCK_SITES", "HEAD_SITES", "STACK_SITES", "ATTN_KINDS", "coerce_value",
]
