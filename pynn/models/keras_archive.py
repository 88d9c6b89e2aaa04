"""Keras 3 files: the ``.keras`` archive and ``*.weights.h5``.

A ``.keras`` file is a zip (entries stored, not compressed, as Keras writes
them) of ``metadata.json`` (``keras_version``, ``date_saved``),
``config.json`` (the model as keras_config.py writes it, with
``compile_config``) and ``model.weights.h5`` (keras_h5.py; the optimizer's
variables under ``optimizer/vars``, keras_optimizer.py).  Files are written
atomically (pynn.io.atomic_write).  Reading checks the zip, the entry sizes
(no zip bombs), the config, then every weight against the model, and builds
the model under a cap derived from the weights' size (alloc_limit.py).
"""
import datetime
import io as _pyio
import json
import logging
import os
import zipfile

from .. import io
from . import alloc_limit, keras_config, keras_h5, keras_optimizer

_log = logging.getLogger("pynn")

KERAS_VERSION = "3.15.1"          # the Keras 3 release whose layout is written
_CONFIG_MAX = 64 << 20            # bytes of config.json / metadata.json
_MAX_RATIO = 200                  # uncompressed / compressed size of a deflated entry


def _may_write(model, path, overwrite):
    model._join_launch()
    if not model._is_chief():       # under MPI rank 0 writes
        return False
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists (overwrite=False)")
    return True


def _weights_bytes(model, with_optimizer):
    import h5py
    buf = _pyio.BytesIO()
    with h5py.File(buf, "w") as h5:
        keras_h5.write_weights(h5, model)
        if with_optimizer:
            arrays = keras_optimizer.optimizer_arrays(model)
            if arrays is not None:
                g = h5.create_group("optimizer/vars")
                g.attrs["name"] = model.optimizer.name
                for i, a in enumerate(arrays):
                    g.create_dataset(str(i), data=a)
    return buf.getvalue()


def save_keras(model, path, overwrite=True, include_optimizer=True):
    keras_h5.require_h5py()
    path = os.fspath(path)
    if not _may_write(model, path, overwrite):
        return
    model._ensure_graph()
    model._ensure_allocated()
    entry = keras_config.model_to_keras(model)
    cc = {}
    if include_optimizer and model.compiled:
        try:
            cc = keras_optimizer.compile_config(model)
        except NotImplementedError as e:
            _log.warning("%s: the compile settings are not saved (%s): Keras loads the model "
                         "uncompiled", path, e)
    entry["compile_config"] = cc
    weights = _weights_bytes(model, bool(cc))
    meta = {"keras_version": KERAS_VERSION,
            "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            z.writestr("metadata.json", json.dumps(meta))
            z.writestr("config.json", json.dumps(entry))
            z.writestr("model.weights.h5", weights)
    io.atomic_write(path, write)


def save_weights_h5(model, path, overwrite=True):
    keras_h5.require_h5py()
    path = os.fspath(path)
    if not _may_write(model, path, overwrite):
        return
    model._ensure_graph()
    model._ensure_allocated()
    data = _weights_bytes(model, True)      # Keras adds the optimizer's variables too
    io.atomic_write(path, lambda f: f.write(data))


# -------------------------------------------------------------------- reading --
def _entry(z, name, path, limit=None):
    try:
        info = z.getinfo(name)
    except KeyError:
        raise io.FileFormatError(f"{path}: not a Keras archive: no {name} in it (entries: "
                                 f"{z.namelist()[:8]})") from None
    if limit is not None and info.file_size > limit:
        raise io.FileFormatError(f"{path}: {name} declares {info.file_size:,} bytes, more "
                                 f"than the {limit:,} allowed")
    if info.compress_type != zipfile.ZIP_STORED and \
            info.file_size > _MAX_RATIO * max(info.compress_size, 1) + (1 << 20):
        raise io.FileFormatError(f"{path}: {name} would expand {info.compress_size:,} bytes to "
                                 f"{info.file_size:,}: refused")
    try:
        return z.read(name)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as e:
        raise io.FileFormatError(f"{path}: {name} cannot be read (truncated or corrupt: "
                                 f"{e})") from None


def read_archive(path):
    """(config entry, compile_config, weights h5 bytes) of a .keras file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise io.FileFormatError(f"{path}: not a .keras archive (truncated or corrupt zip: "
                                 f"{e})") from None
    with z:
        raw = _entry(z, "config.json", path, _CONFIG_MAX)
        archive_size = os.path.getsize(path)
        weights = _entry(z, "model.weights.h5", path, _MAX_RATIO * archive_size + (1 << 20))
    try:
        entry = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise io.FileFormatError(f"{path}: config.json is not valid JSON ({e})") from None
    if not isinstance(entry, dict):
        raise io.FileFormatError(f"{path}: config.json is not a JSON object")
    return entry, entry.get("compile_config") or {}, weights


def element_cap(n_bytes):
    """The most weight values a weights file of n_bytes can hold (float16
    is the narrowest Keras writes), plus slack for the file's own overhead."""
    return int(n_bytes) // 2 + (1 << 20)


def load_keras(path, compile=True):
    keras_h5.require_h5py()
    entry, cc, weights = read_archive(path)
    path = os.fspath(path)
    with alloc_limit.limit(element_cap(len(weights)), path):
        model = keras_config.model_from_keras(entry, path)
        with keras_h5.open_h5(_pyio.BytesIO(weights), f"{path} (model.weights.h5)") as h5:
            model._assign_weights(keras_h5.read_weights(h5, model, path))
            if compile and cc and keras_optimizer.compile_from_keras(model, cc, path):
                g = h5.get("optimizer/vars")
                if g is not None:
                    keras_optimizer.load_optimizer_arrays(model, g, path,
                                                          keras_optimizer.wrapper_variables(cc))
    return model


def load_weights_keras(model, path):
    """load_weights from a .keras archive or a Keras 3 *.weights.h5."""
    keras_h5.require_h5py()
    path = os.fspath(path)
    if path.endswith(".keras"):
        _, _, data = read_archive(path)
        source = _pyio.BytesIO(data)
    else:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
        source = path
    model._ensure_graph()
    with keras_h5.open_h5(source, path) as h5:
        model._assign_weights(keras_h5.read_weights(h5, model, path))
        g = h5.get("optimizer/vars")
        if g is not None and model.compiled:          # as Keras' load_weights
            keras_optimizer.load_optimizer_arrays(model, g, path)
