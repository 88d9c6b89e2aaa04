"""keras.mixed_precision: bfloat16 products with float32 variables.

``set_global_policy("mixed_bfloat16")`` (Keras 3 also spells it
``keras.config.set_dtype_policy``) before building a model, or
``dtype="mixed_bfloat16"`` on a layer, makes Dense and the convolutions
(Conv2D, grouped Conv2D, Conv2DTranspose, SeparableConv2D's pointwise part)
compute their matrix products -- forward, dW and dX -- with bfloat16
operands (x, w and dz rounded to nearest even) accumulated in float32.
Everything else stays float32: weights and the optimizer (so checkpoints
and saved models are float32), bias, activations (stored float32 between
layers), batch norm, pooling, dropout, softmax, the loss, and the model's
outputs.  DepthwiseConv2D computes in float32.  A layer given
``dtype="float32"`` (Keras' advice for the last layer) runs in float32.

- ``Policy(name)`` / ``DTypePolicy(name)``: "float32", "float64",
  "mixed_bfloat16"; "mixed_float16", "float16" and "bfloat16" raise
  NotImplementedError (use "mixed_bfloat16").
- ``set_global_policy`` / ``set_dtype_policy``, ``global_policy`` /
  ``dtype_policy``: the default policy of layers constructed afterwards.
- ``LossScaleOptimizer(inner)``: accepted and a pass-through (bfloat16 has
  float32's range: no loss scaling); trains exactly as ``inner``.
- Keras 2's ``keras.mixed_precision.experimental`` (``set_policy``,
  ``global_policy``, ``Policy(name, loss_scale=)``, ``LossScaleOptimizer(opt,
  loss_scale)``) with a DeprecationWarning.

Not supported yet: mixed_bfloat16 on the GPU backend (refused when the
model is placed on the GPU) and mixed_float16.  The compiled bfloat16
kernels are nnkernels' (``precision="bfloat16"`` of the product kernels);
the reference ``Ops`` (``device="numpy"``) computes the same products in
NumPy (pynn/backend/bf16.py).
"""
from ..dtype_policies import DTypePolicy, FloatDTypePolicy, dtype_policy, set_dtype_policy
from ..optimizers.loss_scale import LossScaleOptimizer

Policy = DTypePolicy
global_policy = dtype_policy
set_global_policy = set_dtype_policy

from . import experimental   # noqa: E402  (Keras 2's keras.mixed_precision.experimental)

__all__ = ["DTypePolicy", "Policy", "FloatDTypePolicy", "dtype_policy", "global_policy",
           "set_dtype_policy", "set_global_policy", "LossScaleOptimizer", "experimental"]
