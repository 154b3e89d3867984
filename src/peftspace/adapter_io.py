"""Adapter files: only Δh weights (safetensors) and the Plan (JSON). Loading never unpickles.

Layout of an adapter directory:
    plan.json            the Plan (dims of the model it was made for, entries, provenance)
    adapter.safetensors  Δh parameters, keyed by their names in the model
    head.safetensors     task-head parameters, when the head was trained (optional)
    adapter.json         how to rebuild the base model: name, task, num_labels; peftspace version

A pure-LoRA plan exports to the Hugging Face PEFT format (`export_peft`), loadable with
`peft.PeftModel.from_pretrained`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .attach import _STATE, attach, attached_plan, delta_named_parameters
from .forms import LowRank, Prefix
from .plan import Plan
from .spec import SpecError


def _model_info(model) -> dict:
    cfg = model.config
    task = "base"
    name = type(model).__name__
    if "SequenceClassification" in name:
        task = "regression" if getattr(cfg, "problem_type", None) == "regression" else "classification"
    elif "CausalLM" in name:
        task = "causal-lm"
    elif "ConditionalGeneration" in name:
        task = "seq2seq-lm"
    return {"model": getattr(cfg, "peftspace_name", None) or getattr(cfg, "_name_or_path", None), "task": task,
            "num_labels": int(getattr(cfg, "num_labels", 2))}


def _atomic_dir(directory: Path):
    directory.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))


def save_adapter(model, directory: str | os.PathLike) -> Path:
    """Write the attached plan's Δh weights (and a trained task head) to `directory`, atomically."""
    plan = attached_plan(model)
    if plan is None:
        raise SpecError("no plan is attached to this model: nothing to save (ps.attach(model, plan) first)")
    directory = Path(directory)
    tmp = _atomic_dir(directory)
    deltas = {n: p.detach().to("cpu").contiguous() for n, p in delta_named_parameters(model)}
    head = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters()
            if p.requires_grad and n not in deltas}
    save_file(deltas, str(tmp / "adapter.safetensors"), metadata={"format": "peftspace", "plan_hash": plan.hash})
    if head:
        save_file(head, str(tmp / "head.safetensors"), metadata={"format": "peftspace"})
    (tmp / "plan.json").write_text(plan.to_json(), encoding="utf-8")
    from . import __version__

    info = {**_model_info(model), "peftspace": __version__, "plan_hash": plan.hash}
    (tmp / "adapter.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    if directory.exists():  # replace an older save: move it aside, move the new one in, drop the old
        old = directory.with_name(f".{directory.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)
    return directory


def read_plan(directory: str | os.PathLike) -> Plan:
    p = Path(directory) / "plan.json"
    if not p.is_file():
        raise SpecError(f"{directory}: no plan.json; is this a peftspace adapter directory (ps.save_adapter)?")
    return Plan.from_json(p.read_text(encoding="utf-8"), where=str(p))


def load_adapter(model, directory: str | os.PathLike, *, seed: int = 0):
    """Attach the saved plan to a fresh base model and load its weights; refuses a plan made for
    another architecture (PlanMismatch) and any key or shape that does not match."""
    directory = Path(directory)
    plan = read_plan(directory)
    attach(model, plan, train_head=False, seed=seed)
    saved = load_file(str(directory / "adapter.safetensors"))
    for m in model.modules():  # a saved materialised prefix replaces the training-only MLP
        if isinstance(m, Prefix) and not hasattr(m, "prefix_k"):
            if any(k.endswith("prefix_k") for k in saved):
                m.materialize()
    params = dict(delta_named_parameters(model))
    missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    if missing or unexpected:
        raise SpecError(f"{directory}/adapter.safetensors does not match its plan on this model: "
                        f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for n, p in params.items():
            t = saved[n]
            if t.shape != p.shape:
                raise SpecError(f"{directory}/adapter.safetensors: {n} has shape {tuple(t.shape)}, the model expects {tuple(p.shape)}")
            p.copy_(t.to(p.dtype))
        head_file = directory / "head.safetensors"
        if head_file.is_file():
            named = dict(model.named_parameters())
            for n, t in load_file(str(head_file)).items():
                if n not in named or named[n].shape != t.shape:
                    raise SpecError(f"{head_file}: head parameter {n} does not fit this model")
                named[n].copy_(t.to(named[n].dtype))
    return model


def export_peft(model, out: str | os.PathLike) -> Path:
    """Export an attached pure-LoRA plan to the Hugging Face PEFT adapter format."""
    st = getattr(model, _STATE, None)
    if st is None:
        raise SpecError("no plan is attached to this model")
    bad = [e.spec.name for e in st.plan.entries if e.spec.form != "lora" or e.spec.composition not in ("add", "scale")]
    if bad:
        raise SpecError(f"only plans made purely of LoRA specs with add/scale composition export to PEFT; "
                        f"not: {sorted(set(bad))}")
    names = {id(m): n for n, m in model.named_modules()}
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for m in model.modules():
        if not isinstance(m, LowRank):
            continue
        target, sl = st.targets[id(m)]
        if sl is not None:
            raise SpecError("this plan modifies a slice of a fused projection (GPT-2 c_attn q/v); PEFT cannot express "
                            "that: target whole projections to export")
        name = names[id(target)]
        tensors[f"base_model.model.{name}.lora_A.weight"] = m.lora_A.detach().cpu().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = m.lora_B.detach().cpu().contiguous()
        r = m.lora_A.shape[0]
        ranks[name] = r
        alphas[name] = (m.s if m.composition == "scale" else 1.0) * r  # PEFT's scaling is alpha / r
    head_modules = sorted({n.rsplit(".", 1)[0] for n, p in model.named_parameters()
                           if p.requires_grad and ".peftspace." not in f".{n}"})
    for n, p in model.named_parameters():
        if p.requires_grad and ".peftspace." not in f".{n}":
            mod, _, leaf = n.rpartition(".")
            tensors[f"base_model.model.{mod}.{leaf}"] = p.detach().cpu().contiguous()
    r0 = max(set(ranks.values()), key=list(ranks.values()).count)
    a0 = max(set(alphas.values()), key=list(alphas.values()).count)
    info = _model_info(model)
    config = {
        "peft_type": "LORA",
        "task_type": {"classification": "SEQ_CLS", "regression": "SEQ_CLS", "causal-lm": "CAUSAL_LM",
                      "seq2seq-lm": "SEQ_2_SEQ_LM"}.get(info["task"]),
        "base_model_name_or_path": info["model"],
        "r": r0,
        "lora_alpha": a0,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": sorted(ranks),
        "rank_pattern": {k: v for k, v in ranks.items() if v != r0},
        "alpha_pattern": {k: v for k, v in alphas.items() if v != a0},
        "modules_to_save": [h.split(".")[-1] for h in head_modules] or None,
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out
