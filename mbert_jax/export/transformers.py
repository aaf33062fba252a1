"""`--format hf`: a transformers `save_pretrained` directory, verified in PyTorch.

The conversion itself is `mbert_jax.models.hf.save_hf` (one converter in the
project); this module picks the heads for the task, writes the directory
(atomically, by `save_hf`; the label names become config.json's `id2label`)
with the model's vocab.txt, loads it back with the transformers class named
in its config.json and compares its outputs with the JAX model's.

transformers always gives masked keys a large negative logit, while the
official MobileBERT fills them with -6 (`attention_mask_value`); with padding
the two differ by design (see `models/hf.py`). Verification therefore runs
with an all-ones attention mask when the model uses a mask value, and says so.
"""

from __future__ import annotations

import json
import os

import numpy as np

from mbert_jax.export import graph
from mbert_jax.export.data import Examples, check_examples, synthetic_examples
from mbert_jax.export.exporter import LoadedModel, params_for_task


def _torch_outputs(directory, task: str, examples: Examples, pooling: str) -> dict:
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    arch = json.loads((directory / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, arch).from_pretrained(str(directory)).eval()
    outs: dict[str, list] = {}
    with torch.no_grad():
        for i in range(len(examples)):
            kw = {
                k: torch.from_numpy(getattr(examples, k)[i : i + 1]).long()
                for k in graph.INPUT_NAMES
            }
            o = model(**kw)
            if task in ("classification", "token_classification"):
                res = {"logits": o.logits}
            elif task == "qa":
                res = {"start_logits": o.start_logits, "end_logits": o.end_logits}
            elif task == "mlm":
                res = {"mlm_logits": o.logits}
            elif pooling == "cls":
                res = {"embedding": o.pooler_output}
            else:
                h = o.last_hidden_state
                m = kw["attention_mask"][..., None].float()
                res = {"embedding": (h * m).sum(1) / m.sum(1).clamp(min=1.0)}
            for k, v in res.items():
                outs.setdefault(k, []).append(v[0].numpy())
    return {k: np.stack(v) for k, v in outs.items()}


def export_hf(
    loaded: LoadedModel,
    task: str,
    out: str | os.PathLike,
    *,
    verify_examples: Examples | None = None,
    num_verify: int = 8,
    pooling: str = "mean",
    init_missing_head: bool = False,
    seq_len: int = 128,
) -> list[str]:
    """Write a transformers directory for `task` and verify it; returns the report lines.

    Raises:
      ExportError: a missing head (see `params_for_task`).
      mbert_jax.models.hf.ConversionError: a config transformers cannot express.
    """
    from mbert_jax.models import hf

    config = loaded.config
    heads, params = params_for_task(loaded, task, init_missing_head=init_missing_head)
    directory = hf.save_hf(out, config, heads, params, vocab_file=loaded.vocab_file)
    if verify_examples is None:
        examples, source = synthetic_examples(config, seq_len, num_verify), "synthetic inputs"
    else:
        check_examples(verify_examples, config, verify_examples.seq_len, "verification")
        examples, source = verify_examples.take(0, num_verify), "held-out data"
    note = ""
    if config.attention_mask_value is not None:
        # No masked keys, so the fill value of masked keys plays no part.
        examples = Examples(
            examples.input_ids, np.ones_like(examples.attention_mask), examples.token_type_ids
        )
        note = " without padding masks (attention_mask_value differs from transformers)"
    ref = graph.reference_outputs(config, heads, params, task, examples.inputs(), pooling)
    got = _torch_outputs(directory, task, examples, pooling)
    diff = max(float(np.max(np.abs(got[k] - ref[k]))) for k in ref)
    arch = json.loads((directory / "config.json").read_text())["architectures"][0]
    return [
        f"exported {directory}: transformers {arch} (task={task})",
        f"  verified on {len(examples)} examples ({source}){note}:",
        f"    max |transformers - jax| = {diff:.3g}",
    ]
