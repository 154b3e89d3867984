"""`peftspace` command line. Each subcommand lives next to the code it drives; this file wires them.

    peftspace methods                              the presets and their design dimensions
    peftspace plan --model M --method SPEC [--budget 0.5%] [--json]
    peftspace sample --model M --space SPACE --budget 0.5% --n N --seed K [--json]
    peftspace show PLAN.json                       per-layer table and allocation picture
    peftspace train / compare                      train and evaluate on real data
    peftspace search / trials / report             design-space search over a trial store
    peftspace export --to peft DIR OUT             a pure-LoRA adapter in Hugging Face PEFT format
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EPILOG = """examples:
  peftspace methods
  peftspace plan --model shape:bart-large --method mam:l=30,r=512 --json
  peftspace plan --model minilm --method lora --budget 0.5%
  peftspace sample --model shape:t5-base --space chen2023-t5 --budget 0.5% --n 3
  peftspace search                 # the main job: a small real refinement on minilm + vader-movie

Models: minilm, smollm2 (real, packaged), tiny-bert/-roberta/-t5/-bart/-gpt2/-llama (random, small),
shape:<name> (full-size configs on the meta device: roberta-base, bart-large, t5-base, t5-3b, gpt2,
llama-2-7b, ...), or any local path / hub id."""


def _console():
    from rich.console import Console

    # Piped output (CI logs, `| less`) gets a fixed wide layout instead of rich's 80-column default.
    return Console(width=None if sys.stdout.isatty() else 160)


def cmd_methods(args) -> int:
    from .presets import DESCRIPTIONS, PRESETS

    if args.json:
        print(json.dumps({k: {"description": DESCRIPTIONS.get(k, ""), "specs": [s.to_dict() for s in v]}
                          for k, v in PRESETS.items()}, indent=2))
        return 0
    from rich.table import Table

    t = Table(title="peftspace presets: points in He et al.'s design space")
    for col in ("method", "spec", "functional form", "insertion", "modified representation", "composition", "size"):
        t.add_column(col)
    for name, specs in PRESETS.items():
        for i, s in enumerate(specs):
            comp = s.composition + (f" s={s.s:g}" if s.composition in ("scale", "learned") else "")
            form = s.form + (f" ({s.act})" if s.form == "bottleneck" else "")
            t.add_row(name if i == 0 else "", s.name, form, s.insertion, ", ".join(s.sites), comp,
                      "-" if not s.sized else f"{s.size_symbol}={s.size}")
    c = _console()
    c.print(t)
    c.print("Override with name:key=value,... e.g. lora:r=16,s=4 or mam:l=30,r=512; combine with + (lora+pa).")
    return 0


def _load_method(text: str):
    if os.path.isfile(text) and text.endswith((".yaml", ".yml", ".json")):
        from .presets import load_method_file

        return load_method_file(text)[0]
    return text


def cmd_plan(args) -> int:
    from .models import load_model
    from .plan import make_plan

    model = load_model(args.model, task=args.task)
    plan = make_plan(model, _load_method(args.method), budget=args.budget)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(plan.to_json())
    if args.json:
        print(json.dumps(plan.summary(), indent=2))
    else:
        _console().print(plan.table())
    return 0


def cmd_export(args) -> int:
    if args.to != "peft":
        raise SystemExit(f"--to {args.to!r}: only 'peft' is supported")
    from .adapter_io import export_peft, load_adapter
    from .models import load_model

    info = json.loads(open(os.path.join(args.dir, "adapter.json"), encoding="utf-8").read())
    model = load_model(args.model or info["model"], task=info["task"], num_labels=info["num_labels"])
    load_adapter(model, args.dir)
    head = os.path.join(args.dir, "head.safetensors")
    if os.path.isfile(head):
        from safetensors.torch import load_file

        names = set(load_file(head))  # a saved head is part of what PEFT must carry (modules_to_save)
        for n, p in model.named_parameters():
            if n in names:
                p.requires_grad_(True)
    out = export_peft(model, args.out)
    print(f"wrote {out}/adapter_config.json and adapter_model.safetensors")
    return 0


# subcommands implemented in other modules: (module, function that registers the parser)
_EXTERNAL = [
    ("peftspace.spaces.cli", "add_sample_parser"),
    ("peftspace.spaces.cli", "add_show_parser"),
    ("peftspace.train_cli", "add_train_parser"),
    ("peftspace.train_cli", "add_compare_parser"),
    ("peftspace.search.cli", "add_search_parser"),
    ("peftspace.search.cli", "add_trials_parser"),
    ("peftspace.search.cli", "add_report_parser"),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peftspace", description="Parameter-efficient fine-tuning as points in one design "
                                "space (He et al. 2022; Chen et al. 2023).", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    m = sub.add_parser("methods", help="list the presets with their design dimensions")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_methods)

    pl = sub.add_parser("plan", help="place a method on a model, optionally under a budget, and count parameters",
                        description="Place a method on every layer of a model and print the per-layer plan with "
                        "analytic parameter counts. Percent = inference-time Δh parameters / backbone parameters "
                        "(embeddings included, task head excluded), He et al. Appendix B.")
    pl.add_argument("--model", required=True, help="minilm, smollm2, tiny-*, shape:<name>, a path or a hub id")
    pl.add_argument("--method", required=True, help="preset[:key=value,...] (see `peftspace methods`) or a YAML/JSON spec file")
    pl.add_argument("--budget", help="target size: '0.5%%', a fraction 0.005, or a parameter count 120000")
    pl.add_argument("--task", default="auto", help="model head: auto, base, classification, regression, causal-lm, seq2seq-lm")
    pl.add_argument("--json", action="store_true", help="print the plan summary as JSON")
    pl.add_argument("--out", help="also write the plan JSON to this file")
    pl.set_defaults(func=cmd_plan)

    ex = sub.add_parser("export", help="export a saved pure-LoRA adapter to the Hugging Face PEFT format")
    ex.add_argument("--to", default="peft", choices=["peft"])
    ex.add_argument("dir", help="a directory written by ps.save_adapter / peftspace train")
    ex.add_argument("out", help="output directory (adapter_config.json + adapter_model.safetensors)")
    ex.add_argument("--model", help="base model (default: the one recorded in DIR/adapter.json)")
    ex.set_defaults(func=cmd_export)

    for module, fn in _EXTERNAL:
        try:
            getattr(importlib.import_module(module), fn)(sub)
        except (ImportError, AttributeError):
            continue
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from transformers.utils import logging as hf_logging

    from .runtime import keep_freed_memory
    from .spec import SpecError

    keep_freed_memory()  # training steps reuse freed memory instead of page-faulting it back (runtime.py)

    # The CLI reports what matters; transformers' load reports (new task heads) and bars are noise here.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return int(args.func(args) or 0)
    except (SpecError, ValueError, FileNotFoundError) as e:
        print(f"peftspace {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
