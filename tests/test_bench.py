"""bench/step_time.py runs end to end on a tiny model: the rows' shape, every preset, the anchors.

No wall-clock assertion anywhere (STYLE.md): one repetition on a 2-layer model, only the machinery.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("peftspace_bench_step_time", ROOT / "bench" / "step_time.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _load_bench()


@pytest.fixture(scope="module")
def rows(bench):
    threads = torch.get_num_threads()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # bare --json: the rows go to stdout, the table to stderr
        rc = bench.main(["--models", "tiny", "--reps", "1", "--max-reps", "1", "--budget", "2%", "--threads", "1",
                         "--no-full", "--json"])
    assert rc == 0
    assert torch.get_num_threads() == threads, "the benchmark must restore the thread count"
    return json.loads(out.getvalue())


REQUIRED = ("method", "model", "config", "seconds_per_step", "ratio_to_floor", "peak_memory_ratio")


def test_rows_have_the_required_fields(rows):
    train = [r for r in rows if r["kind"] == "train"]
    assert train
    for r in train:
        for k in REQUIRED:
            assert k in r, f"row {r['method']}/{r['config']} lacks {k}"
        assert r["error"] is None, f"{r['method']} at {r['config']}: {r['error']}"
        assert r["seconds_per_step"] > 0 and r["ratio_to_floor"] > 0 and r["peak_memory_ratio"] > 0
        assert r["model"] == "tiny"
    floor = next(r for r in train if r["method"] == "floor")
    assert floor["ratio_to_floor"] == 1.0 and floor["peak_memory_ratio"] == 1.0


def test_every_preset_and_a_design_appear(rows, bench):
    anchor = {r["method"] for r in rows if r["kind"] == "train" and r["config"] == "anchor"}
    budget = {r["method"] for r in rows if r["kind"] == "train" and r["config"] == "2%"}
    assert set(bench.PRESET_ORDER) <= anchor
    assert set(bench.PRESET_ORDER) - {"prompt"} <= budget | {"lora_ffn", "adapter", "mam"}  # tiny: some too big
    assert budget & {"design", "mixed-design"}, "a sampled (or hand-mixed) design is measured at the budget"
    for r in rows:
        if r["kind"] == "train" and r["config"] != "reference":
            assert ("target" in r) and ("meets_target" in r)


def test_peft_anchors_side_by_side(rows):
    pytest.importorskip("peft")
    by = {(r["method"], r["config"]): r for r in rows if r["kind"] == "train"}
    for method in ("lora", "lora_ffn", "prefix"):
        r = by[(method, "anchor")]
        assert r["anchor"].startswith("peft"), r
        assert r["anchor_ratio_to_floor"] > 0


def test_eval_rows(rows):
    ev = {r["method"]: r for r in rows if r["kind"] == "eval"}
    assert {"base", "lora (merged)", "pa", "prefix"} <= set(ev)
    assert ev["base"]["ratio_to_base"] == 1.0
    assert all(r["ratio_to_base"] > 0 for r in ev.values())


def test_adapters_side_explains_itself_without_adapters(bench, capsys):
    try:
        import adapters  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - the adapters environment
        pytest.skip("adapters is installed here")
    assert bench.main(["--models", "tiny", "--anchor", "adapters", "--adapters-only"]) == 0
    err = capsys.readouterr()
    assert "pip install adapters" in err.out + err.err


def test_memory_counts_saved_activations_and_state(bench):
    shape = bench.SHAPES["tiny"]
    base = bench.build_model(shape)
    batch = bench.make_batch(shape, base)
    floor = bench.Case("floor", "floor", "reference", "", bench.floor_model(base))
    full = bench.Case("full", "full", "reference", "", bench.full_model(base))
    for c in (floor, full):
        bench.prepare(c, batch)
        c.memory, c.extra_memory = bench.measure_memory(c)
    n_backbone = sum(p.numel() for p in base.base_model.parameters())
    # full fine-tuning holds fp32 params + grads + two AdamW moments of every backbone weight besides activations
    assert full.extra_memory - floor.extra_memory >= 0.9 * 16 * n_backbone
    assert floor.extra_memory > 16 * sum(p.numel() for p in bench.head_parameters(base)), "kept activations count"
    # the peak adds the frozen weights and buffers: all of the floor's backbone, nothing of full fine-tuning's
    buffers = sum(b.untyped_storage().nbytes() for b in base.base_model.buffers())
    assert floor.memory - floor.extra_memory == 4 * n_backbone + buffers
    assert full.memory - full.extra_memory == buffers


def test_llama_shape_with_gqa_and_anchors(bench):
    """The decoder path: LLaMA with grouped-query heads, prefix/MAM through the attention interface, peft on it."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench.main(["--models", "tiny-llama", "--methods", "lora,prefix,mam,mh_pa", "--configs", "anchor",
                    "--reps", "1", "--max-reps", "1", "--threads", "1", "--no-full", "--no-eval", "--json"])
    rows = {r["method"]: r for r in json.loads(out.getvalue())}
    assert {"floor", "lora", "prefix", "mam", "mh_pa"} <= set(rows)
    assert all(r["error"] is None and r["ratio_to_floor"] > 0 for r in rows.values())
    if importlib.util.find_spec("peft") is not None:
        assert rows["lora"]["anchor"].startswith("peft") and rows["prefix"]["anchor"].startswith("peft")


@pytest.mark.parametrize("family", ["tiny-bert", "tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("pad_batch", [True, False])
def test_prefix_key_padding_is_invisible(family, pad_batch):
    """The speed path found by the benchmark (attach.py): with SDPA on CPU the prefix keys are padded to a
    multiple of 16 with masked zero keys; outputs and gradients equal those of the unpadded attention."""
    import peftspace as ps
    from peftspace.forms import Prefix

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import batch, tiny

    model = tiny(family)
    model.set_attn_implementation("sdpa")
    ps.attach(model, ps.plan(model, "prefix:l=5"))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Prefix):
                m.prefix_k.normal_(0, 1.0)
                m.prefix_v.normal_(0, 1.0)
    kw = batch(model, pad=pad_batch)
    results = []
    for padded in (True, False):
        for m in model.modules():
            if "_peftspace_sdpa" in m.__dict__:
                m.__dict__["_peftspace_sdpa"] = padded  # False: the plain concatenation
        model.zero_grad()
        out = model(**kw).logits
        out.float().pow(2).sum().backward()
        results.append((out.detach(), torch.cat([p.grad.flatten() for _, p in ps.delta_named_parameters(model)])))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ga, gb, atol=1e-4 * max(1.0, gb.abs().max().item()), rtol=1e-4)


def test_merge_takes_medians_over_runs(rows, bench, tmp_path):
    """--merge: the median of several runs' rows (a run is one process), with every run's ratio kept."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(rows))
    slower = json.loads(json.dumps(rows))
    for r in slower:
        if r.get("ratio_to_floor"):
            r["ratio_to_floor"] *= 1.5
    b.write_text(json.dumps(slower))
    out = tmp_path / "m.json"
    assert bench.main(["--merge", str(a), str(b), str(a), "--json", str(out)]) == 0
    merged = {(r["kind"], r["method"], r["config"]): r for r in json.loads(out.read_text())}
    for r in rows:
        m = merged[(r["kind"], r["method"], r["config"])]
        assert m["runs"] == 3
        if r.get("ratio_to_floor"):
            assert m["ratio_to_floor"] == pytest.approx(r["ratio_to_floor"])  # median of (x, 1.5x, x)
            assert len(m["ratio_runs"]) == 3


def test_a_merged_file_counts_as_its_runs(rows, bench, tmp_path):
    """Merging a merge with more runs pools every run (median of all of them), not the merge as one run."""
    paths = []
    for i, f in enumerate((1.0, 1.2, 1.4, 2.0)):
        rs = json.loads(json.dumps(rows))
        for r in rs:
            if r.get("ratio_to_floor"):
                r["ratio_to_floor"] *= f
            for a in r.get("anchors") or []:
                if a.get("ratio_to_floor"):
                    a["ratio_to_floor"] *= f
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(rs))
    first = tmp_path / "first.json"
    first.write_text(json.dumps(bench.merge_runs([str(p) for p in paths[:3]])))  # runs ×1, ×1.2, ×1.4
    pooled = bench.merge_runs([str(first), str(paths[3])])  # + a run ×2.0: median of 4 = ×1.3, not of (1.2, 2.0)
    by = {(r["kind"], r["method"], r["config"]): r for r in pooled}
    judged = anchored = 0
    for r in rows:
        m = by[(r["kind"], r["method"], r["config"])]
        assert m["runs"] == 4
        if r.get("ratio_to_floor"):
            assert m["ratio_to_floor"] == pytest.approx(1.3 * r["ratio_to_floor"])
            assert sorted(m["ratio_runs"]) == pytest.approx([f * r["ratio_to_floor"] for f in (1.0, 1.2, 1.4, 2.0)])
            judged += 1
        assert len(m.get("anchors") or []) == len(r.get("anchors") or [])
        for a, ma in zip(r.get("anchors") or [], m.get("anchors") or []):
            if a.get("ratio_to_floor"):
                assert ma["ratio_to_floor"] == pytest.approx(1.3 * a["ratio_to_floor"])
                assert len(ma["ratio_runs"]) == 4
                anchored += 1
    assert judged and anchored  # the tiny run has peft anchors: both paths were checked


def test_merge_keeps_devices_and_dtypes_apart(rows, bench, tmp_path):
    """A GPU/bf16 run is never averaged into a CPU table; rows written before `device` existed count as CPU fp32."""
    old = [{k: v for k, v in r.items() if k not in ("device", "dtype")} for r in rows]
    gpu = [{**r, "device": "cuda", "dtype": "bfloat16", **({"ratio_to_floor": 3.0} if r.get("ratio_to_floor") else {})}
           for r in rows]
    paths = []
    for name, rs in (("cpu", rows), ("old", old), ("gpu", gpu)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(rs))
    merged = bench.merge_runs([str(p) for p in paths])
    assert len(merged) == 2 * len(rows)
    for m in merged:
        assert m["runs"] == (1 if m.get("device") == "cuda" else 2)
        if m.get("device") == "cuda" and m.get("ratio_to_floor"):
            assert m["ratio_to_floor"] == 3.0


def test_bench_records_how_openmp_threads_wait(bench, monkeypatch):
    """env.openmp_wait: what the process's environment told OpenMP (the script sets the CLI's spin count)."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert bench.openmp_wait() == "OpenMP default"
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")
    assert bench.openmp_wait() == "GOMP_SPINCOUNT=10000"
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert bench.openmp_wait() == "OMP_WAIT_POLICY=PASSIVE, GOMP_SPINCOUNT=10000"


def test_truncated_shape_budgets_at_full_depth_sizes(bench):
    """A shape that keeps 2 of a model's 6 layers plans '2%' with the per-layer sizes '2%' gives all 6."""
    import peftspace as ps
    from transformers import AutoConfig, AutoModelForSequenceClassification

    tiny = bench.SHAPES["tiny-llama"]
    shape = bench.Shape("cut", "llama", tiny.fields, tiny.batch, tiny.seq, "2 of 6 layers", full_layers=6)
    base = bench.build_model(shape)
    count, note = bench.shape_budget(shape, base, "2%")
    assert isinstance(count, int) and "6-layer" in note
    cfg = AutoConfig.for_model("llama", **{**tiny.fields, "num_hidden_layers": 6}, num_labels=2)
    full = AutoModelForSequenceClassification.from_config(cfg)
    for method in ("lora", "adapter", "prefix", "mam"):
        at_depth = bench.size_label(ps.plan(full, method, budget="2%"))
        assert bench.size_label(ps.plan(base, method, budget=count)) == at_depth, method
        assert bench.size_label(ps.plan(base, method, budget="2%")) != at_depth, method  # what it corrects
    assert bench.shape_budget(shape, base, "1500") == ("1500", None)  # a count is a count
    assert bench.shape_budget(tiny, base, "2%") == ("2%", None)  # full depth already


def test_bench_rows_carry_the_budget_they_were_solved_for(bench):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench.main(["--models", "tiny", "--methods", "lora", "--configs", "budget", "--budget", "2%",
                    "--reps", "1", "--max-reps", "1", "--threads", "1", "--no-full", "--no-eval", "--json"])
    row = next(r for r in json.loads(out.getvalue()) if r["method"] == "lora")
    assert row["budget_params"] > 0 and abs(row["trainable_params"] - row["budget_params"]) < row["budget_params"] * 0.2


def test_bf16_run_with_batch_override(bench):
    """--dtype bfloat16 (the GPU table's dtype, run here on the CPU) and --batch/--seq: the model, its Δh and
    the anchors run in bf16 at the given batch, and every row says so."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = bench.main(["--models", "tiny-llama", "--methods", "lora,prefix,pa", "--configs", "anchor", "--dtype",
                         "bfloat16", "--batch", "2", "--seq", "12", "--reps", "1", "--max-reps", "1", "--threads", "1",
                         "--no-full", "--json"])
    assert rc == 0
    rows = json.loads(out.getvalue())
    assert {r["method"] for r in rows} >= {"floor", "lora", "prefix", "pa", "base", "lora (merged)"}
    for r in rows:
        assert (r["device"], r["dtype"], r["batch"]) == ("cpu", "bfloat16", "2x12"), r
        assert r["error"] is None and all(a["error"] is None for a in r.get("anchors", [])), r
        assert (r.get("ratio_to_floor") or r.get("ratio_to_base")) > 0
    assert rows[0]["env"]["dtype"] == "bfloat16"


def test_bf16_model_gets_bf16_deltas(bench):
    import peftspace as ps

    base = bench.build_model(bench.SHAPES["tiny"], dtype=torch.bfloat16)
    case = bench.peftspace_case(base, "k", "mam", "anchor", "mam:l=4,r=2")
    dtypes = {p.dtype for _, p in ps.delta_named_parameters(case.model)}
    assert dtypes == {torch.bfloat16}
    bench.prepare(case, bench.make_batch(bench.SHAPES["tiny"], case.model))
    case.step()  # a bf16 training step: forward, backward, fused AdamW
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for _, p in ps.delta_named_parameters(case.model))


def test_cuda_without_a_gpu_is_a_clear_error(bench, capsys):
    if torch.cuda.is_available():  # pragma: no cover - a GPU machine
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(["--device", "cuda"])
    assert exc.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--batch", "0"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "tiny", "--seq", "129"])  # 128 positions
    assert "128 positions" in capsys.readouterr().err
    assert bench.parse_args(["--models", "tiny", "--seq", "128"]).seq == 128
