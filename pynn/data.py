"""Data layer of pynn: IDX reader, dataset lookup and a shuffling batcher.

IDX files
    ``read_idx(path)`` reads an IDX file (the MNIST / Fashion-MNIST format), raw
    or gzip-compressed (recognised by the gzip magic bytes ``1f 8b``, not by the
    file name) into a NumPy array in native byte order.  Everything about the
    file is checked, and whatever is wrong raises :class:`IDXError` (a
    ``ValueError``) whose message names the file and the problem.  Nothing is
    ever unpickled.

Dataset lookup
    ``find_dataset_dir()`` finds the directory holding the four IDX files of a
    dataset (explicit path, then ``$PYNN_DATA``, then the directory of the
    Debian package), and ``load_idx_dataset(dir)`` reads them as Keras'
    ``load_data()`` returns them.

Batching
    ``batch_indices()`` yields the index arrays of one epoch from a permutation
    that depends only on ``(seed, epoch)``, so a resumed run regenerates it and
    can start at any step; it also shards each epoch over MPI ranks.
    ``gather()`` copies the rows of a batch into a preallocated buffer, and
    :class:`Batcher` puts the two together: no copy of the whole data set is
    made per epoch, only one batch-sized buffer per array, reused every step.
"""
from __future__ import annotations

import gzip
import os
import sys
import zlib
from pathlib import Path

import numpy as np

from . import checks

__all__ = [
    "IDXError",
    "read_idx",
    "IDX_FILES",
    "DATASETS",
    "SYSTEM_DATA_DIR",
    "find_idx_file",
    "find_dataset_dir",
    "load_idx_dataset",
    "epoch_permutation",
    "shard_length",
    "steps_per_epoch",
    "batch_indices",
    "gather",
    "Batcher",
]


# --------------------------------------------------------------------------
# IDX reader
# --------------------------------------------------------------------------

class IDXError(ValueError):
    """A file is not a valid IDX file (or a data set's files do not agree).

    ``path`` is the offending file (or directory) and ``reason`` the problem;
    ``str(err)`` is ``"<path>: <reason>"``.
    """

    def __init__(self, path, reason):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# type code -> big-endian dtype, as the IDX format defines them
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_MAX_NDIM = 8
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 24  # bytes decompressed per read


def _read_exactly(f, n):
    """Up to ``n`` bytes from ``f``: fewer only at end of file."""
    parts, got = [], 0
    while got < n:
        part = f.read(min(n - got, _CHUNK))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _parse_header(path, f):
    """Reads and checks the magic and the dims.

    Returns ``(dtype, dims, header_bytes, payload_bytes)``.
    """
    magic = _read_exactly(f, 4)
    if len(magic) == 0:
        raise IDXError(path, "empty file: not an IDX file")
    if len(magic) < 4:
        raise IDXError(path, f"truncated header: {len(magic)} bytes, an IDX file "
                             "starts with a 4-byte magic number")
    if magic[0] != 0 or magic[1] != 0:
        hint = ""
        if magic[:1] in (b"<", b"{") or magic.isascii() and magic.decode().isprintable():
            hint = " (it looks like text, e.g. an HTML page saved by a failed download)"
        raise IDXError(path, f"bad magic number 0x{magic.hex()}: an IDX file starts with "
                             f"two zero bytes, a type code and the number of dims{hint}")
    code, ndim = magic[2], magic[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} ({d.name})" for c, d in _IDX_DTYPES.items())
        raise IDXError(path, f"unknown data type code 0x{code:02X} (known: {known})")
    if not 1 <= ndim <= _MAX_NDIM:
        raise IDXError(path, f"bad number of dims {ndim}: must be 1..{_MAX_NDIM}")
    raw = _read_exactly(f, 4 * ndim)
    if len(raw) < 4 * ndim:
        raise IDXError(path, f"truncated header: {ndim} dims need {4 * ndim} bytes after "
                             f"the magic number, found {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4"))
    for axis, d in enumerate(dims):
        if d == 0:
            # Formally an empty array; in practice a broken header, and a data
            # set without samples would only fail later with an obscure error.
            raise IDXError(path, f"dim {axis} of {dims} is 0: no data")
    dtype = _IDX_DTYPES[code]
    nbytes = dtype.itemsize
    for d in dims:
        nbytes *= d  # Python ints: no overflow here
    if nbytes > sys.maxsize:
        raise IDXError(path, f"dims {dims} of {dtype.name} describe {nbytes} bytes, "
                             "more than this platform can address (overflow)")
    return dtype, dims, 4 + 4 * ndim, nbytes


def _to_native(arr):
    """``arr`` (owned, writeable) in native byte order, swapped in place."""
    if arr.dtype.isnative:
        return arr
    arr.byteswap(inplace=True)
    return arr.view(arr.dtype.newbyteorder("="))


def read_idx(path):
    """Reads an IDX file, raw or gzip-compressed, into a NumPy array.

    Returns an owned, writeable C-contiguous array of shape ``dims`` in native
    byte order, dtype uint8, int8, int16, int32, float32 or float64 after the
    file's type code.

    Raises :class:`IDXError` (a ``ValueError``) when the file is not a valid
    IDX file: bad magic number, unknown type code, number of dims not in 1..8,
    a zero dim, dims whose size overflows, a header or payload shorter than the
    dims say ("truncated: expected N bytes of data, found M"), bytes after the
    payload ("trailing bytes"), or a corrupt gzip stream.  A missing file
    raises ``FileNotFoundError`` as ``open`` does.
    """
    path = Path(path)
    with open(path, "rb") as raw:
        if raw.read(2) == _GZIP_MAGIC:
            raw.seek(0)
            try:
                with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                    return _read_gzip(path, f)
            except (gzip.BadGzipFile, EOFError, zlib.error) as e:
                raise IDXError(path, f"corrupt gzip stream: {e}") from e
        raw.seek(0)
        return _read_raw(path, raw)


def _read_raw(path, f):
    size = os.fstat(f.fileno()).st_size
    dtype, dims, header, nbytes = _parse_header(path, f)
    found = size - header
    if found < nbytes:
        raise IDXError(path, f"truncated: expected {nbytes} bytes of data for dims {dims} "
                             f"of {dtype.name}, found {found}")
    if found > nbytes:
        raise IDXError(path, f"trailing bytes: expected {nbytes} bytes of data for dims "
                             f"{dims} of {dtype.name}, found {found}")
    arr = np.empty(dims, dtype=dtype)
    view = memoryview(arr).cast("B")
    got = 0
    while got < nbytes:  # readinto: no intermediate bytes object
        n = f.readinto(view[got:])
        if not n:
            raise IDXError(path, f"truncated: expected {nbytes} bytes of data, "
                                 f"found {got} (the file shrank while being read)")
        got += n
    return _to_native(arr)


def _read_gzip(path, f):
    dtype, dims, header, nbytes = _parse_header(path, f)
    # Decompressed chunk by chunk and copied once into the result, so memory
    # follows the data actually there, not what a (maybe broken) header claims.
    parts, got = [], 0
    while got < nbytes:
        part = f.read(min(nbytes - got, _CHUNK))
        if not part:
            raise IDXError(path, f"truncated: expected {nbytes} bytes of data for dims "
                                 f"{dims} of {dtype.name}, found {got} (after decompression)")
        parts.append(part)
        got += len(part)
    extra = 0
    while True:  # also reaches the end of the stream, where gzip checks the CRC
        part = f.read(_CHUNK)
        if not part:
            break
        extra += len(part)
    if extra:
        raise IDXError(path, f"trailing bytes: expected {nbytes} bytes of data for dims "
                             f"{dims} of {dtype.name}, found {nbytes + extra} "
                             "(after decompression)")
    arr = np.empty(dims, dtype=dtype)
    flat = arr.reshape(-1).view(np.uint8)
    pos = 0
    for part in parts:
        flat[pos:pos + len(part)] = np.frombuffer(part, dtype=np.uint8)
        pos += len(part)
    return _to_native(arr)


# --------------------------------------------------------------------------
# Dataset lookup
# --------------------------------------------------------------------------

#: Logical file names of an MNIST-style data set, in Keras' order.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: Where the Debian packages put the data sets (tests monkeypatch this).
SYSTEM_DATA_DIR = "/usr/share/datasets"

#: name -> (title, Debian package or None, subfolder names tried under $PYNN_DATA)
DATASETS = {
    "fashion-mnist": ("Fashion-MNIST", "dataset-fashion-mnist", ("fashion-mnist", "fashion_mnist")),
    "mnist": ("MNIST", None, ("mnist",)),
}


def _spellings(name):
    """Accepted file names for a logical IDX name, in order of preference."""
    dotted = name.replace("-idx", ".idx", 1)  # train-images.idx3-ubyte
    names = [name, dotted] if dotted != name else [name]
    return names + [n + ".gz" for n in names]


def find_idx_file(directory, name):
    """The file of ``directory`` holding the logical IDX file ``name``, or None.

    Accepts ``name`` (e.g. ``train-images-idx3-ubyte``), the spelling with a dot
    (``train-images.idx3-ubyte``), and either with ``.gz``; uncompressed wins.
    """
    directory = Path(directory)
    for candidate in _spellings(name):
        p = directory / candidate
        if p.is_file():
            return p
    return None


def _has_all(directory, required_files):
    return all(find_idx_file(directory, n) is not None for n in required_files)


def _describe(directory, required_files):
    d = Path(directory)
    if not d.exists():
        return "does not exist"
    if not d.is_dir():
        return "is not a directory"
    missing = [n for n in required_files if find_idx_file(d, n) is None]
    return "missing " + ", ".join(missing)


def find_dataset_dir(path=None, required_files=IDX_FILES, name="fashion-mnist"):
    """The directory holding the IDX files of data set ``name``, as a ``Path``.

    Search order:

    1. ``path`` when given: it must hold the files (no fallback: asking for a
       directory and silently getting another one would hide mistakes).
    2. ``$PYNN_DATA/<name>`` (``fashion-mnist`` or ``fashion_mnist``; ``mnist``),
       then ``$PYNN_DATA`` itself.  The subfolder comes first because MNIST and
       Fashion-MNIST use the same file names: a folder holding one of them
       would otherwise be taken for the other.
    3. ``SYSTEM_DATA_DIR/<name>``: ``/usr/share/datasets/fashion-mnist`` is
       where the Debian package ``dataset-fashion-mnist`` installs Fashion-MNIST
       (there is no such package for MNIST; ``/usr/share/datasets/mnist`` is
       still tried).

    A directory qualifies when it holds every name of ``required_files``, each
    raw or ``.gz``, with ``-idx`` or ``.idx`` (see :func:`find_idx_file`).
    Raises ``FileNotFoundError`` with what to do when none does.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    title, package, subdirs = DATASETS[name]
    required_files = tuple(required_files)
    file_list = ", ".join(required_files)

    if path is not None:
        d = Path(path).expanduser()
        if _has_all(d, required_files):
            return d
        raise FileNotFoundError(
            f"{title}: directory {d} {_describe(d, required_files)}.\n"
            f"It must hold these {len(required_files)} files (raw or .gz): {file_list}.")

    looked = []
    env = os.environ.get("PYNN_DATA")
    if env:
        root = Path(env).expanduser()
        for d in [root / s for s in subdirs] + [root]:
            if _has_all(d, required_files):
                return d
            looked.append(f"  {d} (from $PYNN_DATA): {_describe(d, required_files)}")
    else:
        looked.append("  $PYNN_DATA: not set")
    system = Path(SYSTEM_DATA_DIR) / name
    if _has_all(system, required_files):
        return system
    looked.append(f"  {system}: {_describe(system, required_files)}")

    howto = []
    if package:
        howto.append(f"  - as root: apt-get install -y {package}   (installs them in {system})")
    howto.append("  - or put the files in a directory DIR and set PYNN_DATA=DIR "
                 f"(or DIR/{subdirs[0]}), or pass --data DIR to `pynn train`, "
                 "or load_data(path=DIR)")
    raise FileNotFoundError(
        f"{title} not found. It needs these {len(required_files)} files "
        f"(raw or .gz): {file_list}.\nLooked in:\n" + "\n".join(looked)
        + "\nTo get them:\n" + "\n".join(howto))


def _read_pair(directory, images_name, labels_name):
    directory = Path(directory)
    paths = []
    for n in (images_name, labels_name):
        p = find_idx_file(directory, n)
        if p is None:
            raise FileNotFoundError(
                f"{directory}: no {n} (nor {', '.join(_spellings(n)[1:])})")
        paths.append(p)
    x, y = read_idx(paths[0]), read_idx(paths[1])
    if y.ndim != 1:
        raise IDXError(paths[1], f"labels must have 1 dim, found shape {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise IDXError(directory, f"{paths[0].name} holds {x.shape[0]} images but "
                                  f"{paths[1].name} holds {y.shape[0]} labels")
    return x, y


def load_idx_dataset(directory):
    """Reads the four IDX files of ``directory`` (see :data:`IDX_FILES`).

    Returns ``((x_train, y_train), (x_test, y_test))`` as Keras'
    ``load_data()`` does: for (Fashion-)MNIST uint8 images ``(N, 28, 28)`` and
    uint8 labels ``(N,)``; other image shapes and IDX dtypes are returned as
    the files hold them.  Raises :class:`IDXError` when a file is invalid or
    the numbers of images and labels differ.
    """
    train = _read_pair(directory, IDX_FILES[0], IDX_FILES[1])
    test = _read_pair(directory, IDX_FILES[2], IDX_FILES[3])
    return train, test


# --------------------------------------------------------------------------
# Shuffling batcher
# --------------------------------------------------------------------------

_check_int = checks.integer


def epoch_permutation(n, seed, epoch, shuffle=True):
    """The order of the ``n`` samples in epoch ``epoch``.

    ``np.random.default_rng([seed, epoch]).permutation(n)``: a function of
    ``(seed, epoch)`` alone (independent of any global RNG state), so every
    MPI rank computes the same one and a resumed run regenerates it.
    ``arange(n)`` when ``shuffle`` is false.
    """
    n = _check_int("n", n, 0)
    if not shuffle:
        return np.arange(n, dtype=np.intp)
    seed = _check_int("seed", seed, 0)
    epoch = _check_int("epoch", epoch, 0)
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.intp, copy=False)


def shard_length(n, size=1, pad=True):
    """Samples per rank and epoch: ``ceil(n/size)`` with ``pad``, else ``n//size``."""
    n = _check_int("n", n, 0)
    size = _check_int("size", size, 1)
    return -(-n // size) if pad else n // size


def steps_per_epoch(n, batch_size, size=1, pad=True):
    """Batches per epoch (the same on every rank); the last one may be smaller."""
    batch_size = _check_int("batch_size", batch_size, 1)
    return -(-shard_length(n, size, pad) // batch_size)


def batch_indices(n, batch_size, shuffle=True, seed=0, epoch=0, start_step=0,
                  rank=0, size=1, pad=True):
    """Yields the index arrays (``intp``) of the batches of one epoch.

    - The order is :func:`epoch_permutation` ``(n, seed, epoch)``.
    - Sharding (MPI data parallelism): rank ``rank`` of ``size`` takes the
      strided shard ``perm[rank::size]`` of the epoch's global permutation, so
      the shards are disjoint and, reshuffled every epoch, each rank sees
      different samples each epoch.  All ranks get the same number of samples,
      hence of steps: with ``pad=True`` (default, like PyTorch's
      ``DistributedSampler``) the permutation is extended cyclically to
      ``ceil(n/size)*size`` entries (by its own first ``ceil(n/size)*size - n``
      entries when ``size <= n``), so every sample is used each epoch and at
      most ``size-1`` padding entries repeat samples; with ``pad=False`` the
      last ``n % size`` entries of the permutation are dropped (different ones
      each epoch when shuffling; no steps at all when ``n < size``).
      ``batch_size`` is per rank: the global batch is ``batch_size * size``.
    - Every batch has ``batch_size`` indices except the last of the epoch,
      which has the rest (never empty).
    - ``start_step`` skips the first batches: a run resumed at step ``k`` of an
      epoch gets exactly the batches ``k, k+1, ...`` of the uninterrupted run.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    size = _check_int("size", size, 1)
    rank = _check_int("rank", rank, 0)
    if rank >= size:
        raise ValueError(f"rank must be < size, got rank={rank}, size={size}")
    start_step = _check_int("start_step", start_step, 0)
    perm = epoch_permutation(n, seed, epoch, shuffle)
    if size > 1:
        m = shard_length(n, size, pad)
        total = m * size
        if total > n:
            perm = np.concatenate([perm, np.resize(perm, total - n)])
        perm = perm[rank:total:size]
    for start in range(start_step * batch_size, len(perm), batch_size):
        yield perm[start:start + batch_size]


def gather(x, idx, out=None):
    """The rows ``x[idx]`` (along axis 0), written into ``out`` when given.

    ``out`` is a preallocated buffer of at least ``len(idx)`` rows with
    ``x``'s row shape and dtype, reused from step to step; the rows land in
    ``out[:len(idx)]``, which is returned (a view: the last, smaller batch of
    an epoch uses the first rows).  The result is overwritten by the next
    call with the same ``out``: copy it to keep it.
    """
    idx = np.asarray(idx)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"idx must be a 1-d integer array, got {idx.dtype} {idx.shape}")
    x = np.asarray(x)
    n = x.shape[0]
    if len(idx) and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"an index of idx is out of range for {n} rows")
    if out is None:
        return np.take(x, idx, axis=0)
    if out.dtype != x.dtype or out.shape[1:] != x.shape[1:] or out.shape[0] < len(idx):
        raise ValueError(f"out {out.dtype} {out.shape} cannot hold {len(idx)} rows of "
                         f"x {x.dtype} {x.shape}")
    dest = out[:len(idx)]
    # mode="wrap": np.take buffers `out` in its default mode="raise"; the
    # indices were checked above, so wrapping changes nothing but the copy.
    np.take(x, idx, axis=0, out=dest, mode="wrap")
    return dest


class Batcher:
    """Batches of aligned arrays (e.g. ``x, y``) for training, shuffled per epoch.

    ``Batcher((x, y), batch_size=128, seed=s).epoch(e, start_step=k)`` yields
    ``(xb, yb)`` for the steps ``k, k+1, ...`` of epoch ``e``: the batches of
    :func:`batch_indices` gathered into one preallocated buffer per array.
    The yielded arrays are views of those buffers, overwritten at the next
    step.  See :func:`batch_indices` for ``shuffle``, ``seed``, ``rank``,
    ``size`` and ``pad``.  The caller owns the seed (store it in checkpoints).
    """

    def __init__(self, arrays, batch_size, shuffle=True, seed=0, rank=0, size=1, pad=True):
        arrays = tuple(np.asarray(a) for a in arrays)
        if not arrays:
            raise ValueError("Batcher needs at least one array")
        n = arrays[0].shape[0] if arrays[0].ndim else None
        for a in arrays:
            if a.ndim == 0 or a.shape[0] != n:
                raise ValueError("arrays must have the same length along axis 0, got shapes "
                                 + ", ".join(str(b.shape) for b in arrays))
        self.arrays = arrays
        self.n = n
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.rank = rank
        self.size = size
        self.pad = pad
        rows = min(self.batch_size, shard_length(n, size, pad))
        self._out = tuple(np.empty((rows,) + a.shape[1:], dtype=a.dtype) for a in arrays)

    @property
    def steps_per_epoch(self):
        return steps_per_epoch(self.n, self.batch_size, self.size, self.pad)

    def __len__(self):
        return self.steps_per_epoch

    def indices(self, epoch, start_step=0):
        return batch_indices(self.n, self.batch_size, self.shuffle, self.seed, epoch,
                             start_step, self.rank, self.size, self.pad)

    def epoch(self, epoch, start_step=0):
        for idx in self.indices(epoch, start_step):
            yield tuple(gather(a, idx, o) for a, o in zip(self.arrays, self._out))
