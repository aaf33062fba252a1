"""Quantization-aware training: fake quantization in the model, ranges as tracked parameters.

- `fake_quant.py`: the quantize-dequantize arithmetic (TF's), straight-through
  gradients, and moving-average range tracking expressed as a gradient.
- `recipe.py`: the `qat` recipe: a fine-tuned model trained on its task with
  fake quantization switched on (`configs/qat.py`).

The model side is one field, `ModelConfig.fake_quant` (`models/layers.py`):
off, the model is the float model, bit for bit.
"""
