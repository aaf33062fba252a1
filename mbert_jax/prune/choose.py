"""What pruning removes: the choice of heads, FFN neurons and blocks for a target.

Every function takes importance scores (`prune.importance`,
`layer_importance`) and a target, checks the target (one-line ValueErrors
naming the config field), and returns what is kept, as `prune.prune` takes
it. Units already removed (iterative pruning) carry a score of -inf, so
they are removed again first and the removed sets only grow.

- fractions (`prune.heads`, `prune.neurons`): heads ranked globally over the
  kept blocks (normalized scores), each block keeping its best one; neurons
  per block, so every block keeps one width;
- blocks: a fixed list or `every_other` (`layers_kept`), or the `count`
  blocks whose skipping raises the loss least (`choose_layers`);
- a parameter or latency budget: `choose_budget` ("greedy") removes heads and
  neurons by raw importance per parameter (or predicted ms) saved until the
  model fits; `choose_uniform` ("uniform") removes the same fraction of heads
  and of neurons, the smallest that fits, chosen as the fractions are;
  `choose_search` ("fisher") searches the split between heads and neurons
  that keeps the most Fisher importance (Kwon et al., 2022).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from mbert_jax import tree
from mbert_jax.prune.structure import ATTENTION

EVERY_OTHER = "every_other"


def fraction(value, field: str) -> float:
    """A sparsity in [0, 1), or a ValueError naming `config.<field>`."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"config.{field}={value!r}: a fraction in [0, 1)") from None
    if not 0.0 <= f < 1.0 or math.isnan(f):
        raise ValueError(f"config.{field}={value!r}: a fraction in [0, 1) (the share removed)")
    return f


def layers_kept(spec, num_layers: int) -> list[int]:
    """The blocks kept when `spec` (`prune.layers`) names those dropped.

    `spec`: "" / None (none), "every_other" (1, 3, 5, ...), a comma list "1,3",
    or a sequence of ints.
    """
    field = "config.prune.layers"
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        drop: Sequence = ()
    elif isinstance(spec, str) and spec.strip() == EVERY_OTHER:
        drop = range(1, num_layers, 2)
    else:
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        try:
            drop = [int(str(x).strip()) for x in items]
        except ValueError:
            raise ValueError(
                f"{field}={spec!r}: '', {EVERY_OTHER!r} or a list of block indices"
            ) from None
    drop = list(drop)
    bad = [i for i in drop if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"{field}={spec!r}: blocks {bad} are not in [0, {num_layers})")
    if len(set(drop)) != len(drop):
        raise ValueError(f"{field}={spec!r}: a block is named twice")
    kept = [i for i in range(num_layers) if i not in set(drop)]
    if not kept:
        raise ValueError(f"{field}={spec!r}: drops all {num_layers} blocks")
    return kept


def heads_removed(head_counts: Sequence[int], heads_fraction: float) -> int:
    """floor(fraction x heads) over the kept blocks, checked to leave each block a head."""
    total = sum(head_counts)
    remove = math.floor(heads_fraction * total + 1e-9)
    most = total - len(head_counts)
    if remove > most:
        raise ValueError(
            f"config.prune.heads={heads_fraction}: removes {remove} of the {total} heads of "
            f"{len(head_counts)} blocks, but each block keeps at least one head (at most "
            f"{most}, a fraction below {(most + 1) / total:.4g}); drop blocks with "
            "config.prune.layers instead"
        )
    return remove


def choose_heads(scores: Sequence[np.ndarray], layers: Sequence[int], heads_fraction: float):
    """Block -> the heads kept (sorted): the lowest-scored heads of `layers` removed globally,
    each block keeping its best one; ties go to the earlier block and head."""
    remove = heads_removed([len(scores[layer]) for layer in layers], heads_fraction)
    candidates = []
    for layer in layers:
        s = np.asarray(scores[layer])
        best = int(np.argmax(s))
        candidates += [(float(s[h]), layer, h) for h in range(len(s)) if h != best]
    removed = {(layer, h) for _, layer, h in sorted(candidates)[:remove]}
    return {
        layer: [h for h in range(len(scores[layer])) if (layer, h) not in removed]
        for layer in layers
    }


def choose_neurons(scores: Sequence[np.ndarray], layers: Sequence[int], neurons_fraction: float):
    """Block -> the FFN neurons kept (sorted): floor(fraction x width) lowest-scored removed
    per block; ties go to the earlier neuron."""
    out = {}
    for layer in layers:
        s = np.asarray(scores[layer]).reshape(-1)
        keep = len(s) - math.floor(neurons_fraction * len(s) + 1e-9)
        order = np.argsort(-s, kind="stable")  # best first; equal scores: lower index first
        out[layer] = sorted(int(i) for i in order[:keep])
    return out


def count_params(params) -> int:
    """The number of parameters of a tree (the sum of its arrays' sizes)."""
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def layer_count(value, num_layers: int, field: str = "prune.drop_layers") -> int:
    """Blocks to remove: a fraction in [0, 1) of `num_layers` (floored), or a whole count >= 1."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if math.isnan(v) or v < 0 or (v >= 1 and v != int(v)):
        raise ValueError(
            f"config.{field}={value!r}: a fraction of the blocks in [0, 1) or a whole count >= 1"
        )
    count = math.floor(v * num_layers + 1e-9) if v < 1 else int(v)
    if count >= num_layers:
        raise ValueError(
            f"config.{field}={value!r}: removes {count} of the {num_layers} blocks; at least one "
            f"stays (at most {num_layers - 1})"
        )
    return count


def choose_layers(scores: Sequence[float], count: int) -> list[int]:
    """The blocks kept (sorted) when the `count` blocks with the lowest skip importance
    (`layer_importance`: the loss increase without the block) go; ties: the earlier goes."""
    order = np.argsort(np.asarray(scores, np.float64), kind="stable")
    drop = {int(i) for i in order[:count]}
    return [i for i in range(len(scores)) if i not in drop]


def unit_costs(params: Mapping, layers: Sequence[int], config) -> tuple[dict, dict]:
    """Parameters one head and one FFN neuron of each block hold: `(heads, neurons)`, block ->
    count. A head: its query, key and value kernel columns and biases and its rows of the
    attention output kernel; a neuron: its FFN input column and bias, its output row."""
    flat = tree.flat(params)
    heads, neurons = {}, {}
    for layer in layers:
        p = f"encoder/layers_{layer}/"
        names = [
            f"{ATTENTION}/{n}/{k}" for n in ("query", "key", "value") for k in ("kernel", "bias")
        ]
        size = sum(np.size(flat[p + n]) for n in names + ["attention/output/kernel"])
        heads[layer] = size // config.heads_at(layer)
        ffn = "ffn/ffn_0/"
        names = ("intermediate/kernel", "intermediate/bias", "output/kernel")
        size = sum(np.size(flat[p + ffn + n]) for n in names)
        neurons[layer] = size // config.intermediate_size_at(layer)
    return heads, neurons


def budget_target(value, total: int, field: str = "prune.params_budget") -> int:
    """The parameter count aimed at: a fraction in (0, 1] of `total` (floored), or a count."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if math.isnan(v) or v <= 0 or (v > 1 and v != int(v)):
        raise ValueError(
            f"config.{field}={value!r}: a fraction of the parameters in (0, 1] or a whole "
            "parameter count > 1"
        )
    return math.floor(v * total + 1e-9) if v <= 1 else int(v)


def choose_budget(
    scores,
    costs: tuple[Mapping[int, int], Mapping[int, int]],
    layers: Sequence[int],
    total: int,
    target: float,
    field: str = "prune.params_budget",
    unit: str = "parameters",
) -> tuple[dict, dict]:
    """Heads and neurons kept so that the model has at most `target` parameters (or
    milliseconds of predicted latency, with `costs` in ms: `prune/latency.py`).

    Greedy by first-order loss increase per parameter (or ms) saved: candidates are
    every head and neuron of `layers` except each block's best head and
    best neuron, removed in increasing `score / cost` (ties: earlier block,
    heads before neurons, lower index) until `total` minus their costs is
    at most `target`. The scores must be raw (unnormalized) Michel scores,
    |d loss / d gate|, whose units are the same for heads and neurons.

    Args:
      scores: an `Importance` (raw), -inf on units already removed.
      costs: `unit_costs(...)`, or each unit's predicted ms.
      layers: the blocks pruned.
      total: the model's parameter count (or ms) with every unit of `layers` kept.
      target: the count (or ms) aimed at.
      field: the config field named in errors.
      unit: what `total` and `target` count, for errors: "parameters" or "ms".

    Returns:
      `(keep_heads, keep_neurons)`, block -> sorted indices kept.
    """
    head_cost, neuron_cost = costs
    candidates = []
    for layer in layers:
        for kind, s, cost in (
            (0, scores.heads[layer], head_cost),
            (1, scores.neurons[layer], neuron_cost),
        ):
            s = np.asarray(s, np.float64).reshape(-1)
            best = int(np.argmax(s))
            c = cost[layer]
            candidates += [(s[i] / c, layer, kind, i, c) for i in range(len(s)) if i != best]
    candidates.sort(key=lambda u: u[:4])
    removed, size = set(), total
    for _, layer, kind, i, c in candidates:
        if size <= target:
            break
        removed.add((layer, kind, i))
        size -= c
    if size > target:
        raise unreachable(field, unit, target, size)

    def kept(kind, s, layer):
        return [i for i in range(np.size(s)) if (layer, kind, i) not in removed]

    keep_heads = {layer: kept(0, scores.heads[layer], layer) for layer in layers}
    keep_neurons = {layer: kept(1, scores.neurons[layer], layer) for layer in layers}
    return keep_heads, keep_neurons


def removal_cost(costs, keep_heads, keep_neurons, sizes) -> float:
    """What removing the units not in `keep_*` saves: `costs` per head and neuron of each
    block, `sizes` block -> (heads, neurons) before."""
    head_cost, neuron_cost = costs
    return sum(
        head_cost[layer] * (h - len(keep_heads[layer]))
        + neuron_cost[layer] * (n - len(keep_neurons[layer]))
        for layer, (h, n) in sizes.items()
    )


def choose_uniform(
    scores,
    costs: tuple[Mapping[int, float], Mapping[int, float]],
    layers: Sequence[int],
    total: float,
    target: float,
    field: str = "prune.params_budget",
    unit: str = "parameters",
) -> tuple[dict, dict]:
    """Heads and neurons kept so that the model costs at most `target`: one sparsity s for
    heads and neurons alike, the smallest that fits (to 1e-6), the units chosen as
    `choose_heads` and `choose_neurons` choose them for fraction s. A head fraction stops
    where each block keeps one head, a neuron fraction where each keeps one neuron. Units
    go in steps of s (a head, or a neuron of every block, or both at once), so the model
    ends below the target by less than one head plus one neuron per block.

    `scores`: per-layer normalized scores (`normalized`), -inf on units already removed;
    `costs`, `total`, `target`, `field`, `unit`: as `choose_budget`'s.
    """
    sizes = {layer: (len(scores.heads[layer]), np.size(scores.neurons[layer])) for layer in layers}
    all_heads = sum(h for h, _ in sizes.values())
    head_max = (all_heads - len(layers)) / all_heads
    neuron_max = min((n - 1) / n for _, n in sizes.values())

    def keeps(s: float):
        h = min(s, head_max)
        heads = choose_heads(scores.heads, layers, h) if h > 0 else _all(sizes, 0)
        neurons = choose_neurons(scores.neurons, layers, min(s, neuron_max))
        return heads, neurons

    def cost(s: float) -> float:
        return total - removal_cost(costs, *keeps(s), sizes)

    if cost(0.0) <= target:
        return keeps(0.0)
    top = max(head_max, neuron_max)
    if cost(top) > target:
        raise unreachable(field, unit, target, cost(top))
    lo, hi = 0.0, top  # cost(lo) > target >= cost(hi); the cost only falls as s grows
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if cost(mid) <= target else (mid, hi)
    return keeps(hi)


def choose_search(
    scores,
    costs: tuple[Mapping[int, float], Mapping[int, float]],
    layers: Sequence[int],
    total: float,
    target: float,
    field: str = "prune.params_budget",
    unit: str = "parameters",
) -> tuple[dict, dict]:
    """Heads and neurons kept so that the model costs at most `target`, keeping the most
    importance: the mask search of Kwon et al. (2022), "A Fast Post-Training Pruning
    Framework for Transformers".

    The scores estimate each unit's loss increase when removed (`fisher_importance`), so
    a head and a neuron are compared directly and the kept set's importance is their sum.
    Each block keeps its best head and best neuron. For every number h of the other heads
    kept (the h best, globally), the neurons that fit in the rest of the budget are added
    in decreasing score per cost (the best first, globally, when every neuron costs the
    same, as in a BERT); the h whose kept set has the largest importance wins (ties: fewer
    heads). Units already removed (-inf) stay removed.

    Arguments as `choose_budget`'s, with Fisher scores.
    """
    head_cost, neuron_cost = costs

    def candidates(kind_scores, cost):
        out = []  # (score, cost, layer, index) of every unit but each block's best
        for layer in layers:
            s = np.asarray(kind_scores[layer], np.float64).reshape(-1)
            best = int(np.argmax(s))
            out += [
                (float(s[i]), cost[layer], layer, i)
                for i in range(len(s))
                if i != best and np.isfinite(s[i])
            ]
        return out

    heads = sorted(candidates(scores.heads, head_cost), key=lambda u: (-u[0], u[2], u[3]))
    neurons = sorted(
        candidates(scores.neurons, neuron_cost), key=lambda u: (-u[0] / u[1], u[2], u[3])
    )
    # Every block with only its best head and neuron (units already removed stay out).
    smallest = total - sum(
        (np.size(scores.heads[layer]) - 1) * head_cost[layer]
        + (np.size(scores.neurons[layer]) - 1) * neuron_cost[layer]
        for layer in layers
    )
    slack = 1e-9 * max(abs(target), 1.0)
    if smallest > target + slack:
        raise unreachable(field, unit, target, smallest)
    head_cost_sum = np.concatenate([[0.0], np.cumsum([c for _, c, _, _ in heads])])
    head_score_sum = np.concatenate([[0.0], np.cumsum([s for s, _, _, _ in heads])])
    neuron_cost_sum = np.concatenate([[0.0], np.cumsum([c for _, c, _, _ in neurons])])
    neuron_score_sum = np.concatenate([[0.0], np.cumsum([s for s, _, _, _ in neurons])])
    room = target - smallest - head_cost_sum  # what is left for neurons, per head count
    best_h, best_n, best_value = 0, 0, -np.inf
    for h in range(len(heads) + 1):
        if room[h] < -slack:
            break  # more heads only cost more
        n = int(np.searchsorted(neuron_cost_sum, room[h] + slack, "right")) - 1
        value = head_score_sum[h] + neuron_score_sum[n]
        if value > best_value:
            best_h, best_n, best_value = h, n, value
    gone = {(0, layer, i) for _, _, layer, i in heads[best_h:]}
    gone |= {(1, layer, i) for _, _, layer, i in neurons[best_n:]}

    def kept(kind, s, layer):
        return [
            i
            for i, v in enumerate(np.asarray(s, np.float64).reshape(-1))
            if np.isfinite(v) and (kind, layer, i) not in gone
        ]

    keep_heads = {layer: kept(0, scores.heads[layer], layer) for layer in layers}
    keep_neurons = {layer: kept(1, scores.neurons[layer], layer) for layer in layers}
    return keep_heads, keep_neurons


def _all(sizes, which: int) -> dict:
    return {layer: list(range(size[which])) for layer, size in sizes.items()}


def unreachable(field: str, unit: str, target: float, smallest: float) -> ValueError:
    """The error of a budget below the smallest model (one head and neuron per block)."""
    shown = (lambda x: f"{x:,}") if unit == "parameters" else (lambda x: f"{x:.3f}")
    return ValueError(
        f"config.{field}: {shown(target)} {unit}, but with every block keeping one head "
        f"and one FFN neuron the model still has {shown(smallest)}; raise the budget or drop "
        "blocks (config.prune.drop_layers)"
    )
