"""The named spaces and the refinement stages of Chen et al. (2023), loaded from `spaces.yaml`.

`SPACES` maps names (S0, S1, S2, S3, chen2023-t5) to Spaces; `STAGES` lists the stages a search walks,
each with its candidate constraints (inline text for `Space.refine`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from .space import Space

DATA = Path(__file__).with_name("spaces.yaml")


@dataclass(frozen=True)
class Stage:
    name: str
    component: str  # grouping | allocation | tunable | strategies
    candidates: tuple[str, ...]  # inline constraints, each refining the current space
    description: str = ""

    def spaces(self, base: Space) -> list[tuple[str, Space]]:
        """The candidate spaces of this stage on top of `base`: [(candidate, base.refine(candidate))]."""
        return [(c, base.refine(c)) for c in self.candidates]


def _load() -> tuple[dict[str, Space], list[Stage]]:
    data = yaml.safe_load(DATA.read_text(encoding="utf-8"))
    spaces = {name: Space.from_dict(body or {}, name=name) for name, body in data["spaces"].items()}
    stages = [Stage(s["name"], s["component"], tuple(s["candidates"]), s.get("description", "")) for s in data["stages"]]
    return spaces, stages


SPACES, STAGES = _load()
