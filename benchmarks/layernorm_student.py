"""A TinyBERT-architecture LayerNorm student on the `stdlib` task, for the int8 benchmark.

    python benchmarks/layernorm_student.py --workdir runs/real_int8

The real preset's former TinyBERT student (3 layers of 288, 12 heads,
E = 128 with a dense E -> hidden transform, the teacher's vocabulary;
benchmarks/narrow_student.py, the preset's student until 2026-12-06)
trained from random weights on `stdlib` as the preset's
`scratch_tinybert_stdlib` phase then was (420 steps, lr 1e-3). Writes
WORKDIR/scratch_tinybert_stdlib/model; a finished run is not trained again.
About 3 minutes on 2 idle cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import narrow_student

from configs.quickstart import real_config
from mbert_jax.models import io
from mbert_jax.quickstart import real
from mbert_jax.quickstart.phases import load_config, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=420, help="the preset's scratch twin: 420")
    args = p.parse_args()
    q = real_config()
    c = load_config("finetune", "task=stdlib")
    for k, v in narrow_student.student(q).items():
        c.model.overrides[k] = v
    c.data.vocab_file = str(io.vocab_path(Path(real.teacher_path(q))))
    real._task_data(c, q, "stdlib")
    real._common(c, q, steps=args.steps, learning_rate=q.scratch_learning_rate)
    c.train.eval_steps = 0
    run_dir = Path(args.workdir) / "scratch_tinybert_stdlib"
    train("TinyBERT architecture from scratch on stdlib", c, run_dir)
    print(f"model: {run_dir / 'model'}")


if __name__ == "__main__":
    main()
