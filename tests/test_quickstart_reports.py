"""The quickstart reports from hand-made rows: targets, differences, times, plots (fast)."""

from __future__ import annotations

import math

from mbert_jax.quickstart import phases, real_report


def row(name, acc, n, emb, blocks, ms, int8_acc):
    return {
        "name": name,
        "label": real_report.label(name),
        "params": {"embeddings": emb, "blocks": blocks, "all": emb + blocks},
        "accuracy": acc,
        "stderr": math.sqrt(acc * (1 - acc) / n),
        "dev_rows": n,
        "none": {"size_mb": 1.0, "latency_ms": ms, "accuracy": acc},
        "int8": {"size_mb": 0.3, "latency_ms": ms / 2, "accuracy": int8_acc},
    }


def test_findings_state_each_target_with_its_figure():
    n = 400
    rows = [
        {"name": "naive_bayes", "label": "naive Bayes", "accuracy": 0.5, "stderr": 0.025},
        row("teacher_wordorder", 0.8, n, 12_000_000, 10_000_000, 10.0, 0.79),
        row("mobilebert_wordorder", 0.76, n, 4_000_000, 3_000_000, 4.0, 0.745),
        row("tinybert_wordorder", 0.70, n, 4_000_000, 4_000_000, 5.0, 0.70),
        row("scratch_mobilebert_wordorder", 0.6, n, 4_000_000, 3_000_000, 4.0, 0.6),
        row("scratch_tinybert_wordorder", 0.65, n, 4_000_000, 4_000_000, 5.0, 0.65),
    ]
    rows[3]["vocabulary"] = {
        "kept": 5692,
        "of": 30522,
        "train_texts": 9,
        "dev_unknown_rate": 0.0125,
        "dev_changed_rate": 0.031,
    }
    lines = real_report.findings("wordorder", rows, ("none", "int8"))
    assert lines[-2] == (
        "students' vocabularies pruned to the tokens of the wordorder training split: 5,692 of "
        "30,522 kept; 3.1% of dev texts tokenized differently (1.25% of their tokens became "
        "[UNK], others were split into other pieces)"
    )
    se = lambda p: p * (1 - p) / n
    teacher_nb = math.sqrt(se(0.8) + 0.025**2)
    assert lines[0] == (
        f"teacher vs naive Bayes: +30.0 ± {100 * teacher_nb:.1f} points "
        "(target on wordorder: at least +15)"
    )
    assert lines[1].startswith("best distilled student (MobileBERT student (PKT)): keeps 95.0%")
    assert "with 32% of its embedding + block parameters" in lines[1]  # 7M of 22M
    assert lines[2] == "its float TFLite latency is 2.50x lower than the teacher's (target 2x)"
    student_scratch = math.sqrt(se(0.76) + se(0.6))
    assert lines[3].endswith(f"+16.0 ± {100 * student_scratch:.1f} points (target +10)")
    assert lines[-1].startswith("largest int8 - float accuracy gap: -1.5 points (MobileBERT")
    table = real_report.table(rows, ("none", "int8"))
    assert "| 7.00M (32%) | 0.760 ± 0.021 |" in table


def test_phase_times_add_up_over_invocations(tmp_path):
    phases.add_time(tmp_path, "teacher_stdlib", 100.0)
    phases.add_time(tmp_path, "teacher_stdlib", 20.04)  # a resumed phase counts both parts
    phases.add_time(tmp_path, "export", 60.0)
    assert phases.timings(tmp_path) == {"teacher_stdlib": 120.0, "export": 60.0}
    text = real_report.time_table(phases.timings(tmp_path))
    assert text.splitlines()[-1] == "| all phases | 180 (3.0 min; target 20 min) |"
    assert "missing" in real_report.time_table({})


def test_micro_loss_plots_from_metrics_files(tmp_path):
    import json

    from mbert_jax.quickstart import micro_report

    for name in micro_report.MODELS:
        (tmp_path / name).mkdir()
        rows = [
            {"split": "train", "step": s, "stage": "a" if s < 3 else "b", "objective": 1.0 / s}
            | ({"fmt_layer_1": 0.5 / s, "at_layer_1": 0.2 / s} if name == "distilled" else {})
            for s in range(1, 6)
        ]
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    losses, layers = micro_report.plot_losses(tmp_path)
    assert losses.stat().st_size > 1000 and layers.stat().st_size > 1000
