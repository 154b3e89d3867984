"""peftspace: parameter-efficient fine-tuning as points in one design space.

Every method is a tuple of Δh specs over the four design dimensions of He et al. (ICLR 2022); a Plan
places specs of given sizes on layers of a Hugging Face model under an exact parameter budget; design
spaces (Chen et al., ICLR 2023) sample Plans and a search refines them.

    import peftspace as ps
    model = ps.load_model("minilm")
    plan = ps.plan(model, "mam", budget="0.5%")
    ps.attach(model, plan)
"""

from .attach import attach, attached_plan, delta_named_parameters, detach, merge, unmerge
from .plan import Plan, PlanEntry, make_plan as plan
from .presets import PRESETS, parse_method
from .runtime import keep_freed_memory
from .spec import DeltaSpec, SpecError
from . import forms

__version__ = "0.1.0"


def __getattr__(name):  # lazy: heavy or optional modules load on first use
    if name in ("load_model", "load_tokenizer", "backbone_params", "model_family", "MODEL_NAMES"):
        from . import models

        return getattr(models, name)
    if name in ("save_adapter", "load_adapter", "export_peft"):
        from . import adapter_io

        return getattr(adapter_io, name)
    if name in ("train", "evaluate"):
        from . import train as _train

        return getattr(_train, name)
    raise AttributeError(f"module 'peftspace' has no attribute {name!r}")


__all__ = ["attach", "detach", "merge", "unmerge", "attached_plan", "delta_named_parameters", "Plan", "PlanEntry",
           "plan", "PRESETS", "parse_method", "DeltaSpec", "SpecError", "load_model", "load_tokenizer",
           "save_adapter", "load_adapter", "train", "evaluate", "keep_freed_memory"]
