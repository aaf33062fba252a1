"""Export for phones (TFLite: float, fp16, dynamic and full int8) and for transformers.

Entry points: `mbert-jax export` (`cli.main`), or in Python
`exporter.load_for_export` + `exporter.export_tflite` / `hf.export_hf`.
Module map: `graph` (the exported JAX function per task), `tflite`
(conversion, quantization, flatbuffer inspection), `data` (calibration and
evaluation examples), `verify` (parity, agreement, metric, latency).
TensorFlow and LiteRT are imported only when an export runs.
"""

from mbert_jax.export.exporter import LoadedModel, export_tflite, load_for_export
from mbert_jax.export.tflite import QUANTIZATIONS, ExportError

__all__ = ["QUANTIZATIONS", "ExportError", "LoadedModel", "export_tflite", "load_for_export"]
