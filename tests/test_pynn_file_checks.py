"""Malformed model and checkpoint files raise pynn.io.FileFormatError naming
the file and the problem, never MemoryError, NotImplementedError,
AttributeError, TypeError or KeyError; and the writer applies the reader's
rules, so pynn never writes a file it would refuse (issue 15, items 7, 8)."""
import io as _io
import json
import os
import zipfile

import numpy as np
import pytest

import pynn
from pynn import callbacks, io, layers, optimizers

from test_pynn_files import no_temp_files, rewrite


def make(seed=0):
    pynn.utils.set_random_seed(seed)
    m = pynn.Sequential([layers.Dense(5, activation="relu", input_shape=(4,)),
                         layers.Dense(3, activation="softmax")])
    m.compile(optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def xy(n=32):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 3, n)


@pytest.fixture
def ckpt(tmp_path):
    """A valid checkpoint (mid-epoch: 2 epochs of 4 steps, saved every 3)."""
    m = make()
    x, y = xy()
    path = tmp_path / "ckpt.npz"
    m.fit(x, y, batch_size=8, epochs=2, verbose=0,
          callbacks=[callbacks.BackupAndRestore(str(path), save_freq=3, delete_checkpoint=False)])
    return path


def first_kernel(a):
    return next(k for k in a if k.endswith("kernel"))


def set_array(fn):
    def edit(a):
        k = first_kernel(a)
        a[k] = fn(a[k])
        return a
    return edit


def set_meta(fn):
    def edit(m):
        fn(m)
        return m
    return edit


def set_pos(key, value):
    def edit(m):
        if value is KeyError:
            del m["position"][key]
        else:
            m["position"][key] = value
        return m
    return edit


def nan_slot(a):
    k = next(k for k in a if k.startswith("optimizer/"))
    a[k] = np.full_like(a[k], np.nan)
    return a


def huge_shape(path, dst):
    """An entry whose .npy header declares 4 TiB of float32 (2**40 values)."""
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if "kernel" in info.filename:
                buf = _io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    buf, {"descr": "<f4", "fortran_order": False, "shape": (2 ** 40,)})
                data = buf.getvalue() + b"\0" * 64
            zout.writestr(info.filename, data)
    return dst


def flipped_method(path, dst):
    """Every entry's compression method (local and central headers) set to 99."""
    b = bytearray(open(path, "rb").read())
    for sig, off in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        i = b.find(sig)
        while i >= 0:
            b[i + off:i + off + 2] = (99).to_bytes(2, "little")
            i = b.find(sig, i + 4)
    open(dst, "wb").write(bytes(b))
    return dst


BAD = {
    "huge declared shape": (huge_shape, "declare"),
    "flipped compression method": (flipped_method, "compression method 99"),
    "metadata is a JSON list": (dict(meta=lambda m: [m]), "metadata is a JSON list"),
    "string version": (dict(meta=set_meta(lambda m: m.update(version="1"))), "'version' must be an int"),
    "future version": (dict(meta=set_meta(lambda m: m.update(version=99))), "newer"),
    "unknown format": (dict(meta=set_meta(lambda m: m.update(format="keras"))), "unknown format"),
    "string weights": (dict(arrays=set_array(lambda w: w.astype(str))), "not real numbers"),
    "complex weights": (dict(arrays=set_array(lambda w: w.astype(np.complex64))), "not real numbers"),
    "NaN weights": (dict(arrays=set_array(lambda w: w * np.nan)), "NaN or inf"),
    "NaN optimizer slot": (dict(arrays=nan_slot), "optimizer/.* contains NaN or inf"),
    "iterations -7": (dict(meta=set_meta(lambda m: m["compile"].update(iterations=-7))), "iterations"),
    "string seed": (dict(meta=set_meta(lambda m: m.update(seed="x"))), "'seed' must be an int"),
    "no loss": (dict(meta=set_meta(lambda m: m["compile"].pop("loss"))), "no 'loss'"),
    "bad layer config": (dict(meta=set_meta(lambda m: m["config"]["layers"][1]["config"]
                                            .update(units="many"))), "cannot be rebuilt"),
    "position missing step": (dict(meta=set_pos("step", KeyError)), "no 'step' field"),
    "position epoch -1": (dict(meta=set_pos("epoch", -1)), "'epoch' must be >= 0"),
    "position step beyond the epoch": (dict(meta=set_pos("step", 99)), "step 99 of an epoch of 4"),
    "position batch_size 0": (dict(meta=set_pos("batch_size", 0)), "'batch_size' must be >= 1"),
    "position shuffle string": (dict(meta=set_pos("shuffle", "yes")), "'shuffle' must be a bool"),
    "position sums NaN": (dict(meta=set_pos("sums", [float("nan"), 0.0])), "not a finite number"),
    "position is a list": (dict(meta=set_meta(lambda m: m.update(position=[1]))),
                           "not a JSON object"),
    "history not numbers": (dict(meta=set_meta(lambda m: m.update(history={"loss": ["a"]}))),
                            "history: 'loss' is not a list of numbers"),
    "history too long": (dict(meta=set_meta(lambda m: m.update(history={"loss": [1.0] * 9}))),
                         "9 epochs, more than the 1 done"),
}


def bad_file(ckpt, tmp_path, case):
    how, _ = BAD[case]
    dst = tmp_path / "bad.npz"
    if callable(how):
        return how(ckpt, dst)
    return rewrite(ckpt, dst, **how)


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_file_raises_file_format_error(ckpt, tmp_path, case):
    bad = bad_file(ckpt, tmp_path, case)
    msg = BAD[case][1]
    # io.read checks the container and the contents; load_model also rebuilds the model
    for load in (pynn.load_model,) if case == "bad layer config" else (io.read, pynn.load_model):
        with pytest.raises(io.FileFormatError, match=msg) as e:
            load(bad)
        assert str(e.value).startswith(str(bad) + ": "), str(e.value)


@pytest.mark.parametrize("case", ["position missing step", "NaN optimizer slot", "iterations -7",
                                  "position epoch -1", "huge declared shape"])
def test_malformed_checkpoint_refuses_to_resume(ckpt, tmp_path, case):
    bad = bad_file(ckpt, tmp_path, case)
    m = make(seed=1)
    m.build()
    before = [w.copy() for w in m.get_weights()]
    x, y = xy()
    with pytest.raises(io.FileFormatError, match=BAD[case][1]):
        m.fit(x, y, batch_size=8, epochs=2, verbose=0,
              callbacks=[callbacks.BackupAndRestore(str(bad))])
    for a, b in zip(m.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_beyond_the_run_is_refused(ckpt, tmp_path):
    x, y = xy()
    far = rewrite(ckpt, tmp_path / "far.npz", meta=set_pos("epoch", 10 ** 6))
    with pytest.raises(ValueError, match="epoch 1000000, beyond the 2 epochs"):
        make().fit(x, y, batch_size=8, epochs=2, verbose=0,
                   callbacks=[callbacks.BackupAndRestore(str(far))])
    # a checkpoint written after the last epoch resumes to nothing left to do
    done = rewrite(ckpt, tmp_path / "done.npz", meta=set_pos("epoch", 2))
    m = make()
    h = m.fit(x, y, batch_size=8, epochs=2, verbose=0,
              callbacks=[callbacks.BackupAndRestore(str(done), delete_checkpoint=False)])
    assert h.epoch == [0]      # the epoch recorded in the checkpoint; none trained
    for a, b in zip(m.get_weights(), pynn.load_model(done).get_weights()):
        np.testing.assert_array_equal(a, b)


def test_writer_refuses_what_the_reader_refuses(tmp_path):
    m = make()
    x, y = xy()
    m.fit(x, y, batch_size=8, verbose=0)
    m.optimizer.iterations = -7
    with pytest.raises(ValueError, match="model.npz: not written: .*iterations"):
        m.save(tmp_path / "model.npz")
    m.optimizer.iterations = 4
    slot = next(iter(m.optimizer.state))
    m.optimizer.state[slot][0] = np.inf
    with pytest.raises(ValueError, match="not written: array 'optimizer/.*' contains NaN or inf"):
        m.save(tmp_path / "model.npz")
    m.save(tmp_path / "model.npz", include_optimizer=False)   # the weights alone are fine
    assert sorted(os.listdir(tmp_path)) == ["model.npz"] and no_temp_files(tmp_path) == []
    w = m.get_weights()
    w[0] = w[0] * np.nan
    with pytest.raises(ValueError, match="NaN or inf"):     # set_weights: the same rule
        m.set_weights(w)
    w[0] = w[0].astype(np.complex64)
    with pytest.raises(TypeError, match="real numbers"):
        m.set_weights(w)


def test_history_survives_a_resume(tmp_path):
    x, y = xy()
    path = str(tmp_path / "ck.npz")
    full = make().fit(x, y, batch_size=8, epochs=3, verbose=0).history
    m = make()
    m.fit(x, y, batch_size=8, epochs=2, verbose=0,
          callbacks=[callbacks.BackupAndRestore(path, delete_checkpoint=False)])
    h = make().fit(x, y, batch_size=8, epochs=3, verbose=0,
                   callbacks=[callbacks.BackupAndRestore(path, delete_checkpoint=False)])
    assert h.epoch == [0, 1, 2]
    assert h.history.keys() == full.keys()
    for k in ("loss", "accuracy"):
        assert h.history[k] == full[k]
