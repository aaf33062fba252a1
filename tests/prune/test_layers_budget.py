"""Block skipping and layer importance, block choice, and pruning to a parameter budget.

Expected values come from the float64 numpy BERT of `numpy_bert.py` (a block
skipped is a forward that does not run it) and from arithmetic written here
(the parameters a head and a neuron hold, the greedy budget order).
"""

from __future__ import annotations

import jax
import numpy as np
import numpy_bert
import pytest
from test_importance import make_batches, random_params

from mbert_jax.models import variants
from mbert_jax.models.model import Model
from mbert_jax.prune import Importance, layer_importance, prune
from mbert_jax.prune.choose import (
    budget_target,
    choose_budget,
    choose_layers,
    choose_search,
    count_params,
    layer_count,
    unit_costs,
)


@pytest.fixture(autouse=True)
def _exact_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


def micro(**changes):
    return variants.get("bert_base_micro", num_layers=4, num_labels=3, **changes)


def test_a_zero_layer_gate_is_the_forward_without_that_block():
    config = micro()
    params = random_params(config)
    batch = make_batches(config, count=1)[0]
    model = Model(config, ("classifier",))
    for skip in range(config.num_layers):
        gates = np.ones(config.num_layers, np.float32)
        gates[skip] = 0.0
        out = model.apply(
            {"params": params},
            batch["input_ids"],
            batch["attention_mask"],
            layer_gates=gates,
        )
        kept = [i for i in range(config.num_layers) if i != skip]
        want = numpy_bert.forward(params, batch["input_ids"], batch["attention_mask"], layers=kept)
        np.testing.assert_allclose(out.logits, want["logits"], rtol=1e-4, atol=1e-5)
    # All ones: the ungated forward, exactly.
    plain = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"])
    ones = model.apply(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        layer_gates=np.ones(config.num_layers, np.float32),
    )
    np.testing.assert_array_equal(plain.logits, ones.logits)


def test_layer_importance_is_the_loss_increase_without_each_block():
    config = micro()
    params = random_params(config)
    batches = make_batches(config, count=2)

    def loss(layers):
        values = []
        for b in batches:
            out = numpy_bert.forward(params, b["input_ids"], b["attention_mask"], layers=layers)
            values.append(numpy_bert.cross_entropy(out["logits"], b["labels"]))
        return np.mean(values)

    full = loss(list(range(4)))
    want = [loss([j for j in range(4) if j != i]) - full for i in range(4)]
    got = layer_importance(Model(config, ("classifier",)), params, batches)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="at least one batch"):
        layer_importance(Model(config, ("classifier",)), params, [])


def test_block_counts_and_the_blocks_kept():
    assert layer_count(0.5, 6) == 3
    assert layer_count(0.34, 6) == 2  # floor(2.04)
    assert layer_count(2, 6) == 2 and layer_count(2.0, 6) == 2
    for bad, match in (
        (6, "removes 6 of the 6 blocks"),
        (-0.5, "a fraction of the blocks in"),
        (1.5, "a fraction of the blocks in"),
        ("two", "a fraction of the blocks in"),
    ):
        with pytest.raises(ValueError, match=match):
            layer_count(bad, 6)
    # The lowest loss increases go; a tie goes to the earlier block.
    assert choose_layers([0.3, -0.1, 0.05, 0.05, 2.0, 0.2], 3) == [0, 4, 5]
    assert choose_layers([0.3, -0.1, 0.05, 0.05, 2.0, 0.2], 2) == [0, 3, 4, 5]


def test_unit_costs_are_the_parameters_a_head_and_a_neuron_hold():
    config = micro(intermediate_size=40)
    params = random_params(config)
    hidden, heads = config.hidden_size, config.num_heads
    d = hidden // heads
    head, neuron = unit_costs(params, range(4), config)
    # q, k, v: a [hidden, d] kernel slice and a [d] bias each; output: [d, hidden] rows.
    assert head == {i: 3 * (hidden * d + d) + d * hidden for i in range(4)}
    # FFN in: a [hidden] column and a bias; out: a [hidden] row (the output bias stays).
    assert neuron == {i: 2 * hidden + 1 for i in range(4)}
    # Removing one head and three neurons of block 1 saves exactly that many parameters.
    _, small = prune(config, params, {1: [h for h in range(heads) if h != 2]}, {1: range(3, 40)})
    assert count_params(params) - count_params(small) == head[1] + 3 * neuron[1]


def test_budget_target():
    assert budget_target(0.5, 1001) == 500
    assert budget_target(1.0, 1001) == 1001
    assert budget_target(700, 1001) == 700
    for bad in (0.0, -1, 1.5, "x"):
        with pytest.raises(ValueError, match="config.prune.params_budget"):
            budget_target(bad, 1001)


def test_the_budget_removes_the_cheapest_loss_per_parameter_first():
    # Two blocks, 3 heads of 100 parameters and 4 neurons of 10 each; 2 x (300 + 40) + 60
    # other parameters = 740.
    scores = Importance(
        heads=(np.array([5.0, 1.0, 3.0]), np.array([2.0, 8.0, 0.5])),
        neurons=(np.array([0.2, 0.06, 0.4, 0.01]), np.array([0.3, 0.3, 0.02, 0.9])),
        batches=1,
    )
    costs = ({0: 100, 1: 100}, {0: 10, 1: 10})
    # Score per parameter, by hand: heads .05 .01 .03 | .02 .08 .005; neurons .02 .006 .04
    # .001 | .03 .03 .002 .09. Each block's best head (0 of block 0, 1 of block 1) and best
    # neuron (2 of block 0, 3 of block 1) stay. In order: neuron (0, 3) .001 -> 730, neuron
    # (1, 2) .002 -> 720, head (1, 2) .005 -> 620, neuron (0, 1) .006 -> 610, head (0, 1)
    # .01 -> 510.
    keep_h, keep_n = choose_budget(scores, costs, [0, 1], 740, 725)
    assert keep_h == {0: [0, 1, 2], 1: [0, 1, 2]}
    assert keep_n == {0: [0, 1, 2], 1: [0, 1, 3]}
    keep_h, keep_n = choose_budget(scores, costs, [0, 1], 740, 615)
    assert keep_h == {0: [0, 1, 2], 1: [0, 1]}
    assert keep_n == {0: [0, 2], 1: [0, 1, 3]}
    keep_h, _ = choose_budget(scores, costs, [0, 1], 740, 600)
    assert keep_h == {0: [0, 2], 1: [0, 1]}
    # A unit already removed (-inf) goes first: head (0, 2) -> 640, then the two neurons.
    gone = Importance(
        heads=(np.array([5.0, 1.0, -np.inf]), scores.heads[1]),
        neurons=scores.neurons,
        batches=1,
    )
    keep_h, keep_n = choose_budget(gone, costs, [0, 1], 740, 625)
    assert keep_h == {0: [0, 1], 1: [0, 1, 2]}
    assert keep_n == {0: [0, 1, 2], 1: [0, 1, 3]}
    # Smallest possible: one head and one neuron per block: 740 - 2 x (200 + 30) = 280.
    with pytest.raises(ValueError, match="the model still has 280"):
        choose_budget(scores, costs, [0, 1], 740, 279)


def test_the_uniform_allocation_cuts_one_fraction_of_heads_and_neurons():
    """Same blocks as above (740 parameters; heads of 100, neurons of 10); scores taken as
    normalized. By hand, sparsity s removes floor(6 s) heads (globally, each block keeping its
    best) and floor(4 s) neurons per block:
      s < 1/6: nothing (740); [1/6, 1/4): head (1, 2) -> 640;
      [1/4, 1/3): + neurons (0, 3), (1, 2) -> 620; [1/3, 1/2): + head (0, 1) -> 520;
      [1/2, 2/3): + head (1, 0), neurons (0, 1), (1, 1) (of the tied 0.3s the later) -> 400;
      [2/3, 3/4): + head (0, 2), the last a block may lose -> 300; 3/4: + a neuron per
      block -> 280, the smallest model."""
    from mbert_jax.prune.choose import choose_uniform

    scores = Importance(
        heads=(np.array([5.0, 1.0, 3.0]), np.array([2.0, 8.0, 0.5])),
        neurons=(np.array([0.2, 0.06, 0.4, 0.01]), np.array([0.3, 0.3, 0.02, 0.9])),
        batches=1,
    )
    costs = ({0: 100.0, 1: 100.0}, {0: 10.0, 1: 10.0})
    keep_h, keep_n = choose_uniform(scores, costs, [0, 1], 740, 740)
    assert keep_h == {0: [0, 1, 2], 1: [0, 1, 2]} and keep_n == {0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}
    keep_h, keep_n = choose_uniform(scores, costs, [0, 1], 740, 700)
    assert keep_h == {0: [0, 1, 2], 1: [0, 1]} and keep_n == {0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}
    keep_h, keep_n = choose_uniform(scores, costs, [0, 1], 740, 630)
    assert keep_h == {0: [0, 1, 2], 1: [0, 1]} and keep_n == {0: [0, 1, 2], 1: [0, 1, 3]}
    keep_h, keep_n = choose_uniform(scores, costs, [0, 1], 740, 520)
    assert keep_h == {0: [0, 2], 1: [0, 1]} and keep_n == {0: [0, 1, 2], 1: [0, 1, 3]}
    keep_h, keep_n = choose_uniform(scores, costs, [0, 1], 740, 519)
    assert keep_h == {0: [0, 2], 1: [1]} and keep_n == {0: [0, 2], 1: [0, 3]}
    keep_h, keep_n = choose_uniform(scores, costs, [0, 1], 740, 300)
    assert keep_h == {0: [0], 1: [1]} and keep_n == {0: [0, 2], 1: [0, 3]}
    # The smallest: one head per block (s = 2/3 of 6 heads) and one neuron (s = 3/4).
    keep_h, keep_n = choose_uniform(scores, costs, [0, 1], 740, 280)
    assert keep_h == {0: [0], 1: [1]} and keep_n == {0: [2], 1: [3]}
    with pytest.raises(ValueError, match=r"279\.000 ms, but .* the model still has 280\.000"):
        choose_uniform(scores, costs, [0, 1], 740, 279, "prune.latency_budget", "ms")


def test_the_fisher_search_keeps_the_most_importance_a_brute_force_finds():
    """Every set of units (each block keeping a head and a neuron) within the budget is
    tried here; the search keeps one of the largest importance, within the budget."""
    rng = np.random.default_rng(0)
    layers, n_heads, n_neurons = [0, 1], 3, 4
    costs = ({0: 10.0, 1: 10.0}, {0: 3.0, 1: 3.0})
    total = 5.0 + 2 * (n_heads * 10.0 + n_neurons * 3.0)
    units = [(k, layer, i) for layer in layers for k, n in ((0, n_heads), (1, n_neurons))
             for i in range(n)]  # fmt: skip
    for trial in range(6):
        scores = Importance(
            heads=tuple(rng.exponential(1.0, n_heads) for _ in layers),
            neurons=tuple(rng.exponential(0.3, n_neurons) for _ in layers),
            batches=1,
        )
        target = total - rng.uniform(10.0, 55.0)
        best = -np.inf
        for mask in range(1 << len(units)):
            kept = [u for j, u in enumerate(units) if mask >> j & 1]
            if any(
                not any(u[0] == k and u[1] == layer for u in kept)
                for layer in layers
                for k in (0, 1)
            ):
                continue
            cost = 5.0 + sum(costs[k][layer] for k, layer, _ in kept)
            if cost <= target:
                value = sum((scores.heads, scores.neurons)[k][layer][i] for k, layer, i in kept)
                best = max(best, value)
        keep_heads, keep_neurons = choose_search(scores, costs, layers, total, target)
        cost = 5.0 + sum(10.0 * len(keep_heads[la]) + 3.0 * len(keep_neurons[la]) for la in layers)
        value = sum(scores.heads[la][keep_heads[la]].sum() for la in layers)
        value += sum(scores.neurons[la][keep_neurons[la]].sum() for la in layers)
        assert cost <= target, trial
        assert value == pytest.approx(best, rel=1e-12), trial

    # Units already removed (-inf) stay out; a budget below one head and neuron per block fails.
    removed = Importance(
        heads=(np.array([1.0, -np.inf, 0.5]), np.array([0.2, 0.1, 0.3])),
        neurons=(np.array([0.1, 0.2, -np.inf, 0.4]), np.ones(4)),
        batches=1,
    )
    keep_heads, keep_neurons = choose_search(removed, costs, layers, total, total)
    assert keep_heads == {0: [0, 2], 1: [0, 1, 2]}
    assert keep_neurons == {0: [0, 1, 3], 1: [0, 1, 2, 3]}
    smallest = 5.0 + 2 * (10.0 + 3.0)
    with pytest.raises(
        ValueError, match=r"config.prune.params_budget: 30.0 parameters.* still has 31.0;"
    ):
        choose_search(scores, costs, layers, total, smallest - 1)
    assert choose_search(scores, costs, layers, total, smallest)[0] == {
        layer: [int(np.argmax(scores.heads[layer]))] for layer in layers
    }
