"""Helpers of the export tests: micro model directories, inputs, running a file.

Parameters are random with NoNorm / LayerNorm scales not exactly 1 and
biases not 0 (the converter would fold `x * 1 + 0` away and the graph checks
would prove nothing), and large enough that logits are not flat (argmax
agreement means something).
"""

from __future__ import annotations

import jax
import numpy as np

from mbert_jax.models import Model, param_shapes, variants
from mbert_jax.models.io import save_model

ALL_HEADS = ("mlm", "nsp", "classifier", "qa", "token_classifier")
VARIANTS = ("mobilebert_micro", "mobilebert_tiny_micro", "tinybert4_micro", "bert_base_micro")
SEQ_LEN = 24


def perturbed_params(config, heads, seed=0, scale=0.1):
    """Random parameters of every head: weights N(0, 0.05), norm scales 1 + N(0, scale),
    biases N(0, scale). Drawn in numpy from `param_shapes` (no compilation)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        x = rng.standard_normal(leaf.shape).astype(np.float32)
        if name.endswith("['scale']"):
            return 1.0 + scale * x
        if name.endswith("['bias']") or name.endswith("_bias']"):
            return scale * x
        return 0.05 * x

    return jax.tree_util.tree_map_with_path(draw, param_shapes(Model(config, heads=heads)))


def write_vocab(path, size):
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    path.write_text("\n".join(special + [f"w{i}" for i in range(size - len(special))]) + "\n")
    return path


def make_model_dir(root, variant, heads=ALL_HEADS, seed=0, **overrides):
    config = variants.get(variant, **overrides)
    params = perturbed_params(config, heads, seed)
    vocab = write_vocab(root / f"{variant}_vocab.txt", config.vocab_size)
    directory = save_model(root / variant / "model", config, heads, params, vocab_file=vocab)
    return directory, config, params


def padded_inputs(config, n=4, seq_len=SEQ_LEN, seed=0):
    """[n, seq_len] int32 inputs, each with real tokens then padding, two segments."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, config.vocab_size, (n, seq_len)).astype(np.int32)
    lengths = np.linspace(seq_len // 3, seq_len - 2, n).astype(int)
    mask = (np.arange(seq_len)[None] < lengths[:, None]).astype(np.int32)
    types = ((np.arange(seq_len)[None] >= (lengths // 2)[:, None]) & (mask > 0)).astype(np.int32)
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types}


def run_file(flatbuffer, inputs):
    """Run a TFLite file on [n, S] inputs one example at a time: {output: [n, ...]}."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=flatbuffer).get_signature_runner()
    outs = {}
    for i in range(inputs["input_ids"].shape[0]):
        res = runner(**{k: v[i : i + 1] for k, v in inputs.items()})
        for k, v in res.items():
            outs.setdefault(k, []).append(v[0])
    return {k: np.stack(v) for k, v in outs.items()}


def jax_outputs(config, params, inputs, **config_changes):
    """`Model.apply` with every head (jitted), optionally with changed config fields."""
    config = config.replace(**config_changes) if config_changes else config
    model = Model(config, heads=ALL_HEADS)
    return jax.jit(model.apply)(
        {"params": params}, inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]
    )


def mean_pool(hidden, mask):
    m = mask[..., None].astype(np.float32)
    return (np.asarray(hidden) * m).sum(1) / m.sum(1)


def expected(config, params, inputs, task):
    """The task's outputs computed here from `Model.apply` (independent of the exporter)."""
    out = jax_outputs(config, params, inputs)
    if task == "classification":
        return {"logits": np.asarray(out.logits)}
    if task == "token_classification":
        return {"logits": np.asarray(out.token_logits)}
    if task == "qa":
        return {
            "start_logits": np.asarray(out.start_logits),
            "end_logits": np.asarray(out.end_logits),
        }
    if task == "mlm":
        return {"mlm_logits": np.asarray(out.mlm_logits)}
    return {"embedding": mean_pool(out.encoder.last_hidden_state, inputs["attention_mask"])}


def tensor_types(flatbuffer, op_name):
    """The types of every input tensor of the ops named `op_name` (e.g. {"INT8", "INT32"})."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    types = set()
    for sg in model.subgraphs:
        for op in sg.operators:
            if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == op_name:
                types |= {flatbuffer_utils.type_to_name(sg.tensors[i].type) for i in op.inputs}
    return types
