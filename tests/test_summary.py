"""`mbert-jax describe`: parameter counts (docs/reference.md) and FLOPs (XLA's own count)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from mbert_jax.models import Encoder, variants
from mbert_jax.models.summary import encoder_flops_per_token, param_counts

# docs/reference.md#parameter-counts: embeddings + encoder without the untied MLM output
# (and no pooler).
PAPER_COUNTS = {"mobilebert": 24.58e6, "mobilebert_tiny": 15.49e6, "ibbert_large": 294.2e6}


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_mobilebert_family_counts_match_the_reference(name):
    counts = param_counts(variants.get(name))
    assert counts.backbone == pytest.approx(PAPER_COUNTS[name], abs=0.006e6)
    # The MLM head adds about 12M (the V x 384 untied matrix, transform and bias).
    extra = counts.mlm_untied_output + counts.mlm_head
    assert extra == pytest.approx(30522 * 384 + 512 * 512 + 512 + 2 * 512 + 30522)


def test_bert_family_counts():
    bert = param_counts(variants.get("bert_base"))
    # transformers' BertModel: embeddings + encoder + pooler = 109,482,240.
    assert bert.backbone + bert.pooler == 109_482_240
    tiny = param_counts(variants.get("tinybert4"))
    assert (tiny.backbone + tiny.pooler) / 1e6 == pytest.approx(14.35, abs=0.01)


@pytest.mark.parametrize(
    "name", ["bert_base_micro", "mobilebert_micro", "mobilebert_tiny_micro", "albert_base_micro"]
)
def test_analytic_flops_match_xla_cost_analysis(name):
    cfg = variants.get(name, hidden_dropout=0.0, attention_dropout=0.0)
    seq = 64
    enc = Encoder(cfg)
    ids = jnp.zeros((1, seq), jnp.int32)
    params = jax.eval_shape(lambda: enc.init(jax.random.key(0), ids))
    compiled = jax.jit(lambda p, x: enc.apply(p, x).last_hidden_state).lower(params, ids).compile()
    cost = compiled.cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    analytic = seq * encoder_flops_per_token(cfg, seq)
    # XLA also counts the elementwise work (norms, softmax, activations), which
    # the matmul-only analytic figure leaves out: a few percent at these widths.
    assert analytic <= xla <= 1.2 * analytic, (analytic, xla)


def test_describe_command_prints_both_conventions():
    p = subprocess.run(
        [sys.executable, "-m", "mbert_jax", "describe", "mobilebert"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "24.582M" in p.stdout and "36.598M" in p.stdout
    assert "paper convention" in p.stdout and "checkpoint" in p.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "mbert_jax", "describe", "mobilebret"],
        capture_output=True,
        text=True,
    )
    assert (
        bad.returncode != 0 and "valid variants" in bad.stderr and "mobilebert_tiny" in bad.stderr
    )


def test_describe_says_when_a_model_is_quantization_aware():
    from mbert_jax.models import summary, variants

    config = variants.get("mobilebert_micro")
    assert "quantization-aware" not in summary.describe("m", config)
    text = summary.describe("m", config.replace(fake_quant=True, fake_quant_decay=0.99))
    assert "quantization-aware" in text and "decay 0.99" in text
