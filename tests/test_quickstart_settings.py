"""`mbert-jax quickstart --set FIELD=VALUE`: values keep their types, per-task keys, bad names."""

import pytest

from mbert_jax.quickstart import _set
from mbert_jax.quickstart.phases import load_config


def real():
    return load_config("quickstart", "real")


def test_values_keep_their_types():
    q = real()
    _set(q, "tinybert_layers=1,3,5")
    assert q.tinybert_layers == (1, 3, 5)
    _set(q, "tinybert_layers=")
    assert q.tinybert_layers == ()
    _set(q, "tasks=wordorder")
    assert q.tasks == ("wordorder",)
    _set(q, "teacher_learning_rate=3e-5")
    assert q.teacher_learning_rate == pytest.approx(3e-5)


def test_a_per_task_setting_takes_a_dotted_key():
    q = real()
    _set(q, "teacher_steps.stdlib=7")
    assert q.teacher_steps.stdlib == 7 and q.teacher_steps.wordorder == 240


@pytest.mark.parametrize(
    "item, message",
    [
        ("no_such=1", r"unknown quickstart setting 'no_such'"),
        ("teacher_steps.nope=1", r"unknown quickstart setting 'teacher_steps.nope'"),
        (
            "teacher_steps=5",
            r"holds one value per key \['stdlib', 'wordorder'\].*teacher_steps.KEY",
        ),
    ],
)
def test_bad_settings_name_the_problem(item, message):
    with pytest.raises(SystemExit, match=message):
        _set(real(), item)
