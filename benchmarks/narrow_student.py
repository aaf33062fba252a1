"""The narrow TinyBERT student some benchmarks measure (not the real preset's student).

Until 2026-12-06 the real preset's TinyBERT student was a fresh 3-layer
model, 3/4 of the teacher's width (288 for all-MiniLM-L6-v2), the teacher's
head count, E = 128 with a dense E -> hidden transform, general-distilled on
the embedded corpus with factorized embeddings from the teacher's table. The
preset now starts its student from the fine-tuned teacher's own blocks
(`quickstart/real.py` `tinybert_init`); benchmarks/minilm_vs_tinybert.py
and benchmarks/layernorm_student.py still measure this one, defined here.
"""

from __future__ import annotations

from mbert_jax.quickstart import real
from mbert_jax.quickstart.phases import load_config

LAYERS, WIDTH, EMBEDDING = 3, 0.75, 128


def student(q) -> dict:
    """The student's model fields, from the preset's teacher (`q.teacher` or MiniLM)."""
    from mbert_jax.distill.teacher import read_config, teacher_block

    t = read_config(teacher_block(path=real.teacher_path(q)))
    heads = t.num_heads
    hidden = max(heads, round(t.hidden_size * WIDTH / heads) * heads)
    return dict(
        num_layers=LAYERS,
        hidden_size=hidden,
        num_heads=heads,
        intermediate_size=4 * hidden,
        embedding_size=min(EMBEDDING, hidden),
        embedding_transform="dense",  # ALBERT-style: E -> hidden
        vocab_size=t.vocab_size,
        max_position_embeddings=t.max_position_embeddings,
        type_vocab_size=t.type_vocab_size,
    )


def general_config(q, steps: int):
    """TinyBERT general distillation of the student on the embedded corpus (attention +
    hidden + embedding MSE, factorized embeddings), at the preset's batch, length and rate."""
    c = load_config("tinybert_general")
    c.teacher.path = real.teacher_path(q)
    for k, v in student(q).items():
        c.student.overrides[k] = v
    c.student.overrides.matmul_dtype = q.matmul_dtype or None
    c.teacher.matmul_dtype = q.matmul_dtype or None
    c.distill.init_embeddings = "factorized"
    real._corpus_data(c, q)
    real._common(c, q, steps=steps, learning_rate=q.general_learning_rate)
    c.train.eval_every = 0
    return c
