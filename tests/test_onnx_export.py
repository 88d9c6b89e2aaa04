"""ONNX export (pynn/export/onnx.py): the written file, run by onnxruntime,
gives pynn's predict outputs (float32, within 1e-5) for batch sizes 1 and 7
from one file (dynamic batch): the zoo models, a graph model with every
merge and a nested model, and each layer on its own with the options whose
geometry is easy to get wrong (Keras' asymmetric "same" padding, dilation,
groups, transposed convolutions, average pooling that excludes padding)."""
import subprocess

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install '.[onnx]'")
ort = pytest.importorskip("onnxruntime",
                          reason="checking ONNX files needs onnxruntime: pip install '.[onnx]'")

import pynn  # noqa: E402
from pynn import layers as L  # noqa: E402
from pynn import zoo  # noqa: E402

ATOL = 1e-5


def randomize(model, seed=0):
    """Random weights everywhere (the initial ones hide mistakes: zero biases,
    unit batch-norm statistics, near-uniform softmax outputs)."""
    rng = np.random.default_rng(seed)
    for layer in model._leaves():
        vals = []
        for s in layer.specs:
            if "variance" in s.name:
                vals.append(rng.uniform(0.5, 2.0, s.shape))
            elif s.name == "count":
                vals.append(np.full(s.shape, 100.0))
            else:
                vals.append(rng.normal(0.0, 0.5, s.shape))
        if vals:
            layer.set_weights(vals)
    return model


def session(model, tmp_path, name="m.onnx"):
    path = tmp_path / name
    model.export(str(path), format="onnx", verbose=False)
    onnx.checker.check_model(str(path))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check(model, tmp_path, input_shapes=None, batches=(1, 7), seed=1, atol=ATOL):
    sess = session(model, tmp_path)
    shapes = input_shapes or [tuple(t.shape[1:]) for t in model.inputs]
    rng = np.random.default_rng(seed)
    for n in batches:
        xs = [rng.normal(0, 1, (n,) + tuple(s)).astype(np.float32) for s in shapes]
        ref = model.predict(xs if len(xs) > 1 else xs[0], verbose=0, batch_size=n)
        ref = ref if isinstance(ref, list) else [ref]
        got = sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs)})
        assert len(got) == len(ref)
        for r, g in zip(ref, got):
            assert g.shape == r.shape
            np.testing.assert_allclose(g, r, atol=atol, rtol=1e-5)
    return sess


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet20"])
def test_zoo_models(name, tmp_path):
    if name == "mlp":
        model = zoo.mlp(784, 10)
    else:
        model = zoo.MODELS[name]((28, 28, 1) if name == "cnn" else (32, 32, 3), 10)
    randomize(model)
    sess = check(model, tmp_path)
    inp = sess.get_inputs()[0]
    assert isinstance(inp.shape[0], str)          # a dynamic batch dimension
    assert [i.name for i in sess.get_inputs()] == model.input_names
    assert [o.name for o in sess.get_outputs()] == model.output_names


def test_graph_model_with_merges_and_nested_model(tmp_path):
    a = pynn.Input((8, 8, 3), name="image")
    b = pynn.Input((8, 8, 3), name="other")
    inner_in = pynn.Input((8, 8, 4))
    inner = pynn.Model(inner_in, L.Conv2D(4, 3, padding="same", activation="tanh")(inner_in),
                       name="inner")
    x = L.Conv2D(4, 3, padding="same")(a)
    y = L.Conv2D(4, 1)(b)
    x = inner(x)
    z = L.Concatenate()([L.add([x, y]), L.subtract([x, y]), L.multiply([x, y]),
                         L.average([x, y, x]), L.maximum([x, y]), L.minimum([x, y])])
    z = L.BatchNormalization()(z)
    z = L.Activation("relu")(z)
    z2 = inner(L.Conv2D(4, 1)(z))                  # the nested model called twice
    pooled = L.GlobalAveragePooling2D()(z2)
    out1 = L.Dense(5, name="logits")(L.Flatten()(z))
    out2 = L.Dense(3, activation="softmax", name="probs")(pooled)
    model = pynn.Model([a, b], [out1, out2])
    randomize(model)
    sess = check(model, tmp_path)
    assert [o.name for o in sess.get_outputs()] == ["logits", "probs"]
    assert [i.name for i in sess.get_inputs()] == ["image", "other"]


def test_sequential_inside_functional(tmp_path):
    seq = pynn.Sequential([L.Dense(6, activation="elu", input_shape=(5,)), L.Dense(4)],
                          name="block")
    inp = pynn.Input((5,))
    out = L.Dense(2)(seq(L.Dense(5, activation="gelu")(inp)))
    check(randomize(pynn.Model(inp, out)), tmp_path)


IMG = (9, 10, 4)     # odd / even sizes: Keras' "same" padding is asymmetric on one side

LAYERS = {
    "conv_valid": (IMG, lambda: L.Conv2D(5, 3)),
    "conv_same_s2": (IMG, lambda: L.Conv2D(5, 3, strides=2, padding="same")),
    "conv_same_s2_k4": (IMG, lambda: L.Conv2D(3, 4, strides=2, padding="same")),
    "conv_same_s2_k2": (IMG, lambda: L.Conv2D(3, 2, strides=(2, 3), padding="same")),
    "conv_dilated": (IMG, lambda: L.Conv2D(3, 3, dilation_rate=2, padding="same")),
    "conv_dilated_valid": (IMG, lambda: L.Conv2D(3, (2, 3), dilation_rate=(2, 1))),
    "conv_groups": (IMG, lambda: L.Conv2D(6, 3, groups=2, padding="same", activation="relu")),
    "conv_nobias_sigmoid": (IMG, lambda: L.Conv2D(3, 1, use_bias=False, activation="sigmoid")),
    "depthwise": (IMG, lambda: L.DepthwiseConv2D(3, depth_multiplier=2, padding="same")),
    "depthwise_s2": (IMG, lambda: L.DepthwiseConv2D(3, strides=2, padding="same",
                                                    activation="relu6")),
    "separable": (IMG, lambda: L.SeparableConv2D(5, 3, depth_multiplier=2, padding="same",
                                                 activation="relu")),
    "separable_s2": (IMG, lambda: L.SeparableConv2D(5, 3, strides=2)),
    "conv_transpose_valid": (IMG, lambda: L.Conv2DTranspose(3, 3)),
    "conv_transpose_s2_same": (IMG, lambda: L.Conv2DTranspose(3, 3, strides=2, padding="same")),
    "conv_transpose_s2_valid": (IMG, lambda: L.Conv2DTranspose(3, 4, strides=2)),
    "conv_transpose_s3_k2": (IMG, lambda: L.Conv2DTranspose(3, 2, strides=3)),
    "conv_transpose_outpad": (IMG, lambda: L.Conv2DTranspose(3, 3, strides=2, padding="same",
                                                             output_padding=1)),
    "conv_transpose_dilated": (IMG, lambda: L.Conv2DTranspose(2, 3, dilation_rate=2,
                                                              activation="tanh")),
    "maxpool": (IMG, lambda: L.MaxPooling2D()),
    "maxpool_same_s2": (IMG, lambda: L.MaxPooling2D(3, strides=2, padding="same")),
    "avgpool": (IMG, lambda: L.AveragePooling2D((2, 3))),
    "avgpool_same": (IMG, lambda: L.AveragePooling2D(3, strides=2, padding="same")),
    "avgpool_same_s1": (IMG, lambda: L.AveragePooling2D(2, strides=1, padding="same")),
    "global_avg": (IMG, lambda: L.GlobalAveragePooling2D()),
    "global_avg_keepdims": (IMG, lambda: L.GlobalAveragePooling2D(keepdims=True)),
    "global_max": (IMG, lambda: L.GlobalMaxPooling2D()),
    "batchnorm": (IMG, lambda: L.BatchNormalization()),
    "batchnorm_no_scale_center": (IMG, lambda: L.BatchNormalization(scale=False, center=False)),
    "layernorm": (IMG, lambda: L.LayerNormalization()),
    "layernorm_axes": (IMG, lambda: L.LayerNormalization(axis=[1, 3])),
    "groupnorm": (IMG, lambda: L.GroupNormalization(groups=2)),
    "normalization": (IMG, lambda: L.Normalization()),
    "normalization_const": (IMG, lambda: L.Normalization(mean=[0.1, 0.2, 0.3, 0.4],
                                                         variance=[1.0, 4.0, 0.25, 0.0])),
    "normalization_invert": (IMG, lambda: L.Normalization(mean=0.5, variance=2.0, axis=None,
                                                          invert=True)),
    "rescaling": (IMG, lambda: L.Rescaling([0.5, 2.0, -1.0, 3.0], offset=0.25)),
    "resizing_bilinear": (IMG, lambda: L.Resizing(5, 13)),
    "resizing_nearest": (IMG, lambda: L.Resizing(14, 6, interpolation="nearest")),
    "resizing_crop": (IMG, lambda: L.Resizing(6, 4, crop_to_aspect_ratio=True)),
    "resizing_pad": (IMG, lambda: L.Resizing(6, 3, pad_to_aspect_ratio=True, fill_value=0.5)),
    "relu_layer": (IMG, lambda: L.ReLU(max_value=0.7, negative_slope=0.1, threshold=0.2)),
    "leaky_relu": (IMG, lambda: L.LeakyReLU()),
    "elu_layer": (IMG, lambda: L.ELU(alpha=0.7)),
    "softmax_axis1": (IMG, lambda: L.Softmax(axis=1)),
    "softmax_axes": (IMG, lambda: L.Softmax(axis=[1, 2])),
    "prelu": (IMG, lambda: L.PReLU(shared_axes=[1, 2])),
    "dropout": (IMG, lambda: L.Dropout(0.5)),
    "spatial_dropout": (IMG, lambda: L.SpatialDropout2D(0.5)),
    "gaussian_noise": (IMG, lambda: L.GaussianNoise(0.5)),
    "gaussian_dropout": (IMG, lambda: L.GaussianDropout(0.5)),
    "activity_reg": (IMG, lambda: L.ActivityRegularization(l1=0.1)),
    "flatten": (IMG, lambda: L.Flatten()),
    "reshape": (IMG, lambda: L.Reshape((-1, 8))),
    "zero_padding": (IMG, lambda: L.ZeroPadding2D(((1, 2), (0, 3)))),
    "cropping": (IMG, lambda: L.Cropping2D(((1, 2), (3, 0)))),
    "upsampling": (IMG, lambda: L.UpSampling2D((2, 3))),
    "permute": (IMG, lambda: L.Permute((2, 3, 1))),
    "repeat_vector": ((6,), lambda: L.RepeatVector(3)),
    "dense_3d": ((4, 6), lambda: L.Dense(5, activation="swish")),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer(name, tmp_path):
    shape, make = LAYERS[name]
    inp = pynn.Input(shape)
    model = pynn.Model(inp, make()(inp))
    if name == "normalization":
        model.layers[1].adapt(np.random.default_rng(3).normal(1.0, 2.0, (20,) + shape))
    elif name not in ("normalization_const", "normalization_invert"):
        randomize(model)
    check(model, tmp_path)


ACTIVATIONS = ["linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "sigmoid",
               "hard_sigmoid", "hard_silu", "silu", "mish", "softplus", "softsign", "tanh",
               "exponential", "softmax", "log_softmax"]


def test_every_activation_is_covered():
    from pynn.backend.activation_ref import ACTIVATIONS as ALL
    assert sorted(ACTIVATIONS) == sorted(ALL)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation(act, tmp_path):
    inp = pynn.Input((3, 3, 5))
    model = pynn.Model(inp, L.Activation(act)(L.Conv2D(6, 1, activation=act)(inp)))
    randomize(model)
    check(model, tmp_path)


def test_gelu_approximate(tmp_path):
    inp = pynn.Input((7,))
    model = pynn.Model(inp, L.Dense(4)(inp))
    randomize(model)
    # the approximate form through the Ops parameters of an Activation
    layer = L.Activation("gelu")
    layer.act_params = {"approximate": True}
    model = pynn.Model(inp, layer(model.outputs[0]))
    check(model, tmp_path)


def test_unmapped_layer_names_itself(tmp_path):
    class Doubler(pynn.layers.Layer):
        def forward(self, x, training=False):
            return x * 2

    inp = pynn.Input((3,))
    model = pynn.Model(inp, Doubler(name="twice")(L.Dense(3)(inp)))
    with pytest.raises(NotImplementedError, match=r"'twice' \(Doubler\)"):
        model.export(str(tmp_path / "m.onnx"), format="onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("fmt", ["tf_saved_model", "h5", "torch"])
def test_other_formats_refused(fmt, tmp_path):
    model = zoo.mlp(4, 2)
    with pytest.raises(NotImplementedError, match="onnx"):
        model.export(str(tmp_path / "m"), format=fmt)


def test_unbuilt_sequential_refused(tmp_path):
    model = pynn.Sequential([L.Dense(3)])
    with pytest.raises(ValueError, match="input shape"):
        model.export(str(tmp_path / "m.onnx"), format="onnx")


def test_cli_export_onnx(tmp_path):
    from test_pynn_cli import run
    model = randomize(zoo.cnn((12, 12, 1), 4))
    model.save(str(tmp_path / "cnn.npz"))
    r = run(["export-onnx", str(tmp_path / "cnn.npz"), str(tmp_path / "cnn.onnx")])
    assert r.returncode == 0, r.stderr + r.stdout
    assert "cnn.onnx" in r.stdout
    sess = ort.InferenceSession(str(tmp_path / "cnn.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((7, 12, 12, 1), dtype=np.float32)
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0],
                               model.predict(x, verbose=0), atol=ATOL)
    bad = run(["export-onnx", str(tmp_path / "missing.npz"), str(tmp_path / "x.onnx")])
    assert bad.returncode != 0 and "missing.npz" in bad.stderr
    assert not (tmp_path / "x.onnx").exists()
