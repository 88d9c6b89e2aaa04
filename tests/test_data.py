"""Tests of pynn.data (IDX reader, dataset lookup, batcher) and pynn.datasets.

IDX files are written by a small writer here (raw and gzip) into tmp_path;
the real Fashion-MNIST is read only when the Debian package's files exist.
"""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from pynn import data
from pynn.datasets import fashion_mnist, mnist

CODES = {
    np.dtype("uint8"): 0x08,
    np.dtype("int8"): 0x09,
    np.dtype("int16"): 0x0B,
    np.dtype("int32"): 0x0C,
    np.dtype("float32"): 0x0D,
    np.dtype("float64"): 0x0E,
}


def idx_bytes(arr):
    """The IDX encoding of ``arr`` (big-endian payload)."""
    arr = np.asarray(arr)
    header = bytes([0, 0, CODES[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path, arr=None, compress=False, raw=None):
    """Writes ``arr`` (or the bytes ``raw``) to ``path``, gzip-compressed if asked."""
    payload = idx_bytes(arr) if raw is None else raw
    Path(path).write_bytes(gzip.compress(payload) if compress else payload)
    return Path(path)


def sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


# ---------------------------------------------------------------- read_idx

@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("dtype", list(CODES), ids=str)
@pytest.mark.parametrize("shape", [(7,), (5, 3, 2), (1, 1, 1, 1, 1, 1, 1, 2)], ids=str)
def test_round_trip(tmp_path, dtype, shape, compress):
    arr = sample(dtype, shape)
    # a misleading extension: gzip is recognised by its magic bytes only
    path = write_idx(tmp_path / ("f.gz" if not compress else "f.idx"), arr, compress)
    out = data.read_idx(path)
    assert out.dtype == dtype and out.dtype.isnative
    assert out.shape == shape
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable and out.flags.c_contiguous
    out[...] = 0  # owned memory, not a read-only bytes buffer


def test_accepts_str_path(tmp_path):
    path = write_idx(tmp_path / "f", np.arange(4, dtype=np.uint8))
    np.testing.assert_array_equal(data.read_idx(str(path)), np.arange(4))


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        data.read_idx(tmp_path / "nope")


GOOD = idx_bytes(np.arange(12, dtype=np.int16).reshape(3, 4))

CORRUPT = {
    "empty": (b"", "empty file"),
    "short magic": (b"\x00\x00", "truncated header"),
    "bad magic": (b"\x01\x00" + GOOD[2:], "bad magic number 0x0100"),
    "html": (b"<!DOCTYPE html><html>", "looks like text"),
    "type code": (b"\x00\x00\x0a\x02" + GOOD[4:], "unknown data type code 0x0A"),
    "ndim 0": (b"\x00\x00\x0b\x00", "bad number of dims 0"),
    "ndim 9": (b"\x00\x00\x0b\x09" + b"\x00\x00\x00\x01" * 9 + b"\x00\x00", "bad number of dims 9"),
    "short dims": (GOOD[:9], "truncated header: 2 dims need 8 bytes"),
    "zero dim": (b"\x00\x00\x0b\x02" + struct.pack(">2I", 3, 0), "dim 1 of (3, 0) is 0"),
    "overflow": (b"\x00\x00\x0e\x03" + b"\xff\xff\xff\xff" * 3, "overflow"),
    "truncated": (GOOD[:-1], "truncated: expected 24 bytes of data for dims (3, 4) of int16, found 23"),
    "trailing": (GOOD + b"\x00", "trailing bytes: expected 24 bytes of data for dims (3, 4) of int16, found 25"),
}


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_file(tmp_path, case, compress):
    raw, message = CORRUPT[case]
    path = write_idx(tmp_path / "bad-idx", raw=raw, compress=compress)
    with pytest.raises(data.IDXError) as info:
        data.read_idx(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(path) in str(err) and err.path == str(path)
    assert message in str(err)


@pytest.mark.parametrize("damage", ["truncated stream", "flipped byte", "bad crc", "not deflate"])
def test_corrupt_gzip(tmp_path, damage):
    z = bytearray(gzip.compress(GOOD))
    if damage == "truncated stream":
        z = z[:len(z) // 2]
    elif damage == "flipped byte":
        z[12] ^= 0xFF
    elif damage == "bad crc":
        z[-8] ^= 0xFF
    else:
        z = b"\x1f\x8b" + b"\x00" * 20
    path = tmp_path / "x.gz"
    path.write_bytes(bytes(z))
    with pytest.raises(data.IDXError, match="corrupt gzip stream") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_big_endian_conversion_is_exact(tmp_path):
    arr = np.array([1.5, -2.25, np.inf, 1e-300], dtype=np.float64)
    out = data.read_idx(write_idx(tmp_path / "f", arr))
    assert out.dtype == np.dtype("=f8")
    np.testing.assert_array_equal(out, arr)


# ---------------------------------------------------------------- dataset files

def write_dataset(directory, n_train=6, n_test=4, shape=(3, 2), compress=False,
                  spelling=lambda n: n, seed=0):
    """Writes a small MNIST-like data set; returns what load_data must return."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, count in (("train", n_train), ("t10k", n_test)):
        arrays[name] = (rng.integers(0, 256, (count,) + shape, dtype=np.uint8),
                        rng.integers(0, 10, count, dtype=np.uint8))
    for name, (x, y) in arrays.items():
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            fname = spelling(f"{name}-{kind}-ubyte") + (".gz" if compress else "")
            write_idx(directory / fname, arr, compress)
    return arrays["train"], arrays["t10k"]


def assert_same(got, want):
    for g_pair, w_pair in zip(got, want):
        for g, w in zip(g_pair, w_pair):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("dotted", [False, True], ids=["dash", "dot"])
def test_load_idx_dataset(tmp_path, compress, dotted):
    spell = (lambda n: n.replace("-idx", ".idx")) if dotted else (lambda n: n)
    want = write_dataset(tmp_path, compress=compress, spelling=spell)
    assert_same(data.load_idx_dataset(tmp_path), want)


def test_mismatched_counts(tmp_path):
    write_dataset(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(data.IDXError, match="holds 6 images but train-labels-idx1-ubyte holds 5 labels"):
        data.load_idx_dataset(tmp_path)


def test_labels_must_be_1d(tmp_path):
    write_dataset(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((4, 1), np.uint8))
    with pytest.raises(data.IDXError, match=r"labels must have 1 dim, found shape \(4, 1\)"):
        data.load_idx_dataset(tmp_path)


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No $PYNN_DATA and an empty system directory."""
    monkeypatch.delenv("PYNN_DATA", raising=False)
    system = tmp_path / "system"
    system.mkdir()
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", str(system))
    return system


def test_missing_files_message(no_env):
    with pytest.raises(FileNotFoundError) as info:
        fashion_mnist.load_data()
    msg = str(info.value)
    assert "apt-get install -y dataset-fashion-mnist" in msg
    assert "PYNN_DATA" in msg and "--data DIR" in msg
    for name in data.IDX_FILES:
        assert name in msg
    assert str(no_env / "fashion-mnist") in msg and "does not exist" in msg
    assert "$PYNN_DATA: not set" in msg


def test_missing_files_lists_pynn_data(no_env, monkeypatch, tmp_path):
    env = tmp_path / "env"
    write_dataset(env)
    (env / "t10k-labels-idx1-ubyte").unlink()
    monkeypatch.setenv("PYNN_DATA", str(env))
    with pytest.raises(FileNotFoundError) as info:
        mnist.load_data()
    msg = str(info.value)
    assert f"{env} (from $PYNN_DATA): missing t10k-labels-idx1-ubyte" in msg
    assert str(env / "mnist") in msg
    assert "apt-get" not in msg  # no Debian package for MNIST


def test_explicit_path_missing_does_not_fall_back(no_env, tmp_path):
    write_dataset(no_env / "fashion-mnist")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fashion_mnist.load_data(path=tmp_path / "elsewhere")


def test_search_order(no_env, monkeypatch, tmp_path):
    system = write_dataset(no_env / "fashion-mnist", seed=1)
    assert_same(fashion_mnist.load_data(), system)
    assert data.find_dataset_dir() == no_env / "fashion-mnist"

    env_root = write_dataset(tmp_path / "env", seed=2)
    monkeypatch.setenv("PYNN_DATA", str(tmp_path / "env"))
    assert_same(fashion_mnist.load_data(), env_root)  # $PYNN_DATA beats the system dir

    env_sub = write_dataset(tmp_path / "env" / "fashion-mnist", seed=3, compress=True)
    assert_same(fashion_mnist.load_data(), env_sub)  # its subfolder beats the folder itself

    explicit = write_dataset(tmp_path / "explicit", seed=4)
    assert_same(fashion_mnist.load_data(path=tmp_path / "explicit"), explicit)
    assert_same(fashion_mnist.load_data(path=str(tmp_path / "explicit")), explicit)


def test_pynn_data_without_the_files_falls_back(no_env, monkeypatch, tmp_path):
    system = write_dataset(no_env / "fashion-mnist", seed=1)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PYNN_DATA", str(tmp_path / "empty"))
    assert_same(fashion_mnist.load_data(), system)


def test_mnist_subfolder(no_env, monkeypatch, tmp_path):
    fm = write_dataset(tmp_path / "env" / "fashion_mnist", seed=1)
    mn = write_dataset(tmp_path / "env" / "mnist", seed=2)
    monkeypatch.setenv("PYNN_DATA", str(tmp_path / "env"))
    assert_same(fashion_mnist.load_data(), fm)
    assert_same(mnist.load_data(), mn)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown data set"):
        data.find_dataset_dir(name="cifar10")


SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not all(data.find_idx_file(SYSTEM_FASHION, n) for n in data.IDX_FILES),
                    reason="Fashion-MNIST not installed in /usr/share/datasets/fashion-mnist "
                           "(apt-get install -y dataset-fashion-mnist)")
def test_real_fashion_mnist():
    (x, y), (xt, yt) = fashion_mnist.load_data(path=SYSTEM_FASHION)
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    assert y.shape == (60000,) and yt.shape == (10000,)
    for a in (x, y, xt, yt):
        assert a.dtype == np.uint8
    assert y.min() == 0 and y.max() == 9 and yt.min() == 0 and yt.max() == 9
    np.testing.assert_array_equal(np.bincount(y), [6000] * 10)  # balanced classes
    np.testing.assert_array_equal(np.bincount(yt), [1000] * 10)


# ---------------------------------------------------------------- batcher

def epoch_batches(*args, **kw):
    return [b.copy() for b in data.batch_indices(*args, **kw)]


@pytest.mark.parametrize("n,batch_size", [(1, 1), (10, 3), (12, 4), (7, 100), (101, 16)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_each_index_once_per_epoch(n, batch_size, shuffle):
    batches = epoch_batches(n, batch_size, shuffle=shuffle, seed=5, epoch=2)
    assert len(batches) == data.steps_per_epoch(n, batch_size) == -(-n // batch_size)
    assert all(len(b) == batch_size for b in batches[:-1])
    assert 1 <= len(batches[-1]) <= batch_size
    flat = np.concatenate(batches)
    assert flat.dtype == np.intp
    np.testing.assert_array_equal(np.sort(flat), np.arange(n))
    if not shuffle:
        np.testing.assert_array_equal(flat, np.arange(n))


def test_permutation_deterministic_per_seed_and_epoch():
    def perm(seed, epoch):
        return np.concatenate(epoch_batches(1000, 64, seed=seed, epoch=epoch))
    np.testing.assert_array_equal(perm(3, 1), perm(3, 1))
    np.testing.assert_array_equal(perm(3, 1), np.random.default_rng([3, 1]).permutation(1000))
    assert not np.array_equal(perm(3, 1), perm(3, 2))  # reshuffled every epoch
    assert not np.array_equal(perm(3, 1), perm(4, 1))
    # independent of the global RNG state
    np.random.seed(0)
    a = perm(3, 1)
    np.random.seed(1)
    np.testing.assert_array_equal(a, perm(3, 1))


@pytest.mark.parametrize("size,pad", [(1, True), (3, True), (3, False)])
def test_resume_from_start_step(size, pad):
    n, bs = 103, 10
    for rank in range(size):
        full = epoch_batches(n, bs, seed=9, epoch=4, rank=rank, size=size, pad=pad)
        for k in (0, 1, 5, len(full) - 1, len(full), len(full) + 2):
            rest = epoch_batches(n, bs, seed=9, epoch=4, start_step=k, rank=rank, size=size, pad=pad)
            assert len(rest) == max(0, len(full) - k)
            for a, b in zip(rest, full[k:]):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n,size", [(10, 2), (10, 3), (7, 4), (100, 7), (3, 3), (2, 5)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_shards_pad(n, size, shuffle):
    shards = [np.concatenate(epoch_batches(n, 4, shuffle=shuffle, seed=1, epoch=0,
                                           rank=r, size=size) or [np.empty(0, np.intp)])
              for r in range(size)]
    m = -(-n // size)
    assert all(len(s) == m == data.shard_length(n, size) for s in shards)
    steps = {len(epoch_batches(n, 4, seed=1, epoch=0, rank=r, size=size)) for r in range(size)}
    assert steps == {data.steps_per_epoch(n, 4, size)}
    flat = np.concatenate(shards)
    # every sample used; only the padding (the permutation repeated, cyclically) repeats
    assert set(flat) == set(range(n))
    perm = data.epoch_permutation(n, 1, 0, shuffle)
    np.testing.assert_array_equal(np.sort(flat), np.sort(np.resize(perm, m * size)))


@pytest.mark.parametrize("n,size", [(10, 2), (10, 3), (7, 4), (100, 7), (3, 3)])
def test_shards_drop_are_disjoint(n, size):
    shards = [np.concatenate(epoch_batches(n, 4, seed=1, epoch=3, rank=r, size=size, pad=False))
              for r in range(size)]
    assert all(len(s) == n // size == data.shard_length(n, size, pad=False) for s in shards)
    flat = np.concatenate(shards)
    assert len(np.unique(flat)) == len(flat)  # disjoint
    # the dropped samples change from epoch to epoch when shuffling
    dropped = {e: set(range(n)) - set(np.concatenate(
        [np.concatenate(epoch_batches(n, 4, seed=1, epoch=e, rank=r, size=size, pad=False))
         for r in range(size)])) for e in range(20)}
    if n % size:
        assert len({frozenset(d) for d in dropped.values()}) > 1


def test_shards_are_disjoint_without_padding_needed():
    shards = [np.concatenate(epoch_batches(12, 5, seed=2, epoch=1, rank=r, size=4)) for r in range(4)]
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(12))


def test_batch_indices_argument_checks():
    with pytest.raises(ValueError, match="rank must be < size"):
        list(data.batch_indices(10, 2, rank=2, size=2))
    with pytest.raises(ValueError, match="batch_size"):
        list(data.batch_indices(10, 0))
    with pytest.raises(TypeError, match="seed"):
        list(data.batch_indices(10, 2, seed=None))
    assert list(data.batch_indices(0, 3)) == []


def test_gather_reuses_out():
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    out = np.empty((4, 3), np.float32)
    first = data.gather(x, np.array([3, 1, 4, 1]), out)
    assert np.shares_memory(first, out) and first.shape == (4, 3)
    np.testing.assert_array_equal(first, x[[3, 1, 4, 1]])
    last = data.gather(x, np.array([9, -1]), out)  # the smaller last batch: out[:2]
    assert last.shape == (2, 3) and np.shares_memory(last, out)
    np.testing.assert_array_equal(last, x[[9, 9]])
    np.testing.assert_array_equal(out[:2], x[[9, 9]])
    np.testing.assert_array_equal(data.gather(x, [2, 0]), x[[2, 0]])  # without out


def test_gather_checks():
    x = np.zeros((5, 2), np.float32)
    with pytest.raises(IndexError):
        data.gather(x, np.array([5]), np.empty((1, 2), np.float32))
    with pytest.raises(IndexError):
        data.gather(x, np.array([-6]), np.empty((1, 2), np.float32))
    with pytest.raises(ValueError, match="cannot hold"):
        data.gather(x, np.array([0, 1]), np.empty((1, 2), np.float32))
    with pytest.raises(ValueError, match="cannot hold"):
        data.gather(x, np.array([0]), np.empty((1, 2), np.float64))
    with pytest.raises(TypeError):
        data.gather(x, np.array([0.0]))


def test_gather_non_contiguous_source():
    base = np.arange(60, dtype=np.float64).reshape(10, 6)
    x = base[::2, ::3]  # strided view
    out = np.empty((3, 2), np.float64)
    np.testing.assert_array_equal(data.gather(x, np.array([4, 0, 2]), out), x[[4, 0, 2]])


@pytest.mark.parametrize("size", [1, 2])
def test_batcher(size):
    n = 23
    x = np.arange(n * 4, dtype=np.float32).reshape(n, 2, 2)
    y = np.arange(n, dtype=np.int64)
    for rank in range(size):
        b = data.Batcher((x, y), batch_size=5, seed=7, rank=rank, size=size)
        assert len(b) == b.steps_per_epoch == data.steps_per_epoch(n, 5, size)
        buffers = None
        seen = []
        for xb, yb in b.epoch(1):
            if buffers is None:
                buffers = (xb, yb)
            assert np.shares_memory(xb, buffers[0]) and np.shares_memory(yb, buffers[1])
            np.testing.assert_array_equal(xb, x[yb])  # rows stay aligned
            seen.append(yb.copy())
        want = epoch_batches(n, 5, seed=7, epoch=1, rank=rank, size=size)
        assert len(seen) == len(want)
        for s, w in zip(seen, want):
            np.testing.assert_array_equal(s, w)
        resumed = [yb.copy() for _, yb in b.epoch(1, start_step=3)]
        assert len(resumed) == len(want) - 3
        for s, w in zip(resumed, want[3:]):
            np.testing.assert_array_equal(s, w)


def test_batcher_length_mismatch():
    with pytest.raises(ValueError, match="same length"):
        data.Batcher((np.zeros((3, 2)), np.zeros(4)), batch_size=2)
