"""Keras-style utilities: seeding, threads, one-hot labels; keras.utils' PyDataset,
normalize, image_dataset_from_directory, plot_model (submodules)."""
import random

import numpy as np

_SEED = None


def set_random_seed(seed):
    """Seed everything pynn draws from (weight initialisation, shuffling,
    dropout streams) and, as Keras does, Python's and NumPy's global RNGs.
    Same seed and same thread count give bitwise-identical training."""
    global _SEED
    seed = int(seed)
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    _SEED = seed
    random.seed(seed)
    np.random.seed(seed % 2**32)


def get_random_seed():
    """The seed set by set_random_seed, or None."""
    return _SEED


def fresh_seed():
    """The global seed if set, else a random one (recorded by the caller)."""
    if _SEED is not None:
        return _SEED
    return int(np.random.SeedSequence().entropy % 2**63)


def derive_seed(seed, *path):
    """A 64-bit seed for a sub-stream (layer, purpose) of seed."""
    return int(np.random.SeedSequence([int(seed)] + [int(p) for p in path]).generate_state(1, np.uint64)[0])


def set_num_threads(n=None):
    """Threads of the compiled kernels (None: OMP_NUM_THREADS, else the CPUs
    this process may use)."""
    import nnkernels
    nnkernels.set_num_threads(n)


def get_num_threads():
    import nnkernels
    return nnkernels.get_num_threads()


def to_categorical(x, num_classes=None, dtype="float32"):
    """One-hot encode integer class ids (any shape) into (..., num_classes)."""
    x = np.asarray(x)
    if x.ndim > 1 and x.shape[-1] == 1:
        x = x.reshape(x.shape[:-1])
    if not np.issubdtype(x.dtype, np.integer):
        if np.any(x != np.round(x)):
            raise ValueError("to_categorical expects integer class ids")
        x = x.astype(np.int64)
    if num_classes is None:
        num_classes = int(x.max()) + 1 if x.size else 0
    if x.size and (x.min() < 0 or x.max() >= num_classes):
        raise ValueError(f"class ids must lie in [0, {num_classes})")
    out = np.zeros(x.shape + (num_classes,), dtype=dtype)
    np.put_along_axis(out, x[..., None].astype(np.int64), 1, axis=-1)
    return out


def clear_session():
    """Reset the automatic layer and model names (dense, dense_1, ... start
    again) and the global dtype policy (back to float32 / floatx()), as
    Keras 3's keras.backend.clear_session / keras.utils.clear_session do."""
    from ..layers.base import reset_names
    from ..dtype_policies import set_dtype_policy
    reset_names()
    set_dtype_policy(None)


# keras.utils names defined in their own modules (after the functions above:
# np_utils re-exports to_categorical from here)
from ..data_adapters import PyDataset, Sequence                            # noqa: E402
from .numerical import normalize                                          # noqa: E402
from .image_dataset import image_dataset_from_directory                  # noqa: E402
from .model_plot import model_to_dot, plot_model                          # noqa: E402
from . import np_utils                                                    # noqa: E402
