"""pynn model, weight and checkpoint files (pynn.io): round trips, corrupt
and foreign files, no unpickling, atomic writes."""
import json
import os

import numpy as np
import pytest

import pynn
from pynn import io, layers, optimizers


def make_model(seed=0, units=8, opt=None):
    pynn.utils.set_random_seed(seed)
    m = pynn.Sequential([layers.Conv2D(3, (3, 2), activation="relu", input_shape=(6, 6, 1)),
                         layers.BatchNormalization(),
                         layers.MaxPooling2D(2),
                         layers.Dropout(0.25),
                         layers.Flatten(),
                         layers.Dense(units, activation="relu"),
                         layers.Dense(3, activation="softmax")])
    m.compile(opt or optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 6, 6, 1)).astype(np.float32), rng.integers(0, 3, n)


def trained(seed=0, **kw):
    m = make_model(seed, **kw)
    x, y = data()
    m.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return m


def assert_weights_equal(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for u, v in zip(wa, wb):
        np.testing.assert_array_equal(u, v)


def snapshot(m):
    return [w.copy() for w in m.get_weights()]


def assert_unchanged(m, snap):
    for u, v in zip(m.get_weights(), snap):
        np.testing.assert_array_equal(u, v)


def no_temp_files(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or "tmp" in p.name]


# ---------------------------------------------------------------- round trips --


@pytest.mark.parametrize("opt", [lambda: optimizers.Adam(0.01),
                                 lambda: optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                                 lambda: optimizers.RMSprop(0.01, momentum=0.5, centered=True),
                                 lambda: optimizers.Adadelta(1.0, clipnorm=1.0)],
                         ids=["adam", "sgd", "rmsprop", "adadelta"])
def test_save_load_model_round_trip(tmp_path, opt):
    m = trained(opt=opt())
    path = tmp_path / "model.npz"
    m.save(path)
    assert no_temp_files(tmp_path) == []
    m2 = pynn.load_model(path)
    assert [type(l) for l in m2.layers] == [type(l) for l in m.layers]
    assert [l.name for l in m2.layers] == [l.name for l in m.layers]
    assert m2.count_params() == m.count_params()
    assert_weights_equal(m, m2)
    assert type(m2.optimizer) is type(m.optimizer)
    assert m2.optimizer.get_config() == m.optimizer.get_config()
    assert m2.optimizer.iterations == m.optimizer.iterations == 5
    assert m2.optimizer.state.keys() == m.optimizer.state.keys()
    for k in m.optimizer.state:
        np.testing.assert_array_equal(m2.optimizer.state[k], m.optimizer.state[k])
    assert type(m2.loss) is type(m.loss) and m2.metrics_names == m.metrics_names
    x, y = data(10, seed=5)
    np.testing.assert_array_equal(m.predict(x, verbose=0), m2.predict(x, verbose=0))
    assert m.evaluate(x, y, verbose=0) == m2.evaluate(x, y, verbose=0)
    # continued training is identical (optimizer slots, step count and the
    # dropout streams that depend on it, shuffling seed)
    x, y = data()
    m.fit(x, y, batch_size=8, epochs=1, verbose=0)
    m2.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert_weights_equal(m, m2)


def test_load_model_without_compile(tmp_path):
    m = trained()
    m.save(tmp_path / "m.npz")
    m2 = pynn.load_model(tmp_path / "m.npz", compile=False)
    assert not m2.compiled
    assert_weights_equal(m, m2)
    x, _ = data(5)
    np.testing.assert_array_equal(m.predict(x, verbose=0), m2.predict(x, verbose=0))


def test_save_without_optimizer(tmp_path):
    m = trained()
    m.save(tmp_path / "m.npz", include_optimizer=False)
    m2 = pynn.load_model(tmp_path / "m.npz")
    assert_weights_equal(m, m2)
    assert not m2.compiled


def test_float64_model_round_trip(tmp_path):
    pynn.utils.set_random_seed(1)
    m = pynn.Sequential([layers.Dense(4, activation="tanh", input_shape=(3,)),
                         layers.Dense(2, activation="softmax")], dtype="float64")
    m.compile("sgd", "sparse_categorical_crossentropy")
    m.save(tmp_path / "m.npz")
    m2 = pynn.load_model(tmp_path / "m.npz")
    assert m2.dtype == "float64"      # Keras 3: the variable dtype's name
    assert all(w.dtype == np.float64 for w in m2.get_weights())
    assert_weights_equal(m, m2)


def test_save_weights_load_weights(tmp_path):
    m = trained()
    path = tmp_path / "w.npz"
    m.save_weights(path)
    other = make_model(seed=7)
    assert any(not np.array_equal(a, b) for a, b in zip(m.get_weights(), other.get_weights()))
    other.load_weights(path)
    assert_weights_equal(m, other)
    # BatchNormalization moving statistics travel with the weights
    np.testing.assert_array_equal(other.layers[1].get_weights()[2], m.layers[1].get_weights()[2])
    # a weights file is not a model file
    with pytest.raises(io.FileFormatError, match="pynn.weights"):
        pynn.load_model(path)
    # a model file holds the weights too
    m.save(tmp_path / "m.npz")
    third = make_model(seed=8)
    third.load_weights(tmp_path / "m.npz")
    assert_weights_equal(m, third)


def test_load_weights_into_unbuilt_model(tmp_path):
    m = trained()
    m.save_weights(tmp_path / "w.npz")
    fresh = make_model(seed=3)
    assert not np.array_equal(fresh.get_weights()[0], m.get_weights()[0])
    fresh.load_weights(tmp_path / "w.npz")
    assert_weights_equal(m, fresh)


def test_file_layout(tmp_path):
    """Named arrays and a JSON document; nothing else."""
    pynn.utils.clear_session()
    m = trained()
    m.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        names = set(z.files)
        meta = json.loads(z["__meta__.json"].tobytes().decode())
        assert all(z[k].dtype != object for k in names)
    assert meta["format"] == "pynn.model" and meta["version"] == io.FORMAT_VERSION
    assert "weights/0/conv2d/kernel" in names and "weights/1/batch_normalization/moving_mean" in names
    assert {"optimizer/m", "optimizer/v"} <= names
    assert meta["compile"]["iterations"] == 5


# ------------------------------------------------------------- bad files --


def _valid_bytes(tmp_path):
    m = trained()
    p = tmp_path / "good.npz"
    m.save(p)
    return p.read_bytes()


@pytest.mark.parametrize("kind", ["truncated", "truncated-half", "random", "empty", "text",
                                  "no-meta", "bad-meta", "newer-version"])
def test_bad_files_raise_and_leave_weights(tmp_path, kind):
    good = _valid_bytes(tmp_path)
    p = tmp_path / "bad.npz"
    rng = np.random.default_rng(0)
    if kind == "truncated":
        p.write_bytes(good[:-100])
    elif kind == "truncated-half":
        p.write_bytes(good[:len(good) // 2])
    elif kind == "random":
        p.write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("this is not a model\n")
    elif kind == "no-meta":
        np.savez(p, **{"weights/0/conv2d/kernel": np.zeros((3, 2, 1, 3), np.float32)})
    elif kind == "bad-meta":
        np.savez(p, **{"__meta__.json": np.frombuffer(b"{not json", np.uint8)})
    elif kind == "newer-version":
        meta = {"format": "pynn.weights", "version": io.FORMAT_VERSION + 1}
        np.savez(p, **{"__meta__.json": np.frombuffer(json.dumps(meta).encode(), np.uint8)})
    m = make_model(seed=4)
    m.build()
    snap = snapshot(m)
    with pytest.raises(io.FileFormatError, match=str(p.name)):
        m.load_weights(p)
    assert_unchanged(m, snap)
    with pytest.raises(io.FileFormatError):
        pynn.load_model(p)
    assert issubclass(io.FileFormatError, ValueError)


def test_missing_file(tmp_path):
    m = make_model()
    with pytest.raises(FileNotFoundError):
        m.load_weights(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError):
        pynn.load_model(tmp_path / "nope.npz")


@pytest.mark.parametrize("other", ["units", "layers", "input"])
def test_wrong_model_file(tmp_path, other):
    if other == "units":
        src = make_model(units=5)              # same layers, Dense(5) instead of Dense(8)
        msg = "shape"
    elif other == "layers":
        pynn.utils.set_random_seed(0)
        src = pynn.Sequential([layers.Dense(3, input_shape=(4,))])
        msg = "does not match"
    else:
        pynn.utils.set_random_seed(0)
        src = pynn.Sequential([layers.Conv2D(3, (3, 2), activation="relu", input_shape=(6, 6, 2)),
                               layers.BatchNormalization(), layers.MaxPooling2D(2),
                               layers.Dropout(0.25), layers.Flatten(),
                               layers.Dense(8, activation="relu"), layers.Dense(3, activation="softmax")])
        msg = "shape"
    src.save_weights(tmp_path / "w.npz")
    m = make_model()
    m.build()
    snap = snapshot(m)
    with pytest.raises(ValueError, match=msg):
        m.load_weights(tmp_path / "w.npz")
    assert_unchanged(m, snap)


def rewrite(src, dst, arrays=None, meta=None):
    """dst: the file src with arrays/meta changed by the given functions,
    written around pynn's checks (a hand-made malformed file)."""
    with np.load(src) as z:
        a = {k: z[k] for k in z.files}
    m = json.loads(a.pop(io.META_KEY).tobytes())
    a = arrays(a) if arrays else a
    m = meta(m) if meta else m
    a[io.META_KEY] = np.frombuffer(json.dumps(m).encode(), np.uint8)
    with open(dst, "wb") as f:
        np.savez(f, **a)
    return dst


def test_non_finite_weights_refused(tmp_path):
    m = trained()
    m.save_weights(tmp_path / "good.npz")
    m.layers[5].w["kernel"][0, 0] = np.nan
    # the writer applies the reader's rules: a file it would refuse is not written
    with pytest.raises(ValueError, match="w.npz: not written: .*kernel.* contains NaN or inf"):
        m.save_weights(tmp_path / "w.npz")
    assert not (tmp_path / "w.npz").exists() and no_temp_files(tmp_path) == []

    def nan(a):
        k = next(k for k in a if k.endswith("kernel"))
        a[k] = a[k].copy()
        a[k][0, 0] = np.nan
        return a
    rewrite(tmp_path / "good.npz", tmp_path / "w.npz", arrays=nan)
    other = make_model(seed=2)
    other.build()
    snap = snapshot(other)
    with pytest.raises(ValueError, match="NaN or inf"):
        other.load_weights(tmp_path / "w.npz")
    assert_unchanged(other, snap)


class _Exploit:
    """Unpickling this creates a folder: proof that something was unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("where", ["meta", "weight"])
def test_object_arrays_are_never_unpickled(tmp_path, where):
    good = tmp_path / "good.npz"
    trained().save_weights(good)
    with np.load(good, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    marker = tmp_path / "PWNED"
    evil = np.empty(1, dtype=object)
    evil[0] = _Exploit(marker)
    key = "__meta__.json" if where == "meta" else "weights/0/conv2d/kernel"
    arrays[key] = evil
    p = tmp_path / "evil.npz"
    np.savez(p, **arrays)          # pickles the object array
    m = make_model(seed=9)
    m.build()
    snap = snapshot(m)
    with pytest.raises(ValueError):
        m.load_weights(p)
    with pytest.raises(ValueError):
        pynn.load_model(p)
    assert not marker.exists()
    assert_unchanged(m, snap)


# ---------------------------------------------------------------- atomic writes --


@pytest.mark.parametrize("method", ["save", "save_weights"])
def test_failed_write_keeps_old_file(tmp_path, monkeypatch, method):
    m = trained()
    path = tmp_path / "m.npz"
    getattr(m, method)(path)
    before = path.read_bytes()
    m.fit(*data(), batch_size=8, epochs=1, verbose=0)   # new weights to write

    def boom(*a, **k):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        getattr(m, method)(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_write_interrupted_midway_keeps_old_file(tmp_path, monkeypatch):
    """A write that dies after part of the archive is on disk."""
    m = trained()
    path = tmp_path / "m.npz"
    m.save(path)
    before = path.read_bytes()
    real = np.savez

    def partial(f, **arrays):
        real(f, **arrays)
        f.truncate(100)
        raise KeyboardInterrupt
    monkeypatch.setattr(np, "savez", partial)
    with pytest.raises(KeyboardInterrupt):
        m.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
    pynn.load_model(path)


def test_overwrite_and_subfolder(tmp_path):
    m = trained()
    path = tmp_path / "a" / "b" / "m.npz"
    m.save(path)                     # folders are created
    m.fit(*data(), batch_size=8, epochs=1, verbose=0)
    m.save(path)                     # and the file replaced
    assert_weights_equal(m, pynn.load_model(path))
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.npz"]


def test_checkpoint_file_loads_as_model(tmp_path):
    m = make_model()
    x, y = data()
    m.fit(x, y, batch_size=8, epochs=1, verbose=0,
          callbacks=[pynn.callbacks.BackupAndRestore(tmp_path, delete_checkpoint=False)])
    ck = tmp_path / "checkpoint.npz"
    arrays, meta = io.read(ck)
    assert meta["format"] == "pynn.checkpoint"
    assert meta["position"]["epoch"] == 1 and meta["position"]["step"] == 0
    m2 = pynn.load_model(ck)
    assert_weights_equal(m, m2)
    assert no_temp_files(tmp_path) == []


def test_corrupt_checkpoint_refuses_to_resume(tmp_path):
    ck = tmp_path / "checkpoint.npz"
    ck.write_bytes(b"PK\x03\x04 garbage")
    m = make_model()
    x, y = data()
    with pytest.raises(io.FileFormatError):
        m.fit(x, y, batch_size=8, epochs=1, verbose=0,
              callbacks=[pynn.callbacks.BackupAndRestore(tmp_path)])


def test_checkpoint_of_another_run_is_refused(tmp_path):
    m = make_model()
    x, y = data()
    m.fit(x, y, batch_size=8, epochs=1, verbose=0,
          callbacks=[pynn.callbacks.BackupAndRestore(tmp_path, delete_checkpoint=False)])
    m2 = make_model()
    with pytest.raises(ValueError, match="batch_size"):
        m2.fit(x, y, batch_size=4, epochs=2, verbose=0,
               callbacks=[pynn.callbacks.BackupAndRestore(tmp_path)])


@pytest.mark.parametrize("method", ["save", "save_weights"])
def test_overwrite_false_keeps_an_existing_file(tmp_path, method):
    m = trained()
    path = tmp_path / "m.npz"
    getattr(m, method)(path, overwrite=False)            # a new file is fine
    before = path.read_bytes()
    m.fit(*data(), batch_size=8, epochs=1, verbose=0)
    with pytest.raises(FileExistsError):
        getattr(m, method)(path, overwrite=False)
    assert path.read_bytes() == before
    getattr(m, method)(path)                             # the default replaces it
    assert path.read_bytes() != before
