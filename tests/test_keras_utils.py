"""keras.utils / keras.config / keras.backend names: image_dataset_from_directory,
to_categorical (and np_utils), normalize, model_to_dot / plot_model, the
backend/config functions, and a few Model conveniences Keras scripts use."""
import importlib.util
import os
import shutil

import numpy as np
import pytest

import pynn
from pynn import layers

HAVE_PIL = importlib.util.find_spec("PIL") is not None
HAVE_PYDOT = importlib.util.find_spec("pydot") is not None
needs_pil = pytest.mark.skipif(not HAVE_PIL, reason="Pillow missing: pip install '.[test]'")


# ------------------------------------------------------------------ images --
def _write_tree(root, classes=("cat", "dog"), per_class=5, size=(6, 5), mode="RGB"):
    """PNG files with known pixels: image j of class c is filled with 10*j + 100*c
    (a per-channel offset in RGB); returns {path: array}."""
    from PIL import Image
    pixels = {}
    for c, name in enumerate(classes):
        os.makedirs(root / name, exist_ok=True)
        for j in range(per_class):
            h, w = size
            a = np.full((h, w, 3), 10 * j + 100 * c, np.uint8) + np.array([0, 1, 2], np.uint8)
            a[0, 0] = [255, 0, 7]                     # one distinct pixel
            p = root / name / f"img{j}.png"
            Image.fromarray(a, "RGB").convert(mode).save(p)
            pixels[str(p)] = np.asarray(Image.open(p).convert("RGB"), np.float32)
    (root / "notes.txt").write_text("not an image")
    return pixels


@needs_pil
def test_image_dataset_labels_pixels_and_fit(tmp_path, capsys):
    pixels = _write_tree(tmp_path)
    ds = pynn.utils.image_dataset_from_directory(tmp_path, image_size=(6, 5), batch_size=4,
                                                 shuffle=False)
    assert "Found 10 files belonging to 2 classes." in capsys.readouterr().out
    assert ds.class_names == ["cat", "dog"] and len(ds) == 3
    assert isinstance(ds, pynn.utils.PyDataset)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.dtype == np.float32 and x.shape == (10, 6, 5, 3)
    np.testing.assert_array_equal(y, [0] * 5 + [1] * 5)
    assert y.dtype == np.int32
    for i, p in enumerate(ds.file_paths):        # unshuffled: class order, then file order
        np.testing.assert_array_equal(x[i], pixels[p])
    assert [os.path.basename(p) for p in ds.file_paths[:5]] == [f"img{j}.png" for j in range(5)]
    pynn.utils.set_random_seed(0)
    m = pynn.Sequential([layers.Flatten(), layers.Dense(2, activation="softmax")])
    m.compile(pynn.optimizers.SGD(1e-5), "sparse_categorical_crossentropy", metrics=["accuracy"])
    h = m.fit(ds, epochs=2, verbose=0)
    assert len(h.history["loss"]) == 2 and m.optimizer.iterations == 6
    assert np.isfinite(h.history["loss"]).all()


@needs_pil
def test_image_dataset_label_modes_colors_and_split(tmp_path):
    _write_tree(tmp_path, classes=("a", "b", "c"), per_class=4)
    kw = dict(image_size=(6, 5), batch_size=32, verbose=False)
    cat = pynn.utils.image_dataset_from_directory(tmp_path, label_mode="categorical",
                                                  shuffle=False, **kw)
    x, y = cat[0]
    np.testing.assert_array_equal(y, np.eye(3, dtype=np.float32)[np.repeat([0, 1, 2], 4)])
    g = pynn.utils.image_dataset_from_directory(tmp_path, color_mode="grayscale", label_mode=None,
                                                shuffle=False, **kw)
    xg = g[0]
    assert isinstance(xg, np.ndarray) and xg.shape == (12, 6, 5, 1)
    # Pillow's L conversion (ITU-R 601-2 luma): L = R*299/1000 + G*587/1000 + B*114/1000
    ref = (x[..., 0] * 299 + x[..., 1] * 587 + x[..., 2] * 114) / 1000
    np.testing.assert_allclose(xg[..., 0], ref, atol=1.0)
    rgba = pynn.utils.image_dataset_from_directory(tmp_path, color_mode="rgba", shuffle=False, **kw)
    assert rgba[0][0].shape[-1] == 4 and np.all(rgba[0][0][..., 3] == 255)
    named = pynn.utils.image_dataset_from_directory(tmp_path, class_names=["c", "a", "b"],
                                                    shuffle=False, **kw)
    assert named.class_names == ["c", "a", "b"]
    np.testing.assert_array_equal(named[0][1], np.repeat([0, 1, 2], 4))
    assert "/c/" in named.file_paths[0].replace(os.sep, "/")
    # explicit labels: one per file in alphanumeric path order
    lab = pynn.utils.image_dataset_from_directory(tmp_path, labels=list(range(12)), shuffle=False,
                                                  **kw)
    np.testing.assert_array_equal(lab[0][1], np.arange(12))
    # split: seeded shuffle, disjoint subsets covering everything, Keras' sizes
    tr, va = pynn.utils.image_dataset_from_directory(tmp_path, validation_split=0.25,
                                                     subset="both", seed=5, **kw)
    assert len(tr.file_paths) == 9 and len(va.file_paths) == 3
    assert sorted(tr.file_paths + va.file_paths) == sorted(cat.file_paths)
    tr2 = pynn.utils.image_dataset_from_directory(tmp_path, validation_split=0.25,
                                                  subset="training", seed=5, **kw)
    assert tr2.file_paths == tr.file_paths
    tr3 = pynn.utils.image_dataset_from_directory(tmp_path, shuffle=True, seed=6, **kw)
    assert sorted(tr3.file_paths) == sorted(cat.file_paths) and tr3.file_paths != cat.file_paths
    # labels follow their files through the shuffle
    x3, y3 = tr3[0]
    for p, lbl in zip(tr3.file_paths, y3):
        assert tr3.class_names[lbl] == os.path.basename(os.path.dirname(p))


@needs_pil
def test_image_dataset_binary_and_resize(tmp_path):
    from PIL import Image
    os.makedirs(tmp_path / "neg")
    os.makedirs(tmp_path / "pos")
    small = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3) * 20
    Image.fromarray(small).save(tmp_path / "neg" / "a.png")
    Image.fromarray(small[::-1]).save(tmp_path / "pos" / "b.png")
    ds = pynn.utils.image_dataset_from_directory(tmp_path, label_mode="binary", image_size=(4, 4),
                                                 interpolation="nearest", shuffle=False,
                                                 verbose=False)
    x, y = ds[0]
    assert y.dtype == np.float32 and y.shape == (2, 1)
    np.testing.assert_array_equal(y[:, 0], [0, 1])
    # nearest upscaling by 2: every pixel becomes a 2x2 block
    np.testing.assert_array_equal(x[0], np.repeat(np.repeat(small, 2, 0), 2, 1).astype(np.float32))
    assert pynn.utils.image_dataset_from_directory(tmp_path, image_size=(3, 7), shuffle=False,
                                                   verbose=False)[0][0].shape == (2, 3, 7, 3)


@needs_pil
@pytest.mark.parametrize("kw, err, match", [
    (dict(label_mode="sparse"), ValueError, "label_mode"),
    (dict(color_mode="cmyk"), ValueError, "color_mode"),
    (dict(label_mode="binary"), ValueError, "exactly 2 classes"),
    (dict(validation_split=0.2), ValueError, "subset"),
    (dict(validation_split=0.2, subset="training"), ValueError, "seed"),
    (dict(subset="training"), ValueError, "needs validation_split"),
    (dict(class_names=["a", "x", "c"]), ValueError, "subfolders"),
    (dict(labels=[0, 1]), ValueError, "2 entries"),
    (dict(interpolation="gaussian"), NotImplementedError, "gaussian"),
    (dict(interpolation="cubic"), ValueError, "unknown interpolation"),
    (dict(batch_size=None), NotImplementedError, "batch_size=None"),
    (dict(crop_to_aspect_ratio=True), NotImplementedError, "crop_to_aspect_ratio"),
])
def test_image_dataset_errors(tmp_path, kw, err, match):
    _write_tree(tmp_path, classes=("a", "b", "c"), per_class=1)
    with pytest.raises(err, match=match):
        pynn.utils.image_dataset_from_directory(tmp_path, verbose=False, **kw)


@needs_pil
def test_image_dataset_missing_or_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        pynn.utils.image_dataset_from_directory(tmp_path / "nope")
    os.makedirs(tmp_path / "a")
    with pytest.raises(ValueError, match="no images found"):
        pynn.utils.image_dataset_from_directory(tmp_path, verbose=False)


def test_image_dataset_without_pillow(monkeypatch, tmp_path):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("no PIL")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match="pip install pillow"):
        pynn.utils.image_dataset_from_directory(tmp_path)


# ------------------------------------------------------------------ arrays --
def test_to_categorical_both_paths():
    from pynn.utils.np_utils import to_categorical
    assert to_categorical is pynn.utils.to_categorical
    y = np.array([[2], [0], [1]])
    np.testing.assert_array_equal(to_categorical(y, 4), np.eye(4, dtype=np.float32)[[2, 0, 1]])
    with pytest.raises(ValueError, match="class ids"):
        to_categorical([0, 5], num_classes=3)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_normalize_matches_the_formula(order, axis):
    x = np.random.default_rng(0).standard_normal((4, 5, 3))
    x[1, :, :] = 0                                   # zero rows stay zero
    norm = np.sum(np.abs(x) ** order, axis=axis, keepdims=True) ** (1.0 / order)
    ref = x / np.where(norm == 0, 1, norm)
    np.testing.assert_allclose(pynn.utils.normalize(x, axis=axis, order=order), ref, rtol=1e-12)
    from pynn.utils.np_utils import normalize
    np.testing.assert_allclose(normalize(x, axis, order), ref, rtol=1e-12)


def test_normalize_errors():
    with pytest.raises(ValueError, match="order"):
        pynn.utils.normalize(np.ones(3), order=0)
    with pytest.raises(ValueError, match="axis"):
        pynn.utils.normalize(np.ones((2, 3)), axis=2)
    with pytest.raises(TypeError, match="numeric"):
        pynn.utils.normalize(np.array(["a"]))


# ------------------------------------------------------------------ plot_model --
def _graph_model():
    inp = pynn.Input((4,), name="inp")
    a = layers.Dense(3, activation="relu", name="left")(inp)
    b = layers.Dense(3, name="right")(inp)
    out = layers.Dense(2, activation="softmax", name="head")(layers.concatenate([a, b], name="cat"))
    return pynn.Model(inp, out, name="two_paths")


def test_dot_source_text():
    from pynn.utils.model_plot import dot_source
    src = dot_source(_graph_model(), show_shapes=True, show_layer_activations=True, rankdir="LR")
    assert src.startswith('digraph "two_paths" {') and "rankdir=LR" in src
    ids = {}
    for line in src.splitlines():
        if "[label=" in line:
            ident, label = line.strip().split(" [label=")
            ids[label.split(" (")[0].strip('"')] = ident
    assert set(ids) == {"inp", "left", "right", "cat", "head"}
    edges = {tuple(l.strip(" ;").split(" -> ")) for l in src.splitlines() if "->" in l}
    want = {("inp", "left"), ("inp", "right"), ("left", "cat"), ("right", "cat"), ("cat", "head")}
    assert edges == {(ids[a], ids[b]) for a, b in want}
    assert "head (Dense)\\ninput: (None, 6)\\noutput: (None, 2)\\nactivation: softmax" in src
    with pytest.raises(ValueError, match="rankdir"):
        dot_source(_graph_model(), rankdir="BT")
    with pytest.raises(ValueError, match="not built"):
        dot_source(pynn.Sequential([layers.Dense(2)]))


def test_plot_model_to_dot_file_needs_nothing(tmp_path):
    pynn.utils.plot_model(_graph_model(), to_file=tmp_path / "m.dot", show_shapes=True)
    text = (tmp_path / "m.dot").read_text()
    assert text.count("->") == 5 and "(None, 4)" in text


@pytest.mark.skipif(HAVE_PYDOT, reason="checks the error raised when pydot is missing")
def test_model_to_dot_without_pydot_says_what_to_install():
    with pytest.raises(ImportError, match="pip install pydot.*Graphviz"):
        pynn.utils.model_to_dot(_graph_model())
    with pytest.raises(ImportError, match="pip install pydot"):
        pynn.utils.plot_model(_graph_model(), to_file="never_written.png")
    assert not os.path.exists("never_written.png")


def test_model_to_dot_error_path_forced(monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "pydot":
            raise ImportError("no pydot")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match="pip install pydot"):
        pynn.utils.model_to_dot(_graph_model())


@pytest.mark.skipif(not HAVE_PYDOT, reason="pydot missing: pip install '.[test]'")
def test_model_to_dot_with_pydot(tmp_path):
    d = pynn.utils.model_to_dot(_graph_model(), show_shapes=True)
    names = [n.get_name() for n in d.get_nodes() if n.get_name() not in ("graph", "node")]
    assert len(names) == 5 and len(d.get_edges()) == 5
    if shutil.which("dot") is None:
        with pytest.raises(ImportError, match="Graphviz's dot program"):
            pynn.utils.plot_model(_graph_model(), to_file=tmp_path / "m.png")
    else:
        pynn.utils.plot_model(_graph_model(), to_file=tmp_path / "m.png")
        assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------ backend / config --
def test_backend_and_config_functions():
    for mod in (pynn.backend, pynn.config):
        assert mod.image_data_format() == "channels_last"
        assert mod.floatx() == "float32"
        assert mod.epsilon() == 1e-7
        assert mod.backend() == "pynn"
        mod.set_image_data_format("channels_last")
        with pytest.raises(NotImplementedError, match="channels_last only"):
            mod.set_image_data_format("channels_first")
        with pytest.raises(ValueError, match="data_format"):
            mod.set_image_data_format("nhwc")
        mod.set_epsilon(1e-7)
        with pytest.raises(NotImplementedError, match="fixed epsilon"):
            mod.set_epsilon(1e-5)
    assert pynn.backend.get_ops() is pynn.backend.get_ops("cpu")      # get_ops unchanged
    pynn.config.disable_traceback_filtering()
    assert pynn.config.is_traceback_filtering_enabled() is False
    pynn.config.enable_traceback_filtering()
    assert pynn.config.is_traceback_filtering_enabled() is True


def test_set_floatx_is_the_models_default_dtype():
    try:
        pynn.backend.set_floatx("float64")
        assert pynn.config.floatx() == "float64"
        m = pynn.Sequential([layers.Dense(2, input_shape=(3,))])
        assert m.get_weights()[0].dtype == np.float64
        inp = pynn.Input((3,))
        assert pynn.Model(inp, layers.Dense(2)(inp)).get_weights()[0].dtype == np.float64
        assert pynn.Sequential([layers.Dense(2, input_shape=(3,))], dtype="float32") \
            .get_weights()[0].dtype == np.float32
        with pytest.raises(NotImplementedError, match="mixed precision"):
            pynn.config.set_floatx("float16")
        with pytest.raises(ValueError, match="unknown float type"):
            pynn.config.set_floatx("int8")
    finally:
        pynn.config.set_floatx("float32")
    assert pynn.Sequential([layers.Dense(2, input_shape=(3,))]).get_weights()[0].dtype == np.float32


def test_clear_session_restarts_names():
    pynn.backend.clear_session()
    assert layers.Dense(2).name == "dense"
    pynn.backend.clear_session()
    assert layers.Dense(2).name == "dense"


# ------------------------------------------------------------------ model conveniences --
def _mlp():
    pynn.utils.set_random_seed(2)
    return pynn.Sequential([layers.Dense(4, activation="relu", input_shape=(3,)),
                            layers.Dense(2, activation="softmax")])


def _numpy_forward(m, x):
    w1, b1, w2, b2 = m.get_weights()
    z = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_call_predict_and_predict_on_batch_on_arrays():
    m = _mlp()
    x = np.random.default_rng(1).standard_normal((7, 3)).astype(np.float32)
    ref = _numpy_forward(m, x.astype(np.float64))
    np.testing.assert_allclose(m(x), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.predict_on_batch(x), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.predict(x[:1], verbose=0), ref[:1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"one sample\? add the batch axis"):
        m.predict(x[0], verbose=0)


def test_sequential_add_after_summary_keeps_weights():
    m = pynn.Sequential([layers.Dense(4, activation="relu", input_shape=(3,))])
    lines = []
    m.summary(print_fn=lines.append)
    w = m.get_weights()
    m.add(layers.Dense(2, activation="softmax"))
    lines2 = []
    m.summary(print_fn=lines2.append)
    assert any("(None, 2)" in l for l in lines2) and not any("(None, 2)" in l for l in lines)
    np.testing.assert_array_equal(m.get_weights()[0], w[0])
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(m.predict(x, verbose=0), _numpy_forward(m, x.astype(np.float64)),
                               rtol=1e-5, atol=1e-6)
