"""Attach a Plan to a Hugging Face model without forking its modeling code.

How each kind of site is reached:
- projection sites (attn.q/k/v/o, ffn.in/out): a forward hook on the projection adds Δh to its
  output (a slice of it for fused projections such as GPT-2's c_attn);
- sub-layer sites (attn, ffn): a forward pre-hook on the sub-layer's first module captures x, and a
  forward hook on its last projection adds Δh to h (parallel); sequential Δh reads h itself;
- head sites (attn.heads: prefix, multi-head adapters): the attention module gets a config view whose
  `_attn_implementation` is "peftspace", a function registered in transformers' AttentionInterface
  that extends keys/values (and masks, and T5's position bias) with prefixes, calls the model's own
  attention implementation, and adds per-head Δh. Only these modules change; the model's mask code
  still sees the original implementation;
- soft prompts: a pre-hook on the stack inserts l vectors into its input (and mask, cache
  positions), a hook removes them from its output so every shape downstream is unchanged.
Δh modules live in a `peftspace` ModuleDict on each layer, so they are ordinary parameters of the
model (optimizers, `.to()`, `Trainer`, `state_dict` all see them). `detach` removes all of it and
restores the original module tree, configs and `requires_grad` flags: outputs are bit-identical.
"""

from __future__ import annotations

import copy
import inspect
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .arch import Arch, arch_for, dims_from_config, get_module, layers_of, linear_projs, stack_module
from . import lean_attention
from .forms import BiasDelta, Bottleneck, Delta, HeadBottleneck, LowRank, Prefix, Prompt
from .plan import STACK_LEVEL, Plan
from .sites import SiteInstance, instances
from .spec import SpecError

ATTN_NAME = "peftspace"
_STATE = "_peftspace_state"


class PlanMismatch(SpecError):
    """A plan made for another architecture (or other dimensions) than the model it is attached to."""


@dataclass
class _State:
    plan: Plan
    handles: list = field(default_factory=list)
    patched_attn: list = field(default_factory=list)  # (module, original config)
    requires_grad: dict = field(default_factory=dict)
    merged: list = field(default_factory=list)  # (delta, module, saved weight, saved bias or _NO_BIAS)
    containers: list = field(default_factory=list)  # (parent module, attribute name)
    forwards: list = field(default_factory=list)  # nn.Linear whose instance forward runs it with its LoRA
    targets: dict = field(default_factory=dict)  # id(delta) -> (projection module, output slice)


_NO_BIAS = object()


# ---- the attention function -----------------------------------------------------------------------
def _peftspace_attention(module: nn.Module, query, key, value, attention_mask, **kw):
    base: Callable = module._peftspace_base_attn
    heads: list[Delta] = module._peftspace_heads
    gated = [d for d in heads if isinstance(d, Prefix) and d.composition == "gate"]
    path = _cpu_path(module, query, kw) if gated else None
    if gated:
        key, value, attention_mask, kw = _extend_with_prefixes(module, gated, query, key, value, attention_mask, kw,
                                                               additive=path == "sdpa")
    causal = bool(kw.get("is_causal", getattr(module, "is_causal", False))) and query.shape[2] > 1
    if path == "lean":  # training with dropout: keep less for backward (lean_attention)
        out, weights = lean_attention.attention(query, key, value, attention_mask, kw["dropout"], kw.get("scaling"),
                                                causal), None
    elif path == "sdpa":  # SDPA itself; grouped-query heads read their key/value head in place (see _cpu_path)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=kw.get("scaling"),
                                             is_causal=causal and attention_mask is None,
                                             enable_gqa=key.shape[1] != query.shape[1])
        out, weights = out.transpose(1, 2).contiguous(), None
    else:
        out, weights = base(module, query, key, value, attention_mask, **kw)  # out: (B, T, H, D)
    for d in heads:
        if isinstance(d, Prefix) and d.composition != "gate":
            pk, pv = d.prefixes()  # (Hkv, l, D)
            rep = query.shape[1] // pk.shape[0]
            pk = pk.repeat_interleave(rep, 0).unsqueeze(0).to(query.dtype)
            pv = pv.repeat_interleave(rep, 0).unsqueeze(0).to(query.dtype)
            delta = F.scaled_dot_product_attention(query, pk.expand(query.shape[0], -1, -1, -1),
                                                   pv.expand(query.shape[0], -1, -1, -1), scale=kw.get("scaling"))
            out = d.compose(out, delta.transpose(1, 2), None)  # Δh = softmax(x·W_q·P_kᵀ)·P_v, ungated
        elif isinstance(d, HeadBottleneck):
            out = d.composed_heads(out, query)  # out (B, T, H, D); query (B, H, T, D)
    return out, weights


def _cpu_path(module, query, kw) -> str | None:
    """Where a prefix layer of an SDPA model on CPU does better than transformers' SDPA call (which is right
    for GPUs): with dropout, SDPA has no fused CPU kernel and its math path keeps three (B, H, T, S) float
    tensors: "lean" (lean_attention) keeps the softmax output and a bool mask. Without dropout, "sdpa": SDPA
    called here, with grouped-query heads reading their key/value head in place (`enable_gqa`; transformers
    repeats K and V to every query head when there is a mask, as CUDA's kernels want; the prefix makes
    them longer), and without the wrapper's Python for the others (the same kernel and arguments). Anything
    else (T5's position bias, soft-capping, sinks, paged caches) goes to the model's own function."""
    if (query.device.type != "cpu" or not module.__dict__.get("_peftspace_sdpa") or kw.get("output_attentions")
            or any(kw.get(k) is not None for k in ("position_bias", "softcap", "s_aux", "cache"))):
        return None
    return "lean" if kw.get("dropout") else "sdpa"


def _prefix_blocks(module, gated: list[Prefix], pad: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values that go before the context, (1, Hkv, L + pad, D) each: the prefixes of `gated`
    side by side and `pad` zero rows. Without autograd (evaluation) they are kept on the module until a
    prefix parameter changes (its storage or version), so a forward concatenates only the context."""
    cacheable = not torch.is_grad_enabled()
    if cacheable:
        stamp = (pad, dtype, tuple((p.data_ptr(), p._version) for d in gated for p in d.parameters()))
        hit = module.__dict__.get("_peftspace_prefix_blocks")
        if hit is not None and hit[0] == stamp:
            return hit[1], hit[2]
    pks, pvs = zip(*(d.prefixes() for d in gated))
    blocks = []
    for ps_ in (pks, pvs):
        parts = [p.to(dtype) for p in ps_]
        if pad:
            parts.append(parts[0].new_zeros(parts[0].shape[0], pad, parts[0].shape[2]))
        blocks.append((parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)).unsqueeze(0))
    if cacheable:
        module.__dict__["_peftspace_prefix_blocks"] = (stamp, blocks[0], blocks[1])
    return blocks[0], blocks[1]


_SPELLED: list = [None]  # (key, mask) of the last mask spelled out without a source mask: one slot


def _extended_mask(src: torch.Tensor | None, key: tuple, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """build(), or what an earlier call with the same `src` (at the same version) and `key` built: every
    layer of a forward gets the same mask, so it is extended once a forward, not once a layer. The result
    hangs on `src` itself (an attribute of that tensor), so it lives exactly as long as the mask it was
    made from (freed with it after the forward) and threads never share it. Without a source (a mask
    spelled out for prefixes, padding keys or causality) it has no batch dimension and one slot keeps it."""
    if src is None:
        hit = _SPELLED[0]  # read once: a thread can only miss, never read another call's mask
        if hit is not None and hit[0] == key:
            return hit[1]
        out = build()
        _SPELLED[0] = (key, out)
        return out
    hit = src.__dict__.get("_peftspace_extended")
    if hit is not None and hit[0] == (src._version, key):
        return hit[1]
    out = build()
    src.__dict__["_peftspace_extended"] = ((src._version, key), out)
    return out


def _additive(allowed: torch.Tensor, dtype: torch.dtype, fill: float = float("-inf")) -> torch.Tensor:
    """A bool mask as an additive one: 0 where allowed, `fill` elsewhere. With -inf it is what SDPA converts a
    bool mask to (the same kernel input, so the same output bit for bit); eager models use finfo.min."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, fill)


def _extend_with_prefixes(module, gated, query, key, value, mask, kw, additive: bool = False):
    """Eq. 5: head_i = Attn(x·W_q, [P_k; C·W_k], [P_v; C·W_v]); the prefix columns are always visible.

    `additive`: return the mask as SDPA's own conversion of a bool mask would make it (0 where allowed,
    -inf elsewhere, the query's dtype): made once a forward here instead of once a layer inside SDPA."""
    B, T, S = query.shape[0], query.shape[2], key.shape[2]
    L = sum(d.l for d in gated)
    # PyTorch's CPU flash-attention kernel (SDPA without dropout) is much slower when the number of keys is
    # not a multiple of 16 (94 keys: ~20% slower than 96). Round L+S up with zero keys/values that the mask
    # hides: exp(-inf) = 0 in every softmax, so the output is that of the unpadded attention.
    pad = 0
    if (module.__dict__.get("_peftspace_sdpa") and query.device.type == "cpu" and not kw.get("dropout")
            and kw.get("position_bias") is None):
        pad = -(L + S) % 16
    pk, pv = _prefix_blocks(module, gated, pad, key.dtype)  # (1, Hkv, L+pad, D): expanded, not copied
    key = torch.cat([pk.expand(B, -1, -1, -1), key], dim=2)  # (B, Hkv, L+pad+S, D)
    value = torch.cat([pv.expand(B, -1, -1, -1), value], dim=2)
    kw = dict(kw)
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise SpecError("prefix tuning needs a tensor attention mask; this attention implementation "
                            f"({type(mask).__name__}) is not supported: load the model with attn_implementation='sdpa' or 'eager'")

        def padded() -> torch.Tensor:
            is_bool = mask.dtype == torch.bool
            out = F.pad(mask, (L + pad, 0), value=True if is_bool else 0.0)
            if pad:
                out[..., L:L + pad] = False if is_bool else torch.finfo(mask.dtype).min
            return _additive(out, query.dtype) if additive and is_bool else out

        mask = _extended_mask(mask, (L, pad, additive, query.dtype), padded)
    else:
        causal = kw.get("is_causal")
        causal = getattr(module, "is_causal", False) if causal is None else causal
        causal = causal and T > 1
        if causal or pad:  # spell the mask out: prefixes visible to all, padding to none, causal over the context
            dev, is_bool = query.device, module._peftspace_mask_is_bool

            def spelled() -> torch.Tensor:
                ctx = torch.ones(T, S, dtype=torch.bool, device=dev)
                if causal:  # the model relied on is_causal
                    ctx = torch.arange(S, device=dev)[None, :] <= torch.arange(T, device=dev)[:, None] + (S - T)
                allowed = torch.cat([torch.ones(T, L, dtype=torch.bool, device=dev),
                                     torch.zeros(T, pad, dtype=torch.bool, device=dev), ctx], dim=1)
                if is_bool and not additive:
                    return allowed[None, None]
                fill = float("-inf") if additive else torch.finfo(query.dtype).min
                return _additive(allowed, query.dtype, fill)[None, None]

            mask = _extended_mask(None, (T, S, L, pad, bool(causal), is_bool, additive, query.dtype, dev), spelled)
            if causal:
                kw["is_causal"] = False
    pb = kw.get("position_bias")
    if pb is not None:  # T5: relative position bias has no entry for prefixes; they get bias 0 (adapters #669)
        kw["position_bias"] = F.pad(pb, (L, 0), value=0.0)
    return key, value, mask, kw


AttentionInterface.register(ATTN_NAME, _peftspace_attention)


def _base_attention(module: nn.Module) -> tuple[Callable, bool]:
    impl = getattr(module.config, "_attn_implementation", None) or "eager"
    if impl == "eager":
        fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if fn is None:
            raise SpecError(f"{type(module).__name__}: no eager_attention_forward in {type(module).__module__}")
        return fn, False
    if impl not in ALL_ATTENTION_FUNCTIONS:
        raise SpecError(f"attention implementation {impl!r} is not supported for head-level sites")
    return ALL_ATTENTION_FUNCTIONS[impl], impl == "sdpa"


# ---- attach / detach ------------------------------------------------------------------------------
def attached_plan(model: nn.Module) -> Plan | None:
    st = getattr(model, _STATE, None)
    return st.plan if st is not None else None


def _check_plan(model, plan: Plan) -> None:
    dims = dims_from_config(model.config).to_dict()
    want = {k: v for k, v in plan.arch.items() if k in dims}
    diff = {k: (want[k], dims[k]) for k in want if want[k] != dims[k]}
    if diff:
        detail = ", ".join(f"{k}: plan {a!r} vs model {b!r}" for k, (a, b) in diff.items())
        raise PlanMismatch(f"this plan was made for another architecture ({detail}); make a new plan for this model "
                           f"with ps.plan(model, ...)")


def attach(model: nn.Module, plan: Plan, *, train_head: bool | None = None, seed: int = 0) -> nn.Module:
    """Attach every entry of `plan` to `model` (in place) and freeze everything else.

    `train_head`: also train the parameters outside the backbone (a task head); default: yes when the
    model has a task head that is not a pretrained LM head. Returns the same model.
    """
    if getattr(model, _STATE, None) is not None:
        raise SpecError("a plan is already attached to this model; ps.detach(model) first")
    _check_plan(model, plan)
    arch = arch_for(model)
    dims = dims_from_config(model.config)
    g = torch.Generator().manual_seed(seed)
    ref = next(model.parameters())
    st = _State(plan=plan, requires_grad={n: p.requires_grad for n, p in model.named_parameters()})
    object.__setattr__(model, _STATE, st)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for entry in plan.entries:
            if entry.layer == STACK_LEVEL:
                owner = stack_module(model, entry.stack)
                insts = instances(entry.spec, arch, dims, entry.stack, layer_level=False)
            else:
                owner = layers_of(model, entry.stack)[entry.layer]
                insts = instances(entry.spec, arch, dims, entry.stack)
            group = _container(owner, st)
            sub = nn.ModuleDict()
            group[entry.spec.name] = sub
            for inst in insts:
                delta = _build(entry.spec, inst, dims, g, model)
                delta.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
                sub[inst.key] = delta
                _install(model, arch, owner, inst, delta, st, entry)
        for n, p in model.named_parameters():
            if ".peftspace." in f".{n}":
                p.requires_grad_(True)
        if train_head is None:
            train_head = _has_task_head(model)
        if train_head:
            for n, p in _head_parameters(model):
                p.requires_grad_(True)
    except Exception:
        detach(model)
        raise
    return model


def _container(owner: nn.Module, st: _State) -> nn.ModuleDict:
    if not hasattr(owner, "peftspace"):
        owner.add_module("peftspace", nn.ModuleDict())
        st.containers.append((owner, "peftspace"))
    return owner.peftspace


def _build(spec, inst: SiteInstance, dims, g, model) -> Delta:
    f = spec.form
    if f == "lora":
        return LowRank(spec, inst.x_dim, inst.h_dim, g)
    if f == "bias":
        return BiasDelta(spec, inst.h_dim, g)
    if f == "bottleneck" and inst.site == "attn.heads":
        return HeadBottleneck(spec, dims.n_heads, dims.d_head, g)
    if f == "bottleneck":
        return Bottleneck(spec, inst.x_dim, inst.h_dim, g)
    if f == "prefix":
        return Prefix(spec, dims.n_kv_heads, dims.d_head, dims.d_model, g)
    if f == "prompt":
        emb = model.get_input_embeddings()
        return Prompt(spec, dims.d_model, g, init_from=getattr(emb, "weight", None))
    raise SpecError(f"unknown form {f!r}")


def _out_slice(module: nn.Module, part) -> slice | None:
    if part is None:
        return None
    n_out = module.weight.shape[1] if type(module).__name__ == "Conv1D" else module.weight.shape[0]
    w = n_out // part[1]
    return slice(part[0] * w, (part[0] + 1) * w)


def _install(model, arch: Arch, layer: nn.Module, inst: SiteInstance, delta: Delta, st: _State, entry) -> None:
    spec = delta.spec
    if inst.site == "embed":
        _install_prompt(model, arch, layer, delta, st)
        return
    if inst.site == "attn.heads":
        attn = get_module(layer, arch.attn[inst.kind].module)
        if not hasattr(attn, "_peftspace_heads"):
            base, is_bool = _base_attention(attn)
            attn.__dict__["_peftspace_heads"] = []
            attn.__dict__["_peftspace_base_attn"] = base
            attn.__dict__["_peftspace_mask_is_bool"] = is_bool
            attn.__dict__["_peftspace_sdpa"] = is_bool  # _base_attention: bool masks ⇔ the SDPA implementation
            original = attn.config
            view = copy.copy(original)
            view.__dict__["_attn_implementation_internal"] = ATTN_NAME
            attn.config = view
            st.patched_attn.append((attn, original))
        attn._peftspace_heads.append(delta)
        return
    if inst.site in ("attn", "ffn"):
        proj = (arch.attn[inst.kind].o if inst.site == "attn" else arch.ffn.out)[0]
        target = get_module(layer, proj.path)
        if spec.insertion == "sequential":
            st.handles.append(target.register_forward_hook(_sequential_hook(delta, None)))
            return
        src = get_module(layer, arch.attn[inst.kind].module if inst.site == "attn" else arch.ffn.x)
        box: dict[str, Any] = {}
        st.handles.append(src.register_forward_pre_hook(_capture_hook(box), with_kwargs=True))
        st.handles.append(target.register_forward_hook(_block_parallel_hook(delta, box)))
        return
    proj = linear_projs(arch, inst.kind or "self", inst.site, layer)[inst.proj]
    target = get_module(layer, proj.path)
    sl = _out_slice(target, proj.part)
    st.targets[id(delta)] = (target, sl)
    if spec.insertion == "sequential":
        st.handles.append(target.register_forward_hook(_sequential_hook(delta, sl)))
    elif (sl is None and isinstance(delta, (LowRank, BiasDelta)) and type(target) is nn.Linear
          and "forward" not in vars(target)):
        # The projection and its low-rank or bias Δh as one autograd node (forms.LowRank / BiasDelta
        # .linear_forward): the forward is replaced (hooks still run around it) and restored by detach. A
        # second Δh on it takes a hook.
        target.forward = _fused_linear_forward(target, delta)
        st.forwards.append(target)
    else:
        st.handles.append(target.register_forward_hook(_linear_parallel_hook(delta, sl)))


def _splice(out: torch.Tensor, sl: slice | None, new: torch.Tensor) -> torch.Tensor:
    if sl is None:
        return new
    return torch.cat([out[..., : sl.start], new, out[..., sl.stop:]], dim=-1)


def _fused_linear_forward(linear: nn.Linear, delta: LowRank | BiasDelta):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if delta.merged:
            return F.linear(x, linear.weight, linear.bias)
        if delta.fuses_with(linear):
            return delta.linear_forward(linear, x)
        return delta.composed(F.linear(x, linear.weight, linear.bias), x)  # dropout, learned scale, gate

    return forward


def _linear_parallel_hook(delta: Delta, sl: slice | None):
    def hook(mod, args, out):
        if delta.merged:
            return None
        x = args[0]
        if sl is None:
            return delta.composed(out, x)  # fused h + s·Δh(x) where the form allows (forms.py)
        return _splice(out, sl, delta.compose(out[..., sl], delta.delta(x), x))

    return hook


def _sequential_hook(delta: Delta, sl: slice | None):
    def hook(mod, args, out):
        if sl is None:
            if isinstance(delta, Bottleneck) and args:  # down-projection of h = mod(args[0]): see forms._down_through
                return delta.composed(out, out, source=(mod, args[0]))
            return delta.composed(out, out)
        h = out[..., sl]
        return _splice(out, sl, delta.compose(h, delta.delta(h), h))

    return hook


def _capture_hook(box: dict):
    def pre(mod, args, kwargs):
        box["x"] = args[0] if args else kwargs["hidden_states"]

    return pre


def _block_parallel_hook(delta: Delta, box: dict):
    def hook(mod, args, out):
        x = box.pop("x")
        return delta.composed(out, x)

    return hook


def _install_prompt(model, arch: Arch, stack: nn.Module, delta: Prompt, st: _State) -> None:
    sig = inspect.signature(stack.forward)
    off, L = arch.prompt_offset, delta.prompt.shape[0]
    state = {"strip": False}

    def pre(mod, args, kwargs):
        ba = sig.bind(*args, **kwargs)
        a: dict[str, Any] = {}
        for name, val in ba.arguments.items():
            if sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                a.update(val)
            else:
                a[name] = val
        past = a.get("cache", a.get("past_key_values"))  # transformers >= 5.24 calls it `cache`
        past_len = past.get_seq_length() if past is not None and hasattr(past, "get_seq_length") else 0
        mask = a.get("attention_mask")
        if past_len == 0:
            emb = a.get("inputs_embeds")
            if emb is None:
                emb = mod.get_input_embeddings()(a["input_ids"])
            B = emb.shape[0]
            p = delta.prompt.to(emb.dtype).unsqueeze(0).expand(B, -1, -1)
            a["inputs_embeds"] = torch.cat([emb[:, :off], p, emb[:, off:]], dim=1)  # (B, T+l, d)
            a["input_ids"] = None
            if mask is not None and mask.dim() == 2:
                ones = mask.new_ones(B, L)
                a["attention_mask"] = torch.cat([mask[:, :off], ones, mask[:, off:]], dim=1)
            tt = a.get("token_type_ids")
            if tt is not None:
                a["token_type_ids"] = torch.cat([tt[:, :off], tt.new_zeros(B, L), tt[:, off:]], dim=1)
            pos = a.get("position_ids")
            if pos is not None:  # prompt at positions off..off+l-1; the tokens after it shift by l
                ar = torch.arange(off, off + L, device=pos.device, dtype=pos.dtype).expand(pos.shape[0], L)
                a["position_ids"] = torch.cat([pos[:, :off], ar, pos[:, off:] + L], dim=1)
            if "cache_position" in a:
                a["cache_position"] = None
            state["strip"] = True
        else:  # generation continues from a cache that already holds the prompt
            T = (a.get("input_ids") if a.get("input_ids") is not None else a["inputs_embeds"]).shape[1]
            if mask is not None and mask.dim() == 2 and mask.shape[1] + L == past_len + T:
                a["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], L), mask], dim=1)
            for k in ("cache_position", "position_ids"):
                if a.get(k) is not None:
                    a[k] = a[k] + L
            state["strip"] = False
        return (), a

    def post(mod, args, kwargs, out):
        if state["strip"]:
            h = out.last_hidden_state
            out.last_hidden_state = torch.cat([h[:, :off], h[:, off + L:]], dim=1)
        return out

    st.handles.append(stack.register_forward_pre_hook(pre, with_kwargs=True))
    st.handles.append(stack.register_forward_hook(post, with_kwargs=True))


def _base_prefix(model) -> str:
    base = model.base_model
    if base is model:
        return ""
    for n, m in model.named_children():
        if m is base:
            return n + "."
    return ""


def _has_task_head(model) -> bool:
    names = type(model).__name__
    return any(k in names for k in ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering"))


def _head_parameters(model):
    prefix = _base_prefix(model)
    if not prefix:  # T5ForConditionalGeneration and similar: the LM head is pretrained, not a task head
        if _has_task_head(model):
            return [(n, p) for n, p in model.named_parameters() if n.startswith(("classification_head", "score", "classifier"))]
        return []
    return [(n, p) for n, p in model.named_parameters() if not n.startswith(prefix) and ".peftspace." not in f".{n}"]


def delta_named_parameters(model) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if ".peftspace." in f".{n}"]


def trainable_named_parameters(model) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def detach(model: nn.Module) -> nn.Module:
    """Remove everything `attach` added; the model is then bit-identical to before."""
    st: _State | None = getattr(model, _STATE, None)
    if st is None:
        return model
    unmerge(model)
    for h in st.handles:
        h.remove()
    for linear in st.forwards:
        vars(linear).pop("forward", None)
    for attn, original in st.patched_attn:
        attn.config = original
        for k in ("_peftspace_heads", "_peftspace_base_attn", "_peftspace_mask_is_bool", "_peftspace_sdpa",
                  "_peftspace_prefix_blocks"):
            attn.__dict__.pop(k, None)
    for owner, name in st.containers:
        if hasattr(owner, name):
            delattr(owner, name)
    for n, p in model.named_parameters():
        if n in st.requires_grad:
            p.requires_grad_(st.requires_grad[n])
    object.__delattr__(model, _STATE)
    return model


# ---- merge ----------------------------------------------------------------------------------------
def _deltas(model) -> list[Delta]:
    return [m for m in model.modules() if isinstance(m, Delta)]


@torch.no_grad()
def merge(model: nn.Module) -> int:
    """Fold LoRA-type (add/scale/learned) and bias Δh into the frozen weights; materialise prefix MLPs.

    Returns how many Δh modules were merged. Others (adapters, prefixes, prompts) stay as hooks.
    The original weights are kept so `unmerge` restores them bit-exactly.
    """
    st: _State | None = getattr(model, _STATE, None)
    if st is None:
        raise SpecError("no plan is attached to this model")
    n = 0
    for d in _deltas(model):
        if isinstance(d, Prefix):
            d.materialize()
            continue
        if d.merged or not isinstance(d, (LowRank, BiasDelta)) or d.composition == "gate":
            continue
        target, sl = st.targets[id(d)]
        saved_w = target.weight.data.clone()
        saved_b = target.bias.data.clone() if getattr(target, "bias", None) is not None else _NO_BIAS
        conv1d = type(target).__name__ == "Conv1D"
        rows = sl if sl is not None else slice(None)
        if isinstance(d, LowRank):
            dw = d.weight_delta().to(target.weight.dtype)  # (out, in)
            if conv1d:
                target.weight.data[:, rows] += dw.T
            else:
                target.weight.data[rows] += dw
        else:
            if getattr(target, "bias", None) is None:
                n_out = target.weight.shape[1] if conv1d else target.weight.shape[0]
                target.bias = nn.Parameter(torch.zeros(n_out, dtype=target.weight.dtype, device=target.weight.device),
                                           requires_grad=False)
            target.bias.data[rows] += d.delta_bias.to(target.bias.dtype)
        st.merged.append((d, target, saved_w, saved_b))
        d.merged = True
        n += 1
    return n


@torch.no_grad()
def unmerge(model: nn.Module) -> int:
    st: _State | None = getattr(model, _STATE, None)
    if st is None:
        return 0
    for d, target, saved_w, saved_b in reversed(st.merged):
        target.weight.data.copy_(saved_w)
        if saved_b is _NO_BIAS:
            target.bias = None
        else:
            target.bias.data.copy_(saved_b)
        d.merged = False
    n = len(st.merged)
    st.merged.clear()
    return n
