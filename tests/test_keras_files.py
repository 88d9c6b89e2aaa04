"""Keras files: .keras archives, *.weights.h5 and legacy .h5, both ways.

Keras-written fixtures are in tests/data/keras (made by make_fixtures.py
there with Keras 3.15.1; Keras is not needed here): pynn must predict what
Keras recorded.  pynn-written files must round-trip bitwise, and have
Keras' layout (the same HDF5 groups and shapes as the fixtures).
"""
import io as _pyio
import json
import os
import zipfile

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

import pynn  # noqa: E402
from pynn import io as pio  # noqa: E402
from pynn import layers as L  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data", "keras")
PRED = np.load(os.path.join(DATA, "predictions.npz"))


def small_cnn(compile=True):
    pynn.utils.set_random_seed(3)
    m = pynn.Sequential([pynn.Input((8, 8, 1)), L.Conv2D(4, 3, activation="relu"),
                         L.Conv2D(6, 3, activation="relu"), L.MaxPooling2D(2), L.Dropout(0.25),
                         L.Flatten(), L.Dense(8, activation="relu"), L.Dropout(0.5),
                         L.Dense(3, activation="softmax")], name="cnn")
    if compile:
        m.compile(pynn.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
        rng = np.random.default_rng(0)
        m.fit(rng.random((8, 8, 8, 1), dtype=np.float32), rng.integers(0, 3, 8), batch_size=4,
              epochs=1, verbose=0)
    return m


def res_block(compile=True):
    pynn.utils.set_random_seed(4)
    i = pynn.Input((6, 6, 3))
    x = L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(i))
    y = L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(L.Activation("relu")(x)))
    y = L.GlobalAveragePooling2D()(L.Activation("relu")(L.add([x, y])))
    m = pynn.Model(i, L.Dense(3, activation="softmax")(y), name="res")
    if compile:
        m.compile(pynn.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        rng = np.random.default_rng(1)
        m.fit(rng.random((8, 6, 6, 3), dtype=np.float32), rng.integers(0, 3, 8), batch_size=4,
              epochs=2, verbose=0)
    return m


def nested(compile=True):
    pynn.utils.set_random_seed(5)
    inner = pynn.Sequential([pynn.Input((5,)), L.Dense(4, activation="tanh"), L.Dense(3)],
                            name="inner")
    i = pynn.Input((5,))
    m = pynn.Model(i, L.Dense(2, activation="sigmoid")(inner(i)), name="outer")
    if compile:
        m.compile(pynn.optimizers.RMSprop(1e-3), "mse")
        rng = np.random.default_rng(2)
        m.fit(rng.random((8, 5), dtype=np.float32), rng.random((8, 2), dtype=np.float32),
              batch_size=4, epochs=1, verbose=0)
    return m


MODELS = {"cnn": (small_cnn, (8, 8, 1)), "res": (res_block, (6, 6, 3)), "nested": (nested, (5,))}


def _x(shape, n=4):
    return np.random.default_rng(9).random((n,) + shape, dtype=np.float32)


def _same_model(a, b, x):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for u, v in zip(wa, wb):
        assert u.shape == v.shape and u.dtype == v.dtype and np.array_equal(u, v)
    np.testing.assert_array_equal(a.predict(x, verbose=0), b.predict(x, verbose=0))


# ------------------------------------------------------------ pynn -> pynn --
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_model_round_trip_bitwise(tmp_path, name, ext):
    make, shape = MODELS[name]
    m = make()
    path = tmp_path / f"m{ext}"
    m.save(path)
    m2 = pynn.load_model(path)
    _same_model(m, m2, _x(shape))
    assert m2.compiled and type(m2.optimizer) is type(m.optimizer)
    assert m2.optimizer.get_config() == m.optimizer.get_config()
    if ext == ".keras":       # the optimizer's variables travel in .keras (not in .h5)
        assert m2.optimizer.iterations == m.optimizer.iterations > 0
        for k, v in m.optimizer.state.items():
            np.testing.assert_array_equal(np.asarray(v), np.asarray(m2.optimizer.state[k]))


def test_keras_archive_continues_training_exactly(tmp_path):
    m = res_block()
    m.save(tmp_path / "m.keras")
    m2 = pynn.load_model(tmp_path / "m.keras")
    rng = np.random.default_rng(7)
    x, y = rng.random((4, 6, 6, 3), dtype=np.float32), rng.integers(0, 3, 4)
    for model in (m, m2):
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    _same_model(m, m2, x)


@pytest.mark.parametrize("ext", [".weights.h5", ".h5"])
def test_weights_round_trip(tmp_path, ext):
    m = res_block()
    m.save_weights(tmp_path / f"w{ext}")
    m2 = res_block(compile=False)
    assert not np.array_equal(m.get_weights()[0], m2.get_weights()[0])
    m2.load_weights(tmp_path / f"w{ext}")
    _same_model(m, m2, _x((6, 6, 3)))
    if ext == ".weights.h5":   # Keras 3 saves and loads the optimizer's variables there too
        m2.compile(pynn.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        m2.load_weights(tmp_path / f"w{ext}")
        assert m2.optimizer.iterations == m.optimizer.iterations > 0
        np.testing.assert_array_equal(np.asarray(m2.optimizer.state["v"]),
                                      np.asarray(m.optimizer.state["v"]))


def test_npz_files_unchanged(tmp_path):
    m = small_cnn()
    m.save(tmp_path / "x.npz")
    arrays, meta = pio.read(tmp_path / "x.npz")
    assert meta["format"] == "pynn.model" and "optimizer/momentum" in arrays
    _same_model(m, pynn.load_model(tmp_path / "x.npz"), _x((8, 8, 1)))


def test_old_pynn_npz_under_h5_name_still_loads(tmp_path):
    m = small_cnn()
    m._write_model(str(tmp_path / "old.h5"), "pynn.model", True)    # what save("old.h5") wrote
    _same_model(m, pynn.load_model(tmp_path / "old.h5"), _x((8, 8, 1)))
    m.save(tmp_path / "new.h5")
    with h5py.File(tmp_path / "new.h5", "r") as h5:
        assert "model_config" in h5.attrs


def test_resnet20_and_default_cnn_round_trip(tmp_path):
    for make, shape in ((pynn.zoo.resnet20, (32, 32, 3)), (pynn.zoo.cnn, (28, 28, 1))):
        m = make()
        m.save(tmp_path / "z.keras")
        _same_model(m, pynn.load_model(tmp_path / "z.keras"), _x(shape, 2))


# ------------------------------------------------------------ Keras -> pynn --
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_keras_written_files_predict_as_keras(name, ext):
    m = pynn.load_model(os.path.join(DATA, name + ext))
    np.testing.assert_allclose(m.predict(PRED[name + "_x"], verbose=0), PRED[name + "_y"],
                               rtol=0, atol=1e-5)
    assert m.compiled      # Keras' compile config read (optimizer, loss)
    assert m.optimizer.iterations == 1      # Keras trained one step: its state was loaded


@pytest.mark.parametrize("name", ["res", "nested"])
def test_keras_optimizer_state_continues(name):
    """One more step from Keras' saved optimizer state (Adam, RMSprop) gives
    what Keras gave; a fresh optimizer state would not."""
    x, y2, want = PRED[name + "_x"], PRED[name + "_y2"], PRED[name + "_next"]
    m = pynn.load_model(os.path.join(DATA, name + ".keras"))
    m.fit(x, y2, batch_size=4, epochs=1, shuffle=False, verbose=0)
    err = np.abs(m.predict(x, verbose=0) - want).max()
    fresh = pynn.load_model(os.path.join(DATA, name + ".keras"), compile=False)
    fresh.compile(type(m.optimizer)(learning_rate=1e-3), m._losses[0])
    fresh.fit(x, y2, batch_size=4, epochs=1, shuffle=False, verbose=0)
    err_fresh = np.abs(fresh.predict(x, verbose=0) - want).max()
    assert err < 1e-4 and err < err_fresh / 5, (err, err_fresh)


def test_keras_weights_h5_loads():
    m = small_cnn(compile=False)
    m.load_weights(os.path.join(DATA, "cnn.weights.h5"))
    np.testing.assert_allclose(m.predict(PRED["cnn_x"], verbose=0), PRED["cnn_y"], atol=1e-5,
                               rtol=0)


def _h5_layout(h5):
    out = {}

    def visit(name, obj):
        out[name] = tuple(obj.shape) if isinstance(obj, h5py.Dataset) else "group"
    h5.visititems(visit)
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_written_archive_has_keras_layout(tmp_path, name):
    """Same zip entries, same HDF5 groups/datasets/shapes as Keras wrote."""
    make, _ = MODELS[name]
    make().save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as ours, \
            zipfile.ZipFile(os.path.join(DATA, name + ".keras")) as theirs:
        assert ours.namelist() == theirs.namelist()
        assert all(i.compress_type == zipfile.ZIP_STORED for i in ours.infolist())
        layouts = []
        for z in (ours, theirs):
            with h5py.File(_pyio.BytesIO(z.read("model.weights.h5")), "r") as h5:
                layouts.append(_h5_layout(h5))
        assert layouts[0] == layouts[1]
        a, b = (json.loads(z.read("config.json")) for z in (ours, theirs))
    assert a["class_name"] == b["class_name"] and a["module"] == b["module"]
    assert [l["class_name"] for l in a["config"]["layers"]] == \
        [l["class_name"] for l in b["config"]["layers"]]
    assert a["compile_config"]["optimizer"]["class_name"] == \
        b["compile_config"]["optimizer"]["class_name"]


@pytest.mark.parametrize("name", ["cnn", "nested"])
def test_written_h5_has_legacy_layout(tmp_path, name):
    make, _ = MODELS[name]
    make().save(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "r") as ours, \
            h5py.File(os.path.join(DATA, name + ".h5"), "r") as theirs:
        for k in ("model_config", "training_config", "keras_version", "backend"):
            assert k in ours.attrs
        ln = [list(f["model_weights"].attrs["layer_names"]) for f in (ours, theirs)]
        assert len(ln[0]) == len(ln[1])      # the names are automatic: they differ
        shapes = [[f["model_weights"][n][w].shape for n in f["model_weights"].attrs["layer_names"]
                   for w in f["model_weights"][n].attrs["weight_names"]] for f in (ours, theirs)]
        assert shapes[0] == shapes[1]


# -------------------------------------------------------------- bad files --
def _rewrite(src, dst, config=None, weights=None):
    """Copy a .keras archive, changing its config (a function of the dict)
    or its weights (a function of an h5py.File open for writing)."""
    with zipfile.ZipFile(src) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    if config is not None:
        cfg = json.loads(entries["config.json"])
        config(cfg)
        entries["config.json"] = json.dumps(cfg).encode()
    if weights is not None:
        buf = _pyio.BytesIO(entries["model.weights.h5"])
        with h5py.File(buf, "r+") as h5:
            weights(h5)
        entries["model.weights.h5"] = buf.getvalue()
    with zipfile.ZipFile(dst, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    return dst


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / "good.keras"
    small_cnn().save(path)
    return path


def _raises(path, *words):
    with pytest.raises(ValueError) as e:
        pynn.load_model(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_truncated_archive(archive, tmp_path):
    data = archive.read_bytes()
    bad = tmp_path / "cut.keras"
    bad.write_bytes(data[: len(data) // 2])
    _raises(bad, "truncated or corrupt")
    bad.write_bytes(b"not a zip at all")
    _raises(bad, "not a .keras archive")


def test_missing_weight(archive, tmp_path):
    bad = _rewrite(archive, tmp_path / "bad.keras",
                   weights=lambda h5: h5["layers/dense_1/vars"].__delitem__("1"))
    _raises(bad, "dense_1", "weight arrays")


def test_missing_layer_group(archive, tmp_path):
    bad = _rewrite(archive, tmp_path / "bad.keras", weights=lambda h5: h5.__delitem__("layers/conv2d"))
    _raises(bad, "no weights for layer")


def test_wrong_shape(archive, tmp_path):
    def change(h5):
        del h5["layers/dense/vars/0"]
        h5["layers/dense/vars"].create_dataset("0", data=np.zeros((3, 3), np.float32))
    _raises(_rewrite(archive, tmp_path / "bad.keras", weights=change), "shape (3, 3)")


def test_huge_declared_dataset_is_not_read(archive, tmp_path):
    def change(h5):
        del h5["layers/dense/vars/0"]
        # 4 TB declared, nothing written: the shape check comes before any read
        h5["layers/dense/vars"].create_dataset("0", shape=(1 << 20, 1 << 20), dtype="f4")
    _raises(_rewrite(archive, tmp_path / "bad.keras", weights=change), "shape (1048576, 1048576)")


def test_huge_declared_model_is_not_allocated(archive, tmp_path):
    def change(cfg):
        dense = [l for l in cfg["config"]["layers"] if l["class_name"] == "Dense"][0]
        dense["config"]["units"] = 10 ** 10
    _raises(_rewrite(archive, tmp_path / "bad.keras", config=change), "declares", "nothing was "
            "allocated")


def test_lambda_layer_refused(archive, tmp_path):
    def change(cfg):
        cfg["config"]["layers"].insert(2, {
            "module": "keras.layers", "class_name": "Lambda", "registered_name": None,
            "config": {"name": "evil", "function": {"class_name": "__lambda__", "config": {
                "code": "4wEAAAAAAAAA", "defaults": None, "closure": None}}}})
    msg = _raises(_rewrite(archive, tmp_path / "bad.keras", config=change), "Lambda", "evil")
    assert "code" in msg


def test_custom_and_missing_layers_named(archive, tmp_path):
    def custom(cfg):
        cfg["config"]["layers"][1]["registered_name"] = "my_package>MyConv"
        cfg["config"]["layers"][1]["module"] = "my_package.layers"
    _raises(_rewrite(archive, tmp_path / "c.keras", config=custom), "custom", "my_package>MyConv")

    def lstm(cfg):
        cfg["config"]["layers"][1]["class_name"] = "LSTM"
    _raises(_rewrite(archive, tmp_path / "l.keras", config=lstm), "LSTM", "conv2d")

    def unknown(cfg):
        cfg["config"]["layers"][1]["class_name"] = "FancyLayer"
    _raises(_rewrite(archive, tmp_path / "u.keras", config=unknown), "FancyLayer")


def test_channels_first_refused(archive, tmp_path):
    def change(cfg):
        cfg["config"]["layers"][1]["config"]["data_format"] = "channels_first"
    _raises(_rewrite(archive, tmp_path / "bad.keras", config=change), "channels_first")


def test_bad_json_and_missing_entry(archive, tmp_path):
    with zipfile.ZipFile(archive) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    bad = tmp_path / "j.keras"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("config.json", b"{not json")
        z.writestr("model.weights.h5", entries["model.weights.h5"])
    _raises(bad, "not valid JSON")
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("config.json", entries["config.json"])
    _raises(bad, "model.weights.h5")


def test_legacy_h5_errors(tmp_path):
    m = small_cnn()
    m.save(tmp_path / "m.h5")
    data = (tmp_path / "m.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    _raises(tmp_path / "cut.h5", "HDF5")
    last = m.layers[-1].name
    with h5py.File(tmp_path / "m.h5", "r+") as h5:
        del h5[f"model_weights/{last}/cnn/{last}/bias"]
    _raises(tmp_path / "m.h5", last, "missing")
    m.save_weights(tmp_path / "w.h5")
    with pytest.raises(ValueError, match="model_config"):
        pynn.load_model(tmp_path / "w.h5")


def test_weights_file_for_another_model(tmp_path):
    res_block().save_weights(tmp_path / "w.weights.h5")
    with pytest.raises(ValueError, match="w.weights.h5"):
        small_cnn(compile=False).load_weights(tmp_path / "w.weights.h5")


def test_keras2_style_config_reads(tmp_path):
    """A functional config as tf.keras 2 wrote it (node lists, batch_input_shape,
    BatchNormalization axis as a list, initializers without module)."""
    from pynn.models.keras_config import model_from_keras
    init = {"class_name": "GlorotUniform", "config": {"seed": None}}
    cfg = {"class_name": "Functional", "config": {"name": "model", "layers": [
        {"class_name": "InputLayer", "name": "input_1", "inbound_nodes": [],
         "config": {"batch_input_shape": [None, 4, 4, 2], "dtype": "float32", "sparse": False,
                    "ragged": False, "name": "input_1"}},
        {"class_name": "Conv2D", "name": "conv2d", "inbound_nodes": [[["input_1", 0, 0, {}]]],
         "config": {"name": "conv2d", "trainable": True, "dtype": "float32", "filters": 3,
                    "kernel_size": [3, 3], "strides": [1, 1], "padding": "same",
                    "data_format": "channels_last", "dilation_rate": [1, 1], "groups": 1,
                    "activation": "relu", "use_bias": True, "kernel_initializer": init,
                    "bias_initializer": {"class_name": "Zeros", "config": {}},
                    "kernel_regularizer": None, "bias_regularizer": None,
                    "activity_regularizer": None, "kernel_constraint": None,
                    "bias_constraint": None}},
        {"class_name": "BatchNormalization", "name": "bn", "inbound_nodes": [[["conv2d", 0, 0, {}]]],
         "config": {"name": "bn", "trainable": True, "dtype": "float32", "axis": [3],
                    "momentum": 0.99, "epsilon": 0.001, "center": True, "scale": True}},
        {"class_name": "Add", "name": "add",
         "inbound_nodes": [[["conv2d", 0, 0, {}], ["bn", 0, 0, {}]]],
         "config": {"name": "add", "trainable": True, "dtype": "float32"}}],
        "input_layers": [["input_1", 0, 0]], "output_layers": [["add", 0, 0]]}}
    m = model_from_keras(cfg, "k2.h5")
    assert [type(l).__name__ for l in m.layers] == ["InputLayer", "Conv2D", "BatchNormalization",
                                                    "Add"]
    assert m.predict(_x((4, 4, 2)), verbose=0).shape == (4, 4, 4, 3)
