"""Keras 2's module path keras.layers.advanced_activations, and Keras 2's
ThresholdedReLU (removed in Keras 3: ReLU(threshold=theta))."""
import warnings

from .activation import ELU, LeakyReLU, PReLU, ReLU, Softmax  # noqa: F401


def ThresholdedReLU(theta=1.0, **kw):
    """Keras 2's ThresholdedReLU(theta): x for x > theta, else 0."""
    warnings.warn("ThresholdedReLU(theta) is Keras 2's layer: use ReLU(threshold=theta)",
                  DeprecationWarning, stacklevel=2)
    return ReLU(threshold=theta, **kw)
