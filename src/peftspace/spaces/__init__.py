"""Design spaces of Chen et al. (2023) over peftspace Plans.

A space (`Space`) is a set of constraints on four components — layer grouping, trainable-parameter
allocation, tunable groups, strategy assignment; a design (`Design`) is one point of it; a design, a
model's arch dict and a budget give a Plan (`design_to_plan`), sized to the budget within 1%.

    from peftspace.spaces import parse_space, design_to_plan
    space = parse_space("chen2023-t5")                 # or "S0", "grouping=spindle,tunable=all", a YAML file
    designs = space.sample(model, n=8, seed=0, budget="0.5%")
    plan = design_to_plan(designs[0], plan_arch, "0.5%")
"""

from .design import Design
from .library import SPACES, STAGES, Stage
from .patterns import ALLOCATIONS, GROUPINGS, allocations, compositions, groupings
from .solve import TOLERANCE, design_record, design_to_plan, feasible_range
from .space import Space, as_arch, parse_space
from .strategies import LETTERS, PAPER_POOL, SpaceError

__all__ = ["Design", "Space", "SpaceError", "SPACES", "STAGES", "Stage", "parse_space", "design_to_plan",
           "design_record", "feasible_range", "as_arch", "GROUPINGS", "ALLOCATIONS", "groupings", "allocations",
           "compositions", "LETTERS", "PAPER_POOL", "TOLERANCE"]
