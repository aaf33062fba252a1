"""A hand-written float64 numpy BERT forward, the independent reference of the pruning tests.

It reads every width from the parameter arrays (so a block may have any
number of heads of `head_dim` and any FFN width) and takes optional per-head
and per-neuron gates; it shares no code with `mbert_jax.models`.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf


def layer_norm(x, p, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def f64(tree):
    if isinstance(tree, dict):
        return {k: f64(v) for k, v in tree.items()}
    return np.asarray(tree, np.float64)


def forward(
    params,
    ids,
    mask=None,
    types=None,
    *,
    eps=1e-12,
    head_gates=None,
    neuron_gates=None,
    layers=None,
):
    """BERT (post-LN, exact GELU, tanh pooler, classifier) in float64.

    Args:
      params: a model's parameter tree with `encoder` (and `classifier`).
      ids, mask, types: [batch, length] inputs (mask 0 at padding).
      head_gates, neuron_gates: per block run, a [heads] / [width] multiplier.
      layers: the indices of the blocks to run, in order (default: all).

    Returns:
      {"hidden": last hidden state, "pooled": tanh pooler, "logits": classifier}.
    """
    p = f64(params)
    enc = p["encoder"]
    emb = enc["embeddings"]
    batch, length = ids.shape
    x = (
        emb["word_embeddings"]["embedding"][ids]
        + emb["position_embeddings"]["embedding"][np.arange(length)][None]
    )
    types = np.zeros_like(ids) if types is None else types
    x = x + emb["token_type_embeddings"]["embedding"][types]
    x = layer_norm(x, emb["norm"], eps)
    keys_ok = (np.ones_like(ids) if mask is None else mask)[:, None, None, :] > 0
    if layers is None:
        layers = range(sum(k.startswith("layers_") for k in enc))
    for run, i in enumerate(layers):
        blk = enc[f"layers_{i}"]
        att = blk["attention"]["self_attention"]
        q, k, v = (
            np.einsum("bld,dhe->blhe", x, att[n]["kernel"]) + att[n]["bias"]
            for n in ("query", "key", "value")
        )
        head_dim = q.shape[-1]
        s = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(head_dim)
        s = np.where(keys_ok, s, -np.inf)
        prob = np.exp(s - s.max(-1, keepdims=True))
        prob /= prob.sum(-1, keepdims=True)
        ctx = np.einsum("bhqk,bkhe->bqhe", prob, v)
        if head_gates is not None:
            ctx = ctx * np.asarray(head_gates[run], np.float64)[:, None]
        out = blk["attention"]["output"]
        a = np.einsum("bqhe,heo->bqo", ctx, out["kernel"]) + out["bias"]
        x1 = layer_norm(a + x, blk["attention"]["output_norm"], eps)
        ffn = blk["ffn"]["ffn_0"]
        h = gelu(x1 @ ffn["intermediate"]["kernel"] + ffn["intermediate"]["bias"])
        if neuron_gates is not None:
            h = h * np.asarray(neuron_gates[run], np.float64)
        y = h @ ffn["output"]["kernel"] + ffn["output"]["bias"]
        x = layer_norm(y + x1, ffn["output_norm"], eps)
    pooled = np.tanh(x[:, 0] @ enc["pooler"]["kernel"] + enc["pooler"]["bias"])
    result = {"hidden": x, "pooled": pooled}
    if "classifier" in p:
        c = p["classifier"]["dense"]
        result["logits"] = pooled @ c["kernel"] + c["bias"]
    return result


def cross_entropy(logits, labels):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(len(labels)), labels].mean()
