"""LoRA on a FFN's output projection keeps the activation's inputs instead of its output (forms._recipe):
gradients are those of the plain path, and the graph keeps fewer bytes."""

import pytest
import torch

import peftspace as ps
from peftspace import forms
from tests.helpers import batch, graph_nodes as _nodes, tiny


def _grads(model, inputs, hooks: bool):
    model.zero_grad(set_to_none=True)
    ctx = torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t) if hooks else torch.enable_grad()
    with ctx:
        out = model(**inputs)
        loss = out.logits.float().square().mean()
        n_recomputed = sum(type(n).__name__ == "_DownRecomputedBackward"  # unmerged LoRA (GPT-2's Conv1D)
                           or (type(n).__name__ == "_LoRALinearBackward" and n.fn is not None)  # fused LoRA
                           for n in _nodes(loss.grad_fn))
        loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, n_recomputed


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama", "tiny-gpt2", "tiny-bart", "tiny-t5"])
def test_recomputed_ffn_lora_has_the_plain_gradients(name):
    model = tiny(name)
    plan = ps.plan(model, "lora_ffn:r=4")
    ps.attach(model, plan)
    for n, p in model.named_parameters():  # non-zero up-projections, so every gradient is non-trivial
        if "lora_B" in n:
            torch.nn.init.normal_(p, 0, 0.1, generator=torch.Generator().manual_seed(1))
    inputs = batch(model)
    fast, n_fast = _grads(model, inputs, hooks=False)
    plain, n_plain = _grads(model, inputs, hooks=True)  # under saved-tensor hooks: never recomputed
    assert n_plain == 0
    # the output projection of each FFN reads act(pre) (BERT, BART, GPT-2: GELU; LLaMA: act(gate)·up);
    # T5's FFN has dropout between the activation and wo, which is kept as is (nothing to recompute)
    layers = len([e for e in plan.entries if e.spec.name == "lora_ffn"]) // 2 if name != "tiny-t5" else 0
    assert n_fast >= layers and (n_fast > 0) == (name != "tiny-t5")
    assert fast.keys() == plain.keys()
    for k in fast:
        torch.testing.assert_close(fast[k], plain[k], rtol=1e-5, atol=1e-7, msg=k)


def test_recompute_keeps_fewer_bytes():
    model = tiny("tiny-bert")
    ps.attach(model, ps.plan(model, "lora_ffn:r=4"))
    inputs = batch(model)

    def kept(hooks: bool) -> int:
        saved = {}

        def add(t):
            if isinstance(t, torch.Tensor):
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            elif isinstance(t, (tuple, list)):
                for u in t:
                    add(u)

        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        ctx = torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t) if hooks else torch.enable_grad()
        with ctx:
            loss = model(**inputs).logits.square().mean()
            for n in _nodes(loss.grad_fn):
                for a in dir(n):
                    if a.startswith("_saved_") or a == "saved_tensors":
                        try:
                            add(getattr(n, a))
                        except RuntimeError:
                            pass
        return sum(v for k, v in saved.items() if k not in params)

    d_ff, tokens = model.config.intermediate_size, inputs["input_ids"].numel()
    assert kept(True) - kept(False) >= model.config.num_hidden_layers * tokens * d_ff * 4


def test_recipe_declines_what_it_cannot_recompute():
    x = torch.randn(3, 4, requires_grad=True)
    assert forms._recipe(x) is None  # a leaf
    assert forms._recipe(torch.tanh(x)) is None  # tanh keeps its output: nothing to gain
    assert forms._recipe(torch.nn.functional.gelu(x)) is not None
    assert forms._recipe(x * torch.randn(4)) is None  # the other factor does not require grad: not kept
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        assert forms._recipe(torch.nn.functional.gelu(x)) is None


@pytest.mark.parametrize("method", ["lora_ffn:r=4", "adapter:r=4"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_still_gives_the_same_gradients(reentrant, method):
    """Under HF gradient checkpointing (saved-tensor hooks, or no graph in the first pass) nothing is
    recomputed by forms; the gradients equal those of a run without checkpointing."""
    model = tiny("tiny-bert")
    ps.attach(model, ps.plan(model, method))
    for n, p in model.named_parameters():
        if "lora_B" in n or n.endswith("up.weight"):
            torch.nn.init.normal_(p, 0, 0.1, generator=torch.Generator().manual_seed(1))
    inputs = batch(model)
    want, _ = _grads(model, inputs, hooks=False)
    model.train()
    for m in model.modules():  # no dropout, so both runs see the same function
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    got, _ = _grads(model, inputs, hooks=False)
    assert got.keys() == want.keys()
    for k in got:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7, msg=k)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama", "tiny-gpt2", "tiny-bart", "tiny-t5"])
@pytest.mark.parametrize("method", ["adapter:r=4", "pfeiffer:r=4"])
def test_sequential_adapters_keep_the_projection_input_with_the_plain_gradients(name, method):
    """A sequential adapter reads h = W·a + b, the output of a frozen projection: its down-projection's
    gradient is taken through a where autograd keeps a anyway (SDPA's CPU flash kernel keeps its output, the
    attention output projection's input) instead of keeping h. Same gradients."""
    model = tiny(name)
    ps.attach(model, ps.plan(model, method))
    for n, p in model.named_parameters():  # non-zero up-projections: every gradient non-trivial
        if "peftspace" in n and n.endswith("up.weight"):
            torch.nn.init.normal_(p, 0, 0.1, generator=torch.Generator().manual_seed(1))
    inputs = batch(model)

    def run(hooks):
        model.zero_grad(set_to_none=True)
        ctx = torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t) if hooks else torch.enable_grad()
        with ctx:
            loss = model(**inputs).logits.float().square().mean()
            n = sum(type(f).__name__ == "_DownThroughBackward" for f in _nodes(loss.grad_fn))
            loss.backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}, n

    fast, n_fast = run(False)
    plain, n_plain = run(True)
    assert n_plain == 0
    if name == "tiny-llama" and method.startswith("adapter"):  # causal, no dropout: the flash kernel keeps
        # the attention output (pfeiffer has no adapter after attention)
        assert n_fast > 0
    assert fast.keys() == plain.keys()
    for k in fast:
        torch.testing.assert_close(fast[k], plain[k], rtol=1e-4, atol=1e-6, msg=k)
