"""MobileBERT knowledge transfer as data: the `config.distill` block and its stages.

A MobileBERT student learns from an IB-BERT teacher in two steps (Sun et
al., 2020; docs/reference.md#mobilebert): layer-wise knowledge transfer
(feature maps and attention maps of every block), then pre-training
distillation (PD). Three strategies order the two (`distill.strategy`):

- "pkt", progressive (the paper's best): L stages; stage l trains block l
  on its own layer loss, then PD.
- "jkt", joint: one stage with the layer losses of every block, then PD.
- "akt", auxiliary: one stage whose loss is every layer loss plus PD.

This module turns the config into a list of `train.recipe.Stage`s: each stage
names its active loss terms and weights, its training rules (regex over the
student's parameter paths -> learning-rate multiplier, or None = frozen) and
the static forward options the recipe reads (`recipe.py`), a
`TransferOptions`: the active layers, whether PD is on, how many blocks each
model runs, where the gradient stops, dropout, and the evaluated layers.

Layer numbers follow `layer_map.py`: layer l (1..L) is the output of block l,
i.e. the parameters `encoder/layers_{l-1}`; layer 0 is the embedding.

Loss weights. A layer's terms are `fmt_layer_l` (feature-map transfer),
`at_layer_l` (attention transfer) and, optionally, `mean_layer_l` and
`var_layer_l` (mean and variance transfer), weighted by the official factors
divided by the number of student layers L: 100/L, 1/L, 5000/L, 5/L
(`run_pretraining.py`'s hidden/attention/beta/gamma factors). Mean and
variance transfer are off by default (the paper's layer loss is feature map +
attention; the official code adds them: `mean_variance_transfer=True`) and
compare layer l with its teacher layer only: the official TF1 code's
comparison against the stack of all teacher layers is a bug that is not
reproduced (`losses/mobilebert.py`). PD is
`pd_mlm` (cross-entropy against `r * onehot + (1 - r) * p_teacher`, r = 0.5)
plus `nsp`, each weighted 1.

Progressive stage l (paper default first, the official codes as options):
- Stage compute is proportional to the stage: both models run only their
  first blocks up to layer l (the teacher up to its mapped layer), and in
  "frozen" mode the input of block l is a `stop_gradient`, so nothing below
  it is differentiated. Blocks above l are neither run nor trained.
- Block l trains at `layer_lr_multiplier` x the stage's base rate (paper:
  1.0, no multiplier given; official TF1: 3.0).
- Lower blocks (`lower_layers`): "frozen" (paper, default), "reduced" (the
  official TF1 code: `lower_layer_lr_multiplier` x block l's rate; 0.3 / 3.0
  = 0.1 there), "same" (the TF2 Model Garden port without its freeze flag).
- Embeddings (word, position and token-type tables, the embedding
  transformation) and the MLM head are copied from the teacher and frozen
  during every transfer stage (official TF1). The embedding norm is copied
  and frozen too when both models use the same normalization; otherwise
  (IB-BERT LayerNorm vs MobileBERT NoNorm) the student keeps its own, which
  trains with block 1 and afterwards follows `lower_layers`, as a layer 0.
  A student whose embeddings were factorized from a stock BERT's table
  (`fit.py`: another layout, nothing to copy) trains all of them so, as a
  layer 0: with block 1 in PKT (then as `lower_layers` says), throughout
  JKT, and AKT and PD train everything anyway.
  (The TF2 port keeps the embeddings trainable unless its freeze flag is set.)
- `stage_loss_division` divides the stage's loss by l (the TF2 port's
  `total_loss /= stage_id + 1`); off by default (TF1 and the paper do not).
- Schedule (`transfer_schedule`, official TF1): linear warm-up over the
  first 10% of each stage, then a square-root decay of the rate from 1.0 to
  0.9 of the peak (optax polynomial, power 0.5). The trainer gives every
  stage a fresh optimizer state.

JKT trains all blocks in one stage of `transfer_steps` (default L x
`layer_steps`, the PKT budget) with the transfer schedule. PD and AKT train
every parameter with the PD schedule (linear decay with a 10k-step warm-up)
and the student's dropout off (official; `pd_dropout` turns it on); AKT lasts
the transfer budget plus `pd_steps`. A student with ALBERT-style shared
layers has no per-block parameters, so it takes JKT or AKT, not PKT.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from mbert_jax.losses import (
    ATTENTION_TRANSFER_FACTOR,
    FEATURE_MAP_TRANSFER_FACTOR,
    MEAN_TRANSFER_FACTOR,
    MOBILEBERT_GROUND_TRUTH_RATIO,
    VARIANCE_TRANSFER_FACTOR,
)
from mbert_jax.train.optimizers import SCHEDULES
from mbert_jax.train.recipe import Stage

STRATEGIES = ("pkt", "jkt", "akt")
LOWER_LAYER_MODES = ("frozen", "reduced", "same")
ATTENTION_FORMS = ("kl", "cross_entropy")

EMBEDDING_NORM = "encoder/embeddings/norm/.*"
EMBEDDINGS = "encoder/embeddings/.*"
ALL_BLOCKS = r"encoder/(layers_\d+|shared_attention|shared_ffn)/.*"


@dataclasses.dataclass(frozen=True)
class TransferOptions:
    """The static forward options of one MobileBERT stage (`Stage.options`).

    Attributes:
      layers: 1-based student layers whose transfer losses are active.
      pd: the PD loss (MLM distillation + NSP) is active.
      student_layers: blocks the student runs (`num_layers`).
      teacher_layers: blocks the teacher runs (None: all, for its MLM head).
      stop_gradient_below: no gradient below this block index (0-based), or None.
      dropout: the student's dropout is on.
      eval_layers: layers whose held-out transfer losses `evaluate` reports.
    """

    layers: tuple[int, ...]
    pd: bool
    student_layers: int
    teacher_layers: int | None
    stop_gradient_below: int | None
    dropout: bool
    eval_layers: tuple[int, ...]


def default_distill_config() -> ml_collections.ConfigDict:
    """`config.distill` of the MobileBERT recipe, at the paper's full-size settings."""
    return ml_collections.ConfigDict(
        {
            "strategy": "pkt",  # pkt | jkt | akt
            # Teacher layer of each student layer: identity | uniform | last | "4,8,12,..."
            # (1-based teacher layers, one per student block; see distill/layer_map.py).
            "layer_map": "identity",
            "layer_steps": 10_000,  # steps of each progressive stage
            "transfer_steps": 0,  # the JKT stage (and AKT's transfer part); 0: L x layer_steps
            "pd_steps": 500_000,  # pre-training distillation; 0: no PD stage (not for akt)
            # Progressive stages: rate of the trained block, and of the blocks below it.
            "lower_layers": "frozen",  # frozen (paper) | reduced (official TF1) | same (TF2 port)
            "layer_lr_multiplier": 1.0,  # official TF1: 3.0
            "lower_layer_lr_multiplier": 0.1,  # "reduced": x the trained block's rate (0.3 / 3.0)
            "stage_loss_division": False,  # TF2 port: stage l's loss / l
            # Per-layer factors, each divided by the number of student layers L.
            "feature_map_factor": FEATURE_MAP_TRANSFER_FACTOR,
            "attention_factor": ATTENTION_TRANSFER_FACTOR,
            "mean_variance_transfer": False,  # official code: True
            "mean_factor": MEAN_TRANSFER_FACTOR,
            "variance_factor": VARIANCE_TRANSFER_FACTOR,
            "attention_form": "kl",  # kl (paper) | cross_entropy (official value, same gradients)
            "official_padding": False,  # True: layer losses average over padding too (official)
            # Pre-training distillation.
            "ground_truth_ratio": MOBILEBERT_GROUND_TRUTH_RATIO,
            "pd_dropout": False,  # official: the student's dropout is off during PD
            "transfer_schedule": {
                "kind": "polynomial",
                "warmup_steps": 0,
                "warmup_fraction": 0.1,
                "end_factor": 0.9,
                "power": 0.5,
            },
            "pd_schedule": {
                "kind": "linear",
                "warmup_steps": 10_000,
                "warmup_fraction": 0.0,
                "end_factor": 0.0,
                "power": 1.0,
            },
        }
    )


def validate_distill_config(d) -> None:
    """Check the values of a `config.distill` block; every error names the field."""

    def fail(field, msg):
        raise ValueError(f"config.distill.{field}: {msg}")

    for field, allowed in (
        ("strategy", STRATEGIES),
        ("lower_layers", LOWER_LAYER_MODES),
        ("attention_form", ATTENTION_FORMS),
    ):
        if d[field] not in allowed:
            fail(field, f"{d[field]!r} is not one of {allowed}")
    if d.strategy == "pkt" and d.layer_steps < 1:
        fail("layer_steps", f"must be >= 1 for progressive transfer, got {d.layer_steps}")
    if d.transfer_steps < 0 or d.pd_steps < 0:
        fail("transfer_steps" if d.transfer_steps < 0 else "pd_steps", "must be >= 0")
    if d.strategy != "pkt" and d.transfer_steps == 0 and d.layer_steps < 1:
        fail("transfer_steps", "is 0 (L x layer_steps) but layer_steps < 1; set one of them")
    for field in ("layer_lr_multiplier", "lower_layer_lr_multiplier"):
        if not d[field] > 0:
            fail(field, f"must be > 0, got {d[field]} (lower_layers='frozen' freezes)")
    for field in ("feature_map_factor", "attention_factor", "mean_factor", "variance_factor"):
        if d[field] < 0:
            fail(field, f"must be >= 0, got {d[field]}")
    if not 0.0 <= d.ground_truth_ratio <= 1.0:
        fail("ground_truth_ratio", f"must be in [0, 1], got {d.ground_truth_ratio}")
    for field in ("transfer_schedule", "pd_schedule"):
        if d[field].kind not in SCHEDULES:
            fail(f"{field}.kind", f"{d[field].kind!r} is not one of {SCHEDULES}")


def layers_pattern(block_indices) -> str:
    """Regex over the parameters of the given 0-based blocks."""
    return "encoder/layers_(" + "|".join(str(i) for i in block_indices) + ")/.*"


def layer_terms(d, layer: int, num_layers: int, scale: float = 1.0) -> dict[str, float]:
    """Loss weights of one layer's transfer terms (official factors / L, times `scale`)."""
    w = scale / num_layers
    terms = {f"fmt_layer_{layer}": d.feature_map_factor * w}
    if d.attention_factor > 0:
        terms[f"at_layer_{layer}"] = d.attention_factor * w
    if d.mean_variance_transfer:
        terms[f"mean_layer_{layer}"] = d.mean_factor * w
        terms[f"var_layer_{layer}"] = d.variance_factor * w
    return terms


def pd_terms(use_nsp: bool) -> dict[str, float]:
    return {"pd_mlm": 1.0, "nsp": 1.0} if use_nsp else {"pd_mlm": 1.0}


def _schedule(block) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(block.to_dict())


def mobilebert_stages(
    d,
    *,
    student_layers: int,
    teacher_map: tuple[int, ...],
    use_nsp: bool = True,
    train_embedding_norm: bool = False,
    train_embeddings: bool = False,
) -> list[Stage]:
    """The stages of a `config.distill` block (see the module docstring).

    Args:
      d: the `config.distill` block (already validated).
      student_layers: L, the student's number of blocks.
      teacher_map: `layer_map.layer_map(...)`: the teacher layer of student layers 0..L.
      use_nsp: the data has next-sentence labels (PD adds the NSP loss).
      train_embedding_norm: the student's embedding norm was not copied from
        the teacher (different normalization type), so it trains with block 1.
      train_embeddings: the student's embeddings were not copied but
        factorized from the teacher's table (`fit.py`), so all of them (the
        norm included) train with block 1.

    Returns:
      The list of `Stage`s, transfer first, PD last.
    """
    L = student_layers
    every = tuple(range(1, L + 1))
    teacher_top = max(teacher_map[1:])
    # The student's own embedding parameters (not copied): a "layer 0".
    own = EMBEDDINGS if train_embeddings else EMBEDDING_NORM if train_embedding_norm else None
    # Nothing below the lowest trained parameter needs a gradient: with the
    # embeddings frozen, even "all blocks" stops at block 0's input.
    bottom = None if own else 0
    transfer_steps = int(d.transfer_steps) or L * int(d.layer_steps)
    stages = []
    if d.strategy == "pkt":
        current = float(d.layer_lr_multiplier)
        lower_rule = {
            "frozen": None,
            "reduced": current * float(d.lower_layer_lr_multiplier),
            "same": current,
        }[d.lower_layers]
        for layer in every:
            rules = [(layers_pattern([layer - 1]), current)]
            if layer > 1:
                rules.append((layers_pattern(range(layer - 1)), lower_rule))
            if own:
                rules.append((own, current if layer == 1 else lower_rule))
            rules.append((".*", None))
            if d.lower_layers == "frozen":
                stop = None if (layer == 1 and own) else layer - 1
            else:
                stop = bottom
            scale = 1.0 / layer if d.stage_loss_division else 1.0
            stages.append(
                Stage(
                    name=f"pkt_layer_{layer}",
                    steps=int(d.layer_steps),
                    loss_weights=layer_terms(d, layer, L, scale),
                    rules=tuple(rules),
                    options=TransferOptions(
                        layers=(layer,),
                        pd=False,
                        student_layers=layer,
                        teacher_layers=teacher_map[layer],
                        stop_gradient_below=stop,
                        dropout=True,
                        eval_layers=tuple(range(1, layer + 1)),
                    ),
                    schedule=_schedule(d.transfer_schedule),
                )
            )
    elif d.strategy == "jkt":
        weights = {}
        for layer in every:
            weights.update(layer_terms(d, layer, L))
        rules = [(ALL_BLOCKS, 1.0)]
        if own:
            rules.append((own, 1.0))
        rules.append((".*", None))
        stages.append(
            Stage(
                name="jkt",
                steps=transfer_steps,
                loss_weights=weights,
                rules=tuple(rules),
                options=TransferOptions(
                    layers=every,
                    pd=False,
                    student_layers=L,
                    teacher_layers=teacher_top,
                    stop_gradient_below=bottom,
                    dropout=True,
                    eval_layers=every,
                ),
                schedule=_schedule(d.transfer_schedule),
            )
        )
    full = dict(
        student_layers=L,
        stop_gradient_below=None,
        dropout=bool(d.pd_dropout),
        eval_layers=every,
    )
    if d.strategy == "akt":
        weights = {}
        for layer in every:
            weights.update(layer_terms(d, layer, L))
        weights.update(pd_terms(use_nsp))
        stages.append(
            Stage(
                name="akt",
                steps=transfer_steps + int(d.pd_steps),
                loss_weights=weights,
                rules=((".*", 1.0),),
                options=TransferOptions(**full, layers=every, pd=True, teacher_layers=None),
                schedule=_schedule(d.pd_schedule),
            )
        )
    elif d.pd_steps > 0:
        stages.append(
            Stage(
                name="pd",
                steps=int(d.pd_steps),
                loss_weights=pd_terms(use_nsp),
                rules=((".*", 1.0),),
                options=TransferOptions(**full, layers=(), pd=True, teacher_layers=None),
                schedule=_schedule(d.pd_schedule),
            )
        )
    return stages
