"""`mbert-jax export`: export a trained model for phones (TFLite) or for transformers.

    mbert-jax export --workdir runs/sst2 --task classification --format tflite \\
        --quantize int8 --seq-len 128 --calibration-data train.tsv \\
        --eval-data dev.tsv --out sst2_int8.tflite

    mbert-jax export --workdir runs/ner --task token_classification \\
        --eval-data dev.conll --seq-len 128 --out ner.tflite

`--workdir DIR` exports DIR/model (the model directory every run writes);
`--checkpoint PATH` names a model directory or a transformers directory
(converted on the fly and cached, `mbert_jax/models/resolve.py`) directly. After every export the
verification report (parity with the JAX model, agreement, metric, size,
latency) is printed. Errors print one line `error: ...` and return 1; nothing
is left at `--out`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mbert_jax.export import graph, tflite
from mbert_jax.export.data import load_examples
from mbert_jax.export.exporter import TFLiteOptions, export_tflite, load_for_export
from mbert_jax.export.tflite import ExportError
from mbert_jax.export.transformers import export_hf
from mbert_jax.models.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mbert-jax export",
        description="Export a trained model to TFLite (float/fp16/int8) or a transformers "
        "directory, then verify it against the JAX model.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="a training run's directory (exports WORKDIR/model)")
    src.add_argument(
        "--checkpoint",
        help="a model directory (model_config.json + params) or a transformers directory",
    )
    p.add_argument("--task", required=True, choices=graph.TASKS)
    p.add_argument("--format", default="tflite", choices=("tflite", "hf"))
    p.add_argument("--quantize", default="none", choices=tflite.QUANTIZATIONS)
    p.add_argument("--seq-len", type=int, default=128, help="static input length (default 128)")
    p.add_argument("--out", required=True, help="the .tflite file (hf: a directory)")
    data = p.add_argument_group(
        "data (text lines, .csv/.tsv/.jsonl tables, CoNLL files for token_classification, "
        "or pre-tokenized .npz)"
    )
    data.add_argument("--calibration-data", help="representative examples for --quantize int8")
    data.add_argument("--num-calibration", type=int, default=100, help="default 100")
    data.add_argument("--eval-data", help="held-out examples; with labels the metric is reported")
    data.add_argument("--max-eval", type=int, default=1000, help="at most this many eval examples")
    data.add_argument("--num-verify", type=int, default=32, help="unlabelled examples to verify on")
    data.add_argument("--vocab", help="vocab.txt to tokenize text with (default: the model's)")
    data.add_argument(
        "--text-columns",
        help="comma-separated text columns of a table (token_classification JSON lines: the "
        "words column, default tokens)",
    )
    data.add_argument(
        "--label-column",
        help="the label column: class names (mapped by the model's label_names) or ids "
        "(default: label; token_classification JSON lines: the tags column, default tags)",
    )
    data.add_argument(
        "--conll-tag-column",
        type=int,
        default=-1,
        help="token_classification CoNLL files: the tag's column (default -1, the last)",
    )
    opt = p.add_argument_group("options")
    opt.add_argument("--pooling", default="mean", choices=graph.POOLINGS, help="embedding task")
    opt.add_argument(
        "--init-missing-head",
        action="store_true",
        help="export with a randomly initialized head when the model has none for the task",
    )
    opt.add_argument(
        "--int8-attention",
        action="store_true",
        help="int8: also quantize the attention matmuls and softmax (slower on XNNPACK)",
    )
    opt.add_argument(
        "--int8-elementwise",
        action="store_true",
        help="int8: also quantize the residual adds and NoNorm (NoNorm/ReLU models only; "
        "costs accuracy). With --int8-attention: an integer-only graph for NPUs",
    )
    opt.add_argument(
        "--dynamic-layers",
        help="int8: comma-separated regular expressions over the dense layers' module paths "
        "(e.g. 'ffn_\\d+/output$'); those layers are dynamic-range int8 (float output). "
        "Default: every FFN output projection of a LayerNorm model, none of a NoNorm one; "
        "'none' for no layer",
    )
    opt.add_argument(
        "--report",
        nargs="?",
        const="",
        metavar="PREFIX",
        help="int8: write the per-layer quantization report (the int8 file against its float "
        "graph on the calibration examples) to PREFIX.md, .csv and .png (default PREFIX: "
        "--out without .tflite, plus _layers)",
    )
    opt.add_argument(
        "--no-builtin-gelu",
        action="store_true",
        help="lower exact GELU to elementwise ops (its erf polynomial) instead of TFLite's "
        "GELU op, for runtimes older than TFLite 2.9; slower, above all in int8",
    )
    opt.add_argument("--threads", default="1,4", help="thread counts to time (default 1,4)")
    opt.add_argument("--latency-runs", type=int, default=20, help="0 skips timing")
    return p


def _source(args) -> Path:
    return Path(args.workdir) / "model" if args.workdir else Path(args.checkpoint)


def run(args) -> list[str]:
    """Do the export `args` describe; returns the report lines."""
    loaded = load_for_export(_source(args), "--workdir" if args.workdir else "--checkpoint")
    vocab = Path(args.vocab) if args.vocab else loaded.vocab_file
    columns = tuple(args.text_columns.split(",")) if args.text_columns else None

    def read(path, limit):
        return load_examples(
            path,
            seq_len=args.seq_len,
            vocab_file=vocab,
            limit=limit,
            text_columns=columns,
            label_column=args.label_column,
            task=args.task,
            label_names=loaded.config.label_names,
            regression=loaded.config.num_labels == 1 and not loaded.config.label_names,
            conll_tag_column=args.conll_tag_column,
        )

    if args.num_calibration < 1:
        raise ExportError("--num-calibration must be at least 1")
    calibration = evaluation = None
    source = "held-out data"
    if args.calibration_data:
        calibration = read(args.calibration_data, args.num_calibration + args.num_verify)
        if args.quantize == "int8" and not args.eval_data:
            # Examples past the calibration ones are held out for verification.
            if len(calibration) > args.num_calibration:
                evaluation = calibration.take(args.num_calibration, len(calibration))
                source = "calibration file, past the examples used to calibrate"
            calibration = calibration.take(0, args.num_calibration)
        elif args.quantize == "int8":
            calibration = calibration.take(0, args.num_calibration)
        elif not args.eval_data:
            evaluation, source = calibration, "calibration file (unused by this mode)"
    if args.eval_data:
        evaluation, source = read(args.eval_data, args.max_eval), f"eval data {args.eval_data}"

    if args.format == "hf":
        return export_hf(
            loaded,
            args.task,
            args.out,
            verify_examples=evaluation,
            num_verify=args.num_verify,
            pooling=args.pooling,
            init_missing_head=args.init_missing_head,
            seq_len=args.seq_len,
        )
    threads = tuple(int(t) for t in args.threads.split(",") if t)
    dynamic = None
    if args.dynamic_layers is not None:
        dynamic = () if args.dynamic_layers == "none" else tuple(args.dynamic_layers.split(","))
    report_prefix = None
    if args.report is not None:
        report_prefix = args.report or str(Path(args.out).with_suffix("")) + "_layers"
    options = TFLiteOptions(
        quantize=args.quantize,
        seq_len=args.seq_len,
        num_verify=args.num_verify,
        pooling=args.pooling,
        init_missing_head=args.init_missing_head,
        int8_attention=args.int8_attention,
        int8_elementwise=args.int8_elementwise,
        builtin_gelu=not args.no_builtin_gelu,
        dynamic_layers=dynamic,
        layer_report=report_prefix,
        threads=threads,
        latency_runs=args.latency_runs,
    )
    report = export_tflite(
        loaded,
        args.task,
        args.out,
        options,
        calibration=calibration,
        verify_examples=evaluation,
        verify_source=source,
    )
    return report.lines()


def main(argv: list[str]) -> int:
    """`mbert-jax export ...`; returns the exit status (0 ok, 1 error, 2 usage)."""
    from mbert_jax.models.hf import ConversionError

    args = build_parser().parse_args(argv)
    try:
        lines = run(args)
    except (ExportError, ConfigError, ConversionError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
