"""Where a spec lands in one layer, and its closed-form parameter count there.

`instances()` expands a spec placed on a layer of a stack into site instances (one per projection,
attention kind or sub-layer it modifies). Both the counter and the attacher use it, so the analytic
count and what is attached cannot drift apart; `tests/test_counts.py` checks them against `numel()`.

Every count is affine in the size: count = a·size + b (He et al. Appendix B, Tables 10–11):
  lora (in→out)           a = in + out
  bottleneck x→h          a = x + h (+1 bias of W_down)          b = h (bias of W_up)
  multi-head bottleneck   a = H·(2·d_head (+1))                   b = H·d_head
  prefix                  a = 2·kv  (P_k, P_v; kv = kv_heads·d_head)
  bias                    b = out
  prompt                  a = d_model
  composition 'learned'   b += 1;   'gate' (non-prefix): b += x + 1  (λ = σ(x·w_g + b_g))
The prefix MLP reparameterisation (§A.3) is training-only and counted apart (`train_only`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .arch import Arch, Dims, proj_dims
from .spec import DeltaSpec, SpecError


@dataclass(frozen=True)
class SiteInstance:
    key: str  # name of the Δh module inside the layer's `peftspace.<spec>` ModuleDict
    site: str
    kind: str | None  # attention kind for attn* sites
    proj: int | None  # index of the projection behind a linear site
    x_dim: int  # input width of Δh
    h_dim: int  # width of the modified representation


@dataclass(frozen=True)
class Cost:
    a: int  # parameters per unit of size (per r or l)
    b: int  # fixed parameters
    ta: int = 0  # training-only, per unit
    tb: int = 0  # training-only, fixed

    def at(self, size: int) -> int:
        return self.a * size + self.b

    def train_only_at(self, size: int) -> int:
        return self.ta * size + self.tb if (self.ta or self.tb) else 0

    def __add__(self, o: "Cost") -> "Cost":
        return Cost(self.a + o.a, self.b + o.b, self.ta + o.ta, self.tb + o.tb)


ZERO = Cost(0, 0)


def instances(spec: DeltaSpec, arch: Arch, dims: Dims, stack: str, layer_level: bool = True) -> list[SiteInstance]:
    """Site instances of `spec` in one layer of `stack` (or, with layer_level=False, at the stack input)."""
    out: list[SiteInstance] = []
    kinds = [k for k in arch.stacks[stack].kinds if k in spec.attn_kinds]
    for site in spec.sites:
        if site == "embed":
            if not layer_level and stack == arch.prompt_stack:
                out.append(SiteInstance("embed", site, None, None, dims.d_model, dims.d_model))
            continue
        if not layer_level:
            continue
        if site.startswith("attn"):
            for kind in kinds:
                out.extend(_one(spec, site, kind, dims))
        else:
            out.extend(_one(spec, site, None, dims))
    return out


def _one(spec: DeltaSpec, site: str, kind: str | None, dims: Dims) -> list[SiteInstance]:
    base = (f"{kind}_" if kind else "") + site.replace(".", "_")
    if site == "attn.heads":
        return [SiteInstance(base, site, kind, None, dims.d_head, dims.d_head)]
    if site in ("attn", "ffn"):
        return [SiteInstance(base, site, kind, None, dims.d_model, dims.d_model)]
    res = []
    for i, (fin, fout) in enumerate(proj_dims(dims, kind or "self", site)):
        x = fin if spec.insertion == "parallel" else fout
        res.append(SiteInstance(f"{base}_{i}", site, kind, i, x, fout))
    return res


def instance_cost(spec: DeltaSpec, inst: SiteInstance, dims: Dims) -> Cost:
    f = spec.form
    if f == "lora":
        c = Cost(inst.x_dim + inst.h_dim, 0)
    elif f == "bottleneck" and inst.site == "attn.heads":
        H = dims.n_heads
        c = Cost(H * (2 * dims.d_head + int(spec.bias)), H * dims.d_head * int(spec.bias))
    elif f == "bottleneck":
        c = Cost(inst.x_dim + inst.h_dim + int(spec.bias), inst.h_dim * int(spec.bias))
    elif f == "prefix":
        c = Cost(2 * dims.kv, 0)
        if spec.reparam:
            m = spec.reparam
            c = Cost(c.a, c.b, dims.d_model, dims.d_model * m + m + m * 2 * dims.kv + 2 * dims.kv)
    elif f == "bias":
        c = Cost(0, inst.h_dim)
    elif f == "prompt":
        c = Cost(dims.d_model, 0)
    else:  # pragma: no cover - forms are validated in spec.py
        raise SpecError(f"unknown form {f!r}")
    if spec.composition == "learned":
        c = c + Cost(0, 1)
    elif spec.composition == "gate" and f != "prefix":
        c = c + Cost(0, inst.x_dim + 1)
    return c


def spec_cost(spec: DeltaSpec, arch: Arch, dims: Dims, stack: str, layer_level: bool = True) -> Cost:
    """Affine parameter count of `spec` in one layer of `stack` (summed over its site instances)."""
    total = ZERO
    for inst in instances(spec, arch, dims, stack, layer_level):
        total = total + instance_cost(spec, inst, dims)
    return total
