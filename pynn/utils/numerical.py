"""keras.utils.normalize (to_categorical lives in pynn/utils/__init__.py)."""
import numpy as np


def normalize(x, axis=-1, order=2):
    """``x`` divided by its ``order``-norm along ``axis`` (Keras: a zero norm
    leaves the values unchanged)."""
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
        raise ValueError(f"normalize: order must be an int >= 1, got {order!r}")
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"normalize expects a numeric array, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError("normalize expects an array with at least one axis, got a scalar")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"normalize: axis {axis} is out of range for an array of {x.ndim} axes")
    norm = np.atleast_1d(np.linalg.norm(x, ord=order, axis=axis))
    norm[norm == 0] = 1
    return x / np.expand_dims(norm, axis)
