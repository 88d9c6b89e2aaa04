"""Model, weight and checkpoint files: a NumPy ``.npz`` archive, no pickle.

A file holds named arrays plus one JSON document stored as the uint8 array
``__meta__.json``.  The JSON says what the file is (``"format"``:
``"pynn.model"``, ``"pynn.weights"`` or ``"pynn.checkpoint"``, and
``"version"``), the architecture (layer classes and their configs), the
compile settings (optimizer, loss, metrics) and, for checkpoints, the
training position (epoch, step in the epoch, seed, running sums) and
the history of the epochs done.  pynn.filecheck says what a valid file
holds; it is checked before writing and after reading.  Arrays:
``weights/<i>/<layer name>/<weight name>`` and ``optimizer/<slot>`` (flat,
one per slot).  Files are read with ``allow_pickle=False`` and written
atomically: a temporary file in the same folder, flushed and fsync'ed, then
renamed over the target (and the folder fsync'ed), so a crash leaves either
the old file or the new one, never a torn one.  The temporary file is
``.<name>.<host>.<pid>.<random>.tmp``; one that a killed process left is
removed by the next write of the same file (only files of that naming, of
this host, whose process is gone).
"""
import json
import math
import os
import re
import socket
import tempfile
import zipfile

import numpy as np

from . import filecheck

FORMAT_VERSION = 1
META_KEY = "__meta__.json"


class FileFormatError(ValueError):
    """A file that is not a valid pynn file (truncated, corrupt, wrong kind)."""


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _temp_prefix(path):
    """Temporary files of path: ``.<name>.<host>.<pid>.<random>.tmp``."""
    return "." + os.path.basename(path) + "."


def _process_start(pid):
    """When process ``pid`` started (seconds since the epoch), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _is_stale(folder, name, prefix):
    """A temporary file of ours (``prefix``) left by a process of this host
    that no longer runs (killed during a write): its process is gone, or the
    process now holding its pid started after the file was last written."""
    parts = name[len(prefix):-len(".tmp")].split(".")
    if len(parts) != 3 or parts[0] != _HOST or not parts[1].isdigit():
        return False            # another host's, or not named by us
    pid = int(parts[1])
    if pid == os.getpid():
        return False            # a write of this process (another thread) in progress
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False            # alive (another user's process)
    started = _process_start(pid)
    try:
        return started is not None and started > os.stat(os.path.join(folder, name)).st_mtime + 1
    except OSError:
        return False


def remove_stale_temp_files(path):
    """Remove the temporary files that writes of ``path`` killed midway left
    (only ours, only stale: see _is_stale); returns their names."""
    folder = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if name.startswith(prefix) and name.endswith(".tmp") and _is_stale(folder, name, prefix):
            try:
                os.unlink(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def atomic_write(path, write):
    """Write a file atomically: write(f) fills a temporary file (binary) in
    the same folder, which is flushed, fsync'ed and renamed over path; the
    folder is fsync'ed too.  On any error the temporary file is removed and
    the old path, if any, is left untouched.  Temporary files that earlier
    writes of path left when their process was killed are removed first."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{_HOST}.{os.getpid()}.",
                               suffix=".tmp", dir=folder)
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
    """The arrays plus the JSON metadata as one .npz, written atomically,
    after the checks that :func:`read` makes (pynn.filecheck): a file that
    pynn would refuse to read raises ValueError and is not written."""
    meta = dict(meta, version=FORMAT_VERSION)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    filecheck.check(path, arrays, meta, FORMAT_VERSION, ValueError, note="not written: ")
    payload = dict(arrays)
    payload[META_KEY] = np.frombuffer(json.dumps(meta, sort_keys=True, allow_nan=False)
                                      .encode("utf-8"), np.uint8)
    atomic_write(path, lambda f: np.savez(f, **payload))


# the most that deflate can expand data (its maximum ratio is about 1032:1)
_DEFLATE_MAX_RATIO = 1100


def _check_entries(path, zf):
    """Every entry of the archive is a .npy array of a real dtype whose
    declared size matches the entry's size, and the entries' sizes fit the
    file: checked from the headers, before anything large is allocated."""
    budget = os.path.getsize(path)
    total = 0
    for info in zf.infolist():
        name = info.filename
        if not name.endswith(".npy"):
            raise FileFormatError(f"{path}: entry {name!r} is not a .npy array")
        if info.compress_type == zipfile.ZIP_STORED:
            total += info.file_size
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            total += info.file_size / _DEFLATE_MAX_RATIO
        else:
            raise FileFormatError(f"{path}: entry {name!r} uses compression method "
                                  f"{info.compress_type} (pynn files are stored or deflated)")
        if total > budget:
            raise FileFormatError(f"{path}: the entries declare more data ({info.file_size} bytes "
                                  f"in {name!r}) than the file of {budget} bytes can hold")
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise FileFormatError(f"{path}: entry {name!r} is a .npy file of version "
                                      f"{version} (pynn writes 1.0 or 2.0)")
            shape, _, dtype = read_header(f)
            header = f.tell()
        if dtype.hasobject or dtype.kind not in "biuf":
            raise FileFormatError(f"{path}: entry {name!r} holds {dtype} values, not real numbers")
        nbytes = math.prod(shape) * dtype.itemsize
        if header + nbytes != info.file_size:
            raise FileFormatError(f"{path}: entry {name!r} declares shape {shape} of {dtype} "
                                  f"({nbytes} bytes) but holds {info.file_size - header} bytes")


def read(path, expect=None):
    """(arrays dict, meta dict).  expect: the formats accepted (tuple).

    Whatever is wrong with the file raises FileFormatError naming the file
    and the problem (FileNotFoundError if there is none): sizes are checked
    before anything is allocated, nothing is unpickled, and the content is
    checked with the rules that the writer applies (pynn.filecheck)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            _check_entries(path, zf)
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileFormatError:
        raise
    except Exception as e:    # zipfile, zlib, numpy's header parser, OSError, MemoryError...
        raise FileFormatError(f"{path}: not a readable pynn file (truncated or corrupt: "
                              f"{type(e).__name__}: {e})") from None
    if META_KEY not in arrays:
        raise FileFormatError(f"{path}: not a pynn file (no {META_KEY} entry)")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FileFormatError(f"{path}: corrupt metadata ({e})") from None
    filecheck.check(path, arrays, meta, FORMAT_VERSION, FileFormatError)
    fmt = meta.get("format")
    if expect is not None and fmt not in expect:
        raise FileFormatError(f"{path}: is a {fmt!r} file, expected one of {expect}")
    return arrays, meta
