"""SQuAD: reading v1.1/v2.0 files, windows and answer positions, post-processing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mbert_jax.data import config as config_lib
from mbert_jax.data import tasks
from mbert_jax.data.report import InputReport
from mbert_jax.data.tasks import build, squad
from mbert_jax.data.tasks.glue import TaskDataError
from mbert_jax.data.tokenizer import train_wordpiece

CONTEXT = (
    "Marie Curie was born in Warsaw in 1867. She won the Nobel Prize in Physics in 1903 "
    "and the Nobel Prize in Chemistry in 1911. Her daughter Irène Joliot-Curie also won it. "
    "Curie died in 1934 at the Sancellemoz sanatorium in Passy."
)
QAS = [
    ("q1", "Where was Marie Curie born?", "Warsaw"),
    ("q2", "When did Curie die?", "1934"),
    ("q3", "Who was her daughter?", "Irène Joliot-Curie"),
]


def squad_json(version="1.1", impossible=(), misaligned=()):
    qas = []
    for qid, q, a in QAS:
        start = CONTEXT.index(a) + (1 if qid in misaligned else 0)
        qa = {"id": qid, "question": q, "answers": [{"text": a, "answer_start": start}]}
        if version == "2.0":
            qa["is_impossible"] = False
        qas.append(qa)
    for qid in impossible:
        qas.append(
            {
                "id": qid,
                "question": "What is the capital of Mars?",
                "answers": [],
                "is_impossible": True,
            }
        )
    return {
        "version": version,
        "data": [{"title": "Curie", "paragraphs": [{"context": CONTEXT, "qas": qas}]}],
    }


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok():
    return train_wordpiece(
        [CONTEXT] + [q for _, q, _ in QAS] + ["What is the capital of Mars?"], 200, min_frequency=1
    )


def test_doc_spans_by_hand():
    assert squad.doc_spans(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
    assert squad.doc_spans(3, 8, 2) == [(0, 3)]
    assert squad.doc_spans(0, 8, 2) == [(0, 0)]


def test_read_v1_and_v2(tmp_path):
    examples, version = squad.read_squad(
        write_json(tmp_path / "d.json", squad_json()), InputReport(), training=True
    )
    assert version == "1.1" and [e.qid for e in examples] == ["q1", "q2", "q3"]
    assert examples[0].answers == (("Warsaw", CONTEXT.index("Warsaw")),)
    data = squad_json("2.0", impossible=["q4"])
    examples, version = squad.read_squad(
        write_json(tmp_path / "v2.json", data), InputReport(), training=True
    )
    assert version == "2.0" and examples[-1].is_impossible and examples[-1].answers == ()


def test_misaligned_training_answers_are_skipped_and_counted(tmp_path):
    path = write_json(tmp_path / "t.json", squad_json(misaligned=["q2"]))
    report = InputReport()
    examples, _ = squad.read_squad(path, report, training=True)
    assert [e.qid for e in examples] == ["q1", "q3"]
    assert sum(report.notes.values()) == 2  # the answer, then its question
    examples, _ = squad.read_squad(path, InputReport(), training=False)
    assert len(examples) == 3  # evaluation keeps every question


def test_bad_files_name_the_place(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1.1",\n "data": [\n}')
    with pytest.raises(TaskDataError, match=r"bad.json:3: not valid JSON"):
        squad.read_squad(bad, InputReport(), training=False)
    data = squad_json()
    del data["data"][0]["paragraphs"][0]["context"]
    with pytest.raises(TaskDataError, match=r"data\[0\].paragraphs\[0\] lacks 'context'"):
        squad.read_squad(write_json(tmp_path / "x.json", data), InputReport(), training=False)
    with pytest.raises(TaskDataError, match="does not exist"):
        squad.read_squad(tmp_path / "none.json", InputReport(), training=False)


def featurized(tmp_path, tok, version="1.1", impossible=()):
    examples, _ = squad.read_squad(
        write_json(tmp_path / "f.json", squad_json(version, impossible)),
        InputReport(),
        training=True,
    )
    feats = squad.featurize(examples, tok, max_seq_length=24, doc_stride=5, max_query_length=8)
    return examples, feats


def test_windows_and_answer_positions(tmp_path, tok):
    examples, f = featurized(tmp_path, tok)
    assert len(f) > 3 * len(examples)  # several windows per question
    for e, ex in enumerate(examples):
        text, start = ex.answers[0]
        mine = np.flatnonzero(f.example_index == e)
        hits = 0
        for w in mine:
            s, t = f.start_positions[w], f.end_positions[w]
            ids = f.input_ids[w]
            n = f.lengths[w]
            assert (
                ids[0] == tok.cls_id
                and ids[f.len_a[w] - 1] == tok.sep_id
                and ids[n - 1] == tok.sep_id
            )
            if s == 0:
                assert t == 0
                continue
            hits += 1
            assert CONTEXT[f.offsets[w, s, 0] : f.offsets[w, t, 1]] == text
        assert hits >= 1
        # Every context token has its maximal context in exactly one window.
        claimed = {}
        for w in mine:
            for k in np.flatnonzero(f.max_context[w]):
                key = tuple(f.offsets[w, k])
                assert key not in claimed
                claimed[key] = w
        covered = {
            tuple(f.offsets[w, k]) for w in mine for k in np.flatnonzero(f.offsets[w, :, 0] >= 0)
        }
        assert set(claimed) == covered


def logits_for(f, examples, answers):
    """Logits that put each answer's span (char offsets) at the window that is its max context."""
    F, S = f.input_ids.shape
    st, en = np.full((F, S), -10.0), np.full((F, S), -10.0)
    for w in range(F):
        ans = answers.get(examples[f.example_index[w]].qid)
        if ans is None:
            st[w, 0] = en[w, 0] = 5.0  # the null answer
            continue
        a, b = ans
        tok_s = np.flatnonzero((f.offsets[w, :, 0] == a) & f.max_context[w])
        tok_e = np.flatnonzero(f.offsets[w, :, 1] == b)
        if len(tok_s) and len(tok_e):
            st[w, tok_s[0]], en[w, tok_e[0]] = 8.0, 8.0
    return st, en


def test_postprocess_recovers_original_text(tmp_path, tok):
    examples, f = featurized(tmp_path, tok)
    spans = {qid: (CONTEXT.index(a), CONTEXT.index(a) + len(a)) for qid, _, a in QAS}
    st, en = logits_for(f, examples, spans)
    preds = squad.postprocess(examples, f, st, en, max_answer_length=10)
    assert preds == {qid: a for qid, _, a in QAS}  # "Irène", accents and case as in the context
    # Too long an answer is not allowed: q3 spans several tokens.
    short = squad.postprocess(examples, f, st, en, max_answer_length=1)
    assert short["q3"] != "Irène Joliot-Curie"


def test_v2_null_answers_and_threshold(tmp_path, tok):
    examples, f = featurized(tmp_path, tok, "2.0", impossible=["q4"])
    imp = [w for w in range(len(f)) if examples[f.example_index[w]].qid == "q4"]
    assert np.all(f.start_positions[imp] == 0) and np.all(f.end_positions[imp] == 0)
    spans = {qid: (CONTEXT.index(a), CONTEXT.index(a) + len(a)) for qid, _, a in QAS}
    st, en = logits_for(f, examples, spans)
    preds = squad.postprocess(examples, f, st, en, version="2.0")
    assert preds["q4"] == "" and preds["q1"] == "Warsaw"
    # q1: null score -20 vs best span 16: the span wins unless the threshold is below -36.
    at = lambda t: squad.postprocess(
        examples, f, st, en, version="2.0", null_score_diff_threshold=t
    )
    assert at(-35.0)["q1"] == "Warsaw" and at(-37.0)["q1"] == ""


def test_squad_task_end_to_end(tmp_path, tok):
    d = tmp_path / "squad"
    d.mkdir()
    write_json(d / "train-v2.0.json", squad_json("2.0", impossible=["q4"]))
    write_json(d / "dev-v2.0.json", squad_json("2.0", impossible=["q4"]))
    c = config_lib.task_data_defaults("squad_v2")
    c.data_dir, c.cache_dir = str(d), str(tmp_path / "cache")
    c.max_seq_length, c.doc_stride, c.max_query_length = 24, 5, 8
    c.global_batch_size, c.num_threads = 4, 0
    data = tasks.build_task_data(
        c, tokenizer=tok, process_index=0, process_count=1, log=lambda s: None
    )
    batch = next(data.train)
    assert {"start_positions", "end_positions", "feature_index"} <= set(
        batch
    ) and "labels" not in batch
    examples, arrays = data._eval["dev"]
    f = squad.SquadFeatures(**{k: arrays[k] for k in build._SQUAD_KEYS})
    spans = {qid: (CONTEXT.index(a), CONTEXT.index(a) + len(a)) for qid, _, a in QAS}
    st, en = logits_for(f, examples, spans)
    ev = data.evaluator()
    for b in data.eval_iterator():
        idx = b["feature_index"]
        ev.add(b, start_logits=st[idx], end_logits=en[idx])
    res = ev.result()
    assert res["exact"] == 100.0 and res["f1"] == 100.0
    assert res["HasAns_total"] == 3 and res["NoAns_total"] == 1
