"""pynn.Sequential: training steps against hand-written NumPy, optimizers
against transcriptions of the Keras 3 formulas, summary/count_params, the
Keras-style API, determinism and checkpoint resume, bad inputs, callbacks."""
import math
import os

import numpy as np
import pytest

import pynn
from pynn import callbacks, layers, optimizers

F64 = np.float64


# ------------------------------------------------------- tiny model by hand --


def tiny_model(dtype="float64", device=None, seed=0):
    pynn.utils.set_random_seed(seed)
    return pynn.Sequential([layers.Dense(3, activation="relu", input_shape=(4,)),
                            layers.Dense(2, activation="softmax")], dtype=dtype, device=device)


def tiny_data(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)), rng.integers(0, 2, n)


def numpy_loss_and_grads(ws, x, y):
    """Mean sparse CE of Dense(3, relu) -> Dense(2, softmax), and its
    gradients, written out by hand in float64."""
    W1, b1, W2, b2 = (np.asarray(w, F64) for w in ws)
    x = np.asarray(x, F64)
    n = x.shape[0]
    z1 = x @ W1 + b1
    h = np.maximum(z1, 0)
    z2 = h @ W2 + b2
    z2s = z2 - z2.max(1, keepdims=True)
    p = np.exp(z2s) / np.exp(z2s).sum(1, keepdims=True)
    loss = -np.log(p[np.arange(n), y]).mean()
    dz2 = p.copy()
    dz2[np.arange(n), y] -= 1
    dz2 /= n
    dW2 = h.T @ dz2
    db2 = dz2.sum(0)
    dh = dz2 @ W2.T
    dz1 = dh * (z1 > 0)
    dW1 = x.T @ dz1
    db1 = dz1.sum(0)
    return loss, [dW1, db1, dW2, db2]


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("device", ["cpu", "numpy"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_steps_match_numpy(dtype, tol, device, nesterov):
    model = tiny_model(dtype, device)
    lr, mom = 0.1, 0.9
    model.compile(optimizer=optimizers.SGD(lr, momentum=mom, nesterov=nesterov),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = tiny_data()
    ws = [w.astype(F64) for w in model.get_weights()]
    ms = [np.zeros_like(w) for w in ws]
    for step in range(3):
        loss_np, grads = numpy_loss_and_grads(ws, x, y)
        loss, acc = model.train_on_batch(x.astype(dtype), y)
        assert loss == pytest.approx(loss_np, rel=10 * tol)
        for i, g in enumerate(grads):          # Keras 3 SGD
            ms[i] = mom * ms[i] - lr * g
            ws[i] = ws[i] + (mom * ms[i] - lr * g if nesterov else ms[i])
        for got, want in zip(model.get_weights(), ws):
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    assert model.optimizer.iterations == 3


def test_plain_sgd_step_and_evaluate_predict():
    model = tiny_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = tiny_data(9, seed=3)
    ws = model.get_weights()
    loss_np, grads = numpy_loss_and_grads(ws, x, y)
    loss, acc = model.evaluate(x, y, batch_size=4, verbose=0)
    assert loss == pytest.approx(loss_np, rel=1e-12)
    p = model.predict(x, batch_size=4, verbose=0)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
    assert acc == pytest.approx(np.mean(np.argmax(p, 1) == y))
    model.train_on_batch(x, y)
    for got, w, g in zip(model.get_weights(), ws, grads):
        np.testing.assert_allclose(got, w - 0.01 * g, rtol=1e-12, atol=1e-14)


def _keras_adam(p, g, s, t, lr, b1=0.9, b2=0.999, eps=1e-7):
    s.setdefault("m", np.zeros_like(p))
    s.setdefault("v", np.zeros_like(p))
    alpha = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    s["m"] += (g - s["m"]) * (1 - b1)
    s["v"] += (g * g - s["v"]) * (1 - b2)
    return p - alpha * s["m"] / (np.sqrt(s["v"]) + eps)


def _keras_rmsprop(p, g, s, t, lr, rho=0.9, eps=1e-7, momentum=0.0, centered=False):
    s.setdefault("v", np.zeros_like(p))
    s.setdefault("m", np.zeros_like(p))
    s.setdefault("ag", np.zeros_like(p))
    s["v"] = rho * s["v"] + (1 - rho) * g * g
    if centered:
        s["ag"] = rho * s["ag"] + (1 - rho) * g
        denom = s["v"] - s["ag"] ** 2 + eps
    else:
        denom = s["v"] + eps
    inc = lr * g / np.sqrt(denom)
    if momentum > 0:
        s["m"] = momentum * s["m"] + inc
        return p - s["m"]
    return p - inc


def _keras_adadelta(p, g, s, t, lr, rho=0.95, eps=1e-7):
    s.setdefault("ag", np.zeros_like(p))
    s.setdefault("ad", np.zeros_like(p))
    s["ag"] = rho * s["ag"] + (1 - rho) * g * g
    delta = -np.sqrt(s["ad"] + eps) / np.sqrt(s["ag"] + eps) * g
    s["ad"] = rho * s["ad"] + (1 - rho) * delta * delta
    return p + lr * delta


OPT_CASES = [
    ("adam", lambda: optimizers.Adam(0.01), lambda p, g, s, t: _keras_adam(p, g, s, t, 0.01)),
    ("adam-b", lambda: optimizers.Adam(0.02, beta_1=0.8, beta_2=0.9, epsilon=1e-4),
     lambda p, g, s, t: _keras_adam(p, g, s, t, 0.02, 0.8, 0.9, 1e-4)),
    ("rmsprop", lambda: optimizers.RMSprop(0.01), lambda p, g, s, t: _keras_rmsprop(p, g, s, t, 0.01)),
    ("rmsprop-mom-centered", lambda: optimizers.RMSprop(0.01, momentum=0.5, centered=True),
     lambda p, g, s, t: _keras_rmsprop(p, g, s, t, 0.01, momentum=0.5, centered=True)),
    ("adadelta", lambda: optimizers.Adadelta(1.0), lambda p, g, s, t: _keras_adadelta(p, g, s, t, 1.0)),
    ("sgd-clipnorm", lambda: optimizers.SGD(0.5, clipnorm=0.05),
     lambda p, g, s, t: p - 0.5 * g * min(1.0, 0.05 / np.linalg.norm(g))),
    ("sgd-clipvalue", lambda: optimizers.SGD(0.5, clipvalue=0.01),
     lambda p, g, s, t: p - 0.5 * np.clip(g, -0.01, 0.01)),
]


@pytest.mark.parametrize("name,make,ref", OPT_CASES, ids=[c[0] for c in OPT_CASES])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-11), ("float32", 2e-5)])
def test_optimizer_steps_match_keras_formulas(name, make, ref, dtype, tol):
    model = tiny_model(dtype)
    model.compile(optimizer=make(), loss="sparse_categorical_crossentropy")
    x, y = tiny_data(8, seed=1)
    ws = [w.astype(F64) for w in model.get_weights()]
    states = [{} for _ in ws]
    for t in (1, 2):
        _, grads = numpy_loss_and_grads(ws, x, y)
        if name == "sgd-clipnorm":  # the test is only meaningful if clipping happens
            assert all(np.linalg.norm(g) > 0.05 for g in grads)
        if name == "sgd-clipvalue":
            assert any(np.abs(g).max() > 0.01 for g in grads)
        model.train_on_batch(x.astype(dtype), y)
        ws = [ref(w, g, s, t) for w, g, s in zip(ws, grads, states)]
        for got, want in zip(model.get_weights(), ws):
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_global_clipnorm():
    model = tiny_model()
    model.compile(optimizer=optimizers.SGD(1.0, global_clipnorm=0.01),
                  loss="sparse_categorical_crossentropy")
    x, y = tiny_data()
    ws = model.get_weights()
    _, grads = numpy_loss_and_grads(ws, x, y)
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
    assert norm > 0.01
    model.train_on_batch(x, y)
    for got, w, g in zip(model.get_weights(), ws, grads):
        np.testing.assert_allclose(got, w - g * 0.01 / norm, rtol=1e-12, atol=1e-15)


def test_cpu_and_numpy_devices_train_alike():
    """A CNN with every layer kind: CPUOps and the NumPy Ops give the same
    weights after a few float64 steps."""
    def make(device):
        pynn.utils.set_random_seed(4)
        m = pynn.Sequential([
            layers.Conv2D(3, (3, 2), activation="relu", padding="same", input_shape=(6, 5, 2)),
            layers.BatchNormalization(),
            layers.MaxPooling2D(2),
            layers.Dropout(0.3),
            layers.Flatten(),
            layers.Dense(4, activation="tanh"),
            layers.Dense(3, activation="softmax")], dtype="float64", device=device)
        m.compile(optimizers.Adam(0.01), "sparse_categorical_crossentropy")
        return m
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((10, 6, 5, 2)), rng.integers(0, 3, 10)
    a, b = make("cpu"), make("numpy")
    for _ in range(3):
        la = a.train_on_batch(x, y)
        lb = b.train_on_batch(x, y)
        assert la == pytest.approx(lb, rel=1e-10)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-9, atol=1e-12)


def test_dense_on_feature_maps_trains():
    """Dense applied to (N, H, W, C) feature maps (Keras: on the last axis)
    followed by Flatten: backward gives the conv layer a 4-D gradient."""
    pynn.utils.set_random_seed(0)
    m = pynn.Sequential([layers.Conv2D(2, 3, input_shape=(5, 5, 1)), layers.Dense(3),
                         layers.Flatten(), layers.Dense(2, activation="softmax")])
    assert m.count_params() == 20 + 9 + 9 * 3 * 2 + 2
    m.compile("sgd", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    loss = m.train_on_batch(rng.standard_normal((4, 5, 5, 1)), [0, 1, 0, 1])
    assert np.isfinite(loss)


# ------------------------------------------------------ summary and counts --


def summary_text(model):
    lines = []
    model.summary(print_fn=lines.append)
    return "\n".join(lines)


def test_cnn_summary():
    pynn.utils.clear_session()
    model = pynn.zoo.cnn()
    assert model.count_params() == 1_199_882
    text = summary_text(model)
    for s in ("Layer (type)", "Output Shape", "Param #", "Total params: 1,199,882",
              "Trainable params: 1,199,882", "Non-trainable params: 0",
              "(None, 26, 26, 32)", "(None, 12, 12, 64)", "(None, 9216)", "1,179,776"):
        assert s in text, s
    names = [l.name for l in model.layers]
    assert names == ["conv2d", "conv2d_1", "max_pooling2d", "dropout", "flatten", "dense",
                     "dropout_1", "dense_1"]
    for nm, cls in zip(names, ["Conv2D", "Conv2D", "MaxPooling2D", "Dropout", "Flatten", "Dense",
                               "Dropout", "Dense"]):
        assert f"{nm} ({cls})" in text


def test_mlp_summary():
    model = pynn.zoo.mlp()
    assert model.count_params() == 669_706
    assert "Total params: 669,706" in summary_text(model)


def test_batchnorm_model_counts():
    m = pynn.Sequential([layers.Dense(10, input_shape=(4,)), layers.BatchNormalization(),
                         layers.Dense(3)])
    assert m.count_params() == 123
    assert [l.count_params() for l in m.layers] == [50, 40, 33]
    text = summary_text(m)
    assert "Total params: 123" in text
    assert "Trainable params: 103" in text
    assert "Non-trainable params: 20" in text
    assert "batch_normalization (BatchNormalization)" in text
    assert len(m.trainable_weights) == 6 and len(m.weights) == 8


def test_batchnorm_model_trains_and_updates_moving_stats():
    pynn.utils.set_random_seed(0)
    m = pynn.Sequential([layers.Dense(10, input_shape=(4,)), layers.BatchNormalization(),
                         layers.Dense(3, activation="softmax")])
    m.compile("adam", "sparse_categorical_crossentropy")
    x, y = tiny_data(16)
    m.build()
    mm0 = m.layers[1].get_weights()[2].copy()
    m.fit(x.astype(np.float32), y, epochs=2, batch_size=8, verbose=0)
    g, b, mm, mv = m.layers[1].get_weights()
    assert not np.array_equal(mm, mm0)
    assert np.all(mv > 0)
    # inference uses the moving statistics: predictions do not depend on the batch
    p1 = m.predict(x[:3], verbose=0)
    p2 = m.predict(x, verbose=0)[:3]
    np.testing.assert_allclose(p1, p2, rtol=1e-6)


# ------------------------------------------------------------- Keras style --


def test_keras_positional_arguments():
    m = pynn.Sequential([pynn.Input(shape=(8, 8, 1)),
                         layers.Conv2D(4, (3, 3)),
                         layers.MaxPooling2D(2, 2),
                         layers.Flatten(),
                         layers.Dense(10, "relu"),
                         layers.Dense(3, "softmax")])
    m.build()
    # Keras 3: Sequential.layers leaves out the Input
    assert m.layers[0].kernel_size == (3, 3) and m.layers[0].filters == 4
    assert m.layers[1].pool_size == (2, 2) and m.layers[1].strides == (2, 2)
    assert m.layers[3].activation == "relu"
    assert m.output_shape == (None, 3)
    assert m.layers[2].output_shape == (3 * 3 * 4,)
    assert m.count_params() == (9 * 4 + 4) + (36 * 10 + 10) + (10 * 3 + 3)


def _blobs(n=120, k=3, d=5, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)) * 3
    y = rng.integers(0, k, n)
    x = (centers[y] + rng.standard_normal((n, d)) * 0.5).astype(np.float32)
    return x, y


@pytest.mark.parametrize("opt", ["sgd", "adam", "rmsprop", "adadelta"])
def test_keras_script(opt):
    keras = pynn
    keras.utils.set_random_seed(1)
    x, y = _blobs()
    model = keras.Sequential([keras.Input(shape=(5,)),
                              keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    assert type(model.optimizer).__name__.lower() == opt
    h = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert len(h.history["loss"]) == 3
    if opt != "adadelta":   # Keras' Adadelta default lr 0.001 barely moves
        assert h.history["loss"][-1] < h.history["loss"][0]


def test_from_logits_with_linear_output():
    pynn.utils.set_random_seed(0)
    x, y = _blobs()
    model = pynn.Sequential([layers.Dense(8, activation="relu", input_shape=(5,)), layers.Dense(3)])
    model.compile(optimizer=optimizers.Adam(0.01),
                  loss=pynn.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    h = model.fit(x, y, batch_size=16, epochs=5, verbose=0)
    assert h.history["accuracy"][-1] > 0.9
    logits = model.predict(x, verbose=0)      # a linear output: logits, not probabilities
    assert not np.allclose(logits.sum(1), 1.0)
    loss = model.evaluate(x, y, verbose=0)[0]
    want = pynn.losses.sparse_categorical_crossentropy(y, logits, from_logits=True).mean()
    assert loss == pytest.approx(want, rel=1e-5)


def test_to_categorical_and_categorical_crossentropy():
    x, y = _blobs()
    t = pynn.utils.to_categorical(y, 3)
    assert t.shape == (120, 3) and t.dtype == np.float32
    np.testing.assert_array_equal(t.argmax(1), y)
    np.testing.assert_array_equal(t.sum(1), 1)

    def run(loss, targets):
        pynn.utils.set_random_seed(2)
        m = pynn.Sequential([layers.Dense(8, activation="relu", input_shape=(5,)),
                             layers.Dense(3, activation="softmax")])
        m.compile(optimizers.SGD(0.1), loss, metrics=["accuracy"])
        h = m.fit(x, targets, batch_size=10, epochs=2, verbose=0, shuffle=False)
        return m, h
    mc, hc = run("categorical_crossentropy", t)
    ms, hs = run("sparse_categorical_crossentropy", y)
    # one-hot categorical CE == sparse CE: same training
    np.testing.assert_allclose(hc.history["loss"], hs.history["loss"], rtol=1e-6)
    for a, b in zip(mc.get_weights(), ms.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert hc.history["accuracy"] == hs.history["accuracy"]


def test_sparse_and_categorical_agree_on_unnormalised_outputs():
    """A sigmoid output layer with a cross-entropy: the outputs do not sum to
    1 and Keras renormalises them for sparse and categorical targets alike;
    evaluate, the loss object and training agree between the two."""
    x, y = _blobs(30)
    t = pynn.utils.to_categorical(y, 3)

    def make(loss):
        pynn.utils.set_random_seed(5)
        m = pynn.Sequential([layers.Dense(3, activation="sigmoid", input_shape=(5,))],
                            dtype="float64")
        m.compile(optimizers.SGD(0.1), loss)
        return m
    ms, mc = make("sparse_categorical_crossentropy"), make("categorical_crossentropy")
    ls, lc = ms.evaluate(x, y, verbose=0), mc.evaluate(x, t, verbose=0)
    assert ls == pytest.approx(lc, rel=1e-12)
    assert ls == pytest.approx(ms.loss(y, ms.predict(x, verbose=0)), rel=1e-12)
    ms.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0)
    mc.fit(x, t, batch_size=10, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(ms.get_weights(), mc.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_loss_function_objects_in_compile():
    x, y = _blobs(30)
    m = pynn.Sequential([layers.Dense(3, activation="softmax", input_shape=(5,))])
    m.compile("adam", pynn.losses.sparse_categorical_crossentropy)
    assert isinstance(m.loss, pynn.losses.SparseCategoricalCrossentropy)
    m.fit(x, y, epochs=1, verbose=0)


# -------------------------------------------------------------- determinism --


def _det_data(n=50):
    rng = np.random.default_rng(7)
    return rng.standard_normal((n, 6, 6, 1)).astype(np.float32), rng.integers(0, 3, n)


def _det_graph(seed):
    """A graph with a shortcut, batch norm (fused with the ReLU) and dropout."""
    pynn.utils.set_random_seed(seed)
    inp = layers.Input((6, 6, 1))
    h = layers.Conv2D(3, 3, padding="same", activation="relu")(inp)
    y = layers.BatchNormalization()(layers.Conv2D(3, 3, padding="same")(h))
    x = layers.Activation("relu")(layers.add([h, y]))
    x = layers.Dropout(0.3)(layers.Flatten()(layers.MaxPooling2D(2)(x)))
    out = layers.Dense(3, activation="softmax")(layers.concatenate([x, layers.Dense(4)(x)]))
    m = pynn.Model(inp, out)
    m.compile(optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy",
              metrics=["accuracy"])
    return m


def _det_model(seed, kind="sequential"):
    if kind == "graph":
        return _det_graph(seed)
    pynn.utils.set_random_seed(seed)
    m = pynn.Sequential([layers.Conv2D(3, 3, activation="relu", input_shape=(6, 6, 1)),
                         layers.MaxPooling2D(2),
                         layers.Dropout(0.3),
                         layers.Flatten(),
                         layers.Dense(8, activation="relu"),
                         layers.Dropout(0.5),
                         layers.Dense(3, activation="softmax")])
    m.compile(optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy",
              metrics=["accuracy"])
    return m


def _fit_weights(seed, threads=None, **kw):
    if threads is not None:
        pynn.utils.set_num_threads(threads)
    x, y = _det_data()
    m = _det_model(seed)
    h = m.fit(x, y, batch_size=8, epochs=2, shuffle=True, verbose=0, **kw)
    return m.get_weights(), h


def test_same_seed_bitwise_identical():
    wa, ha = _fit_weights(0)
    wb, hb = _fit_weights(0)
    for a, b in zip(wa, wb):
        np.testing.assert_array_equal(a, b)
    for k in ("loss", "accuracy"):
        assert ha.history[k] == hb.history[k]
    wc, _ = _fit_weights(1)
    assert any(not np.array_equal(a, c) for a, c in zip(wa, wc))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_thread_count_does_not_change_the_result(name):
    """Bitwise the same weights and losses with 1 and 2 threads, on the default
    models at batch 32-128: big enough that the kernels do split the work
    (the dense layers' GEMMs and the convolutions run on 2 threads)."""
    rng = np.random.default_rng(0)
    n, shape = (256, (784,)) if name == "mlp" else (64, (28, 28, 1))
    x = rng.random((n,) + shape, dtype=np.float32)
    y = rng.integers(0, 10, n)
    runs = []
    for t in (1, 2):
        pynn.utils.set_num_threads(t)
        pynn.utils.set_random_seed(7)
        m = pynn.zoo.MODELS[name]()
        m.compile(optimizer=pynn.zoo.make_optimizer(pynn.zoo.DEFAULT_OPTIMIZER[name][0]),
                  loss="sparse_categorical_crossentropy")
        h = m.fit(x, y, batch_size=128 if name == "mlp" else 32, epochs=1, verbose=0)
        runs.append((m.get_weights(), h.history["loss"]))
    (wa, la), (wb, lb) = runs
    assert la == lb
    for a, b in zip(wa, wb):
        np.testing.assert_array_equal(a, b)


class Interrupt(Exception):
    pass


class InterruptAt(callbacks.Callback):
    """Raises after the optimizer has made `step` updates (or at the end of
    epoch `epoch`)."""

    def __init__(self, step=None, epoch=None):
        super().__init__()
        self.step, self.epoch = step, epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.step is not None and self.model.optimizer.iterations == self.step:
            raise Interrupt(self.step)

    def on_epoch_end(self, epoch, logs=None):
        if self.epoch is not None and epoch == self.epoch:
            raise Interrupt(epoch)


class CountSteps(callbacks.Callback):
    steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


RESUME_CASES = {
    # n=50, batch 8: 7 steps per epoch, checkpoints every 3 steps
    "mid-epoch": dict(n=50, save_freq=3, stop=dict(step=5), ckpt=3),
    "mid-epoch-2nd-epoch": dict(n=50, save_freq=3, stop=dict(step=11), ckpt=9),
    # n=48: 6 steps per epoch; the step-6 checkpoint is the end of epoch 0
    "at-epoch-end": dict(n=48, save_freq=3, stop=dict(step=6), ckpt=6),
    "after-epoch-end": dict(n=48, save_freq=3, stop=dict(epoch=0), ckpt=6),
    "epoch-checkpoints": dict(n=50, save_freq="epoch", stop=dict(step=10), ckpt=7),
}


@pytest.mark.parametrize("kind", ["sequential", "graph"])
@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_backup_and_restore_resume_is_exact(tmp_path, case, kind):
    c = RESUME_CASES[case]
    x, y = _det_data(c["n"])
    xv, yv = _det_data(12)
    kw = dict(batch_size=8, epochs=2, shuffle=True, verbose=0, validation_data=(xv, yv))

    ref = _det_model(0, kind)
    h_ref = ref.fit(x, y, **kw)

    path = tmp_path / "ckpt"

    def bar():
        return callbacks.BackupAndRestore(path, save_freq=c["save_freq"], delete_checkpoint=False)
    first = _det_model(0, kind)
    with pytest.raises(Interrupt):
        first.fit(x, y, callbacks=[bar(), InterruptAt(**c["stop"])], **kw)
    assert (path / "checkpoint.npz").exists()

    ckpt_iters = int(pynn.io.read(path / "checkpoint.npz")[1]["compile"]["iterations"])
    assert ckpt_iters == c["ckpt"]
    # A fresh model with ANOTHER seed: only a real resume (weights, optimizer
    # state, position, seed of the shuffles and dropout streams) can end
    # where the uninterrupted run ended; a restart from scratch could not.
    second = _det_model(12345, kind)
    counter = CountSteps()
    h = second.fit(x, y, callbacks=[bar(), counter], **kw)
    assert counter.steps == ref.optimizer.iterations - ckpt_iters
    for a, b in zip(ref.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert second.optimizer.iterations == ref.optimizer.iterations
    # the final epoch's logs agree too (running sums restored with the position)
    assert h.history["loss"][-1] == h_ref.history["loss"][-1]
    assert h.history["val_loss"][-1] == h_ref.history["val_loss"][-1]


def test_backup_and_restore_deletes_by_default(tmp_path):
    x, y = _det_data(16)
    m = _det_model(0)
    m.fit(x, y, batch_size=8, epochs=1, verbose=0,
          callbacks=[callbacks.BackupAndRestore(tmp_path / "b.npz", save_freq=1)])
    assert not (tmp_path / "b.npz").exists()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- bad inputs --


def test_wrong_input_shape_for_cnn():
    m = pynn.zoo.cnn()
    m.compile("sgd", "sparse_categorical_crossentropy")
    x = np.zeros((4, 28, 28), np.float32)
    with pytest.raises(ValueError, match=r"expects inputs of shape \(None, 28, 28, 1\).*\(4, 28, 28\)"):
        m.fit(x, np.zeros(4, int), verbose=0)
    with pytest.raises(ValueError, match="shape"):
        m.predict(x, verbose=0)
    with pytest.raises(ValueError, match="shape"):
        m.evaluate(np.zeros((4, 28, 28, 3), np.float32), np.zeros(4, int), verbose=0)


def _small():
    m = pynn.Sequential([layers.Dense(3, activation="softmax", input_shape=(4,))])
    m.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


@pytest.mark.parametrize("labels,match", [([0, 1, 3, 2], r"\[0, 3\)"), ([0, -1, 1, 2], r"\[0, 3\)"),
                                          ([0.5, 1, 1, 2], "integer"), ([[0, 1]] * 4, "shape")])
def test_bad_labels(labels, match):
    m = _small()
    w0 = m.get_weights()
    with pytest.raises(ValueError, match=match):
        m.fit(np.zeros((4, 4), np.float32), np.array(labels), verbose=0)
    for a, b in zip(w0, m.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_x(bad):
    m = _small()
    x = np.zeros((4, 4), np.float32)
    x[2, 1] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        m.fit(x, np.zeros(4, int), verbose=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        m.predict(x, verbose=0)


def test_empty_and_mismatched():
    m = _small()
    with pytest.raises(ValueError, match="empty"):
        m.fit(np.zeros((0, 4), np.float32), np.zeros(0, int), verbose=0)
    with pytest.raises(ValueError, match="5 samples but y has 4"):
        m.fit(np.zeros((5, 4), np.float32), np.zeros(4, int), verbose=0)
    with pytest.raises(ValueError, match="y is None"):
        m.fit(np.zeros((5, 4), np.float32), None, verbose=0)
    with pytest.raises(TypeError, match="numeric"):
        m.fit(np.array([["a"] * 4] * 2), np.zeros(2, int), verbose=0)


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown activation 'relux'"):
        layers.Dense(3, activation="relux")
    with pytest.raises(ValueError, match="unknown activation"):
        layers.Activation("swishy")
    m = pynn.Sequential([layers.Dense(3, input_shape=(4,))])
    with pytest.raises(ValueError, match="unknown optimizer 'adamw2'"):
        m.compile("adamw2", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="unknown loss 'hinge_loss'"):
        m.compile("sgd", "hinge_loss")
    with pytest.raises(ValueError, match="unknown metric 'aucc'"):
        m.compile("sgd", "mse", metrics=["aucc"])
    with pytest.raises(ValueError, match="compile needs a loss"):
        m.compile("sgd")
    with pytest.raises(ValueError, match="padding"):
        layers.Conv2D(2, 3, padding="full")
    with pytest.raises(ValueError, match="unknown device"):
        pynn.Sequential([], device="tpu")


def test_dropout_rate_bounds():
    for rate in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
            layers.Dropout(rate)


def test_fit_before_compile_and_bad_batch_size():
    m = pynn.Sequential([layers.Dense(3, input_shape=(4,))])
    with pytest.raises(RuntimeError, match="compile"):
        m.fit(np.zeros((2, 4)), np.zeros(2, int))
    m = _small()
    with pytest.raises(ValueError, match="batch_size"):
        m.fit(np.zeros((2, 4)), np.zeros(2, int), batch_size=0, verbose=0)


def test_conv_too_small_input():
    # the input shape is known, so the graph is made at once (as Keras 3 does)
    with pytest.raises(ValueError, match="empty output"):
        pynn.Sequential([layers.Conv2D(2, 5, input_shape=(3, 3, 1))])
    m = pynn.Sequential([layers.Conv2D(2, 5)])
    with pytest.raises(ValueError, match="empty output"):
        m.build((None, 3, 3, 1))


# -------------------------------------------------------------- callbacks --


def _cb_model(lr=0.05, seed=0):
    pynn.utils.set_random_seed(seed)
    m = pynn.Sequential([layers.Dense(8, activation="relu", input_shape=(5,)),
                         layers.Dense(3, activation="softmax")])
    m.compile(optimizers.SGD(lr), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def test_history_keys():
    x, y = _blobs()
    m = _cb_model()
    h = m.fit(x[:90], y[:90], epochs=3, batch_size=16, validation_data=(x[90:], y[90:]), verbose=0)
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(h.history)
    assert all(len(v) == 3 for v in h.history.values())
    assert h.epoch == [0, 1, 2]
    assert m.history is h
    vl, va = m.evaluate(x[90:], y[90:], verbose=0)
    assert h.history["val_loss"][-1] == pytest.approx(vl, rel=1e-6)
    assert h.history["val_accuracy"][-1] == pytest.approx(va)
    h2 = m.fit(x, y, epochs=2, batch_size=16, validation_split=0.25, verbose=0)
    assert "val_loss" in h2.history


def test_early_stopping_patience():
    x, y = _blobs()
    m = _cb_model(lr=0.0)    # nothing changes: the loss never improves after epoch 0
    es = callbacks.EarlyStopping(monitor="loss", patience=2)
    h = m.fit(x, y, epochs=20, batch_size=30, shuffle=False, callbacks=[es], verbose=0)
    assert len(h.history["loss"]) == 3
    assert es.stopped_epoch == 2 and m.stop_training


class Recorder(callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the wrecked model overflows
def test_early_stopping_restore_best_weights():
    x, y = _blobs()
    m = _cb_model(lr=0.05)
    # one good epoch, then a learning rate that wrecks the model
    sched = callbacks.LearningRateScheduler(lambda epoch: 0.05 if epoch == 0 else 200.0)
    rec = Recorder()
    es = callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    h = m.fit(x[:90], y[:90], epochs=20, batch_size=10, validation_data=(x[90:], y[90:]),
              callbacks=[sched, rec, es], verbose=0)
    assert len(h.history["loss"]) < 20
    best = int(np.nanargmin(h.history["val_loss"]))
    assert es.best_epoch == best
    assert best != len(h.history["loss"]) - 1
    for a, b in zip(m.get_weights(), rec.weights[best]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(rec.weights[best], rec.weights[-1]))


def test_model_checkpoint(tmp_path):
    x, y = _blobs()
    m = _cb_model()
    pattern = str(tmp_path / "m.{epoch:02d}-{loss:.3f}.npz")
    m.fit(x, y, epochs=3, batch_size=16, verbose=0,
          callbacks=[callbacks.ModelCheckpoint(pattern, monitor="loss")])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n[:5] for n in names] == ["m.01-", "m.02-", "m.03-"], names
    loaded = pynn.load_model(tmp_path / names[-1])
    for a, b in zip(m.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_model_checkpoint_save_best_only(tmp_path):
    x, y = _blobs()
    m = _cb_model(lr=0.0)   # constant loss: only the first epoch is an improvement
    m.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0,
          callbacks=[callbacks.ModelCheckpoint(str(tmp_path / "w{epoch:02d}.npz"), monitor="loss",
                                               save_best_only=True, save_weights_only=True)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w01.npz"]
    m2 = _cb_model(lr=0.1)  # learning: every epoch improves
    m2.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0,
           callbacks=[callbacks.ModelCheckpoint(str(tmp_path / "b{epoch:02d}.npz"), monitor="loss",
                                                save_best_only=True)])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("b")) == \
        ["b01.npz", "b02.npz", "b03.npz"]


def test_learning_rate_scheduler():
    x, y = _blobs(40)
    m = _cb_model(lr=0.08)
    seen = []

    class Spy(callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(self.model.optimizer.learning_rate)
    h = m.fit(x, y, epochs=3, batch_size=20, verbose=0,
              callbacks=[callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5), Spy()])
    assert seen == pytest.approx([0.04, 0.02, 0.01])
    assert m.optimizer.learning_rate == pytest.approx(0.01)
    assert h.history["learning_rate"] == pytest.approx([0.04, 0.02, 0.01])


def test_learning_rate_scheduler_zero_freezes_weights():
    x, y = _blobs(40)
    m = _cb_model(lr=0.08)
    w0 = m.get_weights()
    m.fit(x, y, epochs=2, batch_size=20, verbose=0,
          callbacks=[callbacks.LearningRateScheduler(lambda epoch: 0.0)])
    for a, b in zip(w0, m.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_terminate_on_nan(capsys):
    x, y = _blobs()
    x = x * 100
    m = _cb_model(lr=1e30)
    h = m.fit(x, y, epochs=5, batch_size=10, verbose=0, callbacks=[callbacks.TerminateOnNaN()])
    assert len(h.history["loss"]) == 1
    assert not math.isfinite(h.history["loss"][0])
    assert m.optimizer.iterations < 12
    assert "invalid loss" in capsys.readouterr().out


def test_csv_logger(tmp_path):
    x, y = _blobs()
    m = _cb_model()
    path = tmp_path / "log.csv"
    m.fit(x[:90], y[:90], epochs=3, batch_size=16, validation_data=(x[90:], y[90:]), verbose=0,
          callbacks=[callbacks.CSVLogger(path)])
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    assert header[0] == "epoch"
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(header)
    assert len(lines) == 4
    assert [int(l.split(",")[0]) for l in lines[1:]] == [0, 1, 2]
    hist = m.history.history
    i = header.index("loss")
    assert [float(l.split(",")[i]) for l in lines[1:]] == pytest.approx(hist["loss"])
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]   # no temp files left


def test_csv_logger_append(tmp_path):
    x, y = _blobs(40)
    m = _cb_model()
    path = tmp_path / "log.csv"
    m.fit(x, y, epochs=2, batch_size=20, verbose=0, callbacks=[callbacks.CSVLogger(path)])
    m.fit(x, y, epochs=3, batch_size=20, verbose=0,
          callbacks=[callbacks.CSVLogger(path, append=True)])
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 2 + 3
    assert sum(l.startswith("epoch") for l in lines) == 1
    m.fit(x, y, epochs=1, batch_size=20, verbose=0, callbacks=[callbacks.CSVLogger(path)])
    assert len(path.read_text().splitlines()) == 2     # append=False starts over


def test_verbose_output(capsys):
    x, y = _blobs(40)
    m = _cb_model()
    m.fit(x, y, epochs=2, batch_size=20, verbose=2)
    out = capsys.readouterr().out
    assert "Epoch 1/2" in out and "Epoch 2/2" in out and "loss:" in out
    m.fit(x, y, epochs=1, batch_size=20, verbose=0)
    assert capsys.readouterr().out == ""


def test_backward_reports_each_final_gradient_suffix():
    """The hook that lets MPI start reducing gradients during backward: after
    layer i's backward, ``grads[start:]`` must already hold its final values
    (nothing later in backward writes there), the starts shrink to 0, and
    layers without weights (pool, dropout, flatten) add nothing new."""
    pynn.utils.set_random_seed(5)
    m = pynn.Sequential([
        layers.Conv2D(3, 3, activation="relu", input_shape=(7, 7, 2)),
        layers.BatchNormalization(),
        layers.MaxPooling2D(2),
        layers.Dropout(0.2),
        layers.Flatten(),
        layers.Dense(5, activation="relu"),
        layers.Dense(4, activation="softmax"),
    ])
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 7, 7, 2)).astype(np.float32)
    y = rng.integers(0, 4, 6)
    calls = []

    class Spy(type(m._dist)):
        def grads_ready(self, flat, start):
            assert flat is m._grads
            calls.append((start, flat[start:].copy()))

    m._dist = Spy()
    m.train_on_batch(x, y)
    final = m._grads
    starts = [s for s, _ in calls]
    assert starts == sorted(starts, reverse=True) and starts[-1] == 0
    sizes = [sum(s.size for s in l.specs if s.trainable) for l in m.layers]
    expect = [sum(sizes[i:]) for i in range(len(m.layers))]      # suffix of layer i..end
    assert starts == [final.size - e for e in expect[::-1]]
    for start, snap in calls:
        np.testing.assert_array_equal(snap, final[start:])
    assert np.abs(final).sum() > 0


@pytest.mark.parametrize("name,logits", [("binary_crossentropy", False),
                                         ("binary_crossentropy", True), ("mse", False)])
def test_elementwise_losses_value_gradient_and_accuracy(name, logits):
    """BCE (on probabilities or logits) and MSE against their formulas: the
    loss sum over the batch of the mean over the outputs, its gradient (times
    grad_scale) by central differences, and the 0.5-threshold accuracy."""
    from pynn import backend, losses
    rng = np.random.default_rng(3)
    n, k, gs = 6, 3, 1.0 / 6
    out = rng.standard_normal((n, k)) if logits else rng.uniform(0.05, 0.95, (n, k))
    t = rng.integers(0, 2, (n, k)).astype(F64)

    def ref(o):
        if name == "mse":
            per = (o - t) ** 2
        else:
            p = 1 / (1 + np.exp(-o)) if logits else o
            per = -(t * np.log(p) + (1 - t) * np.log(1 - p))
        return per.sum() / k

    loss = losses.get(name)
    dout = np.empty_like(out)
    got, correct = loss.compute(backend.Ops(), out, t, dout, gs, logits)
    assert got == pytest.approx(ref(out), rel=1e-12)
    h, fd = 1e-6, np.empty_like(out)
    for i in np.ndindex(out.shape):
        e = np.zeros_like(out)
        e[i] = h
        fd[i] = gs * (ref(out + e) - ref(out - e)) / (2 * h)
    np.testing.assert_allclose(dout, fd, rtol=1e-6, atol=1e-9)
    pred = out > (0.0 if logits else 0.5)
    assert correct == pytest.approx(np.count_nonzero(pred == (t > 0.5)) / k)


def test_test_on_batch_equals_evaluate():
    model = tiny_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = tiny_data(12, seed=4)
    loss, acc = model.test_on_batch(x, y)
    ev = model.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
    assert loss == pytest.approx(ev["loss"], rel=1e-12)
    assert acc == pytest.approx(ev["accuracy"], rel=1e-12)
    w0 = [w.copy() for w in model.get_weights()]
    model.test_on_batch(x, y)
    for a, b in zip(w0, model.get_weights()):
        np.testing.assert_array_equal(a, b)           # no training step
