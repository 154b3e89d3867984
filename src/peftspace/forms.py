"""Functional forms of Δh (He et al. 2022, Table 1) as small modules that know nothing of Hugging Face.

Each module computes Δh from its input and composes it with h (`compose`; `composed` does both, fused
where the form allows). Shapes are in trailing comments: B batch, T tokens, H heads, D head width,
d/x/h feature widths, r bottleneck, l prefix length.
Initialisation follows He et al. §A.3: "lora" = Kaiming-uniform down-projection, zero up-projection
(so attaching leaves outputs unchanged); "bert" = N(0, 0.02) for both.

Speed (bench/step_time.py, issue 6): an up-projection stored as (out, r) — `lora_B`, `nn.Linear(r, out)`
— makes autograd compute its weight gradient as gᵀ·z, an (out, N)·(N, r) product that CPU BLAS runs
~5x slower than the transposed zᵀ·g; `_rows` hands the GEMM a row-major (r, out) copy (r·out numbers)
so the gradient comes out in the fast orientation, and add/scale compositions fold "h + s·Δh" into the
same GEMM (`torch.addmm`), saving two passes over (N, out) in the forward and one in the backward. LoRA
on a plain frozen nn.Linear goes further: the projection and its Δh are one autograd node, either with the
merged weight W + s·B·A, one GEMM each way, or unmerged with the low-rank terms added in place into the
projection's output and input gradient (`_LoRALinear`), whichever moves fewer bytes for
the number of tokens (`LowRank.merges`); only A's and B's gradients take (N, r) products. Those (N, r)-wide
products, and down-projections, run in the orientation CPU BLAS is faster at for their r (`_thin`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .spec import DeltaSpec

_ACTS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "silu": F.silu, "identity": lambda t: t}


def _kaiming(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    # nn.Linear's default: Kaiming-uniform with a=√5, i.e. U(−1/√fan_in, 1/√fan_in).
    return nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=g)


_MKL = torch.backends.mkl.is_available()


def _thin_transposed(r: int, x: torch.Tensor) -> bool:
    """Whether x·wᵀ for a narrow w (r, k) runs faster as (w·xᵀ)ᵀ on this device (see `_thin`).

    Measured with MKL on 2 cores, N ∈ {512, 1024, 2048} tokens × k ∈ {384 … 3072} (bench/README):
    for r ∈ {5, 6, 8, 10, 15, 30} the (r, k)·(k, N) orientation is 1.2–1.7x faster than (N, k)·(k, r),
    for r = 16, 24, 32, 48, 64 or r ≤ 4 it is 0.6–0.95x, for r = 12, 18, 20 within noise. A fixed rule,
    not a per-process timing, so that which one runs — and so the float rounding — does not vary between
    runs of the same seed. Only where PyTorch's CPU BLAS is MKL: other libraries were not measured."""
    return x.device.type == "cpu" and _MKL and 5 <= r < 32 and (r % 4 != 0 or r == 8)


def _thin(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x·wᵀ + bias for a narrow w (r, k): (…, k) → (…, r), in the orientation `_thin_transposed` picks.

    The transposed orientation returns a column-major result (a view of an (r, N) tensor). Autograd keeps
    to that layout downstream: an up-projection a·W taking it as mat1 computes its input gradient as
    (W·gᵀ)ᵀ, the same fast orientation, and this product's own gradients are plain row-major GEMMs."""
    r = w.shape[0]
    if x.dim() < 2 or not _thin_transposed(r, x) or not w.is_contiguous():
        return F.linear(x, w, bias)
    xt = _flat(x).t()  # (k, N)
    out = torch.mm(w, xt) if bias is None else torch.addmm(bias.unsqueeze(1), w, xt)  # (r, N)
    return out.t().view(*x.shape[:-1], r)


def _rows(w: torch.Tensor) -> torch.Tensor:
    """wᵀ as a row-major (in, out) matrix: the right operand of x·wᵀ whose gradient is xᵀ·g (fast)."""
    return w.t().contiguous()


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])  # (..., n) → (N, n); a view for the contiguous outputs of projections


def _top_saved_hooks():
    fn = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return True if fn is None else fn(False)  # unknown torch: behave as if hooks were active


def _recipe(x: torch.Tensor):
    """How to recompute x from tensors autograd already keeps for the op that made it, or None.

    A low-rank down-projection x·Aᵀ must keep its input x for A's gradient. When x is the output of an
    activation (BERT/RoBERTa/BART's GELU before the FFN's output projection) or of a product (LLaMA's
    act(gate)·up, GPT-2's tanh GELU), the op that made x already keeps its inputs, and x is a pure
    function of them: keeping those (the same storages: no bytes) and recomputing x in backward saves a
    (tokens × d_ff) tensor per layer. Not used under saved-tensor hooks (checkpointing, offloading), where
    what autograd keeps is not the tensor itself."""
    fn = x.grad_fn
    if fn is None or _top_saved_hooks() is not None:
        return None
    try:
        name = type(fn).__name__
        if name == "GeluBackward0":
            approx = fn._saved_approximate
            return (fn._saved_self,), lambda a: F.gelu(a, approximate=approx)
        if name == "SiluBackward0":
            return (fn._saved_self,), F.silu
        if name == "MulBackward0":
            a, b = fn._saved_self, fn._saved_other
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape == x.shape:
                return (a, b), torch.mul
    except RuntimeError:  # a saved tensor already freed or not available: keep x
        return None
    return None


class _DownRecomputed(torch.autograd.Function):
    """z = x·Aᵀ keeping the inputs of the op that made x instead of x (see `_recipe`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, fn, *sources: torch.Tensor) -> torch.Tensor:
        ctx.fn = fn
        ctx.save_for_backward(weight, *sources)
        return _thin(x, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, *sources = ctx.saved_tensors
        g_x = g_w = None
        if ctx.needs_input_grad[0]:
            g_x = torch.matmul(grad, weight)
        if ctx.needs_input_grad[1]:
            x = ctx.fn(*sources)
            g_w = _flat(grad).t().mm(_flat(x))  # (r, N)·(N, in)
        return (g_x, g_w, None) + (None,) * len(sources)


def _lora_unmerged(x, weight, bias, A, B, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x·Wᵀ + b + α·v·Bᵀ, v) with v = x·Aᵀ; the low-rank term is added in place into the projection's
    output."""
    v = _thin(x, A)  # (…, r)
    y = F.linear(x, weight, bias)  # (…, out), a fresh tensor
    _flat(y).addmm_(_flat(v), B.t(), alpha=alpha)
    return y, v


class _LoRALinear(torch.autograd.Function):
    """y = x·(W + α·B·A)ᵀ + b: a frozen projection and its low-rank Δh as one autograd node, in one of two
    forms (`LowRank.merges` picks the one that moves fewer bytes for the number of tokens):

    - merged: the forward and the input gradient use W + α·B·A (α·B·A costs out·in·r, nothing next to
      N·out·in), one GEMM each way, rebuilt in backward rather than kept; A's and B's gradients come from
      the (N, r) products u = g·B and v = x·Aᵀ.
    - unmerged: v = x·Aᵀ is kept (N × r), α·v·Bᵀ added in place into the projection's own output and, in
      the backward, α·u·A into its input gradient; x is then read once, for A's gradient.

    Against autograd's unmerged graph either form saves the separate (N, out) output of h + s·Δh and, in
    the backward, the (N, in) low-rank input gradient and its sum with the frozen path's. Keeps x (or, where
    `_recipe` applies, the inputs x is recomputed from)."""

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, alpha: float, merge: bool, fn, *sources):
        ctx.alpha, ctx.merge, ctx.fn, ctx.n_sources = alpha, merge, fn, len(sources)
        if merge:
            y, kept = F.linear(x, torch.addmm(weight, B, A, alpha=alpha), bias), ()
        else:
            y, v = _lora_unmerged(x, weight, bias, A, B, alpha)
            kept = (v,)
        ctx.save_for_backward(weight, A, B, *kept, *(sources if fn is not None else (x,)))
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, A, B, *rest = ctx.saved_tensors
        v = None if ctx.merge else rest.pop(0)
        need, alpha = ctx.needs_input_grad, ctx.alpha
        gf = _flat(grad)  # (N, out)
        g_x = g_b = g_A = g_B = None
        u = _thin(gf, B.t().contiguous()) if need[3] or (need[0] and v is not None) else None  # g·B: (N, r)
        if need[0]:
            if v is None:
                g_x = torch.matmul(grad, torch.addmm(weight, B, A, alpha=alpha))  # (…, out)·(out, in)
            else:
                g_x = torch.matmul(grad, weight)
                _flat(g_x).addmm_(u, A, alpha=alpha)
        if need[2]:
            g_b = gf.sum(0)
        xf = None
        if need[3] or (need[4] and v is None):
            xf = _flat(ctx.fn(*rest) if ctx.fn is not None else rest[0])  # (N, in)
        if need[3]:
            g_A = u.t().mm(xf).mul_(alpha)  # α·(g·B)ᵀ·x: (r, N)·(N, in)
        if need[4]:
            v = _thin(xf, A) if v is None else _flat(v)
            g_B = v.t().mm(gf).t().mul_(alpha)  # α·gᵀ·v, taken as (vᵀ·g)ᵀ: the fast orientation
        return (g_x, None, g_b, g_A, g_B, None, None, None) + (None,) * ctx.n_sources


def _down(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x·Aᵀ, recomputing x in backward when it is a cheap function of tensors autograd keeps anyway."""
    if torch.is_grad_enabled() and weight.requires_grad:
        recipe = _recipe(x)
        if recipe is not None:
            sources, fn = recipe
            return _DownRecomputed.apply(x, weight, fn, *(t.detach() for t in sources))
    return _thin(x, weight)


_VIEWS = ("ViewBackward0", "UnsafeViewBackward0", "TransposeBackward0", "ReshapeAliasBackward0", "AliasBackward0",
          "PermuteBackward0", "ExpandBackward0", "AsStridedBackward0")


def _kept(t: torch.Tensor) -> bool:
    """Whether the op that made t (seen through views of it) keeps t's storage for its own backward, as
    SDPA's CPU flash kernel keeps its output, which is the attention's output projection's input."""
    fn, ptr = t.grad_fn, t.untyped_storage().data_ptr()
    for _ in range(8):
        if fn is None:
            return False
        for attr in dir(fn):
            if attr.startswith("_saved_"):
                try:
                    v = getattr(fn, attr)
                except RuntimeError:
                    continue
                if isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() == ptr:
                    return True
        if type(fn).__name__ not in _VIEWS:
            return False
        fn = fn.next_functions[0][0]
    return False


class _DownThrough(torch.autograd.Function):
    """z = h·W_dnᵀ + b_dn where h = a·W + b is the output of a frozen projection (W as (in, out)): W_dn's
    gradient gᵀ·h = (gᵀ·a)·W + (gᵀ·1)·b needs a, which autograd keeps anyway (SDPA's CPU flash kernel keeps
    its output, the attention's output projection's input), instead of h, which nothing else keeps."""

    @staticmethod
    def forward(ctx, h, w_dn, b_dn, w_prev, b_prev, a):
        ctx.has_b_prev = b_prev is not None
        ctx.save_for_backward(w_dn, w_prev, a, *((b_prev,) if b_prev is not None else ()))
        return _thin(h, w_dn, b_dn)

    @staticmethod
    def backward(ctx, grad):
        w_dn, w_prev, a, *rest = ctx.saved_tensors
        b_prev = rest[0] if ctx.has_b_prev else None
        gf = _flat(grad)  # (N, r)
        g_h = torch.matmul(grad, w_dn) if ctx.needs_input_grad[0] else None
        g_w = g_b = None
        if ctx.needs_input_grad[1]:
            g_w = gf.t().mm(_flat(a)).mm(w_prev)  # (r, N)·(N, in)·(in, out)
            if b_prev is not None:
                g_w = g_w.addr_(gf.sum(0), b_prev)
        if ctx.needs_input_grad[2]:
            g_b = gf.sum(0)
        return g_h, g_w, g_b, None, None, None


def _down_through(h: torch.Tensor, down: nn.Linear, prev: nn.Module, a: torch.Tensor) -> torch.Tensor | None:
    """down(h) for h = prev(a), keeping a instead of h where a is kept anyway; None where that does not apply."""
    if not (torch.is_grad_enabled() and down.weight.requires_grad) or _top_saved_hooks() is not None:
        return None
    w = getattr(prev, "weight", None)
    if not isinstance(w, torch.Tensor) or w.requires_grad or (getattr(prev, "bias", None) is not None
                                                               and prev.bias.requires_grad):
        return None
    if isinstance(prev, nn.Linear):
        w_prev = w.t()  # (in, out)
    elif type(prev).__name__ == "Conv1D":  # GPT-2: x·W + b with W (in, out)
        w_prev = w
    else:
        return None
    if a.shape[:-1] != h.shape[:-1] or a.shape[-1] != w_prev.shape[0]:
        return None
    if not _kept(a):
        # Recomputing a (act(pre) before a FFN's output projection) would also work, but measured it costs
        # more time than keeping h saves memory (bert-base adapter r=48: 1.045 vs 1.014 x floor for 2.5%
        # of the peak; LLaMA shape: 1.025 vs 0.997), and the (r, N)·(N, d_ff) product is 4x the one it replaces.
        return None
    return _DownThrough.apply(h, down.weight, down.bias, w_prev, prev.bias, a.detach())


def _init_pair(spec: DeltaSpec, down: torch.Tensor, up: torch.Tensor, g: torch.Generator) -> None:
    if spec.init == "lora":
        _kaiming(down, g)
        nn.init.zeros_(up)
    else:
        nn.init.normal_(down, 0.0, 0.02, generator=g)
        nn.init.normal_(up, 0.0, 0.02, generator=g)


class Delta(nn.Module):
    """Base: holds the composition function's parameters (He et al. §3.2, 'composition')."""

    def __init__(self, spec: DeltaSpec, x_dim: int):
        super().__init__()
        self.spec = spec
        self.composition = spec.composition
        self.s = spec.s
        self.merged = False
        self.drop = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        if spec.composition == "learned":
            self.scale = nn.Parameter(torch.tensor(float(spec.s)))
        if spec.composition == "gate" and spec.form != "prefix":
            self.gate = nn.Linear(x_dim, 1)  # λ(x) = σ(x·w_g + b_g)

    def compose(self, h: torch.Tensor, delta: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        c = self.composition
        if c == "add":
            return h + delta
        if c == "scale":
            return h + self.s * delta
        if c == "learned":
            return h + self.scale * delta
        lam = torch.sigmoid(self.gate(x))  # (..., 1)
        return h + lam * (delta - h)  # (1−λ)·h + λ·Δh, Eq. 10

    def composed(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """compose(h, Δh(x), x); forms override it with a fused path where they can."""
        return self.compose(h, self.delta(x), x)

    def _alpha(self) -> float | None:
        """s of an add/scale composition (a constant to fold into a GEMM), else None."""
        return {"add": 1.0, "scale": self.s}.get(self.composition)

    def extra_repr(self) -> str:
        return self.spec.describe()


class LowRank(Delta):
    """LoRA, Eq. 6:  h ← h + s·x·W_down·W_up.  lora_A = W_downᵀ (r, in), lora_B = W_upᵀ (out, r)."""

    def __init__(self, spec: DeltaSpec, fin: int, fout: int, g: torch.Generator):
        super().__init__(spec, fin)
        self.lora_A = nn.Parameter(torch.empty(spec.size, fin))
        self.lora_B = nn.Parameter(torch.empty(fout, spec.size))
        _init_pair(spec, self.lora_A, self.lora_B, g)

    def _z(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.drop, nn.Identity) or not self.training:
            return _down(x, self.lora_A)  # (B, T, in) → (B, T, r)
        return _thin(self.drop(x), self.lora_A)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self._z(x), _rows(self.lora_B))  # (B, T, r) · (r, out) → (B, T, out)

    def composed(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        alpha = self._alpha()
        if alpha is None or not h.is_contiguous():
            return super().composed(h, x)
        z = self._z(x)  # (B, T, r)
        # h + s·z·W_up in one GEMM: (N, out) + s·(N, r)·(r, out)
        return torch.addmm(_flat(h), _flat(z), _rows(self.lora_B), alpha=alpha).view(h.shape)

    def fuses_with(self, linear: nn.Module) -> bool:
        """Whether `linear_forward` can run `linear` and this Δh as one autograd node: an add/scale
        composition on a plain frozen nn.Linear, with LoRA dropout (on the Δh branch only) off or not
        training. Whether that node merges the weight or not is `merges`."""
        return (type(linear) is nn.Linear and not linear.weight.requires_grad and self._alpha() is not None
                and (isinstance(self.drop, nn.Identity) or not self.training))

    def merges(self, linear: nn.Linear, x: torch.Tensor) -> bool:
        """Whether `_LoRALinear`'s merged form moves fewer bytes than its unmerged one for x's N = tokens.
        Memory traffic, in numbers, beyond the frozen projection's own products:

        - merged: building W + s·B·A copies W (read + write out·in) and updates the copy in place (the same
          again): 4·out·in, once in the forward and once in the backward; the backward's (N, r) products
          read x twice and g twice: 8·out·in + 2·N·(in + out).
        - unmerged: v = x·Aᵀ reads x; s·v·Bᵀ is added in place into the projection's output (read + write
          N·out); the backward adds s·(g·B)·A in place into the input gradient (2·N·in), reads g for g·B and
          for B's gradient and x for A's: 4·N·(in + out).

        So merging pays when 4·out·in < N·(in + out), and without grad (merged 4·out·in; unmerged N·in +
        2·N·out) when 4·out·in < N·(in + 2·out). The MiniLM-shaped batch (N = 2048) merges everywhere; the
        LLaMA-shaped FFN (576 ↔ 1536 at N = 1024) and BERT-base's projections at N = 512 do not.
        (Counting the copy as free, as an earlier version of this rule did, merged LLaMA's FFN: measured in one
        process, 30 interleaved repetitions, LoRA-FFN r=8 1.035-1.043 × floor merged, 1.030 unmerged.)"""
        out, fin = linear.weight.shape
        n = x.numel() // max(1, x.shape[-1])
        if torch.is_grad_enabled():
            return 4 * out * fin < n * (fin + out)
        return 4 * out * fin < n * (fin + 2 * out)

    def linear_forward(self, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """linear(x) + s·Δh(x) as one autograd node (`_LoRALinear`), merged or not as `merges` says."""
        alpha = self._alpha()
        merge = self.merges(linear, x)
        if not (torch.is_grad_enabled() and (self.lora_A.requires_grad or self.lora_B.requires_grad)):
            if merge:
                return F.linear(x, torch.addmm(linear.weight, self.lora_B, self.lora_A, alpha=alpha), linear.bias)
            return _lora_unmerged(x, linear.weight, linear.bias, self.lora_A, self.lora_B, alpha)[0]
        recipe = _recipe(x) if self.lora_A.requires_grad else None
        fn, sources = (None, ()) if recipe is None else (recipe[1], tuple(t.detach() for t in recipe[0]))
        return _LoRALinear.apply(x, linear.weight, linear.bias, self.lora_A, self.lora_B, alpha, merge, fn, *sources)

    def weight_delta(self) -> torch.Tensor:
        """ΔW (out, in) such that merging W += ΔW reproduces the composed output (add/scale/learned)."""
        s = {"add": 1.0, "scale": self.s}.get(self.composition)
        s = self.scale.detach() if s is None else s
        return s * (self.lora_B @ self.lora_A)


class Bottleneck(Delta):
    """Adapter, Eq. 4:  Δh = f(x·W_down + b_down)·W_up + b_up  (x = h for sequential insertion)."""

    def __init__(self, spec: DeltaSpec, x_dim: int, h_dim: int, g: torch.Generator):
        super().__init__(spec, x_dim)
        self.down = nn.Linear(x_dim, spec.size, bias=spec.bias)
        self.up = nn.Linear(spec.size, h_dim, bias=spec.bias)
        _init_pair(spec, self.down.weight, self.up.weight, g)
        if spec.bias:
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.bias)
        self.act = _ACTS[spec.act]

    def _z(self, x: torch.Tensor, source=None) -> torch.Tensor:
        """down(x); `source` = (projection, its input) when x is that frozen projection's output (sequential
        insertion), so backward can keep the input instead of x (`_down_through`)."""
        if source is not None and (isinstance(self.drop, nn.Identity) or not self.training):
            z = _down_through(x, self.down, *source)
            if z is not None:
                return z
        return _thin(self.drop(x), self.down.weight, self.down.bias)  # down's tensors, not its call (as _down_through)

    def delta(self, x: torch.Tensor, source=None) -> torch.Tensor:
        a = self.act(self._z(x, source))  # (B, T, x) → (B, T, r)
        if self.up.bias is None:
            return torch.matmul(a, _rows(self.up.weight))  # (B, T, r) · (r, h) → (B, T, h)
        return torch.addmm(self.up.bias, _flat(a), _rows(self.up.weight)).view(*a.shape[:-1], -1)

    def composed(self, h: torch.Tensor, x: torch.Tensor, source=None) -> torch.Tensor:
        alpha = self._alpha()
        if alpha is None or not h.is_contiguous():
            return self.compose(h, self.delta(x, source), x)
        a = self.act(self._z(x, source))  # (B, T, r)
        out = torch.addmm(_flat(h), _flat(a), _rows(self.up.weight), alpha=alpha)  # h + s·a·W_up: (N, h)
        if self.up.bias is not None:
            out = out.add_(self.up.bias, alpha=alpha)  # in place on the fresh GEMM output (not saved by autograd)
        return out.view(h.shape)


class HeadBottleneck(Delta):
    """Multi-head parallel adapter (He et al. §3.3): per head i, Δh⁽ⁱ⁾ = f(x·W_q⁽ⁱ⁾·W_down⁽ⁱ⁾)·W_up⁽ⁱ⁾,
    read from the head's query (the same input prefix tuning uses) and added to the head's output."""

    def __init__(self, spec: DeltaSpec, n_heads: int, d_head: int, g: torch.Generator):
        super().__init__(spec, d_head)
        self.W_down = nn.Parameter(torch.empty(n_heads, d_head, spec.size))
        self.W_up = nn.Parameter(torch.empty(n_heads, spec.size, d_head))
        for i in range(n_heads):
            _init_pair(spec, self.W_down.data[i].T, self.W_up.data[i].T, g)
        if spec.bias:
            self.b_down = nn.Parameter(torch.zeros(n_heads, 1, spec.size))
            self.b_up = nn.Parameter(torch.zeros(n_heads, 1, d_head))
        self.act = _ACTS[spec.act]

    def _per_head(self, q: torch.Tensor) -> torch.Tensor:
        # One GEMM per head over all B·T rows (not one per (batch, head) against a broadcast copy of W).
        B, H, T, D = q.shape
        qh = self.drop(q).transpose(0, 1).reshape(H, B * T, D)  # (H, B·T, D)
        z = torch.baddbmm(self.b_down, qh, self.W_down) if self.spec.bias else torch.bmm(qh, self.W_down)
        z = self.act(z)  # (H, B·T, r)
        z = torch.baddbmm(self.b_up, z, self.W_up) if self.spec.bias else torch.bmm(z, self.W_up)
        return z.view(H, B, T, D)  # (H, B, T, D)

    def delta(self, q: torch.Tensor) -> torch.Tensor:
        return self._per_head(q).transpose(0, 1)  # (B, H, T, D) @ (H, D, r) … @ (H, r, D) → (B, H, T, D)

    def composed_heads(self, out: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """out (B, T, H, D) composed with Δh(q), q (B, H, T, D) the attention's query."""
        if self.composition not in ("add", "scale"):
            return self.compose(out, self.delta(q).transpose(1, 2), None)
        dh = self._per_head(q).permute(1, 2, 0, 3)  # (H, B, T, D) → (B, T, H, D)
        return out + dh if self.composition == "add" else out + self.s * dh


class Prefix(Delta):
    """Prefix tuning, Eq. 5/9: l vectors P_k, P_v (per kv head) prepended to keys and values.

    With composition 'gate' this is exactly Eq. 7: (1−λ(x))·Attn(x, C) + λ(x)·softmax(x·W_q·P_kᵀ)·P_v,
    computed by concatenation. With add/scale/learned, Δh = softmax(x·W_q·P_kᵀ)·P_v is computed on its
    own and composed without the gate (He et al. Table 4, '−gating').
    With `reparam` = m, P = MLP(E) = tanh(E·W_1 + b_1)·W_2 + b_2 (§A.3), E (l, d): training-only.
    """

    def __init__(self, spec: DeltaSpec, n_kv_heads: int, d_head: int, d_model: int, g: torch.Generator):
        super().__init__(spec, d_head)
        self.n_kv, self.d_head, self.l = n_kv_heads, d_head, spec.size
        if spec.reparam:
            self.embedding = nn.Parameter(torch.empty(spec.size, d_model).normal_(0.0, 1.0, generator=g))
            self.mlp_in = nn.Linear(d_model, spec.reparam)
            self.mlp_out = nn.Linear(spec.reparam, 2 * n_kv_heads * d_head)
            for lin in (self.mlp_in, self.mlp_out):
                _kaiming(lin.weight, g)
                nn.init.zeros_(lin.bias)
        else:
            self.prefix_k = nn.Parameter(torch.empty(n_kv_heads, spec.size, d_head).normal_(0.0, 0.02, generator=g))
            self.prefix_v = nn.Parameter(torch.empty(n_kv_heads, spec.size, d_head).normal_(0.0, 0.02, generator=g))

    def prefixes(self) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(self, "prefix_k"):
            return self.prefix_k, self.prefix_v  # (Hkv, l, D) each
        kv = self.mlp_out(torch.tanh(self.mlp_in(self.embedding)))  # (l, d) → (l, m) → (l, 2·Hkv·D)
        kv = kv.view(self.l, 2, self.n_kv, self.d_head).permute(1, 2, 0, 3)  # (2, Hkv, l, D)
        return kv[0], kv[1]

    @torch.no_grad()
    def materialize(self) -> None:
        """Replace the training-only MLP by the prefixes it produces (inference count 2·l·kv)."""
        if hasattr(self, "prefix_k"):
            return
        pk, pv = self.prefixes()
        for n in ("embedding", "mlp_in", "mlp_out"):
            delattr(self, n)
        self.prefix_k = nn.Parameter(pk.detach().clone())
        self.prefix_v = nn.Parameter(pv.detach().clone())


class BiasDelta(Delta):
    """BitFit as a Δh: a bias vector added to a projection's output; merges into (or creates) its bias."""

    def __init__(self, spec: DeltaSpec, fout: int, g: torch.Generator):
        super().__init__(spec, fout)
        self.delta_bias = nn.Parameter(torch.zeros(fout))

    def delta(self, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG002 - x unused: Δh is constant
        return self.delta_bias

    def fuses_with(self, linear: nn.Module) -> bool:
        """Whether `linear_forward` can run `linear` with this Δh inside its bias: a plain nn.Linear (the
        composition is always 'add', spec rule 'bias-composition'; dropout has nothing to drop: Δh is a
        constant)."""
        return type(linear) is nn.Linear

    def linear_forward(self, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """linear(x) + b as x·Wᵀ + (b_frozen + b): the GEMM starts from the bias (addmm) instead of a second
        pass that reads and writes the whole (N, out) output (LLaMA shape: 55 such passes a step). Backward
        is the same column sum of the output gradient that the add takes."""
        b = self.delta_bias
        if linear.bias is not None:
            b = linear.bias + b
        return F.linear(x, linear.weight, b.to(x.dtype))


class Prompt(Delta):
    """Prompt tuning (Lester et al. 2021): l vectors at the stack input; He et al. count l·d."""

    def __init__(self, spec: DeltaSpec, d_model: int, g: torch.Generator, init_from: torch.Tensor | None = None):
        super().__init__(spec, d_model)
        if init_from is not None and init_from.device.type != "meta":
            idx = torch.randint(0, init_from.shape[0], (spec.size,), generator=g)
            p = init_from.detach().float()[idx].clone()  # sampled vocabulary embeddings, as Lester et al.
        else:
            p = torch.empty(spec.size, d_model).normal_(0.0, 0.02, generator=g)
        self.prompt = nn.Parameter(p)
