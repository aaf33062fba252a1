"""Task distillation (TinyBERT's task stage, BERT-of-Theseus) on every task kind fine-tuning has.

Fast: the TinyBERT recipe's losses on a batch of each kind's data, from a
random teacher, against numpy (the prediction term over the kind's items,
the frozen task head of the intermediate stage, the evaluator's inputs),
and the teacher checks. Slow (end to end): for each kind (multi-class from
CSV with string labels, regression, sentence pairs, CoNLL tagging, SQuAD) a
micro BERT-base teacher is fine-tuned at runlocal size on files written
here (once per module), then distilled into a student through the same
entry point as the command line. The dev metrics
each run reports are recomputed from the student's saved model alone
(tests/task_files.py: transformers' tokenizer, `Model.apply`, numpy), so the
distilled student is evaluated exactly as fine-tuning evaluates, with the
kind's head and label names. Tiny models and a few steps: the numbers only
have to agree, not to be good.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from task_files import (
    KINDS,
    SEQ,
    Tasks,
    make_bert,
    run,
    write_task,
)

from mbert_jax.data import load_tokenizer
from mbert_jax.distill.tinybert import recipe as tinybert_lib
from mbert_jax.models import Model, init_params, io, variants
from mbert_jax.train import forward
from mbert_jax.train.config import apply_overrides, load_config_module
from mbert_jax.train.labels import make_labels

HEADS = {"regression": "classifier", "tagging": "token_classifier", "squad": "qa"}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return Tasks(tmp_path_factory.mktemp("tasks"))


def check_student(results, metrics, student, teacher, layers):
    config, got = metrics(student)
    for name, value in got.items():
        assert results[name] == pytest.approx(value, abs=1e-5), name
    t_config, t_heads, t_params = io.load_model(teacher)
    s_config, s_heads, s_params = io.load_model(student)
    assert s_heads == t_heads and s_config.num_layers == layers
    assert s_config.label_names == t_config.label_names
    assert s_config.num_labels == t_config.num_labels
    return t_params[t_heads[0]], s_params[s_heads[0]]


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind",
    # Sentence pairs out of CI for time: a classification like multiclass, with a second
    # text column that fine-tuning's test_sentence_pairs_jsonl reads in CI.
    [pytest.param(k, marks=pytest.mark.heavy) if k == "pairs" else k for k in KINDS],
)
def test_tinybert_task_stage(tasks, kind, tmp_path):
    task, data, metrics, teacher = tasks(kind)
    overrides = {
        "teacher.path": str(teacher),
        "distill.intermediate_steps": 3,
        "distill.prediction_steps": 3,
        **data,
    }
    results, student = run(
        f"configs/tinybert_task.py:runlocal,task={task},augment=0", tmp_path, overrides
    )
    assert results["prediction"] >= 0 and "task_loss" in results
    check_student(results, metrics, student, teacher, layers=2)


@pytest.mark.slow
@pytest.mark.heavy  # every kind but pairs is task-distilled in CI by test_tinybert_task_stage
@pytest.mark.parametrize("kind", KINDS)
def test_theseus(tasks, kind, tmp_path):
    task, data, metrics, teacher = tasks(kind)
    overrides = {
        "teacher.path": str(teacher),
        "theseus.k": 0.35,  # p: 0.3, 0.65, then 1
        "theseus.successor_steps": 2,
        **data,
    }
    results, student = run(f"configs/theseus.py:runlocal,task={task}", tmp_path, overrides)
    t_head, s_head = check_student(results, metrics, student, teacher, layers=3)
    for a, b in zip(jax.tree.leaves(t_head), jax.tree.leaves(s_head), strict=True):
        np.testing.assert_array_equal(a, b)  # the predecessor's head, copied and frozen


@pytest.mark.slow
def test_tinybert_augments_tagging_keeping_every_tag(tasks, tmp_path):
    """With augmentation on, the student trains on the augmented CoNLL sentences."""
    task, data, metrics, teacher = tasks("tagging")
    overrides = {
        "teacher.path": str(teacher),
        "augment.mlm_teacher.path": str(tasks.bert),
        "augment.max_examples": 10,
        "distill.intermediate_steps": 2,
        "distill.prediction_steps": 2,
        **data,
    }
    results, student = run(
        f"configs/tinybert_task.py:runlocal,task={task},augment=1", tmp_path, overrides
    )
    check_student(results, metrics, student, teacher, layers=2)
    (augmented,) = (tasks.root / "cache").glob("augment-custom-*")
    lines = (augmented / "train.jsonl").read_text().splitlines()
    assert len(lines) == 64 + 10 * 2  # the originals, N = 2 variants of the first 10


# ------------------------------------------------------------------ fast
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(a random micro BERT's vocab.txt, each kind's config arg and `data.*` fields)."""
    root = tmp_path_factory.mktemp("files")
    bert = make_bert(root / "bert")
    made = {}
    for kind in KINDS:
        (root / kind).mkdir()
        task, fields, _ = write_task(kind, root / kind, np.random.default_rng(0))
        data = {f"data.{k}": v for k, v in fields.items()}
        data["data.cache_dir"] = str(root / "cache")
        data["data.max_seq_length"] = SEQ
        data["data.global_batch_size"] = 4
        data["data.vocab_file"] = str(bert / "vocab.txt")
        made[kind] = task, data
    return bert / "vocab.txt", made


def tinybert(files, kind, **extra):
    task, data = files[1][kind]
    module, arg = load_config_module(f"configs/tinybert_task.py:runlocal,task={task},augment=0")
    return tinybert_lib.TinyBertRecipe(apply_overrides(module.get_config(arg), {**data, **extra}))


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def soft_ce(s, t):
    return -(np.exp(log_softmax(t)) * log_softmax(s)).sum(-1)


@pytest.mark.parametrize("kind", ["regression", "tagging", "squad"])
def test_tinybert_recipe_distils_the_kinds_head(files, kind):
    """The prediction term of a batch against numpy on the two models' outputs."""
    recipe = tinybert(files, kind)
    head = HEADS[kind]
    assert recipe.heads == (head,) and recipe.teacher_model.heads == (head,)
    intermediate, last = recipe.stages()
    params = jax.device_get(recipe.init_params(jax.random.PRNGKey(0)))
    params = nn.meta.unbox(params)
    teacher = recipe.load_teacher_params()
    labels = make_labels(params, intermediate.rules)
    assert set(jax.tree.leaves(labels["student"][head])) == {"frozen"}
    batch = jax.tree.map(np.asarray, next(iter(recipe.train_data(0, 1))))
    got = jax.jit(lambda p, t, b: recipe.compute_losses(last, p, t, b, train=False))(
        params, teacher, batch
    )

    def outputs(model, p):
        out = model.apply(
            {"params": p}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
        )
        return {
            k: np.asarray(v, np.float64)
            for k, v in forward.task_outputs(out, recipe.task.kind).items()
        }

    s, t = outputs(recipe.student, params["student"]), outputs(recipe.teacher_model, teacher)
    if kind == "regression":
        expected = np.mean((s["logits"][:, 0] - t["logits"][:, 0]) ** 2)
    elif kind == "tagging":
        mask = batch["labels"] >= 0
        assert 0 < mask.sum() < mask.size
        expected = soft_ce(s["token_logits"], t["token_logits"])[mask].mean()
    else:
        per_row = []
        for row in range(len(batch["valid"])):
            real = batch["attention_mask"][row] > 0
            ce = [soft_ce(s[f][row, real], t[f][row, real]) for f in ("start_logits", "end_logits")]
            per_row.append(np.mean(ce))
        expected = np.mean(per_row)
    assert float(got["prediction"].mean()) == pytest.approx(expected, rel=1e-4)
    # What the trainer hands the evaluator is what fine-tuning's evaluator takes.
    evaluator = recipe.evaluator()
    eval_batch = jax.tree.map(np.asarray, next(iter(recipe.eval_data(0, 1))))
    evaluator.add(eval_batch, **jax.device_get(recipe.predict(params, eval_batch)))


def test_a_teacher_of_another_kind_or_label_order_is_refused(files, tmp_path):
    vocab = files[0]
    cfg = variants.get("bert_base_micro", vocab_size=load_tokenizer(vocab).vocab_size)

    def teacher_dir(name, heads, **kw):
        c = cfg.replace(**kw)
        params = init_params(Model(c, heads), jax.random.PRNGKey(0))
        return io.save_model(tmp_path / name, c, heads, params, vocab)

    classifier = teacher_dir(
        "cls", ("classifier",), num_labels=4, label_names=("food", "music", "sports", "tech")
    )
    with pytest.raises(ValueError, match="distils the 'token_classifier' head"):
        tinybert(files, "tagging", **{"teacher.path": str(classifier)})
    with pytest.raises(ValueError, match="fine-tuned with the labels"):
        tinybert(
            files,
            "multiclass",
            **{"teacher.path": str(classifier), "data.labels": "tech,food,music,sports"},
        )
    tinybert(files, "multiclass", **{"teacher.path": str(classifier)})  # the same order: fine
    tagger = teacher_dir("tag", ("token_classifier",), num_labels=3)
    with pytest.raises(ValueError, match="has 3 outputs but the task has 4 labels"):
        tinybert(files, "tagging", **{"teacher.path": str(tagger)})


def test_squad_augmentation_is_refused_before_anything_runs(files):
    with pytest.raises(
        ValueError, match=r"config.augment.enabled=True: .*--config.augment.enabled=False"
    ):
        tinybert(files, "squad", **{"augment.enabled": True})
