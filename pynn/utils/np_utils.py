"""keras.utils.np_utils (the Keras 2 module path): to_categorical, normalize."""
from . import to_categorical             # noqa: F401  (one definition: pynn/utils/__init__.py)
from .numerical import normalize         # noqa: F401

__all__ = ["to_categorical", "normalize"]
