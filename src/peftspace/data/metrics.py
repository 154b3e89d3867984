"""Evaluation metrics, in numpy (no scipy or scikit-learn needed).

* classification → ``accuracy``, ``f1`` (binary, i.e. labels ⊆ {0, 1}: F1 of class 1; otherwise
  macro-F1 over the classes seen in references or predictions), ``mcc`` (Matthews correlation,
  the multi-class R_K form, equal to the usual formula for two classes). Predictions may be class
  ids or a (n, classes) array of scores, which is arg-maxed.
* regression → ``pearson``, ``spearman`` (Pearson of the ranks, ties sharing their average rank),
  ``mse``. A constant prediction or reference has no correlation; it is reported as 0.0, the
  value of "no linear/monotone relation", so that model selection never sees NaN.
* generation → ``bleu`` (sacrebleu corpus BLEU, default 13a tokenisation), ``rouge1``, ``rouge2``,
  ``rougeL`` (rouge-score F-measure with the Porter stemmer, averaged over examples, ×100).
  References may be strings or lists of strings (several references per example).

All values are Python floats; the 0–1 scores (accuracy, f1, mcc, correlations) are not scaled.
"""

from __future__ import annotations

import numpy as np

from .errors import DataError


def _check_lengths(predictions, references):
    if len(predictions) != len(references):
        raise DataError(f"{len(predictions)} predictions but {len(references)} references")
    if len(references) == 0:
        raise DataError("no predictions to score (empty split?)")


def classification_metrics(predictions, references) -> dict[str, float]:
    p = np.asarray(predictions)
    if p.ndim == 2:
        p = p.argmax(axis=-1)
    p = p.astype(np.int64).ravel()
    r = np.asarray(references).astype(np.int64).ravel()
    _check_lengths(p, r)
    classes = np.union1d(p, r)
    acc = float((p == r).mean())
    if set(classes.tolist()) <= {0, 1}:
        f1 = _f1(p, r, 1)
    else:
        f1 = float(np.mean([_f1(p, r, c) for c in classes]))
    return {"accuracy": acc, "f1": f1, "mcc": _mcc(p, r, classes)}


def _f1(p, r, c) -> float:
    tp = float(np.sum((p == c) & (r == c)))
    fp = float(np.sum((p == c) & (r != c)))
    fn = float(np.sum((p != c) & (r == c)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _mcc(p, r, classes) -> float:
    index = {c: i for i, c in enumerate(classes.tolist())}
    k = len(classes)
    conf = np.zeros((k, k), dtype=np.float64)  # rows: truth, cols: prediction
    np.add.at(conf, ([index[x] for x in r.tolist()], [index[x] for x in p.tolist()]), 1)
    n = conf.sum()
    t = conf.sum(axis=1)  # true occurrences per class
    q = conf.sum(axis=0)  # predictions per class
    c = np.trace(conf)
    num = c * n - float(t @ q)
    den = np.sqrt(n * n - float(q @ q)) * np.sqrt(n * n - float(t @ t))
    return 0.0 if den == 0 else float(np.clip(num / den, -1.0, 1.0))


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the average of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt(float(a @ a) * float(b @ b))
    return 0.0 if den == 0 else float(np.clip((a @ b) / den, -1.0, 1.0))


def regression_metrics(predictions, references) -> dict[str, float]:
    p = np.asarray(predictions, dtype=np.float64).ravel()
    r = np.asarray(references, dtype=np.float64).ravel()
    _check_lengths(p, r)
    if not (np.isfinite(p).all() and np.isfinite(r).all()):
        raise DataError("regression predictions/references contain NaN or infinity")
    return {"pearson": _pearson(p, r), "spearman": _pearson(_ranks(p), _ranks(r)), "mse": float(np.mean((p - r) ** 2))}


def generation_metrics(predictions, references) -> dict[str, float]:
    preds = [str(x) for x in predictions]
    refs = [[x] if isinstance(x, str) else list(x) for x in references]
    _check_lengths(preds, refs)
    try:
        import sacrebleu
        from rouge_score import rouge_scorer
    except ImportError as e:
        raise DataError(f"generation metrics need sacrebleu and rouge-score: pip install 'peftspace[gen]' ({e})") from None
    n_refs = max(len(x) for x in refs)
    # sacrebleu wants one stream per reference position; pad short reference lists with their first
    ref_streams = [[x[i] if i < len(x) else x[0] for x in refs] for i in range(n_refs)]
    bleu = sacrebleu.corpus_bleu(preds, ref_streams).score
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, rs in zip(preds, refs):
        scores = scorer.score_multi(rs, pred) if len(rs) > 1 else scorer.score(rs[0], pred)
        for k in sums:
            sums[k] += scores[k].fmeasure
    out = {"bleu": float(bleu)}
    out.update({k: 100.0 * v / len(preds) for k, v in sums.items()})
    return out


def compute_metrics(kind: str, predictions, references) -> dict[str, float]:
    """Metrics of one kind of task; see the module docstring for the definitions."""
    if kind == "classification":
        return classification_metrics(predictions, references)
    if kind == "regression":
        return regression_metrics(predictions, references)
    if kind == "generation":
        return generation_metrics(predictions, references)
    raise DataError(f"unknown task kind {kind!r}; valid: classification, regression, generation")
