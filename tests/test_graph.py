"""Graph models: the functional API, merge layers, shared layers, nested
models, multiple inputs and outputs, files, summary, ResNet-20.

Gradients are checked in float64 by directional finite differences of the
loss along a random direction in parameter space (and on the inputs of
merge layers), through branching graphs and shared layers."""
import io as _io
import contextlib

import numpy as np
import pytest

import pynn
from pynn import layers as L


def loss_and_grad(m, x, y):
    """(mean loss, copy of the flat gradient) of one training-mode pass
    without an optimizer step."""
    m._require_ready(x)
    xs, ys = m._check_xy(x, y)
    n = xs[0].shape[0]
    outs = m._forward(xs, True, logits=True)
    douts = [np.zeros_like(o) for o in outs]
    sums = m._losses_sums(outs, ys, 1.0 / n, douts)
    m._backward(douts)
    return sums[0] / n, m._grads.copy()


def check_grads(m, x, y, eps=1e-6, tol=1e-6, seed=0):
    rng = np.random.default_rng(seed)
    p0 = m._params.copy()
    _, g = loss_and_grad(m, x, y)
    for _ in range(3):
        d = rng.standard_normal(p0.shape)
        m._params[...] = p0 + eps * d
        lp, _ = loss_and_grad(m, x, y)
        m._params[...] = p0 - eps * d
        lm, _ = loss_and_grad(m, x, y)
        m._params[...] = p0
        fd = (lp - lm) / (2 * eps)
        an = float(g @ d)
        assert abs(fd - an) <= tol * max(1.0, abs(fd)), (fd, an)


def compiled(m, loss="sparse_categorical_crossentropy", **kw):
    m.compile(optimizer=pynn.optimizers.SGD(0.05), loss=loss, **kw)
    return m


def residual_model(dtype="float64", seed=1):
    pynn.utils.set_random_seed(seed)
    inp = L.Input((6, 6, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
    y = L.Conv2D(4, 3, padding="same")(x)
    y = L.BatchNormalization()(y)
    x = L.add([x, y])
    x = L.Activation("relu")(x)
    s = L.Conv2D(6, 1, strides=2, padding="same")(x)          # strided projection
    z = L.Conv2D(6, 3, strides=2, padding="same", activation="relu")(x)
    x = s + z                                                 # arithmetic on tensors
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(3, activation="softmax")(x)
    return pynn.Model(inp, out, dtype=dtype)


def data(n=10, shape=(6, 6, 3), k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n,) + shape), rng.integers(0, k, n)


# ------------------------------------------------------------ construction --

def test_functional_basics():
    pynn.utils.clear_session()
    m = residual_model()
    names = [l.name for l in m.layers]
    assert names[0] == "input_layer" and names[-1] == "dense"
    assert m.get_layer("dense") is m.layers[-1]
    assert m.get_layer(index=1) is m.layers[1]
    with pytest.raises(ValueError, match="no layer named"):
        m.get_layer("nope")
    assert m.input_shape == (None, 6, 6, 3) and m.output_shape == (None, 3)
    assert isinstance(m.layers[1].output, pynn.KerasTensor)
    assert m.layers[1].input is m.inputs[0]
    # parameters: conv 3*3*3*4+4, conv 3*3*4*4+4, bn 4*4, conv1x1 4*6+6, conv 3*3*4*6+6, dense 6*3+3
    assert m.count_params() == 112 + 148 + 16 + 30 + 222 + 21


def test_keras_layer_order_and_weight_order():
    """Keras orders layers by decreasing depth, ties by first visit of the
    walk from the outputs; weights follow the layers."""
    pynn.utils.clear_session()
    a = L.Input((4,), name="a")
    b = L.Input((4,), name="b")
    x = L.Dense(3, name="da")(a)
    y = L.Dense(3, name="db")(b)
    z = L.Dense(3, name="dz")(L.concatenate([x, y], name="cat"))
    m = pynn.Model([a, b], z)
    assert [l.name for l in m.layers] == ["a", "b", "da", "db", "cat", "dz"]
    assert [w.shape for w in m.get_weights()] == [(4, 3), (3,), (4, 3), (3,), (6, 3), (3,)]


def test_graph_errors():
    a = L.Input((4,))
    b = L.Input((5,))
    with pytest.raises(ValueError, match="incompatible shapes"):
        L.Add()([L.Dense(3)(a), L.Dense(2)(b)])
    with pytest.raises(ValueError, match="Subtract needs"):
        L.Subtract()([a, a, a])
    with pytest.raises(ValueError, match="matching shapes"):
        L.concatenate([L.Input((2, 3)), L.Input((3, 3))], axis=-1)
    # an output that the inputs cannot reach
    with pytest.raises(ValueError, match="disconnected"):
        pynn.Model(a, L.Dense(2)(b))
    # an input that is not an Input
    with pytest.raises(ValueError, match="pynn.Input"):
        pynn.Model(L.Dense(2)(a), L.Dense(2)(a))
    with pytest.raises(TypeError, match="KerasTensor"):
        pynn.Model(a, np.zeros(3))
    with pytest.raises(TypeError, match="symbolic"):
        np.asarray(a)


def test_cycle_detected():
    a = L.Input((3,))
    d = L.Dense(3)
    y = d(a)
    node = d._inbound_nodes[0]
    node.input_tensors = [y]          # forge a cycle
    with pytest.raises(ValueError, match="cycle"):
        pynn.Model(a, y)


def test_subclassing_refused():
    class Mine(pynn.Model):
        def call(self, x):
            return x
    with pytest.raises(NotImplementedError, match="functional API"):
        Mine()
    with pytest.raises(NotImplementedError, match="subclassed"):
        pynn.Model()


# ------------------------------------------------------------ gradients --

def test_residual_gradients_float64():
    m = compiled(residual_model())
    x, y = data()
    check_grads(m, x, y)


@pytest.mark.parametrize("merge", ["Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
                                   "Concatenate"])
def test_merge_layer_gradients(merge):
    pynn.utils.set_random_seed(3)
    inp = L.Input((5,))
    a = L.Dense(4, activation="tanh")(inp)
    b = L.Dense(4)(inp)
    c = L.Dense(4, activation="relu")(inp)
    args = [a, b] if merge == "Subtract" else [a, b, c]
    x = getattr(L, merge)()(args)
    out = L.Dense(3, activation="softmax")(x)
    m = compiled(pynn.Model(inp, out, dtype="float64"))
    xx, yy = data(12, (5,))
    check_grads(m, xx, yy)
    # forward against NumPy
    fa = pynn.Model(inp, [a, b, c, x], dtype="float64")
    va, vb, vc, vx = fa.predict(xx, verbose=0)
    ref = {"Add": va + vb + vc, "Subtract": va - vb, "Multiply": va * vb * vc,
           "Average": (va + vb + vc) / 3, "Maximum": np.maximum(np.maximum(va, vb), vc),
           "Minimum": np.minimum(np.minimum(va, vb), vc),
           "Concatenate": np.concatenate([va, vb, vc], axis=-1)}[merge]
    np.testing.assert_allclose(vx, ref, rtol=1e-12, atol=1e-12)


def test_shared_layer_gradients_add_up():
    pynn.utils.set_random_seed(4)
    a = L.Input((5,))
    b = L.Input((5,))
    shared = L.Dense(4, activation="tanh")
    x = L.concatenate([shared(a), shared(b)])
    out = L.Dense(2, activation="softmax")(x)
    m = compiled(pynn.Model([a, b], out, dtype="float64"))
    assert len(shared._inbound_nodes) == 2
    assert m.count_params() == 5 * 4 + 4 + 8 * 2 + 2
    rng = np.random.default_rng(0)
    xa, xb = rng.standard_normal((9, 5)), rng.standard_normal((9, 5))
    y = rng.integers(0, 2, 9)
    check_grads(m, [xa, xb], y)
    # the shared layer's gradient is the sum over its two calls: zero the other input
    # and the total gradient differs from either alone
    with pytest.raises(AttributeError, match="several inbound nodes"):
        shared.output


def test_gradient_of_tensor_with_several_consumers():
    pynn.utils.set_random_seed(5)
    inp = L.Input((6,))
    h = L.Dense(5, activation="tanh")(inp)
    o1 = L.Dense(5)(h)
    o2 = L.Dense(5, activation="tanh")(h)
    x = L.add([h, o1, o2, h])        # h used three times (twice in the same merge)
    out = L.Dense(3, activation="softmax")(x)
    m = compiled(pynn.Model(inp, out, dtype="float64"))
    check_grads(m, *data(8, (6,)))


# ------------------------------------------------------------ training --

def test_multi_input_multi_output_fit():
    pynn.utils.set_random_seed(6)
    img = L.Input((6, 6, 1), name="img")
    meta = L.Input((3,), name="meta")
    x = L.Flatten()(L.Conv2D(2, 3, activation="relu")(img))
    x = L.concatenate([x, L.Dense(4, activation="relu")(meta)])
    cls = L.Dense(3, activation="softmax", name="cls")(x)
    reg = L.Dense(1, name="reg")(x)
    m = pynn.Model({"img": img, "meta": meta}, {"cls": cls, "reg": reg})
    m.compile(optimizer="adam", loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
              loss_weights={"cls": 1.0, "reg": 0.5}, metrics={"cls": ["accuracy"]})
    rng = np.random.default_rng(0)
    xi, xm = rng.standard_normal((40, 6, 6, 1)), rng.standard_normal((40, 3))
    yc, yr = rng.integers(0, 3, 40), rng.standard_normal((40, 1))
    h = m.fit({"img": xi, "meta": xm}, {"cls": yc, "reg": yr}, epochs=3, batch_size=8, verbose=0)
    assert {"loss", "cls_loss", "reg_loss", "cls_accuracy"} <= set(h.history)
    for e in range(3):
        assert h.history["loss"][e] == pytest.approx(
            h.history["cls_loss"][e] + 0.5 * h.history["reg_loss"][e], rel=1e-6)
    assert h.history["loss"][-1] < h.history["loss"][0]
    p = m.predict({"img": xi, "meta": xm}, verbose=0)
    assert set(p) == {"cls", "reg"} and p["cls"].shape == (40, 3) and p["reg"].shape == (40, 1)
    np.testing.assert_allclose(p["cls"].sum(axis=1), 1, rtol=1e-5)
    # lists in the model's order work too
    r = m.evaluate([xi, xm], [yc, yr], verbose=0, return_dict=True)
    assert set(r) == {"loss", "cls_loss", "reg_loss", "cls_accuracy"}
    with pytest.raises(ValueError, match="missing"):
        m.fit({"img": xi}, {"cls": yc, "reg": yr}, verbose=0)


def test_intermediate_activations_model():
    m = residual_model(dtype="float32")
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, _ = data(4)
    feat = pynn.Model(m.inputs, m.layers[3].output)
    got = feat.predict(x.astype(np.float32), verbose=0)
    # the same layers' weights: recompute the first conv + BN-free prefix by hand
    conv1 = m.layers[1]
    ref = pynn.backend.get_ops("numpy").conv2d_forward(
        x.astype(np.float32), conv1.w["kernel"], conv1.w["bias"], padding="same",
        activation="relu")
    np.testing.assert_allclose(pynn.Model(m.inputs, conv1.output).predict(
        x.astype(np.float32), verbose=0), ref, rtol=1e-5, atol=1e-5)
    assert got.shape == (4,) + tuple(m.layers[3].output.shape[1:])
    # the full model's softmax output still comes out as probabilities
    np.testing.assert_allclose(m.predict(x.astype(np.float32), verbose=0).sum(axis=1), 1, rtol=1e-5)


def test_nested_model_and_transfer_learning():
    pynn.utils.set_random_seed(7)
    base = pynn.Sequential([L.Conv2D(3, 3, activation="relu", input_shape=(6, 6, 1)),
                            L.Flatten()], name="base")
    before = [w.copy() for w in base.get_weights()]
    base.trainable = False
    inp = L.Input((6, 6, 1))
    out = L.Dense(2, activation="softmax")(base(inp))
    m = pynn.Model(inp, out)
    m.compile(optimizer=pynn.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    assert len(m.trainable_weights) == 2 and len(m.non_trainable_weights) == 2
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((16, 6, 6, 1)), rng.integers(0, 2, 16)
    head0 = m.layers[-1].get_weights()[0].copy()
    m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for a, b in zip(before, base.get_weights()):
        np.testing.assert_array_equal(a, b)          # the frozen base did not move
    assert not np.array_equal(head0, m.layers[-1].get_weights()[0])
    # unfreeze: compile again and the base trains
    base.trainable = True
    m.compile(optimizer=pynn.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    m.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert not np.array_equal(before[0], base.get_weights()[0])
    # Sequential([model, Softmax-like layer])
    s = pynn.Sequential([base, L.Dense(2), L.Activation("softmax")])
    s.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    s.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert s.predict(x, verbose=0).shape == (16, 2)


def test_nested_model_gradients_float64():
    pynn.utils.set_random_seed(8)
    i1 = L.Input((5,))
    sub = pynn.Model(i1, L.Dense(4, activation="tanh")(i1), dtype="float64")
    a = L.Input((5,))
    b = L.Input((5,))
    x = L.add([sub(a), sub(b)])           # a shared submodel
    out = L.Dense(3, activation="softmax")(x)
    m = compiled(pynn.Model([a, b], out, dtype="float64"))
    rng = np.random.default_rng(2)
    check_grads(m, [rng.standard_normal((7, 5)), rng.standard_normal((7, 5))],
                rng.integers(0, 3, 7))


def test_residual_block_against_numpy():
    """A basic residual block's forward and input gradient against a NumPy
    transcription of the same arithmetic."""
    from pynn.backend import get_ops
    np_ops = get_ops("numpy")
    pynn.utils.set_random_seed(9)
    inp = L.Input((5, 5, 4))
    y = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
    y = L.Conv2D(4, 3, padding="same")(y)
    out = L.Activation("relu")(L.add([inp, y]))
    m = pynn.Model(inp, out, dtype="float64")
    x = np.random.default_rng(0).standard_normal((3, 5, 5, 4))
    c1, c2 = m.layers[1], m.layers[2]
    h = np_ops.conv2d_forward(x, c1.w["kernel"], c1.w["bias"], padding="same", activation="relu")
    z = np_ops.conv2d_forward(h, c2.w["kernel"], c2.w["bias"], padding="same")
    ref = np.maximum(x + z, 0)
    np.testing.assert_allclose(m.predict(x, verbose=0), ref, rtol=1e-12, atol=1e-12)


def test_sequential_is_a_graph_and_add_after_build():
    pynn.utils.clear_session()
    s = pynn.Sequential([L.Dense(4, input_shape=(3,)), L.Dense(2)])
    assert s.built and s.inputs[0].shape == (None, 3)
    s.summary(print_fn=lambda *_: None)
    w0 = s.get_weights()
    s.add(L.Dense(5))
    assert s.output_shape == (None, 5)
    for a, b in zip(w0, s.get_weights()[:4]):
        np.testing.assert_array_equal(a, b)      # existing weights kept
    assert [l.name for l in s.layers] == ["dense", "dense_1", "dense_2"]


# ------------------------------------------------------------ files, summary, clone --

def test_graph_save_load_roundtrip(tmp_path):
    m = residual_model(dtype="float32")
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = data(20)
    x = x.astype(np.float32)
    m.fit(x, y, epochs=1, batch_size=5, verbose=0)
    m.save(tmp_path / "g.npz")
    m2 = pynn.load_model(tmp_path / "g.npz")
    assert type(m2) is pynn.Model
    assert [l.name for l in m2.layers] == [l.name for l in m.layers]
    for a, b in zip(m.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(m.predict(x, verbose=0), m2.predict(x, verbose=0))
    # training continues identically (optimizer state restored)
    m.fit(x, y, epochs=1, batch_size=5, verbose=0, shuffle=False)
    m2.fit(x, y, epochs=1, batch_size=5, verbose=0, shuffle=False)
    for a, b in zip(m.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_shared_and_nested_config_roundtrip(tmp_path):
    pynn.utils.set_random_seed(10)
    i1 = L.Input((5,))
    sub = pynn.Model(i1, L.Dense(4, activation="relu")(i1), name="sub")
    a, b = L.Input((5,)), L.Input((5,))
    shared = L.Dense(3)
    out = L.Dense(2, activation="softmax")(L.concatenate([shared(sub(a)), shared(sub(b))]))
    m = pynn.Model([a, b], out)
    m.save(tmp_path / "n.npz")
    m2 = pynn.load_model(tmp_path / "n.npz")
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((4, 5)).astype(np.float32) for _ in range(2)]
    np.testing.assert_array_equal(m.predict(xs, verbose=0), m2.predict(xs, verbose=0))


def test_clone_model():
    m = residual_model(dtype="float32")
    c = pynn.models.clone_model(m)
    assert [type(l) for l in c.layers] == [type(l) for l in m.layers]
    assert c.count_params() == m.count_params()
    assert all(a is not b for a, b in zip(c.layers, m.layers))
    s = pynn.zoo.cnn()
    cs = pynn.models.clone_model(s)
    assert isinstance(cs, pynn.Sequential) and cs.count_params() == s.count_params()


def test_graph_summary_connected_to():
    pynn.utils.clear_session()
    m = residual_model()
    buf = _io.StringIO()
    with contextlib.redirect_stdout(buf):
        m.summary()
    text = buf.getvalue()
    assert "Connected to" in text and "conv2d[0][0]" in text and "add (Add)" in text
    assert f"Total params: {m.count_params():,}" in text


# ------------------------------------------------------------ ResNet-20 --

def test_resnet20_parameters_and_training():
    m = pynn.zoo.resnet20()
    assert m.count_params() == 274_442
    bn = [l for l in m.layers if isinstance(l, L.BatchNormalization)]
    proj = [l for l in m.layers if isinstance(l, L.Conv2D) and l.kernel_size == (1, 1)]
    assert len(bn) == 19 and len(proj) == 2 and all(p.strides == (2, 2) for p in proj)
    assert sum(isinstance(l, L.Add) for l in m.layers) == 9
    m.compile(optimizer=pynn.zoo.make_optimizer("sgd"), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    h = m.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert np.isfinite(h.history["loss"]).all() and h.history["loss"][-1] < h.history["loss"][0]


def test_fused_plan_equals_unfused():
    """BN -> ReLU and BN -> Add -> ReLU run as one node: same outputs,
    gradients and training as the layer-by-layer plan."""
    from pynn.models import fusion
    pynn.utils.set_random_seed(11)
    inp = L.Input((6, 6, 3))
    x = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(inp)))
    y = L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(x))
    x = L.Activation("relu")(L.add([x, y]))                    # fused with the shortcut
    z = L.BatchNormalization()(L.Conv2D(4, 1)(x))
    tap = L.Activation("relu")(z)
    out = L.Dense(3, activation="softmax")(L.Flatten()(L.add([tap, z])))  # z has 2 consumers
    m = compiled(pynn.Model(inp, out, dtype="float64"))
    kinds = [type(n.layer).__name__ for n in m._exec.nodes]
    assert kinds.count("FusedBatchNorm") == 2 and "Add" in kinds
    assert len(m._exec.nodes) == len(m._plan.nodes) - 3
    x_, y_ = data(6)
    # the block input's two gradients (shortcut, then convolution) are summed by the
    # convolution's kernel writing into the shortcut's gradient
    into = []
    orig = L.Conv2D.backward

    def spy(self, dy, need_dx=True, dx_into=None):
        into.append(dx_into is not None)
        return orig(self, dy, need_dx, dx_into)
    L.Conv2D.backward = spy
    try:
        check_grads(m, x_, y_)
    finally:
        L.Conv2D.backward = orig
    assert any(into)
    old, fusion.ENABLED = fusion.ENABLED, False
    try:
        ref = compiled(pynn.Model(inp, out, dtype="float64"))
    finally:
        fusion.ENABLED = old
    assert len(ref._exec.nodes) == len(ref._plan.nodes)
    ref.set_weights(m.get_weights())
    la, ga = loss_and_grad(m, x_, y_)
    lb, gb = loss_and_grad(ref, x_, y_)
    assert la == pytest.approx(lb, rel=1e-12)
    np.testing.assert_allclose(ga, gb, rtol=1e-10, atol=1e-12)


def _conv_pool_model(dtype, pool, consumers=1):
    pynn.utils.set_random_seed(5)
    inp = L.Input((9, 9, 3))
    c = L.Conv2D(5, 3, padding="same", activation="relu")(inp)
    x = pool(c)
    if consumers == 2:                       # the conv output read twice: not fused
        x = L.add([L.GlobalMaxPooling2D()(x), L.GlobalAveragePooling2D()(c)])
    out = L.Dense(3, activation="softmax")(L.Flatten()(x))
    return compiled(pynn.Model(inp, out, dtype=dtype))


@pytest.mark.parametrize("pool,fused", [
    (lambda: L.MaxPooling2D(2), ["FusedConvPool"]),
    (lambda: L.MaxPooling2D(3, strides=2, padding="same"), ["ConvMaskedByPool", "PoolMasksRelu"]),
    (lambda: L.MaxPooling2D(2, strides=1), ["ConvMaskedByPool", "PoolMasksRelu"]),
], ids=["2x2-one-kernel", "3x3s2-same-overlapping", "2x2s1"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv_relu_pool_fusion_gives_the_same_bits(pool, fused, dtype):
    """Conv2D(relu) -> MaxPooling2D: the ReLU mask moves into the pooling's
    backward, and 2x2/stride-2 pooling runs in the convolution's kernel call
    (pynn/models/fusion.py); weights after training steps are bitwise those
    of the layer-by-layer plan, overlapping windows included."""
    from pynn.models import fusion
    x_, y_ = data(12, shape=(9, 9, 3))
    x_ = x_.astype(dtype)
    runs = []
    for enabled in (True, False):
        old, fusion.ENABLED = fusion.ENABLED, enabled
        try:
            m = _conv_pool_model(dtype, lambda t: pool()(t))
        finally:
            fusion.ENABLED = old
        kinds = [type(n.layer).__name__ for n in m._exec.nodes]
        assert all(k in kinds for k in fused) == enabled
        for _ in range(3):
            m.train_on_batch(x_, y_)
        runs.append(m.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    if dtype == "float64":
        check_grads(_conv_pool_model(dtype, lambda t: pool()(t)), x_, y_)
    # a second consumer of the convolution's output keeps the plain nodes
    m2 = _conv_pool_model(dtype, lambda t: pool()(t), consumers=2)
    assert not set(fused) & {type(n.layer).__name__ for n in m2._exec.nodes}


def test_conv_relu_pool_backward_through_the_pooled_gradient_gives_the_same_bits():
    """Under mixed_bfloat16 the fused Conv2D(relu) -> MaxPooling2D(2) node's
    backward is one kernel call that reads the convolution's gradient
    through the pooled one (nnkernels.conv2d_maxpool_backward; this geometry
    takes that path): weights after training steps are bitwise those of the
    layer-by-layer plan."""
    import nnkernels as nk
    from pynn.models import fusion
    assert nk._core._conv2d_maxpool_backward_fused((12, 10, 10, 16), (3, 3, 16, 32),
                                                   precision="bfloat16")
    x_, y_ = data(12, shape=(10, 10, 16))
    x_ = x_.astype("float32")

    def model():
        pynn.utils.set_random_seed(7)
        inp = L.Input((10, 10, 16))
        c = L.Conv2D(32, 3, activation="relu", dtype="mixed_bfloat16")(inp)
        x = L.MaxPooling2D(2, dtype="mixed_bfloat16")(c)
        out = L.Dense(3, activation="softmax")(L.Flatten()(x))
        return compiled(pynn.Model(inp, out))

    runs = []
    for enabled in (True, False):
        old, fusion.ENABLED = fusion.ENABLED, enabled
        try:
            m = model()
        finally:
            fusion.ENABLED = old
        kinds = [type(n.layer).__name__ for n in m._exec.nodes]
        assert ("FusedConvPool" in kinds) == enabled
        for _ in range(3):
            m.train_on_batch(x_, y_)
        runs.append(m.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_resnet20_weight_order_is_keras_order():
    """The same ResNet-20 code gives Keras 3's layer names, weight order and
    shapes (recorded from Keras 3.15 in tests/data), so get_weights /
    set_weights move weights between Keras and pynn."""
    import json
    import os
    ref = json.load(open(os.path.join(os.path.dirname(__file__), "data",
                                      "resnet20_keras_weights.json")))
    pynn.utils.clear_session()
    m = pynn.zoo.resnet20()
    paths = [f"{l.name}/{s.name}" for l in m._leaves() for s in l.specs]
    assert paths == ref["weight_paths"]
    assert [list(w.shape) for w in m.get_weights()] == ref["shapes"]
    assert m.count_params() == ref["count_params"]
    assert sum(w.size for w in m.trainable_weights) == ref["trainable_params"]


def test_training_step_makes_no_cyclic_garbage():
    """A steady training step of a graph model (nested model, residual add,
    batch norm) leaves nothing for the cycle collector: cyclic garbage made
    every step is freed late, makes the heap creep and costs page faults."""
    import gc
    inner = pynn.Sequential([L.Dense(8, activation="relu", input_shape=(6,))])
    a = pynn.Input((6,))
    h = inner(a)
    z = L.BatchNormalization()(L.Dense(8)(h)) + h
    m = pynn.Model(a, L.Dense(3, activation="softmax")(z))
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 6)).astype(np.float32), rng.integers(0, 3, 16)
    for _ in range(2):
        m.train_on_batch(x, y)
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(5):
            m.train_on_batch(x, y)
        assert gc.collect() == 0
    finally:
        if was:
            gc.enable()
