"""`mbert-jax plan`: ahead-of-time memory and FLOPs on simulated devices."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mbert_jax.models import variants
from mbert_jax.models.summary import encoder_flops_per_token, mlm_flops_per_prediction

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def plan(*mesh: str) -> dict[str, float]:
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "mbert_jax",
            "plan",
            "--config",
            "configs/pretrain_ibbert.py:runlocal,data=synthetic",
            "--devices",
            "8",
            *mesh,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    assert "Involuntary full rematerialization" not in p.stderr
    figures = {}
    for key, pattern in {
        "args": r"arguments \(params, optimizer, batch\)\s+([\d.]+) GiB",
        "flops": r"FLOPs per step\s+([\d.]+) (\w)FLOP",
    }.items():
        m = re.search(pattern, out)
        assert m, out
        scale = {"M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}[m.group(2)] if key == "flops" else 2**30
        figures[key] = float(m.group(1)) * scale
    return figures


def test_plan_reports_sharded_state_and_step_flops():
    cfg = variants.get("ibbert_large_micro", vocab_size=2048)
    n_params = 655_810  # embeddings, blocks, pooler, MLM and NSP heads (describe)
    data_parallel = plan("--config.mesh.data=8")
    # Replicated: params + two Adam moments in float32 on every device (+ a small batch).
    assert data_parallel["args"] == pytest.approx(3 * 4 * n_params, rel=0.1)
    fsdp = plan("--config.mesh.data=1", "--config.mesh.fsdp=8")
    assert fsdp["args"] < 0.5 * data_parallel["args"]
    # Per-device FLOPs of data parallelism: the step's analytic FLOPs / 8 devices.
    batch, seq, predictions = 16, 64, 10
    analytic = 3 * (
        batch * seq * encoder_flops_per_token(cfg, seq)
        + batch * predictions * mlm_flops_per_prediction(cfg)
    )
    assert data_parallel["flops"] == pytest.approx(analytic / 8, rel=0.25)
