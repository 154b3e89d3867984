"""The on-disk cache of prepared tasks: `$PEFTSPACE_CACHE/data/<task>/` (default
`~/.cache/peftspace/data/<task>/`, honouring `$XDG_CACHE_HOME`).

Layout::

    data/_downloads/<archive>             # the fetched source archive (kept: other seeds reuse it)
    data/<task>/seed<S>/{train,dev,test}.jsonl
    data/<task>/seed<S>/manifest.json     # source sha256, recipe, counts, sha256 of each split file

Every file is written to a temporary name in the same directory and renamed into place, so a crash
or two concurrent preparations never leave a half-written file; the manifest is written last and
lists the sha256 of each split file, so a load that finds anything missing or changed prepares the
task again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from .task import SPLITS, Example


def cache_root() -> Path:
    """The peftspace cache root: `$PEFTSPACE_CACHE`, else `$XDG_CACHE_HOME/peftspace`, else
    `~/.cache/peftspace`."""
    env = os.environ.get("PEFTSPACE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "peftspace"


def data_dir() -> Path:
    return cache_root() / "data"


def downloads_dir() -> Path:
    return data_dir() / "_downloads"


def task_dir(name: str, seed: int) -> Path:
    return data_dir() / name / f"seed{int(seed)}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_move(src: Path, dst: Path) -> None:
    """Move a finished file into place atomically (copying first when crossing filesystems)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError:
        atomic_write_bytes(dst, Path(src).read_bytes())


def encode_jsonl(examples: list[Example]) -> bytes:
    return "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in examples).encode("utf-8")


def save_prepared(directory: Path, splits: dict[str, list[Example]], manifest: dict) -> dict:
    """Write the split files, then the manifest (with each file's sha256); return the manifest."""
    directory = Path(directory)
    files = {}
    for s in SPLITS:
        data = encode_jsonl(splits[s])
        atomic_write_bytes(directory / f"{s}.jsonl", data)
        files[s] = {"file": f"{s}.jsonl", "sha256": hashlib.sha256(data).hexdigest(), "count": len(splits[s])}
    manifest = dict(manifest, split_files=files)
    atomic_write_bytes(directory / "manifest.json", (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
    return manifest


def load_prepared(directory: Path, recipe: str) -> tuple[dict[str, list[Example]], dict] | None:
    """The cached splits and manifest, or None when absent, of another recipe, or not intact."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("recipe") != recipe:
            return None
        splits = {}
        for s in SPLITS:
            info = manifest["split_files"][s]
            data = (directory / info["file"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != info["sha256"]:
                return None
            splits[s] = [Example.from_json(json.loads(line)) for line in data.decode("utf-8").splitlines() if line]
        return splits, manifest
    except (OSError, ValueError, KeyError, TypeError):
        return None
