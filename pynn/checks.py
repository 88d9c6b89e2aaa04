"""Argument checks shared by the API (fit / evaluate / predict, optimizers,
losses, the data layer) and by the validation of model files: one place
for "an int >= 1", "a finite real number", "an array of real numbers".

Keras' rules: a count (batch size, epochs) must be an int (a float such as
2.7, a string such as "16" or a bool raises TypeError, a NumPy integer is
fine); a value out of range raises ValueError.  Nothing is truncated or
converted silently.
"""
import math

import numpy as np


def integer(name, value, minimum=None, maximum=None):
    """``value`` as a Python int: TypeError unless it is an int (or a NumPy
    integer; not a bool), ValueError outside [minimum, maximum]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r:.100} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def optional_integer(name, value, default, minimum=None):
    """:func:`integer`, with None meaning ``default``."""
    return default if value is None else integer(name, value, minimum)


def real(name, value, minimum=None):
    """``value`` as a finite Python float: TypeError unless it is a real
    number (not a bool, string or complex), ValueError if NaN, inf or below
    ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                     np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r:.100} "
                        f"({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def numeric_array(name, value):
    """``np.asarray(value)``, which must hold numbers (bool, int or float):
    strings, objects and complex numbers raise TypeError."""
    a = np.asarray(value)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got an array of dtype {a.dtype}")
    return a


def finite_array(name, value):
    """:func:`numeric_array` with no NaN or inf (ValueError)."""
    a = numeric_array(name, value)
    if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a
