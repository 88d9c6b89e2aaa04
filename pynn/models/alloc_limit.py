"""A cap on the weights a model may allocate while it is built from a file.

A model file's config decides the weights' shapes (Dense units, Conv2D
filters, input sizes): a malformed or hostile config could ask for more
memory than the machine has before any weight is read.  The loaders of
Keras files build the model inside ``limit(n, path)`` with ``n`` derived
from the size of the weights actually in the file; ``Model._allocate``
calls ``check`` before allocating, and a model larger than the file can
hold raises instead of allocating.
"""
import contextlib
import contextvars

from .. import io

_LIMIT = contextvars.ContextVar("pynn_alloc_limit", default=None)


@contextlib.contextmanager
def limit(n_elements, where):
    token = _LIMIT.set((int(n_elements), str(where)))
    try:
        yield
    finally:
        _LIMIT.reset(token)


def check(n_elements, model_name):
    lim = _LIMIT.get()
    if lim is not None and n_elements > lim[0]:
        raise io.FileFormatError(
            f"{lim[1]}: the model config declares {n_elements:,} weight values for "
            f"{model_name!r}, more than the file's weights can hold ({lim[0]:,}): the file is "
            "malformed (nothing was allocated)")
