"""`Model`: the encoder plus a chosen set of heads, and its output record.

Parameters are `{"encoder": ..., "mlm": ..., "nsp": ..., "classifier": ...,
"qa": ..., "token_classifier": ...}` (only the heads asked for), so a fine-tuning model takes the
`encoder` subtree of a pretraining or distillation checkpoint unchanged.

Each head fills named `ModelOutput` fields (`HEAD_OUTPUTS`); `head_outputs`
gives them as a dict, so code that handles any task (the task kinds of
`train/forward.py`) never names a head's fields itself. `Model.apply_heads`
runs heads on a final hidden state computed elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from mbert_jax.models.config import ModelConfig
from mbert_jax.models.encoder import Encoder, EncoderOutput
from mbert_jax.models.heads import (
    ClassifierHead,
    MLMHead,
    SpanHead,
    TokenClassifierHead,
    gather_positions,
)

HEADS = ("mlm", "nsp", "classifier", "qa", "token_classifier")
PRETRAINING_HEADS = ("mlm", "nsp")
# The `ModelOutput` fields each head fills.
HEAD_OUTPUTS = {
    "mlm": ("mlm_logits",),
    "nsp": ("nsp_logits",),
    "classifier": ("logits",),
    "qa": ("start_logits", "end_logits"),
    "token_classifier": ("token_logits",),
}


@flax.struct.dataclass
class ModelOutput:
    """The encoder's outputs plus those of the heads that ran (else None).

    Attributes:
      encoder: the `EncoderOutput` (hidden states, attention maps, ...).
      mlm_logits: [batch, P, vocab] at `masked_lm_positions`, or [batch, length, vocab].
      nsp_logits: [batch, 2].
      logits: [batch, num_labels] sequence classification / regression.
      start_logits, end_logits: [batch, length] span QA.
      token_logits: [batch, length, num_labels] token classification (tagging).
    """

    encoder: EncoderOutput
    mlm_logits: jax.Array | None = None
    nsp_logits: jax.Array | None = None
    logits: jax.Array | None = None
    start_logits: jax.Array | None = None
    end_logits: jax.Array | None = None
    token_logits: jax.Array | None = None


def head_outputs(out: ModelOutput, head: str) -> dict[str, jax.Array]:
    """The outputs of one head that ran, by `ModelOutput` field (`HEAD_OUTPUTS[head]`).

    So that recipes handle every head the same way: `{"logits": ...}` for the
    classifier, `{"start_logits": ..., "end_logits": ...}` for span QA, ...
    """
    fields = HEAD_OUTPUTS[validate_heads((head,))[0]]
    values = {f: getattr(out, f) for f in fields}
    missing = [f for f, v in values.items() if v is None]
    if missing:
        raise ValueError(f"the {head!r} head did not run: no {missing} in the model output")
    return values


def validate_heads(heads: Sequence[str]) -> tuple[str, ...]:
    heads = tuple(heads)
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise ValueError(f"unknown head(s) {unknown}; valid heads: {list(HEADS)}")
    return heads


class Model(nn.Module):
    """An encoder of the zoo with heads.

    Attributes:
      config: the `ModelConfig`.
      heads: which heads exist, from `HEADS` ("mlm", "nsp", "classifier", "qa",
        "token_classifier").
    """

    config: ModelConfig
    heads: tuple[str, ...] = PRETRAINING_HEADS

    def setup(self):
        cfg = self.config
        heads = validate_heads(self.heads)
        self.encoder = Encoder(cfg)
        if "mlm" in heads:
            self.mlm = MLMHead(cfg)
        if "nsp" in heads:
            self.nsp = ClassifierHead(cfg, 2, dropout=False)
        if "classifier" in heads:
            self.classifier = ClassifierHead(cfg, cfg.num_labels)
        if "qa" in heads:
            self.qa = SpanHead(cfg)
        if "token_classifier" in heads:
            self.token_classifier = TokenClassifierHead(cfg, cfg.num_labels)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        masked_lm_positions: jax.Array | None = None,
        *,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        output_qkv: bool = False,
        num_layers: int | None = None,
        stop_gradient_below: int | None = None,
        run_heads: Sequence[str] | None = None,
        head_gates: Sequence[jax.Array] | None = None,
        neuron_gates: Sequence[jax.Array] | None = None,
        layer_gates: jax.Array | Sequence[jax.Array] | None = None,
    ) -> ModelOutput:
        """Encoder forward, then the heads in `run_heads` (default: all the model has).

        `masked_lm_positions` ([batch, P]) makes the MLM head compute logits
        only there, which removes most of the vocabulary projection's cost in
        pretraining; without it the MLM head scores every position. Heads
        need all layers, so they do not run when `num_layers` cuts the stack.
        See `Encoder.__call__` for the other arguments.
        """
        out = self.encoder(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            deterministic=deterministic,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            output_qkv=output_qkv,
            num_layers=num_layers,
            stop_gradient_below=stop_gradient_below,
            head_gates=head_gates,
            neuron_gates=neuron_gates,
            layer_gates=layer_gates,
        )
        run = validate_heads(self.heads if run_heads is None else run_heads)
        missing = [h for h in run if h not in self.heads]
        if missing:
            raise ValueError(f"heads {missing} were asked for but the model has {self.heads}")
        if out.pooled_output is None:  # a truncated stack: no heads.
            return ModelOutput(encoder=out)
        result = self.apply_heads(
            out.last_hidden_state,
            out.pooled_output,
            run,
            deterministic=deterministic,
            masked_lm_positions=masked_lm_positions,
        )
        return ModelOutput(encoder=out, **result)

    def apply_heads(
        self,
        hidden: jax.Array,
        pooled: jax.Array | None,
        run_heads: Sequence[str],
        *,
        deterministic: bool = True,
        masked_lm_positions: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """The heads in `run_heads` on a final hidden state, by `ModelOutput` field.

        Also for a stack assembled by hand (BERT-of-Theseus's mixed modules):
        `hidden` [batch, length, d] is the last layer's output, `pooled`
        its `encoder.pool` (only the heads on the pooled output read it).
        """
        result = {}
        if "mlm" in run_heads:
            x = (
                hidden
                if masked_lm_positions is None
                else gather_positions(hidden, masked_lm_positions)
            )
            result["mlm_logits"] = self.mlm(x, self.encoder.word_table())
        if "nsp" in run_heads:
            result["nsp_logits"] = self.nsp(pooled, deterministic)
        if "classifier" in run_heads:
            result["logits"] = self.classifier(pooled, deterministic)
        if "qa" in run_heads:
            result["start_logits"], result["end_logits"] = self.qa(hidden)
        if "token_classifier" in run_heads:
            result["token_logits"] = self.token_classifier(hidden, deterministic)
        return result


def dummy_inputs(config: ModelConfig, batch_size: int = 1, length: int = 8) -> tuple:
    length = min(length, config.max_position_embeddings)
    ids = jnp.zeros((batch_size, length), jnp.int32)
    return ids, jnp.ones_like(ids)


def init_params(model: Model, rng: jax.Array) -> dict:
    """Initialize every parameter of `model` (all its heads); a plain float32 pytree."""
    return nn.meta.unbox(model.init(rng, *dummy_inputs(model.config))["params"])


def logical_axes(model: Model) -> dict:
    """The logical axis names of every parameter: a pytree of `PartitionSpec`s.

    Computed with `jax.eval_shape`, so it allocates nothing.
    """
    boxed = jax.eval_shape(
        lambda: model.init(jax.random.key(0), *dummy_inputs(model.config))["params"]
    )
    return nn.get_partition_spec(boxed)


def param_shapes(model: Model) -> dict:
    """`jax.ShapeDtypeStruct` of every parameter, without allocating."""
    return nn.meta.unbox(
        jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy_inputs(model.config))["params"])
    )
