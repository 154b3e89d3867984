"""Training step time and peak memory of every preset, relative to the frozen-backbone floor (issue 6).

    python bench/step_time.py --quick                 # MiniLM-shaped table, < 5 min on a 2-core CPU
    python bench/step_time.py                         # MiniLM-, BERT-base- and LLaMA-shaped tables
    python bench/step_time.py --json rows.json        # also write the rows as JSON; bare --json: to stdout
    python bench/step_time.py --anchor adapters       # the AdapterHub side (needs its own environment)
    python bench/step_time.py --device cuda           # on a GPU, in bfloat16, peak GPU memory measured

Everything is measured in ONE process, as ratios: every configuration of a model shape is built up
front (they share the frozen backbone weights), warmed up, then timed in interleaved repetitions
(each repetition visits every configuration once, in a freshly shuffled order), so a change of
machine load hits all of them alike. A configuration's time is the minimum over repetitions of its
mean step time in a repetition (other processes only ever add time); the median is reported too.

Definitions (bench/README.md has the long form):
- step: `zero_grad(set_to_none=True)`, forward, loss, backward, `AdamW(fused=True).step()`, on one fixed batch.
- floor: the same model with every backbone weight frozen and no Δh; the output of the input
  embedding is made a leaf that requires grad, so backward runs through the activations of every
  layer (down to the embeddings) without computing a single weight gradient; the task head (BERT's
  or LLaMA's 2-way classifier) trains, as it does in every PEFT row.
- peak memory: the frozen weights and buffers + the distinct tensor storages autograd keeps for
  backward (read from the graph after one forward; parameter storages excluded) + trainable
  parameters, their gradients and the optimizer state. `peak_memory_ratio` = that ÷ the floor's (the
  target); `extra_memory_ratio` leaves the frozen weights out of both (stricter: the "kept" column).
  On CUDA the peak is measured instead: the configuration's own frozen weights, trainable
  parameters and optimizer state + the most its step allocated above what was allocated before it
  (`torch.cuda.max_memory_allocated`), i.e. its peak as if it were alone on the GPU.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

_T0 = time.monotonic()  # --quick keeps the whole run, imports included, under 5 minutes

# How idle OpenMP threads wait is read once, when torch loads. Measure what the CLI runs with
# (scripts/peftspace) unless the caller set it: spin up to 10,000 iterations, then sleep (bench/README,
# "OpenMP waits"). Not when imported (tests): the importer's process is not ours to configure.
if __name__ == "__main__" and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & os.environ.keys():
    os.environ["GOMP_SPINCOUNT"] = "10000"

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

try:  # a source checkout without `pip install -e .` (e.g. the adapters environment)
    import peftspace  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PRESET_ORDER = ("lora", "lora_ffn", "adapter", "pfeiffer", "prefix", "prompt", "bitfit", "pa", "mh_pa", "spa", "mam")
# step time ÷ floor (issue 6, point 2); every other preset: DEFAULT_TARGET. The issue sets targets for the
# presets; a sampled design stacks two or three Δh in a layer (S0 seed 0 on MiniLM: adapter+adapter+LoRA,
# adapter+prefix, prefix+LoRA), as MAM stacks prefix and PA, so it is judged at MAM's target.
TARGET = {"mam": 1.10, "design": 1.10, "mixed-design": 1.10}
DEFAULT_TARGET = 1.05
EXEMPT = ("prompt",)  # reported, not judged: its longer input sequence is inherent to the method
MEM_TARGET = 1.10
EVAL_TARGET = {"lora (merged)": 1.00, "pa": 1.05, "prefix": 1.05}  # forward ÷ base forward (point 3)
PEFT_ANCHORS = ("lora", "lora_ffn", "prefix")
ADAPTERS_ANCHORS = ("lora", "lora_ffn", "adapter", "pfeiffer", "prefix", "pa", "spa", "mam")

ADAPTERS_HELP = """\
adapters (AdapterHub) pins transformers 4.57, so its side runs in an environment of its own:

    python -m venv /tmp/adapters-env && . /tmp/adapters-env/bin/activate
    pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu   # the same torch
    pip install adapters rich pyyaml safetensors   # brings the transformers that adapters supports
    python bench/step_time.py --anchor adapters --quick --json adapters.json

There the script measures the floor and the adapters configurations (LoRA on q,v and on the FFN,
Houlsby and Pfeiffer adapters, parallel and scaled parallel adapters, prefix, MAM) on the same
shapes, batches and thread count, at the anchors' configurations (and at the 0.5% sizes when
peftspace imports there too, which then adds its own rows). Ratios are to the floor of the same
process, so they compare with this environment's table; seconds do not."""


# ---- model shapes ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    name: str
    model_type: str
    fields: dict
    batch: int
    seq: int
    note: str
    # Depth of the model whose layer this shape borrows, when it keeps fewer layers (to run faster). A budget
    # in percent then means the per-layer sizes that percent gives at full depth: a percent of the truncated
    # model would be a percent of a model whose embeddings weigh more (SmolLM2-135M: 21% of its parameters;
    # of 8 of its 30 layers: 50%), and so larger per-layer sizes than any user of that model gets.
    full_layers: int | None = None


SHAPES: dict[str, Shape] = {
    "minilm": Shape("minilm", "bert", dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                           intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2),
                    32, 64, "all-MiniLM-L6-v2 shape: 6 layers x 384, 12 heads, FFN 1536"),
    # batch 8: 32 x 64 would take ~8x the MiniLM step on 2 cores; the ratios are per token anyway.
    "bert-base": Shape("bert-base", "bert", dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                                                 num_attention_heads=12, intermediate_size=3072,
                                                 max_position_embeddings=512, type_vocab_size=2),
                       8, 64, "bert-base shape: 12 layers x 768, 12 heads, FFN 3072"),
    # SmolLM2-135M's layer (576 wide, 9 heads / 3 KV heads of 64, gated FFN 1536), 8 of its 30 layers: the
    # full depth would take ~4x the MiniLM step; per-layer overheads do not depend on the depth, and budgets
    # are SmolLM2-135M's per layer (`full_layers`).
    "llama": Shape("llama", "llama", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                          num_hidden_layers=8, num_attention_heads=9, num_key_value_heads=3,
                                          head_dim=64, max_position_embeddings=2048, rms_norm_eps=1e-5,
                                          rope_theta=100000.0, tie_word_embeddings=True, pad_token_id=2),
                   16, 64, "SmolLM2-135M layer shape (576, 9 heads / 3 KV of 64, FFN 1536), 8 layers",
                   full_layers=30),
    "tiny-llama": Shape("tiny-llama", "llama", dict(vocab_size=1000, hidden_size=64, intermediate_size=128,
                                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                    max_position_embeddings=128, tie_word_embeddings=True,
                                                    pad_token_id=2), 4, 16, "test shape: LLaMA 2 layers x 64, GQA"),
    "tiny": Shape("tiny", "bert", dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64, max_position_embeddings=128, type_vocab_size=2),
                  4, 16, "test shape: 2 layers x 32 (machinery only)"),
}


def shape_budget(shape: Shape, base: nn.Module, budget: str) -> tuple[str | int, str | None]:
    """The budget to plan `base` with, and a note when it is not `budget` itself: for a truncated shape
    (`full_layers`) a percent becomes the parameter count that gives this model the per-layer sizes that
    percent gives the full-depth model (built on the meta device, so nothing is allocated)."""
    from peftspace.plan import budget_target, model_arch, parse_budget

    kind, _ = parse_budget(budget)
    n = base.config.num_hidden_layers
    if shape.full_layers is None or shape.full_layers == n or kind == "count":
        return budget, None
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = AutoConfig.for_model(shape.model_type, **{**shape.fields, "num_hidden_layers": shape.full_layers},
                               num_labels=2)
    with torch.device("meta"):
        full = AutoModelForSequenceClassification.from_config(cfg)
    full_params = model_arch(full)["backbone_params"]
    own = model_arch(base)["backbone_params"]
    count = round(budget_target(budget, full_params) * n / shape.full_layers)
    note = (f"{budget} here: the per-layer sizes {budget} gives the {shape.full_layers}-layer model "
            f"({full_params:,} parameters) = {count:,} trainable over these {n} layers "
            f"({100 * count / own:.2f}% of this model; {budget} of it, {budget_target(budget, own):,}, "
            f"would give larger sizes than the full model gets, its embeddings being a larger share)")
    return count, note


def build_model(shape: Shape, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """Random weights from the shape's config, a 2-way classification head, SDPA attention, train mode."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = AutoConfig.for_model(shape.model_type, **shape.fields, num_labels=2)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="sdpa")
    return model.to(device=device, dtype=dtype).train()


def make_batch(shape: Shape, model: nn.Module, seed: int = 0) -> dict:
    """B x T token ids, right padding (lengths uniform in [T/2, T]: the masked path, as in real batches)."""
    g = torch.Generator().manual_seed(seed)
    B, T = shape.batch, shape.seq
    pad = model.config.pad_token_id or 0
    ids = torch.randint(5, model.config.vocab_size, (B, T), generator=g)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, pad)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (B,), generator=g)}
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def shared_copy(model: nn.Module) -> nn.Module:
    """A new module tree whose backbone Parameters and buffers ARE the original's (no copy); head copied."""
    memo = {id(t): t for t in model.base_model.parameters()}
    memo.update({id(t): t for t in model.base_model.buffers()})
    return copy.deepcopy(model, memo)


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    inside = {id(p) for p in model.base_model.parameters()}
    return [p for p in model.parameters() if id(p) not in inside]


# ---- one configuration -------------------------------------------------------------------------------
@dataclass
class Case:
    key: str
    method: str
    config: str  # "anchor", "0.5%", "reference", "eval"
    spec: str
    model: nn.Module
    kind: str = "train"  # "train" | "eval"
    params: int | None = None  # trainable Δh parameters (inference count)
    percent: float | None = None
    anchor: str | None = None  # label of the equivalent configuration in another library
    anchor_of: str | None = None  # for an anchor case: key of the peftspace case it is compared with
    step: Callable[[], None] | None = None
    forward: Callable[[], torch.Tensor] | None = None  # the training forward (loss), for measure_memory
    opt: torch.optim.Optimizer | None = None
    samples: list[dict] = field(default_factory=list)  # per repetition: wall, cpu, others (see `timed`)
    memory: int | None = None  # peak: frozen weights + what the step keeps + trainable state
    extra_memory: int | None = None  # the same without the frozen weights
    error: str | None = None
    shared_with: str | None = None  # same plan as another case: measured once
    is_anchor: bool = False


def prepare(case: Case, batch: dict) -> None:
    model = case.model
    if case.kind == "eval":
        model.eval()
        inputs = {k: v for k, v in batch.items() if k != "labels"}

        def step() -> None:
            with torch.no_grad():
                model(**inputs)

        case.step = step
        return
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5, fused=True)  # as `peftspace train` runs it; the same for every row

    def forward() -> torch.Tensor:
        return model(**batch).loss

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        forward().backward()
        opt.step()

    case.step, case.opt, case.forward = step, opt, forward


def saved_storages(root, exclude: set[int]) -> dict[int, int]:
    """Storage pointer → bytes of every tensor the autograd graph below `root` keeps for backward: the
    `_saved_*` attributes of built-in nodes and `saved_tensors` of custom Functions. Read from the graph
    rather than with saved_tensors_hooks, because code may (and peftspace does) keep less when no such
    hook is active."""
    saved: dict[int, int] = {}
    seen: set[int] = set()
    stack = [root]

    def add(t) -> None:
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            if st.data_ptr() and st.data_ptr() not in exclude:
                saved[st.data_ptr()] = max(saved.get(st.data_ptr(), 0), st.nbytes())
        elif isinstance(t, (tuple, list)):
            for u in t:
                add(u)

    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for attr in dir(node):
            if attr.startswith("_saved_") or attr == "saved_tensors":
                try:
                    add(getattr(node, attr))
                except RuntimeError:  # freed, or not a tensor attribute
                    pass
        stack.extend(fn for fn, _ in node.next_functions)
    return saved


def measure_memory(case: Case) -> tuple[int, int]:
    """(peak, beyond the frozen weights): one step (optimizer state exists after it), then a forward whose
    graph is read for what it keeps; + trainable params, their grads and the optimizer state; the peak adds
    the frozen weights and buffers (every distinct storage that does not train)."""
    model = case.model
    case.step()
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    case.opt.zero_grad(set_to_none=True)
    loss = case.forward()
    saved = saved_storages(loss.grad_fn, param_ptrs)
    loss.backward()
    case.opt.zero_grad(set_to_none=True)
    params = sum(p.nbytes for p in model.parameters() if p.requires_grad)
    opt_state = sum(v.nbytes for st in case.opt.state.values() for v in st.values() if isinstance(v, torch.Tensor))
    extra = sum(saved.values()) + 2 * params + opt_state  # kept activations, parameters + gradients, moments
    frozen: dict[int, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if not t.requires_grad:
            frozen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    if next(model.parameters()).device.type == "cuda":  # measured: what it keeps between steps + its step's peak
        return sum(frozen.values()) + params + opt_state + cuda_step_peak(case), extra
    return sum(frozen.values()) + extra, extra


def cuda_step_peak(case: Case) -> int:
    """Bytes one step allocates at its peak above what was allocated before it (every configuration of the
    shape is resident on the GPU at once; this is the part that is this step's: activations, gradients,
    temporaries), read from PyTorch's CUDA allocator."""
    case.opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    case.step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


# ---- builders ----------------------------------------------------------------------------------------
def anchor_method(preset: str, d_model: int) -> str:
    """The anchors' configurations (issue 6): LoRA r=8; prefix l=30; bottlenecks r = d/16; MAM l=30, r=d/16."""
    r16 = max(1, d_model // 16)
    return {"lora": "lora:r=8", "lora_ffn": "lora_ffn:r=8", "prefix": "prefix:l=30", "adapter": f"adapter:r={r16}",
            "pfeiffer": f"pfeiffer:r={r16}", "pa": f"pa:r={r16}", "spa": f"spa:r={r16}", "mam": f"mam:l=30,r={r16}",
            "prompt": "prompt:l=20", "bitfit": "bitfit", "mh_pa": "mh_pa:r=16"}[preset]


def floor_model(base: nn.Module) -> nn.Module:
    model = shared_copy(base)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head_parameters(model):
        p.requires_grad_(True)
    # A leaf that requires grad at the embedding output: backward through every layer, no weight grads.
    model.get_input_embeddings().register_forward_hook(lambda mod, args, out: out.detach().requires_grad_(True))
    return model


def full_model(base: nn.Module) -> nn.Module:
    model = copy.deepcopy(base)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def plan_sizes(plan) -> dict[str, int]:
    return {e.spec.name: e.spec.size for e in plan.entries if e.spec.sized}


def size_label(plan) -> str:
    """'r=12' / 'l=25' / 'l=2,r=23' from a uniformly sized plan."""
    out: dict[str, int] = {}
    for e in plan.entries:
        if e.spec.sized:
            out.setdefault("l" if e.spec.form in ("prefix", "prompt") else "r", e.spec.size)
    return ",".join(f"{k}={v}" for k, v in sorted(out.items()))


def describe_plan(plan) -> str:
    from peftspace.plan import STACK_LEVEL

    per_spec: dict[str, tuple[str, set]] = {}
    for e in plan.entries:
        d, layers = per_spec.setdefault(e.spec.name, (e.spec.describe(), set()))
        if e.layer != STACK_LEVEL:
            layers.add(e.layer)
    return "; ".join(f"{n}@{len(v[1])}L" for n, v in per_spec.items())


def design_plan(model: nn.Module, budget: str | int):
    """A design sampled from the design space S0 (Chen et al. 2023) under `budget`; if `peftspace.spaces`
    is unavailable, a hand-made mixed per-layer plan (lora / prefix / adapter / bitfit by turns)."""
    try:
        from peftspace.spaces import parse_space

        design, plan = parse_space("S0").sample_plans(model, n=1, seed=0, budget=budget)[0]
        groups = dict(design.grouping)
        sizes = ",".join(f"{st}:{'/'.join(map(str, g))}" for st, g in groups.items())
        strat = " | ".join("+".join(s) for _, s in design.strategies)
        return "design", f"S0 seed 0: layers {sizes}; {strat}", plan
    except Exception as err:  # noqa: BLE001 - any failure of the (young) spaces package: fall back
        from peftspace.plan import Plan, PlanEntry, budget_target, model_arch, solve_sizes
        from peftspace.presets import PRESETS

        arch = model_arch(model)
        stack, n = next(iter(arch["stacks"].items()))
        turns = ("lora", "prefix", "adapter", "bitfit")
        entries = tuple(PlanEntry(stack, i, sp) for i in range(n) for sp in PRESETS[turns[i % 4]])
        plan = solve_sizes(Plan(arch, entries, {"method": "mixed-design"}),
                           budget_target(budget, arch["backbone_params"]))
        return "mixed-design", f"by hand ({type(err).__name__}): " + " | ".join(turns), plan


def peftspace_case(base: nn.Module, key: str, method: str, config: str, plan_or_method, budget=None,
                   spec: str | None = None, fresh: bool = False) -> Case:
    import peftspace as ps

    model = copy.deepcopy(base) if fresh else shared_copy(base)
    plan = plan_or_method if not isinstance(plan_or_method, str) else ps.plan(model, plan_or_method, budget=budget)
    ps.attach(model, plan)
    if spec is None:
        sizes = size_label(plan)
        spec = plan.meta.get("method", method) if budget is None else (f"{method}:{sizes}" if sizes else method)
    case = Case(key, method, config, spec, model, params=plan.trainable_params, percent=plan.percent)
    case.plan = plan  # type: ignore[attr-defined]
    return case


def peft_case(base: nn.Module, preset: str, plan, of: Case) -> Case:
    """HF peft's equivalent of a peftspace LoRA / LoRA-FFN / prefix plan, at the same sizes."""
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model

    mt = base.config.model_type
    spec = plan.entries[0].spec
    model = shared_copy(base)
    if preset in ("lora", "lora_ffn"):
        if mt == "llama":
            targets = ["q_proj", "v_proj"] if preset == "lora" else ["gate_proj", "up_proj", "down_proj"]
        else:  # a regex: BERT's FFN output is `output.dense`, its attention output `attention.output.dense`
            targets = (r".*\.attention\.self\.(query|value)" if preset == "lora"
                       else r".*\.layer\.\d+\.(intermediate\.dense|output\.dense)")
        cfg = LoraConfig(r=spec.size, lora_alpha=spec.s * spec.size, lora_dropout=0.0, target_modules=targets,
                         task_type="SEQ_CLS")
        label = f"peft LoRA r={spec.size}"
    else:
        cfg = PrefixTuningConfig(num_virtual_tokens=spec.size, task_type="SEQ_CLS")
        label = f"peft prefix l={spec.size}"
    model = get_peft_model(model, cfg)
    return Case(f"{of.key}|peft", preset, of.config, label, model, anchor=label, anchor_of=of.key, is_anchor=True)


def adapters_case(base: nn.Module, preset: str, sizes: dict[str, int], d_model: int, of_key: str | None,
                  config: str) -> Case:
    """AdapterHub's equivalent configuration (runs only where `adapters` imports: see ADAPTERS_HELP)."""
    import adapters
    from adapters import (DoubleSeqBnConfig, LoRAConfig, MAMConfig, ParBnConfig, PrefixTuningConfig,
                          SeqBnConfig)

    r = next((v for k, v in sizes.items() if "prefix" not in k), None)
    l = next((v for k, v in sizes.items() if "prefix" in k), None)
    if preset == "lora":
        cfg, label = LoRAConfig(r=r, alpha=2 * r, attn_matrices=["q", "v"]), f"adapters LoRA r={r}"
    elif preset == "lora_ffn":
        cfg = LoRAConfig(r=r, alpha=2 * r, selfattn_lora=False, intermediate_lora=True, output_lora=True)
        label = f"adapters LoRA-FFN r={r}"
    elif preset in ("pa", "spa"):
        cfg = ParBnConfig(reduction_factor=d_model / r, scaling=1.0 if preset == "pa" else 4.0)
        label = f"adapters ParBn r={r}" + (" s=4" if preset == "spa" else "")
    elif preset == "adapter":
        cfg, label = DoubleSeqBnConfig(reduction_factor=d_model / r), f"adapters DoubleSeqBn r={r}"
    elif preset == "pfeiffer":
        cfg, label = SeqBnConfig(reduction_factor=d_model / r), f"adapters SeqBn r={r}"
    elif preset == "prefix":  # flat: direct prefix parameters, as peftspace's prefix preset
        cfg, label = PrefixTuningConfig(prefix_length=l, flat=True), f"adapters prefix l={l}"
    elif preset == "mam":
        cfg = MAMConfig(PrefixTuningConfig(prefix_length=l, flat=True), ParBnConfig(reduction_factor=d_model / r))
        label = f"adapters MAM l={l} r={r}"
    else:
        raise ValueError(preset)
    model = shared_copy(base)
    adapters.init(model)
    model.add_adapter("bench", config=cfg)
    model.train_adapter("bench")
    for p in head_parameters(model):  # train_adapter freezes the whole model; the task head trains in every row
        p.requires_grad_(True)
    key = f"{of_key or preset + ':' + config}|adapters"
    return Case(key, preset, config, label, model, anchor=label, anchor_of=of_key, is_anchor=True)


# ---- the cases of one shape --------------------------------------------------------------------------
def build_cases(shape: Shape, base: nn.Module, args) -> tuple[list[Case], list[str]]:
    notes: list[str] = []
    cases: list[Case] = [Case("floor", "floor", "reference", "frozen backbone, backward to the embeddings",
                              floor_model(base))]
    if not args.no_full:
        cases.append(Case("full", "full", "reference", "full fine-tuning", full_model(base)))
    d = base.config.hidden_size
    use_ps = not args.adapters_only
    if use_ps:
        try:
            import peftspace  # noqa: F401
        except Exception as err:  # noqa: BLE001
            use_ps = False
            notes.append(f"peftspace does not import here ({type(err).__name__}: {err}); anchors only")
    methods = [m for m in PRESET_ORDER if m in args.methods]
    budget = args.budget
    if use_ps and "budget" in args.configs:
        budget, why = shape_budget(shape, base, args.budget)
        if why:
            notes.append(why)
    seen_plans: dict[str, str] = {}
    by_key: dict[str, Case] = {}
    configs = [c for c in ("anchor", "budget") if c in args.configs]
    for config in configs:
        label = "anchor" if config == "anchor" else args.budget
        for m in methods:
            key = f"{m}:{label}"
            if not use_ps:
                continue
            if config == "budget" and m == "prompt" and args.skip_prompt_budget:
                notes.append(f"prompt at {args.budget} skipped (--quick): a {label} prompt makes every sequence "
                             "several times longer; run without --quick to see it")
                continue
            try:
                c = (peftspace_case(base, key, m, label, anchor_method(m, d)) if config == "anchor"
                     else peftspace_case(base, key, m, label, m, budget=budget))
            except Exception as err:  # noqa: BLE001 - e.g. a budget no size of this preset meets
                notes.append(f"{m} at {label}: {type(err).__name__}: {err}")
                continue
            if m == "prompt" and shape.model_type == "bert":  # learned absolute positions: a hard limit
                l = next(e.spec.size for e in c.plan.entries)  # type: ignore[attr-defined]
                if l + shape.seq > base.config.max_position_embeddings:
                    notes.append(f"prompt at {label} skipped: l={l} + {shape.seq} tokens exceeds the "
                                 f"{base.config.max_position_embeddings} positions of {shape.name}")
                    continue
            h = c.plan.hash  # type: ignore[attr-defined]
            if h in seen_plans:  # bitfit has no size: its 0.5% plan is its default plan
                c.shared_with = seen_plans[h]
                c.model = None  # type: ignore[assignment]
            else:
                seen_plans[h] = key
            cases.append(c)
            by_key[key] = c
        if config == "budget" and use_ps and "design" in args.methods:
            try:
                name, desc, plan = design_plan(base, budget)
                c = peftspace_case(base, f"{name}:{label}", name, label, plan, spec=desc)
                cases.append(c)
                by_key[c.key] = c
            except Exception as err:  # noqa: BLE001
                notes.append(f"design at {label}: {type(err).__name__}: {err}")
    # anchors, at the same sizes as the peftspace plans
    for lib in args.anchor:
        if lib == "peft":
            try:
                import peft  # noqa: F401
            except ImportError:
                notes.append("peft is not installed: no peft anchors (pip install peft)")
                continue
            for key, c in list(by_key.items()):
                if c.method in PEFT_ANCHORS and c.shared_with is None and c.method != "design":
                    try:
                        cases.append(peft_case(base, c.method, c.plan, c))  # type: ignore[attr-defined]
                        c.anchor = cases[-1].anchor
                    except Exception as err:  # noqa: BLE001
                        notes.append(f"peft anchor for {key}: {type(err).__name__}: {err}")
        elif lib == "adapters":
            try:
                import adapters  # noqa: F401
            except ImportError:
                notes.append("adapters is not installed here: no adapters anchors. " + ADAPTERS_HELP)
                continue
            for m in [m for m in ADAPTERS_ANCHORS if m in methods]:
                for config in configs:
                    label = "anchor" if config == "anchor" else args.budget
                    of = by_key.get(f"{m}:{label}")
                    if of is not None:
                        sizes = plan_sizes(of.plan)  # type: ignore[attr-defined]
                    elif config == "anchor":  # no peftspace here: the anchors' sizes by rule
                        spec = anchor_method(m, d)
                        kv = dict(x.split("=") for x in spec.partition(":")[2].split(",") if "=" in x)
                        sizes = {("prefix" if k == "l" else m): int(v) for k, v in kv.items()}
                    else:
                        continue
                    try:
                        a = adapters_case(base, m, sizes, d, of.key if of else None, label)
                        cases.append(a)
                        if of is not None:
                            of.anchor = a.anchor if of.anchor is None else f"{of.anchor}; {a.anchor}"
                    except Exception as err:  # noqa: BLE001
                        notes.append(f"adapters anchor for {m} at {label}: {type(err).__name__}: {err}")
    if use_ps and not args.no_eval:
        cases.extend(eval_cases(base, d))
    return cases, notes


def eval_cases(base: nn.Module, d: int) -> list[Case]:
    """Point 3: forward-only (no_grad, eval mode) time against the base model's forward."""
    import peftspace as ps

    out = [Case("eval:base", "base", "eval", "backbone forward", shared_copy(base), kind="eval")]
    merged = peftspace_case(base, "eval:lora (merged)", "lora (merged)", "eval", "lora:r=8", fresh=True)
    with torch.no_grad():
        for _, p in ps.delta_named_parameters(merged.model):
            p.normal_(0.0, 0.02)
    ps.merge(merged.model)
    merged.kind = "eval"
    out.append(merged)
    for m, spec in (("pa", f"pa:r={max(1, d // 16)}"), ("prefix", "prefix:l=30")):
        c = peftspace_case(base, f"eval:{m}", m, "eval", spec)
        c.kind = "eval"
        out.append(c)
    return out


# ---- timing --------------------------------------------------------------------------------------------
CLEAN_SHARE = 0.05  # a sample is "clean" when other processes used < 5% of the machine's CPU meanwhile


def _jiffies() -> tuple[int, int] | None:
    """(busy jiffies of the whole machine, jiffies of this process) from /proc; None elsewhere."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        with open("/proc/self/stat") as f:
            s = f.read().rsplit(")", 1)[1].split()
        return sum(v) - v[3] - v[4], int(s[11]) + int(s[12])  # minus idle and iowait; utime + stime
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return None


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def timed(fn: Callable[[], None], steps: int, sync: Callable[[], None] = lambda: None) -> dict:
    """Wall and process-CPU seconds per step, and the share of the machine other processes used meanwhile.
    `sync` waits for queued device work (CUDA runs asynchronously): before the clock starts and stops."""
    sync()
    j0, w0, c0 = _jiffies(), time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    sync()
    wall, cpu, j1 = time.perf_counter() - w0, time.process_time() - c0, _jiffies()
    others = 0.0
    if j0 is not None and j1 is not None:
        others = max(0, (j1[0] - j0[0]) - (j1[1] - j0[1])) / (wall * _HZ * (os.cpu_count() or 1))
    return {"wall": wall / steps, "cpu": cpu / steps, "others": others}


def run_interleaved(cases: list[Case], args, deadline: float, log=None) -> None:
    """Memory-count step + warm-up for every case, then interleaved repetitions until every case has
    `args.clean` clean samples and `args.reps` samples, or `args.max_reps` repetitions, or the deadline
    (after which a repetition stops where it is; the first one always completes)."""
    live = [c for c in cases if c.shared_with is None and c.error is None]
    for c in live:  # first step: lazy state (optimizer moments) + memory count; then warm-up
        try:
            if c.kind == "train":
                c.memory, c.extra_memory = measure_memory(c)
            else:
                c.step()
            for _ in range(args.warmup):
                c.step()
        except Exception as err:  # noqa: BLE001 - one broken configuration must not sink the table
            c.error = f"{type(err).__name__}: {err}"
            if log:
                log(f"  {c.key}: {c.error}")
    live = [c for c in live if c.error is None]
    rng = random.Random(args.seed)
    sync = torch.cuda.synchronize if args.device == "cuda" else lambda: None
    gc.collect()
    gc.disable()
    try:
        rep = 0
        while True:
            t_rep = time.monotonic()
            order = list(live)
            rng.shuffle(order)
            for c in order:
                if rep and time.monotonic() > deadline:
                    break  # a partial repetition: what it measured counts
                if args.wait_quiet:
                    wait_quiet(args.wait_quiet)
                c.samples.append(timed(c.step, args.steps * (3 if c.kind == "eval" else 1), sync))  # forward ≈ 1/3 step
            gc.collect()
            rep += 1
            n_clean = min(sum(s["others"] < CLEAN_SHARE for s in c.samples) for c in live) if live else 0
            if log:
                log(f"  repetition {rep}: {time.monotonic() - t_rep:.0f} s, fewest clean samples {n_clean}")
            if rep >= args.max_reps or time.monotonic() > deadline or (rep >= args.reps and n_clean >= args.clean):
                break
    finally:
        gc.enable()


def wait_quiet(max_s: float) -> bool:
    """Wait (up to max_s) for a 0.3 s window in which other processes used < 5% of the CPUs."""
    t_end = time.monotonic() + max_s
    while time.monotonic() < t_end:
        j0 = _jiffies()
        time.sleep(0.3)
        j1 = _jiffies()
        if j0 is None or j1 is None:
            return True
        if max(0, (j1[0] - j0[0]) - (j1[1] - j0[1])) / (0.3 * _HZ * (os.cpu_count() or 1)) < CLEAN_SHARE:
            return True
    return False


def estimate(c: Case | None, clock: str) -> dict:
    """Best (min) and median seconds per step over the clean samples (over all when none is clean)."""
    if c is None or not c.samples:
        return {"best": None, "median": None, "clean": 0, "n": 0}
    # Other processes only add wall time, so quiet samples are the ones to trust; CPU time is charged to this
    # process only, so every sample counts.
    clean = [s[clock] for s in c.samples if s["others"] < CLEAN_SHARE]
    pick = clean if clean and clock == "wall" else [s[clock] for s in c.samples]
    return {"best": min(pick), "median": statistics.median(pick), "clean": len(clean), "n": len(c.samples)}


def rows_for(shape: Shape, cases: list[Case], args) -> list[dict]:
    by_key = {c.key: c for c in cases}
    resolve = lambda c: by_key[c.shared_with] if c.shared_with else c  # noqa: E731
    floor = estimate(by_key["floor"], args.clock)
    base = estimate(by_key.get("eval:base"), args.clock)
    f_t, f_mem, f_extra = floor["best"], by_key["floor"].memory, by_key["floor"].extra_memory
    anchors: dict[str, list[Case]] = {}
    for c in cases:
        if c.anchor_of:
            anchors.setdefault(c.anchor_of, []).append(c)
    common = {"model": shape.name, "batch": f"{shape.batch}x{shape.seq}", "threads": args.threads, "clock": args.clock,
              "device": args.device, "dtype": args.dtype}
    rows = []
    for c in cases:
        if c.is_anchor:
            continue
        m = resolve(c)
        e = estimate(m, args.clock)
        ref = base["best"] if c.kind == "eval" else f_t
        row: dict[str, Any] = {
            **common, "kind": c.kind, "method": c.method, "config": c.config, "spec": c.spec,
            "trainable_params": c.params, "percent": round(c.percent, 4) if c.percent is not None else None,
            "seconds_per_step": e["best"], "seconds_median": e["median"],
            "samples": e["n"], "clean_samples": e["clean"],
            "ratio_to_floor": (e["best"] / ref) if e["best"] and ref else None,
            "peak_memory_bytes": m.memory,
            "peak_memory_ratio": (m.memory / f_mem) if m.memory and f_mem else None,
            "extra_memory_bytes": m.extra_memory,
            "extra_memory_ratio": (m.extra_memory / f_extra) if m.extra_memory and f_extra else None,
            "error": m.error,
        }
        plan = getattr(m, "plan", None)
        if plan is not None and "budget_params" in plan.meta:  # only plans made under a budget have it
            row["budget_params"] = plan.meta["budget_params"]  # the target count the sizes were solved for
        if c.kind == "eval":
            row["ratio_to_base"] = row.pop("ratio_to_floor")
            row["target"] = EVAL_TARGET.get(c.method)
        elif c.config != "reference":
            row["target"] = None if c.method in EXEMPT else TARGET.get(c.method, DEFAULT_TARGET)
        mine = anchors.get(c.key, []) + (anchors.get(m.key, []) if m is not c else [])
        for a in mine if c.kind == "train" else []:
            ae = estimate(a, args.clock)
            row.setdefault("anchors", []).append({
                "anchor": a.anchor, "seconds_per_step": ae["best"], "clean_samples": ae["clean"],
                "ratio_to_floor": (ae["best"] / f_t) if ae["best"] and f_t else None,
                "peak_memory_ratio": (a.memory / f_mem) if a.memory and f_mem else None,
                "extra_memory_ratio": (a.extra_memory / f_extra) if a.extra_memory and f_extra else None,
                "error": a.error})
        if row.get("anchors"):  # the flat fields the issue names: the first anchor (peft, then adapters)
            first = row["anchors"][0]
            row["anchor"], row["anchor_ratio_to_floor"] = first["anchor"], first["ratio_to_floor"]
            row["anchor_peak_memory_ratio"] = first["peak_memory_ratio"]
        row["meets_target"] = _meets(row)
        rows.append(row)
    for a in cases:  # anchors whose peftspace counterpart did not run here (the adapters environment)
        if a.is_anchor and a.anchor_of is None:
            ae = estimate(a, args.clock)
            rows.append({**common, "kind": "train", "method": a.method, "config": a.config, "spec": a.spec,
                         "seconds_per_step": None, "ratio_to_floor": None, "peak_memory_ratio": None,
                         "anchor": a.anchor, "anchor_seconds_per_step": ae["best"],
                         "anchor_ratio_to_floor": (ae["best"] / f_t) if ae["best"] and f_t else None,
                         "anchor_peak_memory_ratio": (a.memory / f_mem) if a.memory and f_mem else None,
                         "error": a.error, "meets_target": None})
    return rows


def _meets(row: dict) -> bool | None:
    """Sets `meets_time_target` / `meets_memory_target` on a judged row and returns both together."""
    target = row.get("target")
    if target is None:
        return None
    if row["kind"] == "eval":
        r = row.get("ratio_to_base")
        # "zero overhead" is judged with the noise floor of the measurement: 1% (see README)
        return r is not None and r <= (target + 0.01 if target == 1.0 else target)
    r, mem = row.get("ratio_to_floor"), row.get("peak_memory_ratio")
    time_ok = r is not None and r <= target and all(
        r <= a["ratio_to_floor"] for a in row.get("anchors", []) if a["ratio_to_floor"] is not None)
    mem_ok = mem is not None and mem <= MEM_TARGET
    row["meets_time_target"], row["meets_memory_target"] = time_ok, mem_ok
    return time_ok and mem_ok


# ---- output ----------------------------------------------------------------------------------------------
def _f(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def print_table(shape: Shape, rows: list[dict], console, notes: list[str]) -> None:
    from rich.table import Table

    first = rows[0] if rows else {}
    batch = first.get("batch", f"{shape.batch}x{shape.seq}").replace("x", " x ")
    where = f"{first.get('device', 'cpu')}, {first.get('dtype', 'float32')}"  # rows of older runs: CPU float32
    t = Table(title=f"{shape.name}: {shape.note}; batch {batch}; {where}", show_lines=False)
    for col, just in (("method", "left"), ("config", "left"), ("spec", "left"), ("Δh %", "right"),
                      ("s/step", "right"), ("clean", "right"), ("× floor", "right"), ("mem × floor", "right"),
                      ("kept × floor", "right"), ("anchor", "left"),
                      ("anchor × floor", "right"), ("target", "right"), ("ok", "center")):
        t.add_column(col, justify=just, overflow="fold")
    for r in [r for r in rows if r["kind"] == "train"]:
        ok = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[r.get("meets_target")]
        if r.get("meets_target") is False:
            ok = "[red]" + ("time" if not r.get("meets_time_target") else "") + (
                "+" if not (r.get("meets_time_target") or r.get("meets_memory_target")) else "") + (
                "mem" if not r.get("meets_memory_target") else "") + "[/]"
        anchors = r.get("anchors") or ([{"anchor": r["anchor"], "ratio_to_floor": r.get("anchor_ratio_to_floor")}]
                                       if r.get("anchor") else [])
        spec = r["spec"] if len(r["spec"]) <= 48 else r["spec"][:45] + "..."
        t.add_row(r["method"], r["config"], spec + (f" [red]{r['error']}[/]" if r.get("error") else ""),
                  _f(r.get("percent"), "{:.3f}"), _f(r.get("seconds_per_step")),
                  f"{r.get('clean_samples', 0)}/{r.get('samples', 0)}", _f(r.get("ratio_to_floor")),
                  _f(r.get("peak_memory_ratio")), _f(r.get("extra_memory_ratio")),
                  "\n".join(a["anchor"] for a in anchors),
                  "\n".join(_f(a["ratio_to_floor"]) for a in anchors) or _f(None),
                  _f(r.get("target"), "≤{:.2f}") if r.get("target") else ("exempt" if r["method"] in EXEMPT else ""),
                  ok)
    console.print(t)
    ev = [r for r in rows if r["kind"] == "eval"]
    if ev:
        e = Table(title=f"{shape.name}: evaluation forward (no_grad), batch {batch}; {where}")
        for col in ("method", "spec", "s/forward", "clean", "× base", "target", "ok"):
            e.add_column(col)
        for r in ev:
            ok = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[r.get("meets_target")]
            e.add_row(r["method"], r["spec"], _f(r.get("seconds_per_step")),
                      f"{r.get('clean_samples', 0)}/{r.get('samples', 0)}", _f(r.get("ratio_to_base")),
                      _f(r.get("target"), "≤{:.2f}"), ok)
        console.print(e)
    for n in notes:
        console.print(f"[yellow]note[/]: {n}")


def apply_malloc(mode: str) -> str:
    """Apply `--malloc` (process-wide, not undone: every configuration measured after it alike); its label."""
    if mode == "system":
        return "system"
    from peftspace.runtime import keep_freed_memory

    return "keep" if keep_freed_memory() else "system (keep_freed_memory unavailable here)"


def openmp_wait() -> str:
    """How this process's idle OpenMP threads wait, as set in its environment when torch loaded."""
    policy, spin = os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT")
    if policy:
        return f"OMP_WAIT_POLICY={policy}" + (f", GOMP_SPINCOUNT={spin}" if spin else "")
    return f"GOMP_SPINCOUNT={spin}" if spin else "OpenMP default"


def environment(threads: int, malloc: str, device: str = "cpu", dtype: str = "float32") -> dict:
    import transformers

    env = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": platform.machine(), "cpus": os.cpu_count(),
           "threads": threads, "malloc": malloc, "openmp_wait": openmp_wait(), "python": platform.python_version(),
           "torch": torch.__version__, "transformers": transformers.__version__, "device": device, "dtype": dtype}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    for lib in ("peft", "adapters"):
        try:
            env[lib] = __import__(lib).__version__
        except Exception:  # noqa: BLE001
            pass
    return env


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--quick", action="store_true", help="MiniLM-shaped table only, within 5 minutes: repetitions until "
                                                         "4.5 min have passed; prompt at the budget skipped")
    p.add_argument("--models", default=None, help=f"comma list of {', '.join(SHAPES)} (default: minilm,bert-base,llama)")
    p.add_argument("--methods", default=None, help="comma list of presets (and 'design'); default: all")
    p.add_argument("--configs", default="anchor,budget", help="anchor, budget or both")
    p.add_argument("--budget", default="0.5%")
    p.add_argument("--anchor", default="peft", help="comma list of peft, adapters, or 'none'")
    p.add_argument("--adapters-only", action="store_true", help="measure only the floor and the anchors")
    p.add_argument("--reps", type=int, default=3, help="at least this many timed repetitions")
    p.add_argument("--max-reps", type=int, default=40, help="at most this many timed repetitions")
    p.add_argument("--clean", type=int, default=None, help="repeat (within --time-budget) until every configuration has "
                                                           "this many clean samples (other processes < 5%% of the CPUs; "
                                                           "default 6, --quick 8)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds of timed repetitions per model shape (default 900; --quick: what is left of 270 s)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="before each timed step, wait up to S seconds for other processes to use < 5%% of the CPUs")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: step time (the target); cpu: process CPU time, steadier on a shared machine with --threads 1")
    p.add_argument("--steps", type=int, default=1, help="steps per configuration per repetition")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps after the first (default 1; --quick 0)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: the first GPU; steps are timed between torch.cuda.synchronize() calls and peak memory "
                        "is the CUDA allocator's (see 'peak memory' below)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="weights and activations (default: float32 on cpu, bfloat16 on cuda); Δh parameters take "
                        "the dtype of the weights they attach to, as they do for a model loaded in that dtype")
    p.add_argument("--batch", type=int, default=None, help="sequences per step for every shape (default: the shape's)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence for every shape (default: the shape's)")
    p.add_argument("--malloc", choices=("keep", "system"), default="keep",
                   help="keep: freed memory stays in the process for the next step, as `peftspace train` runs "
                        "(peftspace.keep_freed_memory); system: glibc's default, which unmaps it and page-faults it "
                        "back every step (tens of thousands of faults per step, a different number per configuration)")
    p.add_argument("--no-full", action="store_true", help="skip the full fine-tuning reference row")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation (forward-only) table")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="write the rows as a JSON list to PATH; bare --json: JSON to stdout, the table to stderr")
    p.add_argument("--profile", default=None, metavar="KEYS",
                   help="after timing, torch.profiler one step of these case keys (e.g. 'floor,lora:anchor')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="print (and with --json write) the median of several runs' JSON rows instead of measuring")
    args = p.parse_args(argv)
    args.models = (args.models or ("minilm" if args.quick else "minilm,bert-base,llama")).split(",")
    for m in args.models:
        if m not in SHAPES:
            p.error(f"unknown model shape {m!r}; known: {', '.join(SHAPES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False; this torch is "
                f"{torch.__version__}); run on a machine with an NVIDIA GPU and a CUDA build of torch, or use --device cpu")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    for name in ("batch", "seq"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    for m in args.models if args.seq else ():
        limit = SHAPES[m].fields.get("max_position_embeddings")
        if limit is not None and args.seq > limit:
            p.error(f"--seq {args.seq}: the {m} shape has {limit} positions; use --seq {limit} or less")
    args.methods = set((args.methods or ",".join(PRESET_ORDER + ("design",))).split(","))
    args.configs = set(args.configs.split(","))
    args.anchor = [] if args.anchor == "none" else args.anchor.split(",")
    args.warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    args.clean = args.clean if args.clean is not None else (8 if args.quick else 6)
    args.skip_prompt_budget = args.quick
    if args.adapters_only and "adapters" not in args.anchor:
        args.anchor.append("adapters")
    return args


def run(args, console=None, log=None, t_start: float | None = None) -> list[dict]:
    t_start = time.monotonic() if t_start is None else t_start
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormal moments in AdamW would time the FPU, not the method
    apply_malloc(args.malloc)
    try:
        return _run(args, console, log, t_start)
    finally:  # leave the process as it was (the tests run in one)
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)


def _run(args, console, log, t_start: float) -> list[dict]:
    all_rows: list[dict] = []
    for name in args.models:
        shape = SHAPES[name]
        if args.batch or args.seq:
            shape = replace(shape, batch=args.batch or shape.batch, seq=args.seq or shape.seq)
        if log:
            log(f"{name}: building")
        base = build_model(shape, args.seed, args.device, getattr(torch, args.dtype))
        batch = make_batch(shape, base, args.seed)
        cases, notes = build_cases(shape, base, args)
        for c in cases:
            if c.shared_with is None and c.error is None:
                prepare(c, batch)
        if log:
            log(f"{name}: {sum(c.shared_with is None for c in cases)} configurations")
        if args.time_budget is not None:
            deadline = time.monotonic() + args.time_budget
        else:
            deadline = t_start + 270.0 if args.quick else time.monotonic() + 900.0
        run_interleaved(cases, args, deadline, log)
        rows = rows_for(shape, cases, args)
        dirty = [r for r in rows if r.get("samples") and not r.get("clean_samples")]
        if dirty:
            notes.append(f"{len(dirty)} configuration(s) got no clean sample (other processes used ≥ 5% of the CPUs "
                         "during every one of their steps): their times are the best of contended steps")
        all_rows.extend(rows)
        if console is not None:
            print_table(shape, rows, console, notes)
        if args.profile:
            profile(cases, args.profile.split(","), console)
        del cases, base
        gc.collect()
    return all_rows


def profile(cases: list[Case], keys: list[str], console) -> None:
    from torch.profiler import ProfilerActivity, profile as tprof

    for c in cases:
        if c.key in keys and c.step is not None:
            with tprof(activities=[ProfilerActivity.CPU]) as prof:
                c.step()
            console.print(f"[bold]profile {c.key}[/]")
            console.print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def table_key(row: dict) -> tuple:
    """Which table a row belongs to: model shape, device, dtype, batch (rows of older runs have no device or
    dtype: they ran on the CPU in float32)."""
    return row["model"], row.get("device", "cpu"), row.get("dtype", "float32"), row["batch"]


def _runs_of(r: dict, key: str) -> list[float]:
    """The per-run values behind a row's `key`: its `ratio_runs` when the row is itself a merge of runs (so a
    merged file counts as the runs it was made of, not as one), else the one value."""
    if r.get("ratio_runs") is not None:
        return list(r["ratio_runs"])
    return [r[key]] if r.get(key) is not None else []


def merge_runs(paths: list[str]) -> list[dict]:
    """Rows of several runs (separate processes: each has its own allocator and memory layout, which moves a
    row by a few percent) merged into one: median ratios and seconds, the per-run ratios kept. A file that is
    itself a merge contributes each of its runs (`ratio_runs`), so more runs can be added to a merged table."""
    groups: dict[tuple, list[dict]] = {}
    for p in paths:
        for r in json.loads(Path(p).read_text(encoding="utf-8")):
            groups.setdefault(table_key(r) + (r["kind"], r["method"], r["config"]), []).append(r)
    med = lambda v: statistics.median(v) if v else None  # noqa: E731
    out = []
    for rs in groups.values():
        row = dict(rs[0])
        key = "ratio_to_base" if row["kind"] == "eval" else "ratio_to_floor"
        vals = [v for r in rs for v in _runs_of(r, key)]
        row[key], row["ratio_runs"], row["runs"] = med(vals), vals, sum(r.get("runs") or 1 for r in rs)
        row["seconds_per_step"] = med([r["seconds_per_step"] for r in rs if r.get("seconds_per_step")])
        row["samples"] = sum(r.get("samples") or 0 for r in rs)
        row["clean_samples"] = sum(r.get("clean_samples") or 0 for r in rs)
        if row.get("anchors"):
            anchors = []
            for i, a in enumerate(row["anchors"]):
                av = [v for r in rs if len(r.get("anchors") or []) > i
                      for v in _runs_of(r["anchors"][i], "ratio_to_floor")]
                anchors.append({**a, "ratio_to_floor": med(av), "ratio_runs": av})
            row["anchors"], row["anchor_ratio_to_floor"] = anchors, anchors[0]["ratio_to_floor"]
        row["meets_target"] = _meets(row)
        out.append(row)
    return out


def main(argv=None) -> int:
    from rich.console import Console

    args = parse_args(argv)
    to_stdout = args.json == "-"
    console = Console(stderr=to_stdout, width=200)
    log = lambda s: console.print(f"[dim]{time.strftime('%H:%M:%S')} {s}[/]")  # noqa: E731
    if "adapters" in args.anchor:
        try:
            import adapters  # noqa: F401
        except ImportError:
            console.print(ADAPTERS_HELP)
            if args.adapters_only:
                return 0
    if args.merge:
        rows = merge_runs(args.merge)
        for table in dict.fromkeys(map(table_key, rows)):
            model = table[0]
            mine = [r for r in rows if table_key(r) == table]
            shape = SHAPES.get(model) or Shape(model, "?", {}, *map(int, mine[0]["batch"].split("x")), model)
            runs = max(r.get("runs") or 1 for r in mine)
            print_table(shape, mine, console, [f"median of {runs} runs (processes); every run's ratios are "
                                               "in the JSON as ratio_runs"])
    else:
        env = environment(args.threads, apply_malloc(args.malloc), args.device, args.dtype)
        console.print(f"[bold]peftspace step time[/] {json.dumps(env)}")
        t0 = time.perf_counter()
        rows = run(args, console, log, t_start=_T0)
        console.print(f"[dim]total {time.perf_counter() - t0:.0f} s[/]")
        for r in rows:
            r["env"] = env
    if args.json:
        text = json.dumps(rows, indent=1)
        if to_stdout:
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
