"""keras.config (and the same functions in keras.backend): global settings.

- ``floatx()`` / ``set_floatx(dtype)``: the default dtype of new models
  ("float32" or "float64"; a model's own ``dtype=`` wins).
- ``image_data_format()`` is "channels_last", the only layout pynn runs;
  ``set_image_data_format("channels_first")`` raises NotImplementedError.
- ``epsilon()`` is 1e-7, the constant pynn's losses use; ``set_epsilon`` to
  another value raises NotImplementedError.
- ``backend()`` is "pynn".
- ``set_dtype_policy(policy)`` / ``dtype_policy()``: the global dtype policy
  of new layers ("float32", "float64", "mixed_bfloat16"; see
  pynn.mixed_precision).
- ``enable_traceback_filtering`` / ``disable_traceback_filtering``: accepted
  for scripts that call them; pynn never filters tracebacks (its errors are
  plain Python exceptions raised where the problem is found).
"""
import numpy as np

__all__ = ["floatx", "set_floatx", "image_data_format", "set_image_data_format", "epsilon",
           "set_epsilon", "backend", "enable_traceback_filtering", "disable_traceback_filtering",
           "is_traceback_filtering_enabled", "set_dtype_policy", "dtype_policy"]

_FLOATX = "float32"
_EPSILON = 1e-7
_TRACEBACK_FILTERING = True
_FLOAT_TYPES = ("float32", "float64")


def floatx():
    """The default float type of new models: "float32" (Keras' default) or "float64"."""
    return _FLOATX


def set_floatx(value):
    """Set the default float type of models created afterwards."""
    global _FLOATX
    try:
        name = np.dtype(value).name
    except TypeError:
        name = str(value)
    if name not in _FLOAT_TYPES:
        if name in ("float16", "bfloat16"):
            raise NotImplementedError(f"set_floatx({value!r}): pynn keeps weights in float32 or "
                                      "float64; for mixed precision use keras.mixed_precision."
                                      "set_global_policy('mixed_bfloat16')")
        raise ValueError(f"set_floatx: unknown float type {value!r}; expected one of {_FLOAT_TYPES}")
    _FLOATX = name


def image_data_format():
    """Always "channels_last" (images are (batch, height, width, channels))."""
    return "channels_last"


def set_image_data_format(data_format):
    fmt = str(data_format).lower()
    if fmt == "channels_last":
        return
    if fmt == "channels_first":
        raise NotImplementedError(
            "set_image_data_format('channels_first'): pynn runs channels_last only; keep images "
            "as (batch, height, width, channels) (np.moveaxis(x, 1, -1) converts NCHW data)")
    raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}")


def epsilon():
    """The fuzz factor of the losses (1e-7, as Keras)."""
    return _EPSILON


def set_epsilon(value):
    if float(value) != _EPSILON:
        raise NotImplementedError(f"set_epsilon({value!r}): pynn's losses use the fixed epsilon "
                                  f"{_EPSILON} (Keras' default)")


def backend():
    """The name of the engine: "pynn"."""
    return "pynn"


def enable_traceback_filtering():
    global _TRACEBACK_FILTERING
    _TRACEBACK_FILTERING = True


def disable_traceback_filtering():
    global _TRACEBACK_FILTERING
    _TRACEBACK_FILTERING = False


def is_traceback_filtering_enabled():
    """The flag the two functions above set; pynn's tracebacks are never
    filtered either way."""
    return _TRACEBACK_FILTERING


def set_dtype_policy(policy):
    """keras.config.set_dtype_policy: the global dtype policy of new layers
    (pynn/dtype_policies.py)."""
    from . import dtype_policies
    dtype_policies.set_dtype_policy(policy)


def dtype_policy():
    """keras.config.dtype_policy: the global dtype policy."""
    from . import dtype_policies
    return dtype_policies.dtype_policy()
