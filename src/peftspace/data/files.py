"""User data files: CSV, TSV and JSON Lines, validated row by row before anything trains.

* CSV: RFC 4180 (quoted fields may hold commas, quotes and newlines); the first line is the header.
* TSV: the first line is the header; fields are separated by tabs and are *not* quoted (IANA
  text/tab-separated-values), so quotes in text are kept as they are. Use CSV for fields that hold
  tabs or newlines.
* JSONL: one JSON object per line; the keys are the columns.

Rows are numbered as a person counts lines in the file: the CSV/TSV header is row 1 (a CSV record
spanning several lines is numbered by its first line), and JSONL line 1 is row 1. Blank lines are
skipped. Files must be UTF-8 (a leading byte-order mark is allowed).

Label handling: labels are read as text (JSON numbers too: 1 and 1.0 both mean "1"). The kind is
inferred unless given — a target column means generation; labels that are all numbers with at least
one non-integer mean regression; anything else is classification, with the sorted label values of
the training data as the class names (numerically sorted when all are integers) and the index in
that list as the label id.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

from .cache import sha256_file
from .errors import DataError, where
from .task import KINDS, PRIMARY_METRIC, SPLITS, Example, cap, check_nonempty, counts, split_examples

FORMATS = ("csv", "tsv", "jsonl")
_EXT = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_BAD_BYTES = re.compile("[\udc80-\udcff]")


def detect_format(path: str | Path, declared: str | None = None) -> str:
    if declared:
        return declared
    fmt = _EXT.get(Path(path).suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: cannot tell the file format from the extension {Path(path).suffix!r}; "
            f"use one of {', '.join(sorted(_EXT))} or a prefix csv:, tsv:, jsonl: (e.g. 'csv:{path}')"
        )
    return fmt


def _bad_utf8_message(path, row, column, value: str) -> str:
    m = _BAD_BYTES.search(value)
    byte = ord(m.group()) - 0xDC00 if m else None
    what = f" (byte 0x{byte:02x})" if byte is not None else ""
    return f"{where(path, row, column)}: not valid UTF-8{what}; save the file as UTF-8"


def read_rows(path: str | Path, fmt: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(columns, [(row number, {column: value})]) of one file. Values are str for CSV/TSV and JSON
    values for JSONL. Fails with a DataError naming the row on structural problems."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if fmt == "jsonl":
        return _read_jsonl(path, raw)
    if fmt not in ("csv", "tsv"):
        raise DataError(f"{path}: unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    text = raw.decode("utf-8", errors="surrogateescape")
    if fmt == "csv":
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for fields in reader:
            if fields and not (len(fields) == 1 and not fields[0].strip()):
                rows.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{where(path, start)}: malformed {fmt.upper()} ({e}); quote fields that contain "
                        f"the delimiter, quotes or newlines") from None
    if not rows:
        raise DataError(f"{path}: the file is empty; it needs a header line naming the columns, then data rows")
    header_row, header = rows[0]
    for j, c in enumerate(header, start=1):
        if _BAD_BYTES.search(c):
            raise DataError(_bad_utf8_message(path, header_row, f"#{j} (header)", c))
    header = [c.strip() for c in header]
    dups = sorted({c for c in header if header.count(c) > 1})
    if dups:
        raise DataError(f"{where(path, header_row)}: duplicate column name(s) {', '.join(map(repr, dups))} in the header")
    out = []
    for rownum, fields in rows[1:]:
        if len(fields) != len(header):
            raise DataError(
                f"{where(path, rownum)}: {len(fields)} field(s) but the header has {len(header)} "
                f"({', '.join(header)})" + ("; TSV fields are separated by tabs and not quoted" if fmt == "tsv" else "")
            )
        out.append((rownum, dict(zip(header, fields))))
    return header, out


def _read_jsonl(path: Path, raw: bytes) -> tuple[list[str], list[tuple[int, dict]]]:
    columns: list[str] = []
    seen = set()
    out = []
    for i, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            s = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{where(path, i)}: not valid UTF-8 (byte 0x{line[e.start]:02x} at offset {e.start} "
                            f"of the line); save the file as UTF-8") from None
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as e:
            raise DataError(f"{where(path, i)}: not valid JSON ({e.msg} at column {e.colno}); each line must be "
                            f"one JSON object") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where(path, i)}: a JSON {type(obj).__name__} where a JSON object "
                            f"({{\"column\": value, ...}}) was expected")
        for k in obj:
            if k not in seen:
                seen.add(k)
                columns.append(k)
        out.append((i, obj))
    if not out:
        raise DataError(f"{path}: the file is empty; it needs one JSON object per line")
    return columns, out


def _as_text(value, path, row, column, what: str) -> str:
    if isinstance(value, str):
        if _BAD_BYTES.search(value):
            raise DataError(_bad_utf8_message(path, row, column, value))
        s = value.strip()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        s = str(value)
    elif value is None:
        s = ""
    else:
        raise DataError(f"{where(path, row, column)}: a JSON {type(value).__name__} where {what} (a string) was expected")
    if not s:
        raise DataError(f"{where(path, row, column)}: empty {what}; every row needs a non-empty {what} "
                        f"(remove the row or fill it in)")
    return s


def _label_text(value, path, row, column) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    return _as_text(value, path, row, column, "label")


def _to_float(s: str):
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _is_int_text(s: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", s.strip()) is not None


class _Raw:
    """Validated rows of one file: texts plus the label/target as text, before kind resolution."""

    def __init__(self, path, fmt, rows):
        self.path, self.fmt, self.rows = path, fmt, rows  # rows: [(rownum, text, pair, label_text, target)]


def _read_file(path, fmt, text_column, text_pair_column, label_column, target_column) -> _Raw:
    columns, rows = read_rows(path, fmt)
    header_row = 1 if fmt != "jsonl" else None
    wanted = [("text_column", text_column), ("text_pair_column", text_pair_column),
              ("label_column", label_column), ("target_column", target_column)]
    for arg, col in wanted:
        if col is not None and col not in columns:
            raise DataError(
                f"{where(path, header_row)}: no column {col!r} (given as {arg}=); columns present: "
                f"{', '.join(map(repr, columns))}"
            )
    out = []
    for rownum, rec in rows:
        for _arg, col in wanted:
            if col is not None and col not in rec:  # JSONL rows may lack keys other rows have
                raise DataError(f"{where(path, rownum, col)}: missing; this row has keys "
                                f"{', '.join(map(repr, rec))}")
        text = _as_text(rec[text_column], path, rownum, text_column, "text")
        pair = _as_text(rec[text_pair_column], path, rownum, text_pair_column, "text") if text_pair_column else None
        label = _label_text(rec[label_column], path, rownum, label_column) if label_column else None
        target = _as_text(rec[target_column], path, rownum, target_column, "target") if target_column else None
        out.append((rownum, text, pair, label, target))
    return _Raw(path, fmt, out)


def infer_kind(label_texts: list[str], target_column) -> tuple[str, str]:
    """(kind, reason)."""
    if target_column is not None:
        return "generation", "a target column was given"
    values = [_to_float(s) for s in label_texts]
    if values and all(v is not None for v in values) and any(not v.is_integer() for v in values):
        return "regression", "all labels are numbers and some are not integers"
    return "classification", "labels are not all numbers, or all are integers"


def sort_label_names(names) -> list[str]:
    names = set(names)
    if all(_is_int_text(n) for n in names):
        return sorted(names, key=lambda n: int(n))
    return sorted(names)


def load_files(
    spec_path: str | None,
    fmt: str | None,
    *,
    text_column,
    text_pair_column=None,
    label_column=None,
    target_column=None,
    train=None,
    dev=None,
    test=None,
    kind=None,
    seed=0,
    max_examples=None,
):
    """Build a Task from one file (split 80/10/10 with `seed`) or from train=/dev=/test= files
    (a missing dev or test is carved out of train, 10% each)."""
    from .task import Task

    if spec_path and train:
        raise DataError(f"give either one file ({spec_path}) or train=/dev=/test= files, not both")
    if not spec_path and not train:
        raise DataError("no data file: give a path (e.g. 'csv:data.csv') or train= (plus optional dev=, test=)")
    if not text_column:
        raise DataError("text_column= is required for csv/tsv/jsonl data (the column holding the input text)")
    if kind is not None and kind not in KINDS:
        raise DataError(f"kind={kind!r} is not valid; valid: {', '.join(KINDS)}")
    if target_column is not None and label_column is not None:
        raise DataError("give label_column= (classification/regression) or target_column= (generation), not both")
    if kind == "generation" and target_column is None:
        raise DataError("kind='generation' needs target_column= (the column holding the reference output)")
    if kind in ("classification", "regression") and label_column is None:
        raise DataError(f"kind={kind!r} needs label_column=")
    if label_column is None and target_column is None:
        raise DataError("give label_column= (classification/regression) or target_column= (generation)")
    if target_column is not None and kind not in (None, "generation"):
        raise DataError(f"target_column= means generation, but kind={kind!r} was given")

    cols = dict(text_column=text_column, text_pair_column=text_pair_column,
                label_column=label_column, target_column=target_column)
    paths = {"all": spec_path} if spec_path else {k: v for k, v in (("train", train), ("dev", dev), ("test", test)) if v}
    raws = {k: _read_file(p, detect_format(p, fmt), **cols) for k, p in paths.items()}

    label_texts = [r[3] for raw in raws.values() for r in raw.rows] if label_column else []
    if kind is None:
        kind, reason = infer_kind(label_texts, target_column)
    else:
        reason = "given"

    # class names come from the training rows (all rows when one file is split)
    train_raw = raws.get("all") or raws["train"]
    labels = sort_label_names(r[3] for r in train_raw.rows) if kind == "classification" else None
    index = {n: i for i, n in enumerate(labels)} if labels else None

    def convert(raw: _Raw) -> list[Example]:
        exs = []
        for rownum, text, pair, lab, target in raw.rows:
            if kind == "classification":
                if lab not in index:
                    shown = ", ".join(map(repr, labels[:50])) + (" ..." if len(labels) > 50 else "")
                    raise DataError(f"{where(raw.path, rownum, label_column)}: label {lab!r} does not occur in the "
                                    f"training data; valid labels: {shown}")
                y = index[lab]
            elif kind == "regression":
                y = _to_float(lab)
                if y is None:
                    raise DataError(f"{where(raw.path, rownum, label_column)}: {lab!r} is not a finite number; a "
                                    f"regression label must be a number such as 0.5 or -3")
            else:
                y = None
            exs.append(Example(text=text, text_pair=pair, label=y, target=target))
        return exs

    converted = {k: convert(raw) for k, raw in raws.items()}
    if "all" in converted:
        splits = split_examples(converted["all"], kind, seed)
        where_ = {s: f"{spec_path} (split {s} of {len(converted['all'])} rows, seed {seed})" for s in SPLITS}
    else:
        splits = {"train": converted["train"]}
        missing = [s for s in ("dev", "test") if s not in converted]
        if missing:
            frac = {s: (0.1 if s in missing else 0.0) for s in ("dev", "test")}
            carved = split_examples(converted["train"], kind, seed,
                                    fractions=(1 - frac["dev"] - frac["test"], frac["dev"], frac["test"]))
            splits["train"] = carved["train"]
            for s in missing:
                splits[s] = carved[s]
        for s in ("dev", "test"):
            if s in converted:
                splits[s] = converted[s]
        where_ = {s: str(paths.get(s) or f"{train} (carved out of train, seed {seed})") for s in SPLITS}
    check_nonempty(splits, where_)
    splits = cap(splits, max_examples)

    name = Path(spec_path or train).stem
    source = {
        "type": "files",
        "files": {k: {"path": str(Path(p).resolve()), "format": raws[k].fmt, "sha256": sha256_file(Path(p)),
                      "rows": len(raws[k].rows)} for k, p in paths.items()},
        "columns": {k: v for k, v in cols.items() if v is not None},
        "kind_inferred": reason,
        "split": ("80/10/10 of one file" if spec_path else
                  "given files" + (f"; {', '.join(s for s in ('dev', 'test') if s not in paths)} carved out of train"
                                   if len(paths) < 3 else "")),
        "seed": seed,
        "max_examples": max_examples,
        "counts": counts(splits),
    }
    return Task(name=name, kind=kind, splits=splits, labels=labels, metric=PRIMARY_METRIC[kind], source=source)
