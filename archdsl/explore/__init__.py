"""Explore hybrid layouts: design spaces, budgets, Pareto fronts and recall probes.

    from archdsl.explore import Space, explore, parse_constraint
    space = Space(mixers=("mamba2",), attn_fraction=(0, 0.25), placements=("even", "back"), depth=(8, 16))
    res = explore(space, [parse_constraint("cache", "2GiB@64k")], objectives=("params", "cache"))
    res.front[0].layout, res.front[0].figures

Probes (probes.py) and the trainer (train.py) import torch; this package's import does not.
"""
from .search import (Candidate, Constraint, Exploration, dominates, explore, norm_objectives, pareto_ranks,
                     parse_amount, parse_constraint, rank)
from .space import PLACEMENTS, Space
from .space_file import load_space, space_from_dict, space_from_yaml

__all__ = ["Space", "load_space", "space_from_dict", "space_from_yaml", "PLACEMENTS", "Constraint", "Candidate",
           "Exploration", "explore", "parse_constraint", "parse_amount", "pareto_ranks", "dominates", "rank",
           "norm_objectives"]
