"""Model, weight and checkpoint files: a NumPy ``.npz`` archive, no pickle.

A file holds named arrays plus one JSON document stored as the uint8 array
``__meta__.json``.  The JSON says what the file is (``"format"``:
``"pynn.model"``, ``"pynn.weights"`` or ``"pynn.checkpoint"``, and
``"version"``), the architecture (layer classes and their configs), the
compile settings (optimizer, loss, metrics) and, for checkpoints, the
training position (epoch, step in the epoch, seed, running sums).  Arrays:
``weights/<i>/<layer name>/<weight name>`` and ``optimizer/<slot>`` (flat,
one per slot).  Files are read with ``allow_pickle=False`` and written
atomically: a temporary file in the same folder, flushed and fsync'ed, then
renamed over the target (and the folder fsync'ed), so a crash leaves either
the old file or the new one, never a torn one.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT_VERSION = 1
META_KEY = "__meta__.json"


class FileFormatError(ValueError):
    """A file that is not a valid pynn file (truncated, corrupt, wrong kind)."""


def atomic_write(path, write):
    """Write a file atomically: write(f) fills a temporary file (binary) in
    the same folder, which is flushed, fsync'ed and renamed over path; the
    folder is fsync'ed too.  On any error the temporary file is removed and
    the old path, if any, is left untouched."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def write_text_atomic(path, text):
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_atomic(path, arrays, meta):
    """The arrays plus the JSON metadata as one .npz, written atomically."""
    meta = dict(meta, version=FORMAT_VERSION)
    payload = dict(arrays)
    payload[META_KEY] = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), np.uint8)
    atomic_write(path, lambda f: np.savez(f, **payload))


def read(path, expect=None):
    """(arrays dict, meta dict).  expect: the formats accepted (tuple)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise FileFormatError(f"{path}: not a readable pynn file (truncated or corrupt: {e})") from None
    if META_KEY not in arrays:
        raise FileFormatError(f"{path}: not a pynn file (no {META_KEY} entry)")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileFormatError(f"{path}: corrupt metadata ({e})") from None
    fmt = meta.get("format")
    if expect is not None and fmt not in expect:
        raise FileFormatError(f"{path}: is a {fmt!r} file, expected one of {expect}")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise FileFormatError(f"{path}: format version {meta.get('version')} is newer than this "
                              f"pynn ({FORMAT_VERSION})")
    return arrays, meta
