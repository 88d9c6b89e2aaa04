"""Which Keras file a path names, and the save/load entry points model.save,
save_weights, load_weights and pynn.load_model dispatch to.

- ``.keras``: Keras 3 archive (keras_archive.py), model and weights;
- ``*.weights.h5``: Keras 3 weights (keras_h5.py);
- ``.h5`` / ``.hdf5``: legacy Keras HDF5 (keras_legacy.py), model or weights;
- anything else: pynn's own .npz (pynn.io), checkpoints included.
Reading also recognises an HDF5 file by its signature whatever its name, and
reads a pynn .npz written under an .h5 name (what pynn did before).
"""
import os

from . import keras_archive, keras_legacy


def kind(path, weights=False, reading=False):
    """'keras', 'weights.h5', 'h5' or None (pynn's .npz)."""
    p = os.fspath(path).lower() if isinstance(path, (str, os.PathLike)) else ""
    if p.endswith(".keras"):
        return "keras"
    if p.endswith(".weights.h5"):
        return "weights.h5"
    if p.endswith((".h5", ".hdf5")):
        if reading and _is_zip(p):
            return None       # a pynn .npz saved under an .h5 name before Keras files existed
        return "h5"
    if reading and p and keras_legacy.is_hdf5(p):
        return "h5"
    return None


def _is_zip(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def save(model, path, overwrite=True, include_optimizer=True):
    k = kind(path)
    if k == "keras":
        return keras_archive.save_keras(model, path, overwrite, include_optimizer)
    if k == "weights.h5":
        raise ValueError(f"{path}: a *.weights.h5 name is for save_weights; save a model as "
                         ".keras, .h5 or .npz")
    return keras_legacy.save_legacy(model, path, overwrite, include_optimizer)


def save_weights(model, path, overwrite=True):
    k = kind(path, weights=True)
    if k == "keras":
        raise ValueError(f"{path}: save_weights writes *.weights.h5 (Keras 3), .h5 (Keras 2) "
                         "or .npz; use model.save for a .keras archive")
    if k == "weights.h5":
        return keras_archive.save_weights_h5(model, path, overwrite)
    return keras_legacy.save_weights_legacy(model, path, overwrite)


def load_weights(model, path):
    if kind(path, weights=True, reading=True) == "keras" or \
            os.fspath(path).lower().endswith(".weights.h5"):
        return keras_archive.load_weights_keras(model, path)
    return keras_legacy.load_weights_legacy(model, path)


def load_model(path, compile=True):
    if kind(path, reading=True) == "keras":
        return keras_archive.load_keras(path, compile=compile)
    if kind(path, reading=True) == "weights.h5":
        raise ValueError(f"{path}: a weights file has no architecture: build the model and "
                         "call model.load_weights")
    return keras_legacy.load_legacy(path, compile=compile)
