"""Real labeled data that ships inside registry packages, fetched by peftspace's own code.

VADER (classification, regression)
    PyPI *source* distribution ``vaderSentiment==3.3.2`` (MIT; C.J. Hutto). Inside it,
    ``additional_resources/hutto_ICWSM_2014.tar.gz`` holds the human-rated ground truth of Hutto &
    Gilbert, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text"
    (ICWSM 2014): tab-separated *id, mean rating (−4…4, 20+ raters), text*, one file per domain:

    ====================  =============================================  =====
    task                  file in the archive                            rows
    ====================  =============================================  =====
    vader-movie           movieReviewSnippets_GroundTruth.txt             10605
    vader-tweets          tweets_GroundTruth.txt                           4200
    vader-nyt             nytEditorialSnippets_GroundTruth.txt             5190
    vader-amazon          amazonReviewSnippets_GroundTruth.txt             3708
    ====================  =============================================  =====

    Binary recipe: HTML entities decoded (``&amp;`` → ``&``; some rows are escaped twice),
    surrounding whitespace stripped, rows with |rating| < 0.5 dropped, repeated texts dropped (the
    first kept, so no text is in two splits), label = rating > 0 with labels ["negative",
    "positive"]. ``vader-movie-rating`` keeps every (deduplicated) movie snippet with its mean
    rating as a regression target.

ding-de-en (generation: German → English sentence translation)
    Debian package ``trans-de-en`` (section text; 6.3 MB download; GPL-2+), the German–English
    dictionary of the Ding project by Frank Richter, TU Chemnitz (https://dict.tu-chemnitz.de/).
    Its ``/usr/share/trans/de-en`` has one entry per line, ``German | ... :: English | ...``, with
    sub-entries aligned by ``|``; many sub-entries are whole example sentences with their English
    translation ("Es war purer Zufall." → "It was sheer/pure coincidence."). The recipe keeps
    aligned sub-entries that are sentences: annotations ``{}``, ``[]``, ``<>`` and optional
    ``(...)`` parts removed, the first of ``;``-separated alternatives taken, German starting with an
    upper-case letter, at least 3 German words, both sides ending in . ! or ?, and no placeholders
    (jdm./etw./sth./sb., ``/`` alternatives, ellipses); repeated German sentences dropped (first
    kept). Bookworm's 1.9-6 gives 17,288 pairs. The package is fetched with ``apt-get download``
    (no root, nothing installed); if apt's package lists lack it, a private ``apt-get update`` into
    the cache directory is tried. Elsewhere, put a ``trans-de-en_*.deb`` into
    ``<cache>/data/_downloads/`` by hand. Each example's ``text`` is the German sentence inside the
    prompt ``Translate German to English.\\nGerman: <sentence>\\nEnglish:`` (recorded as
    ``source["prompt_template"]``), so decoder-only training, ``generate()`` and encoder-decoder
    inputs all see the same instruction; ``target`` is the English sentence.

Fetching needs the registry once; the prepared splits are then read from the cache offline (see
`peftspace.data.cache`).
"""

from __future__ import annotations

import hashlib
import html
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .cache import atomic_move, downloads_dir, load_prepared, save_prepared, sha256_file, task_dir
from .errors import DataError
from .task import PRIMARY_METRIC, Example, Task, cap, counts, split_examples

# ---------------------------------------------------------------------------------------------- VADER
VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
VADER_REQUIREMENT = "vaderSentiment==3.3.2"
VADER_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_ARCHIVE_MEMBER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_ARCHIVE_SHA256 = "d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa"
VADER_FILES = {
    "vader-movie": "movieReviewSnippets_GroundTruth.txt",
    "vader-tweets": "tweets_GroundTruth.txt",
    "vader-nyt": "nytEditorialSnippets_GroundTruth.txt",
    "vader-amazon": "amazonReviewSnippets_GroundTruth.txt",
}
VADER_THRESHOLD = 0.5
VADER_LABELS = ["negative", "positive"]
VADER_RECIPE = "vader-binary/1: html-unescape x2, strip, drop |rating|<0.5, dedupe text, label rating>0"
VADER_RATING_RECIPE = "vader-rating/1: html-unescape x2, strip, dedupe text, label = mean rating"

# ------------------------------------------------------------------------------------------------ Ding
DING_PACKAGE = "trans-de-en"
DING_MEMBER = "usr/share/trans/de-en"
DING_RECIPE = "ding-sentences/1"
DING_PROMPT = "Translate German to English.\nGerman: {text}\nEnglish:"
DING_MIN_PAIRS = 5000  # a parse that yields fewer means the file format changed

TASKS = {
    "vader-movie": "classification: Rotten Tomatoes movie-review snippets, binary sentiment (VADER ground truth, MIT)",
    "vader-tweets": "classification: tweets, binary sentiment (VADER ground truth, MIT)",
    "vader-nyt": "classification: New York Times editorial snippets, binary sentiment (VADER ground truth, MIT)",
    "vader-amazon": "classification: Amazon product-review snippets, binary sentiment (VADER ground truth, MIT)",
    "vader-movie-rating": "regression: movie-review snippets, mean human sentiment rating in [-4, 4] (VADER, MIT)",
    "ding-de-en": "generation: German→English sentence translation, example sentences of the Ding dictionary "
                  "(Debian trans-de-en, GPL-2+)",
}


def _run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(cmd, 1, "", str(e))


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def _tail(text: str, n: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def fetch_vader_sdist() -> Path:
    """The vaderSentiment 3.3.2 sdist in the downloads cache, fetched with pip when absent."""
    dl = downloads_dir()
    target = dl / VADER_SDIST
    if target.is_file() and sha256_file(target) == VADER_SDIST_SHA256:
        return target
    dl.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dl, prefix=".pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "--no-input", VADER_REQUIREMENT, "-d", tmp]
        r = _run(cmd, Path(tmp))
        got = Path(tmp) / VADER_SDIST
        if r.returncode != 0 or not got.is_file():
            raise DataError(
                f"could not download {VADER_REQUIREMENT} from PyPI (needed once; later loads use the cache at "
                f"{dl.parent}).\n$ {' '.join(cmd)}\n{_tail(r.stderr or r.stdout)}\nOffline, copy {VADER_SDIST} "
                f"(sha256 {VADER_SDIST_SHA256}) into {dl}/"
            )
        digest = sha256_file(got)
        if digest != VADER_SDIST_SHA256:
            raise DataError(f"{VADER_SDIST} from PyPI has sha256 {digest}, expected {VADER_SDIST_SHA256}; not using it")
        atomic_move(got, target)
    return target


def read_vader_file(sdist: Path, member: str) -> tuple[list[tuple[int, float, str]], str]:
    """[(line, mean rating, text)] of one ground-truth file, and the archive's sha256."""
    try:
        with tarfile.open(sdist, "r:gz") as outer:
            f = outer.extractfile(VADER_ARCHIVE_MEMBER)
            if f is None:
                raise KeyError(VADER_ARCHIVE_MEMBER)
            archive = f.read()
    except (tarfile.TarError, KeyError, OSError) as e:
        raise DataError(f"{sdist}: cannot read {VADER_ARCHIVE_MEMBER} ({e}); delete the file to fetch it again") from None
    digest = hashlib.sha256(archive).hexdigest()
    if digest != VADER_ARCHIVE_SHA256:
        raise DataError(f"{sdist}!{VADER_ARCHIVE_MEMBER}: sha256 {digest}, expected {VADER_ARCHIVE_SHA256}")
    name = f"hutto_ICWSM_2014/{member}"
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as inner:
        try:
            raw = inner.extractfile(name).read()  # type: ignore[union-attr]
        except (KeyError, AttributeError):
            raise DataError(f"{VADER_ARCHIVE_MEMBER}: no member {name}; members: {', '.join(inner.getnames())}") from None
    where = f"{VADER_ARCHIVE_MEMBER}!{name}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}, row {_line_of(raw, e.start)}: not valid UTF-8") from None
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataError(f"{where}, row {i}: {len(parts)} tab-separated fields, expected 3 (id, rating, text)")
        try:
            rating = float(parts[1])
        except ValueError:
            raise DataError(f"{where}, row {i}, column 2: rating {parts[1]!r} is not a number") from None
        t = html.unescape(html.unescape(parts[2])).strip()
        if not t:
            raise DataError(f"{where}, row {i}, column 3: empty text")
        rows.append((i, rating, t))
    return rows, digest


def _prepare_vader(name: str, seed: int) -> tuple[dict, dict]:
    regression = name.endswith("-rating")
    base = name[: -len("-rating")] if regression else name
    member = VADER_FILES[base]
    recipe = VADER_RATING_RECIPE if regression else VADER_RECIPE
    d = task_dir(name, seed)
    got = load_prepared(d, recipe)
    if got is not None:
        return got
    sdist = fetch_vader_sdist()
    rows, digest = read_vader_file(sdist, member)
    seen: set[str] = set()
    examples, neutral, dups = [], 0, 0
    for _, rating, text in rows:
        if not regression and abs(rating) < VADER_THRESHOLD:
            neutral += 1
            continue
        if text in seen:
            dups += 1
            continue
        seen.add(text)
        label = rating if regression else int(rating > 0)
        examples.append(Example(text=text, label=label))
    kind = "regression" if regression else "classification"
    splits = split_examples(examples, kind, seed)
    stats = {"rows": len(rows), "kept": len(examples), "duplicates_dropped": dups}
    if not regression:
        stats.update(neutral_dropped=neutral, positive=sum(e.label for e in examples),
                     negative=sum(1 - e.label for e in examples))
    manifest = {
        "name": name, "kind": kind, "recipe": recipe, "seed": seed,
        "labels": None if regression else VADER_LABELS,
        "source": {"package": f"PyPI sdist {VADER_REQUIREMENT}", "license": "MIT", "file": VADER_SDIST,
                   "sha256": sha256_file(sdist), "archive": VADER_ARCHIVE_MEMBER, "archive_sha256": digest,
                   "member": f"hutto_ICWSM_2014/{member}"},
        "stats": stats, "counts": counts(splits),
    }
    return splits, save_prepared(d, splits, manifest)


# ------------------------------------------------------------------------------------------- Debian
def _apt_opts(state: Path) -> list[str]:
    return ["-o", f"Dir::State::Lists={state / 'lists'}", "-o", f"Dir::Cache={state / 'cache'}",
            "-o", "Debug::NoLocking=1"]


def fetch_deb(package: str) -> Path:
    """`<package>_*.deb` in the downloads cache: one already there (also one put there by hand), else
    `apt-get download` (no root needed); if apt's lists do not know the package, a private
    `apt-get update` into the cache directory first."""
    dl = downloads_dir()
    have = sorted(dl.glob(f"{package}_*.deb"))
    if have:
        return have[-1]
    apt = shutil.which("apt-get")
    if apt is None:
        raise DataError(
            f"fetching the Debian package {package} needs apt-get (Debian/Ubuntu). Elsewhere download "
            f"{package}_<version>_all.deb from a Debian mirror and put it into {dl}/"
        )
    dl.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dl, prefix=".apt-") as tmp:
        tmpd = Path(tmp)
        r = _run([apt, "-q", "download", package], tmpd)
        if r.returncode != 0 or not list(tmpd.glob("*.deb")):
            state = dl / ".apt-state"
            for sub in ("lists/partial", "cache/archives/partial"):
                (state / sub).mkdir(parents=True, exist_ok=True)
            u = _run([apt, "-q", *_apt_opts(state), "update"], tmpd)
            r = _run([apt, "-q", *_apt_opts(state), "download", package], tmpd)
            if r.returncode != 0 or not list(tmpd.glob("*.deb")):
                raise DataError(
                    f"could not fetch the Debian package {package} with apt-get download:\n"
                    f"{_tail(r.stderr or r.stdout)}\n(private apt-get update: {_tail(u.stderr or u.stdout, 3)})\n"
                    f"Put {package}_<version>_all.deb into {dl}/ by hand to go on."
                )
        deb = sorted(tmpd.glob("*.deb"))[-1]
        target = dl / deb.name
        atomic_move(deb, target)
    return target


def read_deb_member(deb: Path, member: str) -> bytes:
    """One file from a .deb's data archive, read in Python (ar + tar.xz/gz/bz2; tar.zst through
    dpkg-deb when present)."""
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise DataError(f"{deb}: not a Debian package (no ar header); delete it to fetch it again")
    pos, payload, pname = 8, None, None
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = data[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            payload, pname = body, name
            break
        pos += 60 + size + (size & 1)
    if payload is None:
        raise DataError(f"{deb}: no data.tar member; delete it to fetch it again")
    modes = {"data.tar": "r:", "data.tar.gz": "r:gz", "data.tar.xz": "r:xz", "data.tar.bz2": "r:bz2"}
    if pname in modes:
        with tarfile.open(fileobj=io.BytesIO(payload), mode=modes[pname]) as tf:
            for cand in (member, "./" + member):
                try:
                    f = tf.extractfile(cand)
                except KeyError:
                    continue
                if f is not None:
                    return f.read()
        raise DataError(f"{deb}: no file {member} in {pname}")
    dpkg = shutil.which("dpkg-deb")
    if dpkg is None:
        raise DataError(f"{deb}: {pname} needs dpkg-deb to unpack")
    with tempfile.TemporaryDirectory() as tmp:
        r = _run([dpkg, "-x", str(deb), tmp], Path(tmp))
        p = Path(tmp) / member
        if r.returncode != 0 or not p.is_file():
            raise DataError(f"{deb}: dpkg-deb could not unpack {member}: {_tail(r.stderr)}")
        return p.read_bytes()


# Ding recipe
_ANNOTATION = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]|<[^<>]*>")
_OPTIONAL = re.compile(r"\([^()]*\)")
_PLACEHOLDER = re.compile(r"\b(?:jd[mnrs]|etw|sth|sb)\.|…|\.\.\.|/|[()]")
_END = (".", "!", "?")


def _ding_clean(s: str) -> str:
    s = _ANNOTATION.sub(" ", s)
    s = s.split(";")[0]
    s = _OPTIONAL.sub(" ", s)
    s = re.sub(r"\s+", " ", s).strip()
    return re.sub(r"\s+([,.!?:;])", r"\1", s)


def ding_pairs(text: str) -> tuple[list[tuple[int, str, str]], dict]:
    """[(line, German, English)] sentence pairs of the Ding de-en file, and what was skipped."""
    pairs, seen = [], set()
    skipped = {"misaligned_entries": 0, "placeholders": 0, "duplicates": 0}
    for i, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#") or " :: " not in line:
            continue
        de, en = line.split(" :: ", 1)
        des, ens = de.split(" | "), en.split(" | ")
        if len(des) != len(ens):
            skipped["misaligned_entries"] += 1
            continue
        for d, e in zip(des, ens):
            d, e = _ding_clean(d), _ding_clean(e)
            if not d or not e or not d.endswith(_END) or not e.endswith(_END):
                continue
            if not (d[0].isupper() or d[0] in "„\"") or len(d.split()) < 3 or len(e.split()) < 2:
                continue
            if _PLACEHOLDER.search(d) or _PLACEHOLDER.search(e):
                skipped["placeholders"] += 1
                continue
            if d in seen:
                skipped["duplicates"] += 1
                continue
            seen.add(d)
            pairs.append((i, d, e))
    return pairs, skipped


def _prepare_ding(name: str, seed: int) -> tuple[dict, dict]:
    d = task_dir(name, seed)
    got = load_prepared(d, DING_RECIPE)
    if got is not None:
        return got
    deb = fetch_deb(DING_PACKAGE)
    raw = read_deb_member(deb, DING_MEMBER)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{deb}!{DING_MEMBER}, row {_line_of(raw, e.start)}: not valid UTF-8") from None
    pairs, skipped = ding_pairs(text)
    if len(pairs) < DING_MIN_PAIRS:
        raise DataError(f"{deb}!{DING_MEMBER}: only {len(pairs)} sentence pairs found (expected > {DING_MIN_PAIRS}); "
                        f"the file format may have changed")
    header = [ln[2:] for ln in text.splitlines()[:8] if ln.startswith("# ")]
    examples = [Example(text=DING_PROMPT.format(text=de), target=en) for _, de, en in pairs]
    splits = split_examples(examples, "generation", seed)
    manifest = {
        "name": name, "kind": "generation", "recipe": DING_RECIPE, "seed": seed, "labels": None,
        "prompt_template": DING_PROMPT,
        "source": {"package": f"Debian {DING_PACKAGE}", "file": deb.name, "sha256": sha256_file(deb),
                   "member": DING_MEMBER, "license": "GPL-2+", "header": header,
                   "upstream": "Ding German-English dictionary, Frank Richter, TU Chemnitz"},
        "stats": {"pairs": len(pairs), **skipped}, "counts": counts(splits),
    }
    return splits, save_prepared(d, splits, manifest)


def load_packaged(name: str, *, seed: int = 0, max_examples=None) -> Task:
    if name == "ding-de-en":
        splits, manifest = _prepare_ding(name, seed)
    elif name in TASKS:
        splits, manifest = _prepare_vader(name, seed)
    else:
        raise DataError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    kind = manifest["kind"]
    source = dict(manifest, cache_dir=str(task_dir(name, seed)), max_examples=max_examples)
    splits = cap(splits, max_examples)
    source["counts_used"] = counts(splits)
    return Task(name=name, kind=kind, splits=splits, labels=manifest.get("labels"),
                metric=PRIMARY_METRIC[kind], source=source)

