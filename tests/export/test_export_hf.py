"""`--format hf`: a transformers directory that transformers loads, with outputs equal to ours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from export_helpers import padded_inputs

from mbert_jax.export import cli
from mbert_jax.models import Model


@pytest.mark.parametrize(
    ("variant", "task", "cls"),
    [
        ("mobilebert_micro", "classification", "MobileBertForSequenceClassification"),
        pytest.param("bert_base_micro", "qa", "BertForQuestionAnswering", marks=pytest.mark.slow),
    ],
)
def test_hf_directory_loads_in_transformers_and_matches(
    model_dirs, tmp_path, capsys, variant, task, cls
):
    directory, config, params = model_dirs[variant]
    out = tmp_path / "hf"
    assert cli.main(["--checkpoint", str(directory), "--task", task, "--format", "hf",
                     "--out", str(out), "--seq-len", "16"]) == 0  # fmt: skip
    assert "max |transformers - jax|" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in out.iterdir()}
    model = getattr(transformers, cls).from_pretrained(str(out)).eval()
    inputs = padded_inputs(config, n=2, seq_len=16)
    if config.attention_mask_value is not None:  # transformers has no -6 fill
        inputs["attention_mask"] = np.ones_like(inputs["attention_mask"])
    with torch.no_grad():
        got = model(**{k: torch.from_numpy(v).long() for k, v in inputs.items()})
    ours = Model(config, heads=("classifier", "qa")).apply({"params": params}, *inputs.values())
    if task == "classification":
        np.testing.assert_allclose(got.logits.numpy(), np.asarray(ours.logits), atol=1e-4)
    else:
        np.testing.assert_allclose(
            got.start_logits.numpy(), np.asarray(ours.start_logits), atol=1e-4
        )
