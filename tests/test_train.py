"""The training loop and the train/compare commands, on tiny models and small files; real models marked slow."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

import peftspace as ps
from peftspace.cli import main
from peftspace.data import load_task
from peftspace.train import TrainConfig, TrainingDiverged, train

WORDS_POS = ["good", "great", "fine", "lovely", "superb", "happy"]
WORDS_NEG = ["bad", "awful", "poor", "sad", "terrible", "boring"]


def _sentiment_csv(path, n=120, seed=0):
    rng = random.Random(seed)
    rows = ["text,label"]
    for i in range(n):
        pos = i % 2 == 0
        w = rng.choice(WORDS_POS if pos else WORDS_NEG)
        rows.append(f"the film was {w} and {rng.choice(['long', 'short', 'new'])},{'pos' if pos else 'neg'}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _gen_jsonl(path, n=60):
    rows = [json.dumps({"src": f"count {i}", "tgt": f"number {i}"}) for i in range(n)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


FAST = TrainConfig(steps=12, batch_size=8, eval_every=6, lr=5e-3, max_length=16)


def test_train_record_and_outputs(tmp_path):
    task = load_task(f"csv:{_sentiment_csv(tmp_path / 'd.csv')}", text_column="text", label_column="label")
    rec = train("tiny-bert", task, "lora", config=FAST, out=tmp_path / "run", progress=False)
    for key in ("dev", "test", "trainable_params", "percent", "seconds_per_step", "peak_memory_mb", "plan", "history"):
        assert key in rec
    assert set(rec["dev"]) >= {"accuracy", "f1", "mcc"}
    assert rec["steps"] == 12 and len(rec["history"]) == 2
    assert rec["best_step"] in (6, 12)
    assert rec["dev"]["accuracy"] == max(h["score"] for h in rec["history"])  # best-on-dev selection
    assert rec["trainable_params"] == ps.Plan.from_dict(rec["plan"]).trainable_params
    assert 0 < rec["percent"] < 100
    assert (tmp_path / "run" / "record.json").is_file() and (tmp_path / "run" / "adapter" / "plan.json").is_file()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(x)["event"] == "train" for x in lines) == 12


def test_full_finetuning_baseline(tmp_path):
    task = load_task(f"csv:{_sentiment_csv(tmp_path / 'd.csv')}", text_column="text", label_column="label")
    rec = train("tiny-bert", task, "full", config=FAST.replace(steps=4, eval_every=4), progress=False)
    assert rec["percent"] == 100.0 and rec["plan"] is None
    assert rec["trained_params"] >= rec["backbone_params"]


def test_nan_loss_stops_with_saved_state(tmp_path):
    task = load_task(f"csv:{_sentiment_csv(tmp_path / 'd.csv')}", text_column="text", label_column="label")
    with pytest.raises(TrainingDiverged, match="saved to") as e:
        train("tiny-bert", task, "lora", config=FAST.replace(lr=1e30, max_grad_norm=0.0), out=tmp_path / "run",
              progress=False)
    assert "diverged-step" in str(e.value)
    assert list((tmp_path / "run" / "diverged").glob("diverged-step*/adapter/adapter.safetensors"))


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-t5"])
def test_generation_task_trains_and_generates(tmp_path, model):
    task = load_task(f"jsonl:{_gen_jsonl(tmp_path / 'g.jsonl')}", text_column="src", target_column="tgt")
    assert task.kind == "generation"
    rec = train(model, task, "mam:l=4,r=8", config=FAST.replace(steps=6, eval_every=6, num_beams=2, max_new_tokens=4,
                                                                max_eval_examples=6), progress=False)
    assert {"bleu", "rouge1", "rougeL"} <= set(rec["test"])
    assert rec["steps"] == 6 and math.isfinite(rec["train_loss_last"])


def test_regression_task(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("text,score\n" + "\n".join(f"item {i},{i / 7:.3f}" for i in range(60)) + "\n")
    task = load_task(f"csv:{p}", text_column="text", label_column="score")
    assert task.kind == "regression"
    rec = train("tiny-bert", task, "pa", config=FAST.replace(steps=4, eval_every=4), progress=False)
    assert "pearson" in rec["dev"]


def test_cli_train_and_compare_reuse(tmp_path, capsys):
    csv = _sentiment_csv(tmp_path / "d.csv")
    args = ["--model", "tiny-bert", "--task", f"csv:{csv}", "--text-column", "text", "--label-column", "label",
            "--steps", "3", "--batch-size", "8", "--max-length", "16"]
    assert main(["train", *args, "--method", "lora", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert {"dev", "test", "trainable_params", "percent", "seconds_per_step"} <= set(rec)
    out = tmp_path / "cmp"
    cargs = ["compare", *args, "--budget", "2%", "--seeds", "2", "--methods", "bitfit,lora", "--out", str(out), "--json"]
    assert main(cargs) == 0
    first = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in first["rows"]] == ["bitfit", "lora"] and all(r["n"] == 2 for r in first["rows"])
    assert (out / "comparison.md").is_file() and (out / "comparison.png").is_file()
    n_runs = len(list((out / "runs").iterdir()))
    assert main(cargs) == 0  # repeated: every run is reused, none retrained
    second = json.loads(capsys.readouterr().out)
    assert second["rows"] == first["rows"] and len(list((out / "runs").iterdir())) == n_runs


def test_compare_takes_a_saved_plan_as_the_design(tmp_path, capsys):
    """--design PLAN.json (e.g. the design a search discovered) trains that plan as it is, under a label
    from its hash; a missing file is refused with what to pass instead."""
    csv = _sentiment_csv(tmp_path / "d.csv")
    args = ["--model", "tiny-bert", "--task", f"csv:{csv}", "--text-column", "text", "--label-column", "label",
            "--steps", "2", "--batch-size", "8", "--max-length", "16", "--seeds", "1", "--methods", "lora"]
    model = ps.load_model("tiny-bert", task="classification", num_labels=2, seed=0)
    plan = ps.plan(model, [{"name": "q_lora", "form": "lora", "sites": ["attn.q"], "size": 3},
                                {"name": "ffn_bias", "form": "bias", "sites": ["ffn.out"]}])
    pfile = tmp_path / "plan.json"
    pfile.write_text(plan.to_json(), encoding="utf-8")
    out = tmp_path / "cmp"
    assert main(["compare", *args, "--budget", "2%", "--design", str(pfile), "--out", str(out), "--json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    label = f"design-{plan.hash[:8]}"
    assert set(rows) == {"lora", label}
    assert rows[label]["trainable_params"] == plan.trainable_params
    assert main(["compare", *args, "--design", str(tmp_path / "nope.json"), "--out", str(out)]) == 2
    assert "no such plan file" in capsys.readouterr().err


# ---- real packaged models (what users run) -----------------------------------------------------------
@pytest.mark.slow
def test_minilm_lora_beats_untrained_head_by_10_points():
    task = load_task("vader-movie")
    cfg = TrainConfig(steps=70, batch_size=32, eval_every=70, lr=1e-3, max_length=48, max_eval_examples=400)
    torch.manual_seed(0)
    base = ps.load_model("minilm", task="classification", num_labels=2, seed=0)
    from peftspace.train import evaluate

    untrained = evaluate(base, task, "dev", tokenizer=ps.load_tokenizer("minilm"), config=cfg)["accuracy"]
    rec = train("minilm", task, "lora", budget="0.5%", config=cfg, progress=False)
    assert rec["dev"]["accuracy"] >= untrained + 0.10, (untrained, rec["dev"])


@pytest.mark.slow
def test_smollm2_generation_loss_drops_and_generate_works():
    task = load_task("ding-de-en", max_examples=200)
    cfg = TrainConfig(steps=8, batch_size=8, eval_every=8, lr=2e-3, max_length=48, max_eval_examples=4,
                      num_beams=2, max_new_tokens=8)
    rec = train("smollm2", task, "lora", config=cfg, progress=False)
    assert rec["train_loss_last"] < rec["train_loss_first"]
    assert math.isfinite(rec["test"]["bleu"])  # generate() ran with the adapter attached (beams, KV cache)


def test_design_space_design_as_a_method():
    from peftspace.train import prepare

    model = ps.load_model("tiny-bert")
    plan, label = prepare(model, "design:S0,groups=2", budget="1%")
    assert label == "design:S0,groups=2"
    assert abs(plan.trainable_params / (0.01 * plan.backbone_params) - 1) <= 0.01
    assert ps.attached_plan(model) is plan


def test_mixed_plan_trains_each_form_at_its_preset_rate(tmp_path, monkeypatch):
    """Without --lr, a design mixing forms gives each Δh its form's preset rate (presets.FORM_LR) and the
    head the adapters' rate; a single preset keeps its one rate. Checked on the optimizer train() builds."""
    from peftspace import presets

    task = load_task(f"csv:{_sentiment_csv(tmp_path / 'd.csv')}", text_column="text", label_column="label")
    seen = []
    real = torch.optim.AdamW

    def spy(groups, **kw):
        opt = real(groups, **kw)
        seen.append(opt)
        return opt

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    model = ps.load_model("tiny-bert")
    plan = ps.plan(model, "lora+prefix+bitfit")
    cfg = FAST.replace(steps=2, eval_every=2, lr=None)
    rec = train(model, task, plan, config=cfg, progress=False)
    assert rec["lr_by_form"] == {"lora": presets.FORM_LR["lora"], "prefix": presets.FORM_LR["prefix"],
                                 "bias": presets.FORM_LR["bias"]}
    rate = {id(p): g["initial_lr"] for g in seen[-1].param_groups for p in g["params"]}  # before the schedule
    assert seen[-1].defaults["fused"] is True  # CPU float parameters: AdamW's one-pass kernel
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        want = (presets.FORM_LR["lora"] if "lora_" in name else presets.FORM_LR["prefix"] if "prefix_" in name
                else presets.FORM_LR["bias"] if "delta_bias" in name else presets.OTHER_LR)
        assert rate[id(p)] == want, name
    rec = train("tiny-bert", task, "lora", config=cfg, progress=False)
    assert rec["lr_by_form"] is None and {g["initial_lr"] for g in seen[-1].param_groups} == {presets.DEFAULT_LR["lora"]}


def test_fused_adamw_only_where_it_runs():
    from peftspace.train import _fused_adamw

    cpu = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.bfloat16))]
    assert _fused_adamw([cpu]) is True
    assert _fused_adamw([cpu, [torch.nn.Parameter(torch.zeros(3, device="meta"))]]) is False
    assert _fused_adamw([[]]) is False
