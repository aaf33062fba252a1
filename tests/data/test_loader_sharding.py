"""The input pipeline: host sharding, exact resume, eval passes, caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mbert_jax.data import loader, pipeline
from mbert_jax.data.tokenizer import VocabError


def build(c, p=0, n=1, log=None):
    return pipeline.build_pretraining_data(
        c, process_index=p, process_count=n, log=log or (lambda s: None)
    )


def take(it, k):
    return [next(it) for _ in range(k)]


def global_batches(c, n, steps):
    """The global batches of `steps` steps, assembled from n simulated hosts."""
    per_host = [take(build(c, p, n).train, steps) for p in range(n)]
    return [
        {k: np.concatenate([per_host[p][t][k] for p in range(n)]) for k in per_host[0][t]}
        for t in range(steps)
    ]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_layout(text_config):
    logs = []
    data = build(text_config, log=logs.append)
    batch = next(data.train)
    spec = pipeline.batch_spec(text_config)
    assert set(batch) == set(spec)
    for k, (shape, dtype) in spec.items():
        assert batch[k].shape == (8, *shape) and batch[k].dtype == dtype, k
    assert np.all(batch["valid"] == 1)
    assert data.tokenizer.vocab_size == 200
    assert data.vocab_file.name == "vocab.txt" and len(data.vocab_file.read_text().split()) == 200
    assert logs[0].startswith("learning a 200-token WordPiece vocabulary")
    assert "1 files" in logs[1] and "train rows" in logs[1]


@pytest.mark.parametrize("n", [2, 4])
def test_hosts_together_make_the_single_host_batch(text_config, n):
    data = build(text_config)
    steps = int(2.5 * data.steps_per_epoch) + 1  # across two epoch boundaries
    assert_batches_equal(
        global_batches(text_config, 1, steps), global_batches(text_config, n, steps)
    )


def test_every_example_once_per_epoch_in_a_fresh_order():
    n = 37
    e0 = [loader.stream_position(g, n, seed=5, stream=0) for g in range(n)]
    e1 = [loader.stream_position(g, n, seed=5, stream=0) for g in range(n, 2 * n)]
    assert sorted(i for i, _ in e0) == sorted(i for i, _ in e1) == list(range(n))
    assert {e for _, e in e0} == {0} and {e for _, e in e1} == {1}
    assert [i for i, _ in e0] != [i for i, _ in e1]
    other_seed = [loader.stream_position(g, n, seed=6, stream=0)[0] for g in range(n)]
    assert other_seed != [i for i, _ in e0]


def test_exact_resume_from_a_json_state(text_config):
    it = build(text_config).train
    take(it, 5)
    state = json.loads(json.dumps(it.get_state()))
    assert state["step"] == 5
    expected = take(it, 7)
    fresh = build(text_config).train
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 7), expected)
    # The same iterator can also be rewound.
    it.set_state(state)
    assert_batches_equal(take(it, 7), expected)


def test_resume_on_another_number_of_hosts(text_config):
    it = build(text_config).train
    take(it, 3)
    state = it.get_state()
    expected = take(it, 4)
    halves = []
    for p in range(2):
        h = build(text_config, p, 2).train
        h.set_state(state)
        halves.append(take(h, 4))
    for t in range(4):
        for k in expected[t]:
            np.testing.assert_array_equal(
                np.concatenate([halves[0][t][k], halves[1][t][k]]), expected[t][k]
            )


def test_prefetch_threads_do_not_change_the_stream(text_config):
    plain = take(build(text_config).train, 6)
    text_config.num_threads = 2
    text_config.prefetch = 3
    it = build(text_config).train
    threaded = take(it, 6)
    assert it.get_state()["step"] == 6  # batches handed out, not prefetched
    assert_batches_equal(plain, threaded)
    it.close()


def test_state_of_another_stream_is_refused(text_config):
    state = build(text_config).train.get_state()
    text_config.seed = 1
    with pytest.raises(ValueError, match="another data stream"):
        build(text_config).train.set_state(state)
    with pytest.raises(ValueError, match="not a data iterator state"):
        build(text_config).train.set_state({"position": 3})


def test_batch_size_must_divide_over_hosts(text_config):
    text_config.global_batch_size = 6
    with pytest.raises(ValueError, match="not divisible by the number of processes \\(4\\)"):
        build(text_config, 0, 4)


@pytest.mark.parametrize("n", [1, 2])
def test_eval_pass_covers_every_row_once_with_padding(text_config, n):
    text_config.eval_global_batch_size = 4
    rows = []
    datas = [build(text_config, p, n) for p in range(n)]
    total = datas[0].eval_examples
    assert total % 4 != 0  # the last batch must be padded
    per_host = [list(d.eval_iterator()) for d in datas]
    steps = len(per_host[0])
    assert steps == datas[0].eval_steps == -(-total // 4)
    assert all(len(h) == steps for h in per_host)
    for t in range(steps):
        batch = {k: np.concatenate([h[t][k] for h in per_host]) for k in per_host[0][t]}
        for r in range(4):
            if batch["valid"][r]:
                rows.append(batch["input_ids"][r].tobytes())
            else:
                assert batch["masked_lm_weights"][r].sum() == 0
                assert batch["attention_mask"][r].sum() == 0
    assert len(rows) == total
    # The same pass again, and eval masks are fixed: identical rows.
    again = [
        b["input_ids"][r].tobytes()
        for b in datas[0].eval_iterator()
        for r in range(len(b["valid"]))
        if b["valid"][r]
    ]
    if n == 1:
        assert again == rows


def test_held_out_documents(text_config):
    train, held = pipeline.split_documents(100, text_config)  # eval_fraction 0.2
    assert len(held) == 20 and len(train) == 80
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(100))
    text_config.seed = 9  # the training seed does not move the split ...
    np.testing.assert_array_equal(pipeline.split_documents(100, text_config)[1], held)
    text_config.split_seed = 1  # ... the split seed does
    assert not np.array_equal(pipeline.split_documents(100, text_config)[1], held)
    text_config.eval_max_documents = 5
    assert len(pipeline.split_documents(100, text_config)[1]) == 5
    with pytest.raises(ValueError, match="too few to hold out"):
        pipeline.split_documents(2, text_config)
    text_config.eval_fraction = 0.0
    data = build(text_config)
    assert data.eval_examples == 0
    with pytest.raises(ValueError, match="no held-out split"):
        data.eval_iterator()


def test_cache_is_reused_and_keyed_by_content(text_config, tmp_path):

    build(text_config)
    cache = Path(text_config.cache_dir)
    entries = sorted(p.name for p in cache.iterdir())
    build(text_config)
    assert sorted(p.name for p in cache.iterdir()) == entries
    corpus_file = Path(text_config.text_files)
    corpus_file.write_text(corpus_file.read_text() + "\nA new document appears here.\n")
    build(text_config)
    assert len([p for p in cache.iterdir() if p.name.startswith("corpus-")]) == 2


def test_mlm_only_and_packed_streams(text_config):
    text_config.nsp = False
    batch = next(build(text_config).train)
    assert "next_sentence_labels" not in batch and np.all(batch["token_type_ids"] == 0)
    text_config.packing = True
    data = build(text_config)
    batch = next(data.train)
    assert batch["attention_mask"].max() >= 2  # several pieces in some row
    assert_batches_equal(global_batches(text_config, 1, 3), global_batches(text_config, 2, 3))


@pytest.mark.slow
def test_worker_processes_give_the_same_stream(text_config):
    plain = take(build(text_config).train, 5)
    text_config.worker_count = 2
    it = build(text_config).train
    assert_batches_equal(plain, take(it, 5))
    state = it.get_state()
    more = take(it, 3)
    it.close()
    again = build(text_config).train
    again.set_state(state)
    assert_batches_equal(more, take(again, 3))
    again.close()


def test_untokenizable_lines_and_documents_are_counted(text_config, tmp_path):
    path = tmp_path / "odd.txt"
    path.write_text(
        "A real sentence comes first.\n\x01\x02\nAnother real sentence.\n\n\x03\x04\n\n"
        + Path(text_config.text_files).read_text()
    )
    text_config.text_files = str(path)
    data = build(text_config)
    assert data.report.notes["lines without any token skipped"] == 2
    assert data.report.notes["documents without any token skipped"] == 1
    assert "2 x lines without any token skipped" in data.report.summary()


def test_teacher_vocabulary_must_match(text_config, tmp_path):
    data = build(text_config)
    teacher = data.save_vocab(tmp_path / "teacher")
    text_config.teacher_vocab_file = str(teacher)
    build(text_config)  # the same vocabulary: fine
    other = tmp_path / "other.txt"
    other.write_text("".join(t + "\n" for t in data.tokenizer.vocab[:-1]))
    text_config.teacher_vocab_file = str(other)
    with pytest.raises(VocabError, match="sizes differ: teacher 199, student 200"):
        build(text_config)


def test_resume_after_the_corpus_moved(text_config, tmp_path):
    it = build(text_config).train
    take(it, 2)
    state = it.get_state()
    expected = take(it, 3)
    moved = tmp_path / "elsewhere" / "corpus.txt"
    moved.parent.mkdir()
    moved.write_text(Path(text_config.text_files).read_text())  # new path, new mtime
    text_config.text_files = str(moved)
    text_config.cache_dir = str(tmp_path / "other-cache")
    again = build(text_config).train
    again.set_state(state)
    assert_batches_equal(take(again, 3), expected)
