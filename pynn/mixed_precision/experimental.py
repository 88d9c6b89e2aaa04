"""Keras 2's ``keras.mixed_precision.experimental`` (TensorFlow 2.1-2.3),
kept for the scripts that still use it; every name warns
(DeprecationWarning) and maps to keras.mixed_precision.

- ``set_policy(policy)`` -> ``set_global_policy``; ``global_policy()``;
- ``Policy(name, loss_scale="auto")``: the policy; ``loss_scale`` is ignored
  (pynn's bfloat16 needs no loss scaling);
- ``LossScaleOptimizer(optimizer, loss_scale)``: the pass-through
  ``keras.mixed_precision.LossScaleOptimizer``;
- ``get_layer_policy(layer)``: ``layer.dtype_policy``.
"""
import warnings

from ..dtype_policies import DTypePolicy, dtype_policy, set_dtype_policy
from ..optimizers.loss_scale import LossScaleOptimizer as _LSO

__all__ = ["Policy", "set_policy", "global_policy", "LossScaleOptimizer", "get_layer_policy"]


def _warn(old, new):
    warnings.warn(f"keras.mixed_precision.experimental.{old} is deprecated (Keras 2); use "
                  f"keras.mixed_precision.{new}", DeprecationWarning, stacklevel=3)


class Policy(DTypePolicy):
    """Keras 2's experimental Policy(name, loss_scale="auto"): a DTypePolicy
    (loss_scale is ignored: bfloat16 needs none)."""

    def __init__(self, name, loss_scale="auto"):
        _warn("Policy", "Policy (no loss_scale)")
        super().__init__(name)


def set_policy(policy):
    _warn("set_policy", "set_global_policy")
    set_dtype_policy(policy)


def global_policy():
    _warn("global_policy", "global_policy")
    return dtype_policy()


def get_layer_policy(layer):
    _warn("get_layer_policy", "layer.dtype_policy")
    return layer.dtype_policy


def LossScaleOptimizer(optimizer, loss_scale="dynamic"):
    """Keras 2's experimental LossScaleOptimizer(optimizer, loss_scale):
    "dynamic" or a fixed number; a pass-through in pynn."""
    _warn("LossScaleOptimizer(optimizer, loss_scale)",
          "LossScaleOptimizer(inner_optimizer, dynamic=..., initial_scale=...)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if loss_scale == "dynamic" or loss_scale is None:
            return _LSO(optimizer)
        return _LSO(optimizer, initial_scale=float(loss_scale), dynamic=False)
