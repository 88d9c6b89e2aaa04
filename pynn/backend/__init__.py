"""The backend: every op a layer, loss or optimizer runs goes through an
``Ops`` object (DESIGN.md section 1).

- ``geometry``: convolution / pooling output sizes and padding (the one place).
- ``ops.Ops``: the reference implementation, vectorised NumPy written against
  ``self.xp`` -- the readable specification, and the fallback on every device.
- ``cpu.CPUOps``: the hot ops on the compiled kernels of nnkernels.
- ``gpu.GPUOps``: CuPy (imported only when a GPU is asked for).
- ``bf16``: ``round_bf16``, the bfloat16 rounding of the products' operands
  under ``precision="bfloat16"`` (the mixed_bfloat16 policy).

``get_ops(name)`` returns the Ops of a device.

As ``keras.backend`` it also has Keras' functions: ``floatx``,
``set_floatx``, ``epsilon``, ``set_epsilon``, ``image_data_format``,
``set_image_data_format``, ``backend`` (pynn/config.py) and
``clear_session``.
"""
from .geometry import conv_geometry, conv_padding
from .ops import (ACTIVATIONS, Ops, dropout_keep_mask, philox4x32, philox_normal, resize_box,
                  resize_matrix, resize_weights)
from .cpu import CPUOps
from ..config import (backend, epsilon, floatx, image_data_format, set_epsilon, set_floatx,
                      set_image_data_format)


def clear_session():
    """keras.backend.clear_session: the automatic layer names start again."""
    from ..utils import clear_session as _clear
    _clear()


_DEFAULT = None


def get_ops(name=None):
    """The Ops for a device name: "cpu" (default; the compiled kernels),
    "numpy" (the pure reference) or "gpu" (CuPy; RuntimeError naming what is
    missing when CuPy or a CUDA device is not there)."""
    global _DEFAULT
    if name in (None, "cpu"):
        if _DEFAULT is None:
            _DEFAULT = CPUOps()
        return _DEFAULT
    if name == "numpy":
        return Ops()
    if name == "gpu":
        from .gpu import get_gpu_ops
        return get_gpu_ops()
    raise ValueError(f"unknown device {name!r}: expected 'cpu', 'numpy' or 'gpu'")
