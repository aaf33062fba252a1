"""Parameter trees by name: one path notation for keys, logs and error messages.

A parameter's name is its path joined with '/' (`encoder/layers_0/attention/
output/kernel`), the key of params.safetensors in a model directory. Every
comparison of two trees (a checkpoint against the config, a teacher
directory against its model, a pretrained encoder against a student) goes
through `shape_mismatch`, so every message names parameters the same way.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def path_name(path) -> str:
    """The '/'-joined name of a `jax.tree_util` key path."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def flat(tree) -> dict[str, Any]:
    """Every leaf of `tree` by its '/'-joined name (dicts, dataclasses and boxed leaves alike)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_name(p): v for p, v in leaves}


def unflat(named: dict[str, Any]) -> dict:
    """The nested dict of a `flat` mapping ('/'-joined names)."""
    out: dict = {}
    for name, value in named.items():
        node = out
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def shapes(tree) -> dict[str, tuple[int, ...]]:
    """Every leaf's shape by name (arrays, `jax.ShapeDtypeStruct`s, orbax array metadata)."""
    named = tree if _is_flat(tree) else flat(tree)
    return {k: tuple(getattr(v, "shape", None) or np.shape(v)) for k, v in named.items()}


def _is_flat(tree) -> bool:
    return isinstance(tree, dict) and all(
        isinstance(k, str) and not isinstance(v, dict) for k, v in tree.items()
    )


def shape_mismatch(
    want, have, *, want_name: str = "model", have_name: str = "stored", limit: int = 20
) -> list[str]:
    """One line per parameter that is missing, unexpected or of another shape (empty: they fit).

    Args:
      want: the tree (or flat mapping) the caller needs.
      have: the tree (or flat mapping) it was given.
      want_name, have_name: how the two are called in the lines.
      limit: at most this many lines of each kind.
    """
    w, h = shapes(want), shapes(have)
    differ = sorted(k for k in set(w) & set(h) if w[k] != h[k])
    missing = sorted(set(w) - set(h))
    extra = sorted(set(h) - set(w))
    lines = [f"{k}: {have_name} {h[k]} vs {want_name} {w[k]}" for k in differ[:limit]]
    lines += [f"{k}: in the {want_name}, not in the {have_name}" for k in missing[:limit]]
    lines += [f"{k}: in the {have_name}, not in the {want_name}" for k in extra[:limit]]
    return lines
