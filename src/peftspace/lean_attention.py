"""Attention with dropout that keeps less for backward, used by layers that carry prefixes while training.

PyTorch's SDPA on CPU has no fused kernel with dropout: it falls back to the math path, which keeps
three (B, H, T, S) float tensors per layer for backward — the softmax output, the dropout noise (a
float tensor of 0 and 1/(1-p)) and the dropped probabilities that multiply V. Prefix tuning makes S
longer by l, so all three grow by l/T (MiniLM, T=64, l=30: +47%), which is most of what prefix tuning
costs in memory. Here the noise is a bool mask (a quarter of the bytes) and the dropped probabilities
are recomputed in backward from the softmax output, which autograd keeps anyway: per layer 1.25 of
those tensors instead of 3. The arithmetic is that of the math path (scores, softmax, dropout, @V);
only what is kept changes, plus one elementwise product in backward.
"""

from __future__ import annotations

import torch


class _DropoutMatmul(torch.autograd.Function):
    """(P ⊙ keep / (1-p)) @ V, keeping P (already kept by softmax), the bool mask and V."""

    @staticmethod
    def forward(ctx, probs: torch.Tensor, value: torch.Tensor, p: float) -> torch.Tensor:
        scale = 1.0 / (1.0 - p)
        # float32 uniforms compared to p: twice as fast on CPU as bernoulli_ into a bool tensor; a product
        # with the bool mask: 2.5x faster than masked_fill or where (measured at MiniLM's shapes)
        keep = torch.rand(probs.shape, device=probs.device) >= p
        out = torch.matmul(probs * keep, value).mul_(scale)  # 1/(1-p) on the (T, D) side
        ctx.save_for_backward(probs, keep, value)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        probs, keep, value = ctx.saved_tensors
        g_probs = g_value = None
        # scaled into a contiguous tensor in one pass (grad arrives transposed; matmul would copy it twice)
        g = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
        torch.mul(grad, ctx.scale, out=g)
        if ctx.needs_input_grad[1]:
            g_value = torch.matmul((probs * keep).transpose(-1, -2), g)
        if ctx.needs_input_grad[0]:
            g_probs = torch.matmul(g, value.transpose(-1, -2)).mul_(keep)
        return g_probs, g_value, None


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
              dropout: float, scale: float | None = None, is_causal: bool = False) -> torch.Tensor:
    """softmax(q·kᵀ·scale + mask) with dropout, @ v. query (B, H, T, D); key, value (B, Hkv, S, D) with
    H a multiple of Hkv (grouped-query attention: query head h reads key head h // (H / Hkv)); mask bool
    (True = attend) or additive float, broadcastable to (B, H, T, S). Returns (B, T, H, D), as
    transformers' attention functions do."""
    B, H, T, D = query.shape
    Hkv, S = key.shape[1], key.shape[2]
    rep = H // Hkv
    scale = D ** -0.5 if scale is None else scale
    q = query.reshape(B, Hkv, rep * T, D)  # query heads of one key head side by side: no copy of K or V
    # the scale on q (T x D) rather than on the scores (T x S)
    scores = torch.matmul(q * scale, key.transpose(-1, -2))  # (B, Hkv, rep·T, S)
    if is_causal and mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=query.device).tril(S - T)
    if mask is not None:
        m = mask if mask.dim() == 4 else mask.view((1,) * (4 - mask.dim()) + tuple(mask.shape))
        if m.dtype == torch.bool:  # additive, at the mask's own (broadcast) size: a fraction of the scores
            m = torch.zeros(m.shape, dtype=scores.dtype, device=m.device).masked_fill_(~m, torch.finfo(scores.dtype).min)
        if rep > 1 and m.shape[-2] != 1:  # to the scores' (B, Hkv, rep·T, S) layout
            if m.shape[1] == 1:
                m = m.unsqueeze(2).expand(-1, -1, rep, -1, -1).reshape(m.shape[0], 1, rep * T, S)
            else:
                m = m.reshape(m.shape[0], Hkv, rep * T, S)
        # in place on the product's own output (its backward needs its inputs, not its output); an add
        # passes the gradient through, where masked_fill's backward would copy it
        scores.add_(m)
    probs = torch.softmax(scores, dim=-1)
    if dropout > 0.0:
        out = _DropoutMatmul.apply(probs, value, float(dropout))
    else:
        out = torch.matmul(probs, value)
    return out.view(B, H, T, D).transpose(1, 2).contiguous()
