"""Export for phones (TFLite: float, fp16, dynamic and full int8) and for transformers.

Entry points: `mbert-jax export` (`cli.main`), or in Python
`exporter.load_for_export` + `exporter.export_tflite` (settings in
`exporter.TFLiteOptions`) / `hf.export_hf`;
`runner.Runner` runs an exported file with its inputs checked.
Module map: `graph` (the exported JAX function per task), `tflite`
(conversion, quantization, flatbuffer inspection), `data` (calibration and
evaluation examples), `verify` (parity, agreement, metric, latency),
`runner` (running a file, input checks).
TensorFlow and LiteRT are imported only when an export runs.
"""

from mbert_jax.export.exporter import LoadedModel, TFLiteOptions, export_tflite, load_for_export
from mbert_jax.export.runner import InputError, Runner
from mbert_jax.export.tflite import QUANTIZATIONS, ExportError

__all__ = [
    "QUANTIZATIONS",
    "ExportError",
    "InputError",
    "LoadedModel",
    "Runner",
    "TFLiteOptions",
    "export_tflite",
    "load_for_export",
]
