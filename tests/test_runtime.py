"""Process settings: peftspace.runtime.keep_freed_memory (freed blocks are reused instead of page-faulted
back in) and the OpenMP spin count scripts/peftspace hands the CLI.

Each case runs in a fresh interpreter: the setting is process-wide and cannot be undone there."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the setting is glibc's (elsewhere keep_freed_memory returns False)")

# Allocate, touch and free a 64 MiB tensor (above glibc's largest dynamic mmap threshold, 32 MiB, so by
# default every allocation is a fresh mapping); count the minor page faults of the last 10 rounds.
_PROBE = """
import json, resource, sys, torch
import peftspace
applied = peftspace.keep_freed_memory() if sys.argv[1] == "keep" else None
def rounds(n):
    for _ in range(n):
        t = torch.empty(16 << 20, dtype=torch.float32)
        t.fill_(1.0)
        del t
rounds(3)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(10)
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0}))
"""


def _probe(mode: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kept_memory_is_reused_without_page_faults() -> None:
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")  # pages of one 64 MiB tensor
    default = _probe("system")
    kept = _probe("keep")
    assert kept["applied"] is True
    assert default["faults"] >= 5 * pages, default  # every round maps and zeroes the tensor anew
    # the same memory, reused: at most one of the ten rounds maps the tensor anew (0 faults in 36 of 40
    # probes here, exactly one tensor's pages in 4: something allocated between rounds moved the block
    # once); the default maps it in every round
    assert kept["faults"] <= pages, kept


def test_opt_out_keeps_the_system_default() -> None:
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    r = _probe("keep", PEFTSPACE_MALLOC="system")
    assert r["applied"] is False
    assert r["faults"] >= 5 * pages, r


# ---- OpenMP waits: scripts/peftspace (the CLI) runs with GOMP_SPINCOUNT=10000 (bench: test_bench.py) ----
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wrapper_env(tmp_path, **env) -> dict:
    """The environment scripts/peftspace hands the CLI: run on a copy whose setup and CLI are stubs."""
    (tmp_path / "scripts").mkdir(exist_ok=True)
    (tmp_path / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    wrapper = tmp_path / "scripts" / "peftspace"
    wrapper.write_text(open(os.path.join(_ROOT, "scripts", "peftspace")).read())
    (tmp_path / "scripts" / "setup").write_text("#!/usr/bin/env bash\nexit 0\n")
    cli = tmp_path / ".venv" / "bin" / "peftspace"
    show_env = "import json, os; print(json.dumps(dict(os.environ)))"
    cli.write_text(f"#!/usr/bin/env bash\nexec {sys.executable} -c '{show_env}'\n")
    for f in (wrapper, tmp_path / "scripts" / "setup", cli):
        f.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run(["bash", str(wrapper)], env={**base, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_cli_wrapper_spins_briefly_unless_told(tmp_path):
    env = _wrapper_env(tmp_path)
    assert env.get("GOMP_SPINCOUNT") == "10000" and "OMP_WAIT_POLICY" not in env
    env = _wrapper_env(tmp_path, OMP_WAIT_POLICY="PASSIVE")  # the user's policy wins, no spin count added
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in env
    env = _wrapper_env(tmp_path, GOMP_SPINCOUNT="500")
    assert env["GOMP_SPINCOUNT"] == "500" and "OMP_WAIT_POLICY" not in env

