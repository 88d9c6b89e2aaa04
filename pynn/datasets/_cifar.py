"""Reader and lookup shared by :mod:`pynn.datasets.cifar10` and :mod:`pynn.datasets.cifar100`.

Only the *binary version* of CIFAR is read (``cifar-10-binary.tar.gz`` /
``cifar-100-binary.tar.gz``, "for C programs"): a file is a sequence of
records, each ``<label bytes><3072 image bytes>``, the image stored channel
first (1024 red, 1024 green, 1024 blue bytes, each plane 32x32 row-major).
The *python version* is a pickle and is never read: nothing is unpickled.

The number of records per file is not fixed: it is the file size divided by
the record size, so a file must be a non-empty whole number of records.  Every
label byte is checked against its number of classes.  Whatever is wrong with a
file raises :class:`CIFARError`, a subclass of :class:`pynn.data.IDXError`
(hence a ``ValueError``): callers catch one kind of error for every data set
file of pynn.  Data sets that are not found raise ``FileNotFoundError``
saying where they were looked for and how to provide them (nothing is
downloaded).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import data
from ..data import IDXError

__all__ = ["CIFARError", "Spec", "IMAGE_SHAPE", "IMAGE_BYTES", "find_dir", "read_records",
           "load_batch", "load"]

HEIGHT = WIDTH = 32
CHANNELS = 3
#: Shape of one image as returned (channels last, like Keras).
IMAGE_SHAPE = (HEIGHT, WIDTH, CHANNELS)
#: Bytes of one image in a record (stored channel first).
IMAGE_BYTES = CHANNELS * HEIGHT * WIDTH


class CIFARError(IDXError):
    """A file is not a valid CIFAR binary-version file.

    A subclass of :class:`pynn.data.IDXError` (a ``ValueError``): ``path`` is
    the file, ``reason`` the problem and ``str(err)`` is ``"<path>: <reason>"``.
    """


@dataclass(frozen=True)
class Spec:
    """What distinguishes CIFAR-10 from CIFAR-100."""

    title: str                 # "CIFAR-10"
    name: str                  # "cifar10": SYSTEM_DATA_DIR/<name>, $PYNN_DATA/<name>
    folder: str                # "cifar-10-batches-bin": the folder of the binary archive
    train_files: tuple         # read in this order and concatenated
    test_files: tuple
    labels: tuple              # ((name, classes), ...): the label bytes of a record, in order
    binary_archive: str        # "cifar-10-binary.tar.gz"
    python_folder: str         # "cifar-10-batches-py": the (unread) pickle version
    python_archive: str        # "cifar-10-python.tar.gz"
    python_markers: tuple      # files that, all present, betray the pickle version

    @property
    def files(self):
        return tuple(self.train_files) + tuple(self.test_files)

    @property
    def record_bytes(self):
        return len(self.labels) + IMAGE_BYTES

    @property
    def url(self):
        return "https://www.cs.toronto.edu/~kriz/" + self.binary_archive

    def layout(self):
        """The record layout in words, e.g. ``1 label byte + 3072 image bytes``."""
        if len(self.labels) == 1:
            head = "1 label byte"
        else:
            head = " + ".join(f"1 {n} label byte" for n, _ in self.labels)
        return f"{head} + {IMAGE_BYTES} image bytes"


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------

def _hint(path):
    """A guess at what the file is instead, from its first bytes ('' if none)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return ""
    if head[:2] == b"\x1f\x8b":
        return (" (it looks gzip-compressed, e.g. the .tar.gz archive itself: extract it "
                "with tar xzf)")
    if len(head) >= 262 and head[257:262] == b"ustar":
        return " (it looks like a tar archive: extract it with tar xf)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return (" (it looks like a Python pickle, i.e. the python version of CIFAR, which "
                "pynn never unpickles: the binary version is needed)")
    start = head[:32]
    if start and 0x20 < start[0] < 0x7F and all(0x20 <= b < 0x7F or b in b"\t\r\n" for b in start):
        return " (it looks like text, e.g. an HTML page saved by a failed download)"
    return ""


def _check_size(path, size, spec):
    """Raises :class:`CIFARError` unless ``size`` is a positive number of records."""
    rb = spec.record_bytes
    if size == 0:
        raise CIFARError(path, f"empty file: a {spec.title} binary file holds records of "
                               f"{rb} bytes ({spec.layout()})")
    if size % rb:
        raise CIFARError(path, f"size {size} bytes is not a multiple of the record size {rb} "
                               f"({spec.layout()}): {size // rb} whole records and "
                               f"{size % rb} bytes left over; the file is truncated or not a "
                               f"{spec.title} binary-version file{_hint(path)}")
    return size // rb


def read_records(path, spec, expected_size=None):
    """The records of one binary file as a ``(N, record_bytes)`` uint8 array.

    Checks the size (non-empty, a whole number of records) and every label
    byte.  ``expected_size``: the size seen earlier (by :func:`load`, which
    allocates the result from it); a file whose size changed since raises.
    A missing file raises ``FileNotFoundError``.
    """
    path = Path(path)
    rb = spec.record_bytes
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if expected_size is not None and size != expected_size:
            raise CIFARError(path, f"the file changed while being read: {expected_size} "
                                   f"bytes, then {size}")
        n = _check_size(path, size, spec)
        buf = np.fromfile(f, dtype=np.uint8, count=size)
    if buf.size != size:
        raise CIFARError(path, f"truncated: expected {size} bytes, read {buf.size} "
                               "(the file shrank while being read)")
    records = buf.reshape(n, rb)
    for i, (label_name, classes) in enumerate(spec.labels):
        column = records[:, i]
        bad = np.flatnonzero(column >= classes)
        if bad.size:
            r = int(bad[0])
            what = f"{label_name} label" if label_name else "label"
            more = f" ({bad.size} of the {n} records have one)" if bad.size > 1 else ""
            raise CIFARError(path, f"{what} {int(column[r])} of record {r} (byte {r * rb + i}) "
                                   f"is out of range 0..{classes - 1}{more}: the file is corrupt "
                                   f"or not a {spec.title} binary-version file{_hint(path)}")
    return records


def _check_label_index(spec, label_index):
    if not 0 <= label_index < len(spec.labels):
        raise ValueError(f"label_index must be in 0..{len(spec.labels) - 1}, got {label_index}")


def _fill(records, x, y, label_index):
    """Copies ``records`` into ``x`` (N, 32, 32, 3) and ``y`` (N, 1)."""
    n = len(records)
    chw = records[:, records.shape[1] - IMAGE_BYTES:]
    x[...] = chw.reshape(n, CHANNELS, HEIGHT, WIDTH).transpose(0, 2, 3, 1)
    y[:, 0] = records[:, label_index]


def load_batch(path, spec, label_index=0):
    """One binary file as ``(x, y)``: uint8 ``(N, 32, 32, 3)`` and uint8 ``(N, 1)``.

    ``label_index`` picks the label byte (CIFAR-100: 0 coarse, 1 fine).
    """
    _check_label_index(spec, label_index)
    records = read_records(path, spec)
    x = np.empty((len(records),) + IMAGE_SHAPE, dtype=np.uint8)
    y = np.empty((len(records), 1), dtype=np.uint8)
    _fill(records, x, y, label_index)
    return x, y


def _load_files(directory, names, spec, label_index):
    paths = [directory / n for n in names]
    sizes = []
    for p in paths:
        try:
            sizes.append(p.stat().st_size)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{p}: no such file; {spec.title} (binary version) needs "
                f"{', '.join(spec.files)} in {directory}") from None
    # every size checked before anything is allocated or read
    counts = [_check_size(p, s, spec) for p, s in zip(paths, sizes)]
    total = sum(counts)
    x = np.empty((total,) + IMAGE_SHAPE, dtype=np.uint8)
    y = np.empty((total, 1), dtype=np.uint8)
    pos = 0
    for p, s, n in zip(paths, sizes, counts):
        records = read_records(p, spec, expected_size=s)
        _fill(records, x[pos:pos + n], y[pos:pos + n], label_index)
        pos += n
    return x, y


def load(spec, directory, label_index=0):
    """Reads the train and test files of ``directory``, as Keras' ``load_data()`` returns them.

    ``((x_train, y_train), (x_test, y_test))``: images uint8 ``(N, 32, 32, 3)``
    (owned, C-contiguous), labels uint8 ``(N, 1)`` (label byte
    ``label_index`` of each record).  The train files are concatenated in
    :attr:`Spec.train_files` order.
    """
    _check_label_index(spec, label_index)
    directory = Path(directory)
    return (_load_files(directory, spec.train_files, spec, label_index),
            _load_files(directory, spec.test_files, spec, label_index))


# --------------------------------------------------------------------------
# Lookup
# --------------------------------------------------------------------------

def _has_all(directory, spec):
    return all((directory / f).is_file() for f in spec.files)


def _describe(directory, spec):
    """Why ``directory`` does not qualify, in a few words."""
    d = Path(directory)
    if not d.exists():
        return "does not exist"
    if not d.is_dir():
        return "is not a directory"
    missing = [f for f in spec.files if not (d / f).is_file()]
    if len(missing) == len(spec.files):
        text = "holds none of the files"
    else:
        text = "missing " + ", ".join(missing)
    if all((d / m).is_file() for m in spec.python_markers):
        text += (f"; it holds the python version ({', '.join(spec.python_markers)} without "
                 ".bin), which pynn does not read (it never unpickles): the binary version "
                 "is needed")
    if (d / spec.python_folder).is_dir():
        text += (f"; {spec.python_folder}/ there is the python version, which pynn does not "
                 f"read: the binary version ({spec.folder}/) is needed")
    if (d / spec.python_archive).is_file():
        text += (f"; {spec.python_archive} there is the python version, which pynn does not "
                 f"read: the binary version ({spec.binary_archive}) is needed")
    if (d / spec.binary_archive).is_file() and d.name != spec.folder:
        text += f"; {spec.binary_archive} there is not extracted: tar xzf {d / spec.binary_archive} -C {d}"
    return text


def find_dir(spec, path=None):
    """The directory holding the binary files of ``spec``, as a ``Path``.

    Search order (a directory qualifies when it holds every file of
    :attr:`Spec.files`):

    1. ``path`` when given: the directory itself, else its subdirectory
       ``<folder>`` (e.g. ``cifar-10-batches-bin``).  No fallback beyond.
    2. ``$PYNN_DATA/<folder>``, ``$PYNN_DATA/<name>/<folder>``,
       ``$PYNN_DATA/<name>`` (e.g. ``cifar10``), then ``$PYNN_DATA`` itself.
    3. ``SYSTEM_DATA_DIR/<name>`` (``/usr/share/datasets/cifar10``), then its
       subdirectory ``<folder>``.

    Raises ``FileNotFoundError`` listing where it looked and how to provide
    the files.
    """
    file_list = ", ".join(spec.files)
    if path is not None:
        d = Path(path).expanduser()
        candidates = [d, d / spec.folder]
        for c in candidates:
            if _has_all(c, spec):
                return c
        detail = f"directory {d} {_describe(d, spec)}"
        if d.is_dir():
            detail += f", and {d / spec.folder} {_describe(d / spec.folder, spec)}"
        raise FileNotFoundError(
            f"{spec.title}: {detail}.\nIt must hold these {len(spec.files)} files of the binary "
            f"version, directly or in a subdirectory {spec.folder}: {file_list}.")

    looked = []

    def try_dirs(dirs, origin):
        for c in dirs:
            if _has_all(c, spec):
                return c
            if c.parent in dirs and not c.parent.exists():
                continue  # its parent is listed as missing: no need to list it too
            looked.append(f"  {c}{origin}: {_describe(c, spec)}")
        return None

    env = os.environ.get("PYNN_DATA")
    if env:
        root = Path(env).expanduser()
        found = try_dirs([root / spec.folder, root / spec.name / spec.folder,
                          root / spec.name, root], " (from $PYNN_DATA)")
        if found is not None:
            return found
    else:
        looked.append("  $PYNN_DATA: not set")
    system = Path(data.SYSTEM_DATA_DIR) / spec.name  # read at call time: tests patch it
    found = try_dirs([system, system / spec.folder], "")
    if found is not None:
        return found

    howto = [
        f"  - on a machine with internet access, download {spec.url} (the binary version "
        f"\"for C programs\", not the python version) and extract it: "
        f"tar xzf {spec.binary_archive} creates {spec.folder}/ with the files",
        f"  - then put {spec.folder}/ in a directory DIR and set PYNN_DATA=DIR, or call "
        f"load_data(path=DIR), or copy it into {system}/ (as root)",
    ]
    raise FileNotFoundError(
        f"{spec.title} not found (pynn downloads nothing). It needs these {len(spec.files)} "
        f"files of the binary version: {file_list}.\nLooked in:\n" + "\n".join(looked)
        + "\nTo get them:\n" + "\n".join(howto))
