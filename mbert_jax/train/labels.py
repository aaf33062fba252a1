"""Per-parameter training rules: which leaves train, at which rate multiplier, which are frozen.

A stage's rules are data: an ordered list of `(regex, rule)` pairs over the
'/'-joined parameter paths (e.g. `student/encoder/layers_3/.*`). The first
pattern that matches a path (`re.fullmatch`) decides its rule: a float is a
learning-rate multiplier (1.0 = the base rate), `None` freezes the leaf.
Every parameter must be matched and every pattern must match something, so a
typo fails loudly instead of silently training or freezing the wrong layers
(big_vision's rule).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax

from mbert_jax.tree import path_name

FROZEN = "frozen"

Rule = float | None
Rules = Sequence[tuple[str, Rule]]


def label_of(rule: Rule) -> str:
    """The optax.partition label of a rule: 'frozen' or 'x<multiplier>'."""
    if rule is None:
        return FROZEN
    rule = float(rule)
    if rule < 0:
        raise ValueError(f"learning-rate multipliers must be >= 0, got {rule}")
    return FROZEN if rule == 0.0 else f"x{rule:g}"


def multiplier(label: str) -> float:
    return 0.0 if label == FROZEN else float(label[1:])


def make_labels(params: Any, rules: Rules) -> Any:
    """A tree like `params` whose leaves are partition labels ('frozen', 'x1', 'x0.1', ...).

    Raises:
      ValueError: listing unmatched parameters or rules that match nothing.
    """
    compiled = [(re.compile(pattern), rule) for pattern, rule in rules]
    used = [False] * len(compiled)
    unmatched = []

    def one(path, _):
        name = path_name(path)
        for i, (pattern, rule) in enumerate(compiled):
            if pattern.fullmatch(name):
                used[i] = True
                return label_of(rule)
        unmatched.append(name)
        return FROZEN

    labels = jax.tree_util.tree_map_with_path(one, params)
    if unmatched:
        raise ValueError(
            f"{len(unmatched)} parameter(s) match no training rule, e.g. {unmatched[:5]}; "
            "end the rules with a catch-all such as ('.*', 1.0) or ('.*', None)"
        )
    unused = [pattern for (pattern, _), u in zip(rules, used) if not u]
    if unused:
        raise ValueError(f"training rule pattern(s) {unused} match no parameter; check the paths")
    return labels


def trained_fraction(params: Any, labels: Any) -> tuple[int, int]:
    """(trainable parameter count, total parameter count)."""
    sizes = jax.tree.leaves(jax.tree.map(lambda p: int(p.size), params))
    labs = jax.tree.leaves(labels)
    return sum(s for s, lab in zip(sizes, labs) if lab != FROZEN), sum(sizes)
