"""Running an exported file: `Runner` refuses the ids the graph would wrap or fail on.

One classification file per quantization mode is exported once for the
module. The raw interpreter shows the fault (id -1 runs as the last
vocabulary entry); the runner names the input and its valid range instead,
in every mode, and matches the raw interpreter on valid inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from export_helpers import SEQ_LEN, padded_inputs, run_file

from mbert_jax.export import QUANTIZATIONS, InputError, Runner, tflite
from mbert_jax.export.data import Examples, check_examples
from mbert_jax.export.exporter import TFLiteOptions, export_tflite, load_for_export
from mbert_jax.export.tflite import ExportError


@pytest.fixture(scope="module")
def files(model_dirs, tmp_path_factory):
    """{quantization: file bytes}, the tinybert4 micro classifier in every mode."""
    directory, config, _ = model_dirs["tinybert4_micro"]
    loaded = load_for_export(directory)
    calibration = Examples(**padded_inputs(config, n=8, seed=1))
    root = tmp_path_factory.mktemp("runner")
    out = {}
    for quantize in QUANTIZATIONS:
        path = root / f"{quantize}.tflite"
        export_tflite(
            loaded, "classification", path,
            TFLiteOptions(quantize=quantize, seq_len=SEQ_LEN, num_verify=2, latency_runs=0),
            calibration=calibration if quantize == "int8" else None,
        )  # fmt: skip
        out[quantize] = path.read_bytes()
    return config, out


def test_the_file_records_the_valid_range_of_each_input(files):
    config, by_mode = files
    assert (config.vocab_size, config.type_vocab_size) == (2048, 2)
    for flatbuffer in by_mode.values():
        assert tflite.task_metadata(flatbuffer)["input_ranges"] == {
            "input_ids": [0, 2048],
            "attention_mask": [0, 2],
            "token_type_ids": [0, 2],
        }


def test_without_the_runner_a_negative_id_runs_as_the_last_vocabulary_entry(files):
    config, by_mode = files
    inputs = padded_inputs(config, n=1)
    wrapped = {k: v.copy() for k, v in inputs.items()}
    last = {k: v.copy() for k, v in inputs.items()}
    wrapped["input_ids"][0, 1], last["input_ids"][0, 1] = -1, config.vocab_size - 1
    got = run_file(by_mode["none"], wrapped)["logits"]
    np.testing.assert_array_equal(got, run_file(by_mode["none"], last)["logits"])


@pytest.mark.parametrize("quantize", QUANTIZATIONS)
def test_the_runner_matches_the_interpreter_on_valid_inputs(files, quantize):
    config, by_mode = files
    inputs = padded_inputs(config, n=3)
    runner = Runner(by_mode[quantize])
    assert runner.seq_len == SEQ_LEN
    got = runner(**inputs)
    np.testing.assert_array_equal(got["logits"], run_file(by_mode[quantize], inputs)["logits"])
    one = runner(inputs["input_ids"][0], inputs["attention_mask"][0])  # [seq_len], types 0
    assert one["logits"].shape == (1, config.num_labels)


BAD = {
    "negative_id": (
        "input_ids", (0, 3), -1,
        "input_ids[0, 3] = -1 is outside the valid range [0, 2048): ids index the model's "
        "vocabulary of 2048 tokens (its vocab.txt)",
    ),
    "id_past_the_vocabulary": (
        "input_ids", (1, 0), 2048,
        "input_ids[1, 0] = 2048 is outside the valid range [0, 2048): ids index the model's "
        "vocabulary of 2048 tokens (its vocab.txt)",
    ),
    "negative_token_type": (
        "token_type_ids", (0, 2), -1,
        "token_type_ids[0, 2] = -1 is outside the valid range [0, 2): the model has 2 token "
        "type(s) (segments A and B of a pair)",
    ),
    "third_token_type": (
        "token_type_ids", (1, 5), 2,
        "token_type_ids[1, 5] = 2 is outside the valid range [0, 2): the model has 2 token "
        "type(s) (segments A and B of a pair)",
    ),
    "mask_of_two": (
        "attention_mask", (0, 0), 2,
        "attention_mask[0, 0] = 2 is outside the valid range [0, 2): 1 marks a real token, "
        "0 padding",
    ),
}  # fmt: skip


@pytest.mark.parametrize("quantize", QUANTIZATIONS)
@pytest.mark.parametrize("case", list(BAD))
def test_an_out_of_range_input_names_the_input_and_its_range(files, quantize, case):
    config, by_mode = files
    name, at, value, message = BAD[case]
    inputs = padded_inputs(config, n=2)
    inputs[name][at] = value
    with pytest.raises(InputError) as error:
        Runner(by_mode[quantize])(**inputs)
    assert str(error.value) == message


def test_a_wrong_shape_or_type_is_refused(files):
    config, by_mode = files
    runner = Runner(by_mode["none"])
    inputs = padded_inputs(config, n=1, seq_len=SEQ_LEN + 1)
    with pytest.raises(
        InputError, match=r"input_ids has shape \(1, 25\); this file takes \[n, 24\]"
    ):
        runner(**inputs)
    inputs = padded_inputs(config, n=1)
    with pytest.raises(InputError, match="input_ids holds float64 values that are not integers"):
        runner(inputs["input_ids"] + 0.5, inputs["attention_mask"])
    with pytest.raises(InputError, match=r"the inputs differ in shape"):
        runner(inputs["input_ids"], np.ones((2, SEQ_LEN), np.int32))


def test_calibration_and_evaluation_sets_with_bad_token_types_are_refused(model_dirs):
    _, config, _ = model_dirs["tinybert4_micro"]
    examples = Examples(**padded_inputs(config, n=2))
    examples.token_type_ids[1, 4] = 2
    with pytest.raises(ExportError) as error:
        check_examples(examples, config, SEQ_LEN, "calibration")
    assert str(error.value) == (
        "the calibration set has token type ids from 0 to 2, outside the model's 2 token "
        "type(s) [0, 2); token_type_ids are 0 (first segment) or 1 (second)"
    )
    # A model without token types ignores them.
    check_examples(examples, config.replace(type_vocab_size=0), SEQ_LEN, "calibration")
