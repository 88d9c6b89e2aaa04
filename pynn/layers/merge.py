"""Keras 2's module path keras.layers.merge."""
from .merging import (Add, Average, Concatenate, Maximum, Minimum, Multiply,  # noqa: F401
                      Subtract, add, average, concatenate, maximum, minimum, multiply, subtract)
from .unsupported import Dot  # noqa: F401
