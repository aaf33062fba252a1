"""`verify.round_robin_ms`: files timed in turns, so that load hits them alike (fast: a fake
interpreter stands in for LiteRT's, recording what runs when)."""

import json

import numpy as np

from mbert_jax.export import verify
from mbert_jax.quickstart import exports


class FakeInterpreter:
    calls: list = []

    def __init__(self, flatbuffer, num_threads):
        self.name, self.num_threads = flatbuffer.decode(), num_threads

    def get_signature_runner(self):
        def run(**inputs):
            FakeInterpreter.calls.append((self.name, {k: v.shape for k, v in inputs.items()}))

        run.get_input_details = lambda: {"input_ids": {}, "attention_mask": {}}
        return run


def fake(monkeypatch):
    FakeInterpreter.calls = []
    monkeypatch.setattr(verify, "interpreter", FakeInterpreter)


def test_each_file_warms_up_then_runs_in_turn(monkeypatch):
    fake(monkeypatch)
    times = verify.round_robin_ms({"a": b"a", "b": b"b", "c": b"c"}, seq_len=7, runs=3)
    assert [name for name, _ in FakeInterpreter.calls] == list("abc") * 4  # warm-up, 3 turns
    assert all(
        s == {"input_ids": (1, 7), "attention_mask": (1, 7)} for _, s in FakeInterpreter.calls
    )
    assert set(times) == {"a", "b", "c"}
    assert all(len(t) == 3 and min(t) >= 0 for t in times.values())


def test_the_preset_times_each_task_and_mode_together(monkeypatch, tmp_path):
    fake(monkeypatch)
    done = {}
    for name in ("t_x", "s_x", "t_y"):
        for mode in ("none", "int8"):
            path = tmp_path / f"{name}_{mode}"
            path.write_bytes(f"{name}/{mode}".encode())
            done[f"{name}/{mode}"] = {"path": str(path), "latency_ms": 99.0}
    (tmp_path / "export").mkdir()
    q = {"export_quantize": ("none", "int8"), "latency_runs": 2}

    class Q(dict):
        __getattr__ = dict.__getitem__

    entries = [("t_x", None, "x"), ("s_x", None, "x"), ("t_y", None, "y")]
    out = exports.time_side_by_side(tmp_path, Q(q), entries, done, lambda task: 5)
    order = [name for name, _ in FakeInterpreter.calls]
    # One group per (task, mode), each timed round-robin: warm-up + 2 turns.
    assert order[:6] == ["t_x/none", "s_x/none"] * 3
    assert order[6:12] == ["t_x/int8", "s_x/int8"] * 3
    assert order[12:] == ["t_y/none"] * 3 + ["t_y/int8"] * 3
    for e in out.values():
        assert e["latency_ms_alone"] == 99.0 and e["latency_runs"] == 2
        assert 0 <= e["latency_ms"] < 99.0
    saved = json.loads((tmp_path / "export" / "exports.json").read_text())
    assert saved == out
    # Run again: the export's own timing stays the one kept.
    again = exports.time_side_by_side(tmp_path, Q(q), entries, out, lambda task: 5)
    assert all(e["latency_ms_alone"] == 99.0 for e in again.values())
    assert np.isfinite([e["latency_ms"] for e in again.values()]).all()
