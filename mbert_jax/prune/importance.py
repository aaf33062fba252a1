"""First-order importance of attention heads and FFN neurons (Michel et al., 2019).

"Are Sixteen Heads Really Better than One?" scores head h by the expected
sensitivity of the loss to a gate xi_h on its output, at xi = 1:

    I_h = E_batches |d loss / d xi_h|

normalized per layer (each layer's scores divided by their L2 norm, which
the paper finds makes scores of different layers comparable). The same
score on a per-neuron gate ranks FFN neurons. The gradient of every gate of
every block comes from one backward pass, in one jitted function per batch;
the gates are the model's own inputs (`prune.gates`).

`fisher_importance` scores each gate by the diagonal of its empirical Fisher
information, the mean over examples of (d loss_i / d gate)^2 (Kwon et al.,
2022, "A Fast Post-Training Pruning Framework for Transformers"): to second
order, the loss increase when the unit is removed, in the same units for
heads and neurons, so the two can be traded against each other under a
budget (`choose.choose_search`).

Multi-host: each process scores its own slice of every global batch (the
data pipeline's `batch_fn`), and the sums are added over processes before
anything is divided or ranked, so every process gets the scores of the whole
global batches and chooses the same structure. A loss function that returns a
`LossSum` (sum and item count) makes that exact: a batch's gradient is the
gradient of the summed loss over every process's items, divided by their
count; a plain mean loss weighs each process's slice equally.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from mbert_jax.losses import LossSum
from mbert_jax.models.model import Model, ModelOutput
from mbert_jax.prune.gates import ones_gates

# `(ModelOutput, batch) -> loss`: a scalar mean, or a `LossSum` (sum and item count).
LossFn = Callable[[ModelOutput, Mapping[str, jax.Array]], jax.Array | LossSum]


def classification_loss(out: ModelOutput, batch: Mapping[str, jax.Array]) -> jax.Array:
    """Mean cross-entropy of the classifier's logits against `batch["labels"]`."""
    return optax.softmax_cross_entropy_with_integer_labels(out.logits, batch["labels"]).mean()


@dataclasses.dataclass(frozen=True)
class Importance:
    """Scores per block: `heads[l]` is [heads_l], `neurons[l]` [width_l] ([F, width_l]
    with F stacked FFNs). Higher is more important."""

    heads: tuple[np.ndarray, ...]
    neurons: tuple[np.ndarray, ...]
    batches: int


def _sum_and_count(value) -> tuple[jax.Array, jax.Array]:
    """A loss as (sum, item count): a `LossSum` as it is, a mean as (mean, 1)."""
    if isinstance(value, LossSum):
        return value.total, value.count
    return value, jnp.float32(1.0)


def gated_loss(model: Model, loss_fn: LossFn) -> Callable:
    """`(params, batch, **gates) -> (loss sum, count)` of the deterministic forward with gates."""

    def loss(params, batch, **gates):
        out = model.apply(
            {"params": params},
            batch["input_ids"],
            batch.get("attention_mask"),
            batch.get("token_type_ids"),
            deterministic=True,
            **gates,
        )
        return _sum_and_count(loss_fn(out, batch))

    return loss


def process_sum(tree):
    """Each leaf summed over the processes (float64 numpy); the tree itself with one."""
    tree = jax.tree.map(lambda x: np.asarray(x, np.float64), tree)
    if jax.process_count() == 1:
        return tree
    gathered = multihost_utils.process_allgather(jax.tree.map(np.float32, tree))
    return jax.tree.map(lambda x: np.asarray(x, np.float64).sum(axis=0), gathered)


@contextlib.contextmanager
def on_this_process():
    """Run per-process work whatever mesh the caller set (the trainer's, over every process's
    devices, during iterative pruning): a one-device mesh of this process's first device
    with the same axis names, so that the model's sharding constraints stay on it."""
    names = jax.sharding.get_abstract_mesh().axis_names
    if not names:
        yield
        return
    devices = np.array(jax.local_devices()[:1]).reshape((1,) * len(names))
    with jax.set_mesh(jax.sharding.Mesh(devices, names)):
        yield


def gate_gradients(model: Model, loss_fn: LossFn = classification_loss) -> Callable:
    """A jitted `(params, batch, gates) -> ((head grads, neuron grads), count)`: the
    gradient of the batch's summed loss (a mean loss: of the mean) at `gates`, and the
    items it sums over (1 for a mean loss).

    The batch holds `input_ids` and optionally `attention_mask` and
    `token_type_ids` (the model's inputs), and whatever `loss_fn` reads.
    Dropout is off. `gates`: `(head_gates, neuron_gates)` as `ones_gates`
    gives them (iterative pruning scores a gated model, its removed units at 0).
    """

    gated = gated_loss(model, loss_fn)

    def loss(gates, params, batch):
        head_gates, neuron_gates = gates
        return gated(params, batch, head_gates=head_gates, neuron_gates=neuron_gates)

    @jax.jit
    def grads(params, batch, gates):
        return jax.grad(loss, has_aux=True)(gates, params, batch)

    return grads


def example_gate_gradients(model: Model, loss_fn: LossFn = classification_loss) -> Callable:
    """A jitted `(params, batch, gates) -> ((head sq. grads, neuron sq. grads), examples)`:
    the sum over the batch's rows of (d loss_row / d gate)^2, each row's loss its mean over
    its items, and the rows counted (rows with no item, such as padding rows, are not).

    One backward pass for the batch: the per-row gradients come from `jax.vmap`.
    """

    gated = gated_loss(model, loss_fn)

    def row_loss(gates, params, row):
        head_gates, neuron_gates = gates
        one = jax.tree.map(lambda x: x[None], row)
        total, count = gated(params, one, head_gates=head_gates, neuron_gates=neuron_gates)
        return total / jnp.maximum(count, 1e-9), count > 0

    @jax.jit
    def squares(params, batch, gates):
        g, counted = jax.vmap(jax.grad(row_loss, has_aux=True), in_axes=(None, None, 0))(
            gates, params, dict(batch)
        )
        w = counted.astype(jnp.float32)

        def total(x):
            return jnp.einsum("b,b...->...", w, jnp.square(x))

        return jax.tree.map(total, g), jnp.sum(w)

    return squares


def _normalize(scores: np.ndarray) -> np.ndarray:
    norm = np.sqrt(np.sum(scores**2))
    return scores / norm if norm > 0 else scores


def importance(
    model: Model,
    params: Mapping,
    batches: Iterable[Mapping[str, jax.Array]],
    loss_fn: LossFn = classification_loss,
    *,
    normalize: bool = True,
    gates=None,
) -> Importance:
    """Head and neuron importance: the mean over `batches` of |d loss / d gate|.

    Args:
      model: the model (with the heads `loss_fn` reads; no layer sharing
        needed: shared blocks get per-layer scores too).
      params: its parameters.
      batches: the data set, batches of the model's inputs and labels (with
        several processes: this process's slice of each global batch).
      loss_fn: `(ModelOutput, batch) -> scalar` mean or `LossSum`; default:
        classification cross-entropy.
      normalize: divide each layer's head scores, and each layer's neuron
        scores, by their L2 norm (Michel et al.).
      gates: `(head_gates, neuron_gates)` the gradients are taken at (default:
        all ones, the ungated model).

    Returns:
      An `Importance`, numpy float64 scores, the same on every process.
    """
    grads = gate_gradients(model, loss_fn)
    gates = ones_gates(model.config) if gates is None else gates
    total, count = None, 0
    for batch in batches:
        with on_this_process():
            local = jax.device_get(grads(params, dict(batch), gates))
        g, items = process_sum(local)
        g = jax.tree.map(lambda x, items=items: np.abs(x / max(items, 1e-12)), g)
        total = g if total is None else jax.tree.map(np.add, total, g)
        count += 1
    if not count:
        raise ValueError("importance needs at least one batch; the data set is empty")
    heads, neurons = jax.tree.map(lambda x: x / count, total)
    scores = Importance(heads=tuple(heads), neurons=tuple(neurons), batches=count)
    return normalized(scores) if normalize else scores


def fisher_importance(
    model: Model,
    params: Mapping,
    batches: Iterable[Mapping[str, jax.Array]],
    loss_fn: LossFn = classification_loss,
    *,
    gates=None,
) -> Importance:
    """Head and neuron importance: the diagonal empirical Fisher information of each gate,
    the mean over examples of (d loss_example / d gate)^2 (Kwon et al., 2022).

    Arguments as `importance`'s; each example's loss is its mean over its items (one
    row, or the tagged words or answer spans of a row). Not normalized: the scores
    estimate loss increases, comparable across layers and between heads and neurons.
    """
    squares = example_gate_gradients(model, loss_fn)
    gates = ones_gates(model.config) if gates is None else gates
    total, examples, count = None, 0.0, 0
    for batch in batches:
        with on_this_process():
            sq, rows = jax.device_get(squares(params, dict(batch), gates))
        total = sq if total is None else jax.tree.map(np.add, total, sq)
        examples += float(rows)
        count += 1
    if not count:
        raise ValueError("importance needs at least one batch; the data set is empty")
    total, examples = process_sum((total, examples))
    if not examples > 0:
        raise ValueError("Fisher importance: no batch has an example with a counted item")
    heads, neurons = jax.tree.map(lambda x: x / examples, total)
    return Importance(heads=tuple(heads), neurons=tuple(neurons), batches=count)


def normalized(scores: Importance) -> Importance:
    """Each layer's head scores, and each layer's neuron scores, divided by their L2 norm."""
    return dataclasses.replace(
        scores,
        heads=tuple(_normalize(h) for h in scores.heads),
        neurons=tuple(_normalize(n) for n in scores.neurons),
    )


def layer_losses(model: Model, loss_fn: LossFn = classification_loss) -> Callable:
    """A jitted `(params, batch) -> ([num_layers + 1] loss sums, counts)`: the full model's,
    then with block i skipped (`layer_gates` 0 at i: its input passes on), for each i.

    One function per batch: the L + 1 forwards are one traced forward, mapped over the gates.
    """
    n = model.config.num_layers
    gated = gated_loss(model, loss_fn)

    @jax.jit
    def losses(params, batch):
        gates = jnp.concatenate([jnp.ones((1, n)), 1.0 - jnp.eye(n)]).astype(jnp.float32)
        # one traced forward, run for each gate row (a scan: one model in memory at a time)
        return jax.lax.map(lambda g: gated(params, batch, layer_gates=g), gates)

    return losses


def layer_importance(
    model: Model,
    params: Mapping,
    batches: Iterable[Mapping[str, jax.Array]],
    loss_fn: LossFn = classification_loss,
) -> np.ndarray:
    """Block importance: the mean over `batches` of loss(block i skipped) - loss(full model).

    Args:
      model: the model (without layer sharing or with: each layer is skipped alone).
      params: its parameters.
      batches: the data set, batches of the model's inputs and labels (with several
        processes: this process's slice of each global batch).
      loss_fn: `(ModelOutput, batch) -> scalar` mean or `LossSum`; default:
        classification cross-entropy.

    Returns:
      [num_layers] float64 (the same on every process): how much the loss rises without each block
      (negative: the model is better without it). Higher is more important.
    """
    fn = layer_losses(model, loss_fn)
    total, count = None, 0
    for batch in batches:
        with on_this_process():
            local = jax.device_get(fn(params, dict(batch)))
        sums, items = process_sum(local)
        values = sums / np.maximum(items, 1e-12)
        total = values if total is None else total + values
        count += 1
    if not count:
        raise ValueError("layer importance needs at least one batch; the data set is empty")
    mean = total / count
    return mean[1:] - mean[0]
