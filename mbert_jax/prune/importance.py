"""First-order importance of attention heads and FFN neurons (Michel et al., 2019).

"Are Sixteen Heads Really Better than One?" scores head h by the expected
sensitivity of the loss to a gate xi_h on its output, at xi = 1:

    I_h = E_batches |d loss / d xi_h|

normalized per layer (each layer's scores divided by their L2 norm, which
the paper finds makes scores of different layers comparable). The same
score on a per-neuron gate ranks FFN neurons. The gradient of every gate of
every block comes from one backward pass, in one jitted function per batch;
the gates are the model's own inputs (`prune.gates`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mbert_jax.models.model import Model, ModelOutput
from mbert_jax.prune.gates import ones_gates

LossFn = Callable[[ModelOutput, Mapping[str, jax.Array]], jax.Array]


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


def gated_loss(model: Model, loss_fn: LossFn) -> Callable:
    """`(params, batch, **gates) -> loss` of the model's deterministic forward with gates."""

    def loss(params, batch, **gates):
        out = model.apply(
            {"params": params},
            batch["input_ids"],
            batch.get("attention_mask"),
            batch.get("token_type_ids"),
            deterministic=True,
            **gates,
        )
        return loss_fn(out, batch)

    return loss


def gate_gradients(model: Model, loss_fn: LossFn = classification_loss) -> Callable:
    """A jitted `(params, batch, gates) -> (head |grads|, neuron |grads|)` at `gates`.

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
        g = jax.grad(loss)(gates, params, batch)
        return jax.tree.map(jnp.abs, g)

    return grads


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
      batches: the data set, batches of the model's inputs and labels.
      loss_fn: `(ModelOutput, batch) -> scalar`; default: classification
        cross-entropy.
      normalize: divide each layer's head scores, and each layer's neuron
        scores, by their L2 norm (Michel et al.).
      gates: `(head_gates, neuron_gates)` the gradients are taken at (default:
        all ones, the ungated model).

    Returns:
      An `Importance`, numpy float64 scores.
    """
    grads = gate_gradients(model, loss_fn)
    gates = ones_gates(model.config) if gates is None else gates
    total, count = None, 0
    for batch in batches:
        g = jax.device_get(grads(params, dict(batch), gates))
        g = jax.tree.map(lambda x: np.asarray(x, np.float64), g)
        total = g if total is None else jax.tree.map(np.add, total, g)
        count += 1
    if not count:
        raise ValueError("importance needs at least one batch; the data set is empty")
    heads, neurons = jax.tree.map(lambda x: x / count, total)
    scores = Importance(heads=tuple(heads), neurons=tuple(neurons), batches=count)
    return normalized(scores) if normalize else scores


def normalized(scores: Importance) -> Importance:
    """Each layer's head scores, and each layer's neuron scores, divided by their L2 norm."""
    return dataclasses.replace(
        scores,
        heads=tuple(_normalize(h) for h in scores.heads),
        neurons=tuple(_normalize(n) for n in scores.neurons),
    )


def layer_losses(model: Model, loss_fn: LossFn = classification_loss) -> Callable:
    """A jitted `(params, batch) -> [num_layers + 1]` losses: the full model's, then with
    block i skipped (`layer_gates` 0 at i: its input passes on), for each i.

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
      batches: the data set, batches of the model's inputs and labels.
      loss_fn: `(ModelOutput, batch) -> scalar`; default: classification cross-entropy.

    Returns:
      [num_layers] float64: how much the loss rises without each block
      (negative: the model is better without it). Higher is more important.
    """
    fn = layer_losses(model, loss_fn)
    total, count = None, 0
    for batch in batches:
        values = np.asarray(jax.device_get(fn(params, dict(batch))), np.float64)
        total = values if total is None else total + values
        count += 1
    if not count:
        raise ValueError("layer importance needs at least one batch; the data set is empty")
    mean = total / count
    return mean[1:] - mean[0]
