"""Tests of pynn.datasets.cifar10 / cifar100 (binary version of CIFAR).

Small synthetic files in the real record format are written into tmp_path
(a few records per file: the reader takes the count from the file size).
"""
import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest

from pynn import data, datasets
from pynn.datasets import cifar10, cifar100

C10_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
C10_FILES = C10_TRAIN + ["test_batch.bin"]
C100_FILES = ["train.bin", "test.bin"]


def make_records(n, label_columns, seed):
    """``n`` records ``<labels><3072 bytes>``; returns (bytes, labels (n, k), images CHW)."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(0, c, n, dtype=np.uint8) for c in label_columns], axis=1)
    images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return np.concatenate([labels, images], axis=1).tobytes(), labels, images


def write_cifar10(directory, counts=(7, 7, 7, 7, 7, 5), seed=0):
    """Writes the six files; returns (raw train records, raw test records) as arrays."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    raws = []
    for i, (name, n) in enumerate(zip(C10_FILES, counts)):
        raw, _, _ = make_records(n, [10], seed * 100 + i)
        (directory / name).write_bytes(raw)
        raws.append(np.frombuffer(raw, np.uint8).reshape(n, 3073))
    return np.concatenate(raws[:5]), raws[5]


def write_cifar100(directory, counts=(7, 4), seed=0):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    raws = []
    for i, (name, n) in enumerate(zip(C100_FILES, counts)):
        raw, _, _ = make_records(n, [20, 100], seed * 100 + i)
        (directory / name).write_bytes(raw)
        raws.append(np.frombuffer(raw, np.uint8).reshape(n, 3074))
    return raws[0], raws[1]


def check_split(x, y, records, label_col):
    """x, y as loaded against the raw records: the pixel (n, h, w, c) is image byte c*1024 + h*32 + w."""
    n = len(records)
    nl = records.shape[1] - 3072
    assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (n, 1) and y.dtype == np.uint8
    assert x.flags.c_contiguous and x.flags.owndata and x.flags.writeable
    assert y.flags.c_contiguous and y.flags.writeable
    np.testing.assert_array_equal(y[:, 0], records[:, label_col])
    rng = np.random.default_rng(1)
    for _ in range(50):
        i, h, w, c = (int(rng.integers(0, m)) for m in (n, 32, 32, 3))
        assert x[i, h, w, c] == records[i, nl + c * 1024 + h * 32 + w]
    # and everywhere, spelled out differently
    for c in range(3):
        np.testing.assert_array_equal(x[..., c].reshape(n, 1024), records[:, nl + c * 1024:nl + (c + 1) * 1024])


def test_hand_made_record(tmp_path):
    """One record spelled out byte by byte: label 3, pixel value encodes (c, h, w)."""
    img = np.zeros((3, 32, 32), np.uint8)
    img[0, 0, 1] = 11   # R of pixel (h=0, w=1)
    img[1, 2, 0] = 22   # G of pixel (h=2, w=0)
    img[2, 31, 31] = 33  # B of the last pixel
    p = tmp_path / "b.bin"
    p.write_bytes(bytes([3]) + img.tobytes())
    assert p.read_bytes()[1 + 1] == 11 and p.read_bytes()[1 + 1024 + 2 * 32] == 22
    x, y = cifar10.load_batch(p)
    assert y.tolist() == [[3]]
    assert x[0, 0, 1, 0] == 11 and x[0, 2, 0, 1] == 22 and x[0, 31, 31, 2] == 33
    assert int(x.sum()) == 66


def test_cifar10_load(tmp_path):
    train, test = write_cifar10(tmp_path, counts=(7, 3, 7, 1, 7, 5))
    (x, y), (xt, yt) = cifar10.load_data(path=tmp_path)
    assert len(x) == 25 and len(xt) == 5
    check_split(x, y, train, 0)  # batches concatenated in order 1..5
    check_split(xt, yt, test, 0)
    # str path and the parent of cifar-10-batches-bin work too
    (x2, _), _ = cifar10.load_data(path=str(tmp_path))
    np.testing.assert_array_equal(x2, x)


def test_cifar10_parent_dir(tmp_path):
    train, test = write_cifar10(tmp_path / "cifar-10-batches-bin")
    assert cifar10.find_data_dir(tmp_path) == tmp_path / "cifar-10-batches-bin"
    (x, y), (xt, yt) = cifar10.load_data(path=tmp_path)
    check_split(x, y, train, 0)
    check_split(xt, yt, test, 0)


@pytest.mark.parametrize("mode,col", [("fine", 1), ("coarse", 0)])
def test_cifar100_load(tmp_path, mode, col):
    train, test = write_cifar100(tmp_path / "cifar-100-binary")
    (x, y), (xt, yt) = cifar100.load_data(mode, path=tmp_path)
    check_split(x, y, train, col)
    check_split(xt, yt, test, col)
    assert cifar100.load_data(label_mode=mode, path=tmp_path / "cifar-100-binary")[1][1].tolist() \
        == yt.tolist()


def test_cifar100_default_is_fine(tmp_path):
    train, _ = write_cifar100(tmp_path)
    (_, y), _ = cifar100.load_data(path=tmp_path)
    np.testing.assert_array_equal(y[:, 0], train[:, 1])


PATH_LIKE_MODE = "/data/cifar"


@pytest.mark.parametrize("mode", ["Fine", "label", None, 1, PATH_LIKE_MODE])
def test_cifar100_bad_label_mode(tmp_path, mode):
    write_cifar100(tmp_path)
    with pytest.raises(ValueError, match="label_mode must be one of") as info:
        cifar100.load_data(mode, path=tmp_path)
    assert not isinstance(info.value, data.IDXError)
    if mode == PATH_LIKE_MODE:
        assert "path=" in str(info.value)


def test_cifar100_bad_label_mode_checked_before_lookup(no_env):
    with pytest.raises(ValueError, match="label_mode"):
        cifar100.load_data("bogus")


def test_importable_like_keras():
    assert datasets.cifar10 is cifar10 and datasets.cifar100 is cifar100
    assert "cifar10" in datasets.__all__ and "cifar100" in datasets.__all__
    assert issubclass(datasets.CIFARError, data.IDXError)
    assert issubclass(cifar10.CIFARError, ValueError)
    assert len(cifar10.CLASS_NAMES) == 10
    assert len(cifar100.FINE_LABEL_NAMES) == len(set(cifar100.FINE_LABEL_NAMES)) == 100
    assert len(cifar100.COARSE_LABEL_NAMES) == 20
    assert list(cifar100.FINE_LABEL_NAMES) == sorted(cifar100.FINE_LABEL_NAMES)
    for mod in (datasets.mnist, datasets.fashion_mnist, cifar10, cifar100):
        assert callable(mod.find_data_dir) and callable(mod.load_data)


# ---------------------------------------------------------------- lookup

@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No $PYNN_DATA and an empty system directory."""
    monkeypatch.delenv("PYNN_DATA", raising=False)
    system = tmp_path / "system"
    system.mkdir()
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", str(system))
    return system


def first_label(split):
    return split[0][1][:, 0].tolist()


def test_search_order_cifar10(no_env, monkeypatch, tmp_path):
    sys_sub = write_cifar10(no_env / "cifar10" / "cifar-10-batches-bin", seed=1)
    assert cifar10.find_data_dir() == no_env / "cifar10" / "cifar-10-batches-bin"
    assert first_label(cifar10.load_data()) == sys_sub[0][:, 0].tolist()

    sys_dir = write_cifar10(no_env / "cifar10", seed=2)  # the folder itself beats its subfolder
    assert cifar10.find_data_dir() == no_env / "cifar10"
    assert first_label(cifar10.load_data()) == sys_dir[0][:, 0].tolist()

    env = tmp_path / "env"
    env_root = write_cifar10(env, seed=3)
    monkeypatch.setenv("PYNN_DATA", str(env))  # $PYNN_DATA beats the system dir
    assert cifar10.find_data_dir() == env
    assert first_label(cifar10.load_data()) == env_root[0][:, 0].tolist()

    write_cifar10(env / "cifar10", seed=4)
    assert cifar10.find_data_dir() == env / "cifar10"
    write_cifar10(env / "cifar10" / "cifar-10-batches-bin", seed=5)
    assert cifar10.find_data_dir() == env / "cifar10" / "cifar-10-batches-bin"
    env_sub = write_cifar10(env / "cifar-10-batches-bin", seed=6)  # the archive's folder first
    assert cifar10.find_data_dir() == env / "cifar-10-batches-bin"
    assert first_label(cifar10.load_data()) == env_sub[0][:, 0].tolist()

    explicit = write_cifar10(tmp_path / "explicit", seed=7)  # path beats everything
    assert first_label(cifar10.load_data(path=tmp_path / "explicit")) == explicit[0][:, 0].tolist()


def test_search_order_cifar100(no_env, monkeypatch, tmp_path):
    sys_sub = write_cifar100(no_env / "cifar100" / "cifar-100-binary", seed=1)
    assert cifar100.find_data_dir() == no_env / "cifar100" / "cifar-100-binary"
    assert first_label(cifar100.load_data()) == sys_sub[0][:, 1].tolist()
    env = tmp_path / "env"
    env_sub = write_cifar100(env / "cifar-100-binary", seed=2)
    monkeypatch.setenv("PYNN_DATA", str(env))
    assert first_label(cifar100.load_data("coarse")) == env_sub[0][:, 0].tolist()
    # CIFAR-10 and CIFAR-100 side by side in $PYNN_DATA do not mix
    c10 = write_cifar10(env / "cifar-10-batches-bin", seed=3)
    assert first_label(cifar10.load_data()) == c10[0][:, 0].tolist()
    assert cifar100.find_data_dir() == env / "cifar-100-binary"


def test_pynn_data_without_the_files_falls_back(no_env, monkeypatch, tmp_path):
    system = write_cifar10(no_env / "cifar10", seed=1)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PYNN_DATA", str(tmp_path / "empty"))
    assert first_label(cifar10.load_data()) == system[0][:, 0].tolist()


def test_explicit_path_does_not_fall_back(no_env, tmp_path):
    write_cifar10(no_env / "cifar10")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cifar10.load_data(path=tmp_path / "elsewhere")
    (tmp_path / "partial").mkdir()
    write_cifar10(tmp_path / "partial")
    (tmp_path / "partial" / "data_batch_4.bin").unlink()
    with pytest.raises(FileNotFoundError) as info:
        cifar10.load_data(path=tmp_path / "partial")
    msg = str(info.value)
    assert f"{tmp_path / 'partial'} missing data_batch_4.bin" in msg
    assert str(tmp_path / "partial" / "cifar-10-batches-bin") in msg
    for name in C10_FILES:
        assert name in msg


def test_not_found_message(no_env):
    with pytest.raises(FileNotFoundError) as info:
        cifar10.load_data()
    msg = str(info.value)
    assert "CIFAR-10 not found" in msg and "downloads nothing" in msg
    for name in C10_FILES:
        assert name in msg
    assert "$PYNN_DATA: not set" in msg
    assert f"{no_env / 'cifar10'}: does not exist" in msg
    assert "cifar-10-binary.tar.gz" in msg and "PYNN_DATA=DIR" in msg and "path=DIR" in msg
    assert "not the python version" in msg


def test_not_found_message_lists_pynn_data(no_env, monkeypatch, tmp_path):
    env = tmp_path / "env"
    write_cifar100(env)
    (env / "test.bin").unlink()
    monkeypatch.setenv("PYNN_DATA", str(env))
    with pytest.raises(FileNotFoundError) as info:
        cifar100.load_data()
    msg = str(info.value)
    assert f"{env} (from $PYNN_DATA): missing test.bin" in msg
    assert f"{env / 'cifar-100-binary'} (from $PYNN_DATA): does not exist" in msg
    # a subfolder of a missing folder is not listed again
    assert str(env / "cifar100" / "cifar-100-binary") not in msg
    assert "cifar-100-binary.tar.gz" in msg


def test_python_version_is_refused(no_env, monkeypatch, tmp_path):
    """Only the pickle version present: not read (never unpickled), and said so."""
    py = tmp_path / "env" / "cifar-10-batches-py"
    py.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch", "batches.meta"]:
        (py / name).write_bytes(pickle.dumps({"not": "read"}))
    monkeypatch.setenv("PYNN_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(pickle, "load", None)  # any unpickling would blow up
    monkeypatch.setattr(pickle, "loads", None)
    with pytest.raises(FileNotFoundError) as info:
        cifar10.load_data()
    msg = str(info.value)
    assert "cifar-10-batches-py/ there is the python version" in msg
    with pytest.raises(FileNotFoundError) as info:
        cifar10.load_data(path=py)
    msg = str(info.value)
    assert "python version (data_batch_1 without .bin)" in msg and "binary version is needed" in msg


def test_python_version_cifar100_and_archives(no_env, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for name in ("train", "test", "meta"):
        (d / name).write_bytes(pickle.dumps([1]))
    (d / "cifar-100-binary.tar.gz").write_bytes(gzip.compress(b"x"))
    with pytest.raises(FileNotFoundError) as info:
        cifar100.load_data(path=d)
    msg = str(info.value)
    assert "python version (train, meta without .bin)" in msg
    assert "cifar-100-binary.tar.gz there is not extracted: tar xzf" in msg


# ---------------------------------------------------------------- corrupt files

def corrupt_cases(record):
    """name -> (bytes of the file, a fragment of the message)."""
    good, _, _ = make_records(3, [10], 0) if record == 3073 else make_records(3, [20, 100], 0)
    pickle_bytes = pickle.dumps({b"data": b"\x00" * 5000}, protocol=2)
    return {
        "empty": (b"", "empty file"),
        "truncated": (good[:-1], f"size {3 * record - 1} bytes is not a multiple of the record "
                                 f"size {record}"),
        "trailing": (good + b"\x00", "3 whole records and 1 bytes left over"),
        "one byte": (b"\x01", "0 whole records and 1 bytes left over"),
        "gzip": (gzip.compress(good), "gzip-compressed"),
        "pickle": (pickle_bytes, "Python pickle"),
        "html": (b"<!DOCTYPE html><html>" + b" " * (record - 21), "looks like text"),
    }


@pytest.mark.parametrize("case", ["empty", "truncated", "trailing", "one byte", "gzip",
                                  "pickle", "html"])
@pytest.mark.parametrize("which", ["data_batch_3.bin", "test_batch.bin"])
def test_cifar10_corrupt(tmp_path, case, which):
    write_cifar10(tmp_path)
    raw, message = corrupt_cases(3073)[case]
    path = tmp_path / which
    path.write_bytes(raw)
    with pytest.raises(cifar10.CIFARError) as info:
        cifar10.load_data(path=tmp_path)
    err = info.value
    assert isinstance(err, data.IDXError) and isinstance(err, ValueError)
    assert err.path == str(path) and str(err).startswith(f"{path}: ")
    assert message in str(err), str(err)


@pytest.mark.parametrize("case", ["empty", "truncated", "trailing", "gzip", "pickle", "html"])
@pytest.mark.parametrize("mode", ["fine", "coarse"])
def test_cifar100_corrupt(tmp_path, case, mode):
    write_cifar100(tmp_path)
    raw, message = corrupt_cases(3074)[case]
    (tmp_path / "train.bin").write_bytes(raw)
    with pytest.raises(data.IDXError) as info:
        cifar100.load_data(mode, path=tmp_path)
    assert str(tmp_path / "train.bin") in str(info.value)
    assert message in str(info.value)


def test_cifar10_label_out_of_range(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "data_batch_2.bin"
    raw = bytearray(path.read_bytes())
    raw[2 * 3073] = 10   # record 2
    raw[5 * 3073] = 255  # record 5
    path.write_bytes(bytes(raw))
    with pytest.raises(cifar10.CIFARError) as info:
        cifar10.load_data(path=tmp_path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: label 10 of record 2 (byte {2 * 3073}) is out of range 0..9")
    assert "2 of the 7 records have one" in msg


@pytest.mark.parametrize("mode", ["fine", "coarse"])
@pytest.mark.parametrize("column,value,message", [
    (0, 20, "coarse label 20 of record 1 (byte 3074) is out of range 0..19"),
    (1, 100, "fine label 100 of record 1 (byte 3075) is out of range 0..99"),
])
def test_cifar100_label_out_of_range(tmp_path, mode, column, value, message):
    """Both label bytes are checked whatever label_mode."""
    write_cifar100(tmp_path)
    path = tmp_path / "test.bin"
    raw = bytearray(path.read_bytes())
    raw[3074 + column] = value
    path.write_bytes(bytes(raw))
    with pytest.raises(cifar100.CIFARError) as info:
        cifar100.load_data(mode, path=tmp_path)
    assert str(info.value) == f"{path}: {message}: the file is corrupt or not a CIFAR-100 " \
                              "binary-version file"


def test_cifar10_file_of_cifar100_is_caught(tmp_path):
    """A CIFAR-100 file passed as CIFAR-10: record sizes differ (3074 vs 3073)."""
    write_cifar100(tmp_path, counts=(3073, 1))
    # 3073 records of 3074 bytes = 3074 records of 3073 bytes: the size passes, labels do not
    with pytest.raises(cifar10.CIFARError, match="out of range 0..9"):
        cifar10.load_batch(tmp_path / "train.bin")
    with pytest.raises(cifar10.CIFARError, match="not a multiple of the record size 3073"):
        cifar10.load_batch(tmp_path / "test.bin")


def test_missing_file_after_lookup(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "test_batch.bin").unlink()
    with pytest.raises(FileNotFoundError, match="missing test_batch.bin"):
        cifar10.load_data(path=tmp_path)
    with pytest.raises(FileNotFoundError):
        cifar10.load_batch(tmp_path / "test_batch.bin")
    from pynn.datasets import _cifar
    with pytest.raises(FileNotFoundError, match="test_batch.bin: no such file"):
        _cifar.load(cifar10.SPEC, tmp_path)


def test_bad_train_file_raises_before_reading_others(tmp_path, monkeypatch):
    """Sizes are checked for every file before anything is read."""
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_5.bin").write_bytes(b"\x00" * 100)
    from pynn.datasets import _cifar
    calls = []
    real = _cifar.read_records
    monkeypatch.setattr(_cifar, "read_records", lambda *a, **k: calls.append(a) or real(*a, **k))
    with pytest.raises(cifar10.CIFARError, match="data_batch_5.bin: size 100 bytes"):
        cifar10.load_data(path=tmp_path)
    assert calls == []


def test_cifar10_big_batch_shape(tmp_path):
    """A file of the real size (10000 records) reads as Keras' shapes."""
    raw, labels, images = make_records(10000, [10], 5)
    p = tmp_path / "data_batch_1.bin"
    p.write_bytes(raw)
    x, y = cifar10.load_batch(p)
    assert x.shape == (10000, 32, 32, 3) and y.shape == (10000, 1)
    np.testing.assert_array_equal(x, images.reshape(10000, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(y[:, 0], labels[:, 0])


SYSTEM_C10 = Path("/usr/share/datasets/cifar10")


@pytest.mark.skipif(not any(
    all((d / f).is_file() for f in C10_FILES)
    for d in (SYSTEM_C10, SYSTEM_C10 / "cifar-10-batches-bin")),
    reason="CIFAR-10 (binary version) not in /usr/share/datasets/cifar10")
def test_real_cifar10():
    (x, y), (xt, yt) = cifar10.load_data(path=SYSTEM_C10)
    assert x.shape == (50000, 32, 32, 3) and xt.shape == (10000, 32, 32, 3)
    assert y.shape == (50000, 1) and yt.shape == (10000, 1)
    np.testing.assert_array_equal(np.bincount(y[:, 0]), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(yt[:, 0]), [1000] * 10)
