"""The one architecture table: abstract sites → module paths, per `model_type`.

Method code never names a Hugging Face module (`q_proj`, `c_attn`, ...). It names abstract sites
(`attn.q`, `attn`, `ffn.in`, ...; see `spec.SITES`) in an attention kind (`self`, `cross`) of a layer
of a stack (`encoder`, `decoder`). This file is the only place that knows where those live. To
support a new family, add one `Arch` row to `ARCHS` (and, if its config uses other attribute names,
teach `dims_from_config`).

Paths are relative to a *layer* module; the layers of a stack are found at `Stack.layers` relative
to `model.base_model`. A path element that is an integer (also negative) indexes a ModuleList.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn


@dataclass(frozen=True)
class Proj:
    """A projection site: module path, plus the slice of its output features for fused projections
    (GPT-2's `c_attn` computes q, k and v in one Conv1D). `part` = (index, of n equal parts)."""

    path: str
    part: tuple[int, int] | None = None


@dataclass(frozen=True)
class Attn:
    module: str  # the module that calls transformers' attention interface (head-level sites live here)
    q: tuple[Proj, ...]
    k: tuple[Proj, ...]
    v: tuple[Proj, ...]
    o: tuple[Proj, ...]


@dataclass(frozen=True)
class Ffn:
    x: str  # module whose input is the FFN sub-layer input
    inp: tuple[Proj, ...]  # first projection(s) (two for gated FFNs)
    out: tuple[Proj, ...]  # last projection; its output is h, the sub-layer output before the residual


@dataclass(frozen=True)
class Stack:
    layers: str  # ModuleList path relative to model.base_model
    kinds: tuple[str, ...]  # attention kinds of each layer
    n_layers_attr: str


@dataclass(frozen=True)
class Arch:
    family: str  # "encoder" | "decoder" | "encoder-decoder"
    stacks: dict[str, Stack]
    attn: dict[str, Attn]  # by attention kind
    ffn: Ffn
    prompt_stack: str  # the stack whose input receives soft prompts
    prompt_offset: int = 0  # insert prompts after this many leading tokens ([CLS] stays first in BERT)


def _p(*paths: str) -> tuple[Proj, ...]:
    return tuple(Proj(p) for p in paths)


_BERT = Arch(
    family="encoder",
    stacks={"encoder": Stack("encoder.layer", ("self",), "num_hidden_layers")},
    attn={"self": Attn("attention.self", _p("attention.self.query"), _p("attention.self.key"),
                       _p("attention.self.value"), _p("attention.output.dense"))},
    ffn=Ffn("intermediate.dense", _p("intermediate.dense"), _p("output.dense")),
    prompt_stack="encoder",
    prompt_offset=1,
)


def _bart_like() -> Arch:
    self_attn = Attn("self_attn", _p("self_attn.q_proj"), _p("self_attn.k_proj"), _p("self_attn.v_proj"),
                     _p("self_attn.out_proj"))
    cross = Attn("encoder_attn", _p("encoder_attn.q_proj"), _p("encoder_attn.k_proj"),
                 _p("encoder_attn.v_proj"), _p("encoder_attn.out_proj"))
    return Arch(
        family="encoder-decoder",
        stacks={"encoder": Stack("encoder.layers", ("self",), "encoder_layers"),
                "decoder": Stack("decoder.layers", ("self", "cross"), "decoder_layers")},
        attn={"self": self_attn, "cross": cross},
        ffn=Ffn("fc1", _p("fc1"), _p("fc2")),
        prompt_stack="encoder",
    )


def _t5() -> Arch:
    return Arch(
        family="encoder-decoder",
        stacks={"encoder": Stack("encoder.block", ("self",), "num_layers"),
                "decoder": Stack("decoder.block", ("self", "cross"), "num_decoder_layers")},
        attn={"self": Attn("layer.0.SelfAttention", _p("layer.0.SelfAttention.q"), _p("layer.0.SelfAttention.k"),
                           _p("layer.0.SelfAttention.v"), _p("layer.0.SelfAttention.o")),
              "cross": Attn("layer.1.EncDecAttention", _p("layer.1.EncDecAttention.q"),
                            _p("layer.1.EncDecAttention.k"), _p("layer.1.EncDecAttention.v"),
                            _p("layer.1.EncDecAttention.o"))},
        # The FFN input projection(s) differ between the original (wi) and gated (wi_0, wi_1) T5;
        # `resolve_ffn_in` picks whichever exists.
        ffn=Ffn("layer.-1.DenseReluDense", _p("layer.-1.DenseReluDense.wi", "layer.-1.DenseReluDense.wi_0",
                                             "layer.-1.DenseReluDense.wi_1"), _p("layer.-1.DenseReluDense.wo")),
        prompt_stack="encoder",
    )


_LLAMA = Arch(
    family="decoder",
    stacks={"decoder": Stack("layers", ("self",), "num_hidden_layers")},
    attn={"self": Attn("self_attn", _p("self_attn.q_proj"), _p("self_attn.k_proj"), _p("self_attn.v_proj"),
                       _p("self_attn.o_proj"))},
    ffn=Ffn("mlp", _p("mlp.gate_proj", "mlp.up_proj"), _p("mlp.down_proj")),
    prompt_stack="decoder",
)

_GPT2 = Arch(
    family="decoder",
    stacks={"decoder": Stack("h", ("self",), "n_layer")},
    attn={"self": Attn("attn", (Proj("attn.c_attn", (0, 3)),), (Proj("attn.c_attn", (1, 3)),),
                       (Proj("attn.c_attn", (2, 3)),), _p("attn.c_proj"))},
    ffn=Ffn("mlp", _p("mlp.c_fc"), _p("mlp.c_proj")),
    prompt_stack="decoder",
)

ARCHS: dict[str, Arch] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "bart": _bart_like(),
    "mbart": _bart_like(),
    "t5": _t5(),
    "mt5": _t5(),
    "gpt2": _GPT2,
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "mistral": _LLAMA,
}

FAMILIES_TEXT = ("BERT family (bert, roberta, xlm-roberta; MiniLM), T5 (t5, mt5), BART/mBART (bart, mbart), "
                 "GPT-2 (gpt2), LLaMA family (llama, qwen2, mistral; SmolLM2)")


class UnsupportedModel(ValueError):
    pass


def arch_for(model_or_config) -> Arch:
    cfg = getattr(model_or_config, "config", model_or_config)
    mt = getattr(cfg, "model_type", None)
    if mt not in ARCHS:
        raise UnsupportedModel(
            f"model_type {mt!r} is not in peftspace's architecture table. Supported: {FAMILIES_TEXT}. "
            f"To add a family, add one Arch row to ARCHS in {__file__} mapping its modules to the abstract sites.")
    return ARCHS[mt]


@dataclass(frozen=True)
class Dims:
    """The sizes that parameter counts depend on, read from a config (works on meta models)."""

    model_type: str
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_ff: int
    gated_ffn: bool
    stacks: dict[str, int] = field(default_factory=dict)  # stack -> number of layers
    proj_bias: bool = True  # projections carry biases (BitFit then trains them as deltas)

    @property
    def inner(self) -> int:  # query/output width of attention: heads·d_head (≠ d_model in t5-3b)
        return self.n_heads * self.d_head

    @property
    def kv(self) -> int:  # key/value width (grouped-query attention: fewer kv heads)
        return self.n_kv_heads * self.d_head

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def dims_from_config(cfg) -> Dims:
    arch = arch_for(cfg)
    mt = cfg.model_type
    stacks = {name: int(getattr(cfg, st.n_layers_attr) or getattr(cfg, "num_layers")) for name, st in arch.stacks.items()}
    if mt in ("t5", "mt5"):
        gated = bool(getattr(cfg, "is_gated_act", False)) or str(cfg.feed_forward_proj).startswith("gated")
        return Dims(mt, cfg.d_model, cfg.num_heads, cfg.num_heads, cfg.d_kv, cfg.d_ff, gated, stacks, proj_bias=False)
    if mt in ("bart", "mbart"):
        h = cfg.encoder_attention_heads
        return Dims(mt, cfg.d_model, h, h, cfg.d_model // h, cfg.encoder_ffn_dim, False, stacks, proj_bias=True)
    if mt == "gpt2":
        return Dims(mt, cfg.n_embd, cfg.n_head, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.n_inner or 4 * cfg.n_embd,
                    False, stacks, proj_bias=True)
    if mt in ("llama", "qwen2", "mistral"):
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kvh = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        # Qwen2 has q/k/v biases, LLaMA none; BitFit adds missing biases, so counts do not depend on it.
        return Dims(mt, cfg.hidden_size, cfg.num_attention_heads, kvh, hd, cfg.intermediate_size, True, stacks,
                    proj_bias=bool(getattr(cfg, "attention_bias", False)))
    # BERT family
    h = cfg.num_attention_heads
    return Dims(mt, cfg.hidden_size, h, h, cfg.hidden_size // h, cfg.intermediate_size, False, stacks, proj_bias=True)


def proj_dims(d: Dims, kind: str, site: str) -> list[tuple[int, int]]:
    """(in_features, out_features) of each projection behind a linear site."""
    if site == "attn.q":
        return [(d.d_model, d.inner)]
    if site in ("attn.k", "attn.v"):
        return [(d.d_model, d.kv)]
    if site == "attn.o":
        return [(d.inner, d.d_model)]
    if site == "ffn.in":
        return [(d.d_model, d.d_ff)] * (2 if d.gated_ffn else 1)
    if site == "ffn.out":
        return [(d.d_ff, d.d_model)]
    raise KeyError(site)


def get_module(root: nn.Module, path: str) -> nn.Module:
    m = root
    for part in path.split("."):
        if part.lstrip("-").isdigit():
            m = m[int(part)]  # type: ignore[index]
        else:
            m = getattr(m, part)
    return m


def has_module(root: nn.Module, path: str) -> bool:
    try:
        get_module(root, path)
        return True
    except (AttributeError, IndexError, TypeError):
        return False


def linear_projs(arch: Arch, kind: str, site: str, layer: nn.Module | None) -> tuple[Proj, ...]:
    a = arch.attn[kind] if site.startswith("attn") else None
    if site == "attn.q":
        return a.q
    if site == "attn.k":
        return a.k
    if site == "attn.v":
        return a.v
    if site == "attn.o":
        return a.o
    if site == "ffn.in":
        projs = arch.ffn.inp
        if layer is not None:  # keep the projections this layer actually has (T5: wi vs wi_0/wi_1)
            projs = tuple(p for p in projs if has_module(layer, p.path))
        elif len(projs) == 3:  # T5 table lists both variants; without a layer assume the original
            projs = projs[:1]
        return projs
    if site == "ffn.out":
        return arch.ffn.out
    raise KeyError(site)


def layers_of(model: nn.Module, stack: str) -> nn.ModuleList:
    arch = arch_for(model)
    return get_module(model.base_model, arch.stacks[stack].layers)  # type: ignore[return-value]


def stack_module(model: nn.Module, stack: str) -> nn.Module:
    """The module whose forward takes the stack's token input (for soft prompts)."""
    arch = arch_for(model)
    if arch.family == "encoder-decoder":
        return model.get_encoder() if stack == "encoder" else model.get_decoder()
    return model.base_model
