"""Regularizers and constraints: penalties and gradients against NumPy and
finite differences (float64), the loss a model reports against a NumPy
reference of Keras' total loss, constraints after a step against Keras 3's
formulas, configs, save/load, and an exact checkpoint resume with a new
optimizer, a schedule and regularizers."""
import numpy as np
import pytest

import pynn
from pynn import callbacks, constraints, layers, optimizers, regularizers
from pynn.optimizers import schedules


# ---------------------------------------------------------------- regularizers --
@pytest.mark.parametrize("reg,ref", [
    (regularizers.L1(0.3), lambda x: 0.3 * np.abs(x).sum()),
    (regularizers.L2(0.2), lambda x: 0.2 * (x ** 2).sum()),
    (regularizers.L1L2(0.1, 0.05), lambda x: 0.1 * np.abs(x).sum() + 0.05 * (x ** 2).sum()),
    (regularizers.get("l1"), lambda x: 0.01 * np.abs(x).sum()),
    (regularizers.get("l2"), lambda x: 0.01 * (x ** 2).sum()),
    (regularizers.get("l1_l2"), lambda x: 0.01 * np.abs(x).sum() + 0.01 * (x ** 2).sum()),
])
def test_penalty_value_and_gradient(reg, ref):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5))
    x[np.abs(x) < 0.05] = 0.3          # |x| is not differentiable at 0
    assert reg(x) == pytest.approx(ref(x), rel=1e-12)
    g = np.full_like(x, 0.25)
    reg.add_gradient(x, g, 2.0)
    fd = np.empty_like(x)
    h = 1e-6
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        fd[i] = (ref(xp) - ref(xm)) / (2 * h)
    np.testing.assert_allclose(g, 0.25 + 2.0 * fd, rtol=1e-6, atol=1e-8)


def test_regularizer_identifiers():
    assert regularizers.l2(0.1).l2 == 0.1 and regularizers.L1().l1 == 0.01
    assert regularizers.get(None) is None
    r = regularizers.get({"class_name": "L1L2", "config": {"l1": 0.1, "l2": 0.2}})
    assert (r.l1, r.l2) == (0.1, 0.2)
    with pytest.raises(ValueError):
        regularizers.get("l3")
    with pytest.raises(ValueError):
        regularizers.L2(-1.0)
    with pytest.raises(NotImplementedError, match="gradient"):
        layers.Dense(3, kernel_regularizer=lambda w: 0.01 * (w ** 2).sum())
    with pytest.raises(TypeError):
        layers.DepthwiseConv2D(3, kernel_regularizer="l2")
    layers.DepthwiseConv2D(3, depthwise_regularizer="l2", depthwise_constraint="non_neg")


# ------------------------------------------------------------- in a model --
def _mlp(final="linear"):
    m = pynn.Sequential([
        layers.Dense(5, activation="tanh", input_shape=(4,),
                     kernel_regularizer=regularizers.L1L2(0.01, 0.02),
                     bias_regularizer=regularizers.L2(0.05),
                     activity_regularizer=regularizers.L1(0.03),
                     bias_initializer="glorot_uniform"),
        layers.Dense(3, activation=final, kernel_regularizer="l2",
                     activity_regularizer=regularizers.L2(0.01)),
    ], dtype="float64")
    return m


def _ref_loss(ws, x, y, final):
    w1, b1, w2, b2 = ws
    n = x.shape[0]
    h = np.tanh(x @ w1 + b1)
    o = h @ w2 + b2
    if final == "softmax":
        e = np.exp(o - o.max(axis=1, keepdims=True))
        o = e / e.sum(axis=1, keepdims=True)
        data = -np.mean(np.log(o[np.arange(n), y]))
    else:
        data = np.mean((o - y) ** 2)
    pen = (0.01 * np.abs(w1).sum() + 0.02 * (w1 ** 2).sum() + 0.05 * (b1 ** 2).sum()
           + 0.03 * np.abs(h).sum() / n + 0.01 * (w2 ** 2).sum() + 0.01 * (o ** 2).sum() / n)
    return data + pen


@pytest.mark.parametrize("final,loss", [("linear", "mse"),
                                        ("softmax", "sparse_categorical_crossentropy")])
def test_model_loss_and_gradient(final, loss):
    """The reported loss is Keras' total loss (data loss + penalties); one SGD
    step moves the weights by lr times its finite-difference gradient."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4))
    y = rng.standard_normal((6, 3)) if final == "linear" else rng.integers(0, 3, 6)
    m = _mlp(final)
    m.compile(optimizer=optimizers.SGD(0.1), loss=loss)
    ws = m.get_weights()
    want = _ref_loss(ws, x, y, final)
    assert m.evaluate(x, y, verbose=0) == pytest.approx(want, rel=1e-12)
    got = m.train_on_batch(x, y)
    assert got == pytest.approx(want, rel=1e-12)
    step = [(a - b) / 0.1 for a, b in zip(ws, m.get_weights())]
    h = 1e-6
    for k, w in enumerate(ws):
        fd = np.empty_like(w)
        for i in np.ndindex(w.shape):
            wp = [v.copy() for v in ws]
            wm = [v.copy() for v in ws]
            wp[k][i] += h
            wm[k][i] -= h
            fd[i] = (_ref_loss(wp, x, y, final) - _ref_loss(wm, x, y, final)) / (2 * h)
        np.testing.assert_allclose(step[k], fd, rtol=1e-5, atol=1e-7)


def test_conv_regularizers_gradient():
    """Conv2D with kernel/bias/activity regularizers: finite differences of
    the model's own reported loss (evaluate) against its SGD step."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 5, 2))
    y = rng.integers(0, 4, 3)
    m = pynn.Sequential([
        layers.Conv2D(3, 3, activation="relu", input_shape=(5, 5, 2),
                      kernel_regularizer=regularizers.L2(0.1), bias_regularizer="l1",
                      activity_regularizer=regularizers.L1L2(0.01, 0.02),
                      bias_initializer="ones"),
        layers.SeparableConv2D(2, 2, depthwise_regularizer="l2",
                               pointwise_regularizer=regularizers.L1(0.02)),
        layers.Flatten(),
        layers.Dense(4, activation="softmax"),
    ], dtype="float64")
    m.compile(optimizer=optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    ws = m.get_weights()
    base = m.evaluate(x, y, verbose=0)
    m.train_on_batch(x, y)
    step = [(a - b) / 0.1 for a, b in zip(ws, m.get_weights())]
    probe = pynn.Sequential.from_config(m.get_config())
    probe.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    h = 1e-6
    for k in (0, 1, 2, 3):        # conv kernel, conv bias, depthwise, pointwise
        for i in list(np.ndindex(ws[k].shape))[:6]:
            vals = []
            for s in (h, -h):
                w = [v.copy() for v in ws]
                w[k][i] += s
                probe.set_weights(w)
                vals.append(probe.evaluate(x, y, verbose=0))
            assert step[k][i] == pytest.approx((vals[0] - vals[1]) / (2 * h), rel=1e-5, abs=1e-7)
    probe.set_weights(ws)
    assert probe.evaluate(x, y, verbose=0) == base


def test_frozen_layer_is_not_regularized():
    m = pynn.Sequential([layers.Dense(3, input_shape=(2,), kernel_regularizer=regularizers.L2(1.0),
                                      trainable=False)], dtype="float64")
    m.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((2, 2)), np.zeros((2, 3))
    out = m.predict(x, verbose=0)
    assert m.evaluate(x, y, verbose=0) == pytest.approx(np.mean(out ** 2), rel=1e-12)


# -------------------------------------------------------------- constraints --
def _norms(w, axis):
    return np.sqrt((w ** 2).sum(axis=axis, keepdims=True))


CONSTRAINTS = [
    (constraints.MaxNorm(0.5), lambda w: w * np.clip(_norms(w, 0), 0, 0.5) / (1e-7 + _norms(w, 0))),
    (constraints.max_norm(0.3, axis=[0, 1, 2]),
     lambda w: w * np.clip(_norms(w, (0, 1, 2)), 0, 0.3) / (1e-7 + _norms(w, (0, 1, 2)))),
    (constraints.NonNeg(), lambda w: np.maximum(w, 0)),
    (constraints.UnitNorm(), lambda w: w / (1e-7 + _norms(w, 0))),
    (constraints.MinMaxNorm(0.5, 0.8, rate=0.7),
     lambda w: w * (0.7 * np.clip(_norms(w, 0), 0.5, 0.8) + 0.3 * _norms(w, 0))
     / (1e-7 + _norms(w, 0))),
]


@pytest.mark.parametrize("c,ref", CONSTRAINTS, ids=lambda v: type(v).__name__)
def test_constraint_after_a_step(c, ref):
    """Two models from the same seed, one constrained: after one SGD step the
    constrained kernel is the constraint (Keras 3's formula) of the other's."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 3, 2))
    y = rng.integers(0, 2, 4)
    conv = isinstance(c, constraints.MaxNorm) and c.axis == (0, 1, 2)

    def make(cons):
        pynn.utils.set_random_seed(5)
        first = layers.Conv2D(3, 2, input_shape=(3, 3, 2), kernel_constraint=cons) if conv else \
            layers.Conv2D(3, 2, input_shape=(3, 3, 2))
        dense = layers.Dense(2, activation="softmax",
                             kernel_constraint=None if conv else cons, bias_constraint=None)
        m = pynn.Sequential([first, layers.Flatten(), dense], dtype="float64")
        m.compile(optimizer=optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
        return m
    a, b = make(c), make(None)
    np.testing.assert_array_equal(a.get_weights()[0], b.get_weights()[0])
    a.train_on_batch(x, y)
    b.train_on_batch(x, y)
    k = 0 if conv else 2
    want = ref(b.get_weights()[k])
    assert not np.allclose(want, b.get_weights()[k])       # the constraint does something
    np.testing.assert_allclose(a.get_weights()[k], want, rtol=1e-12, atol=1e-15)


def test_bias_constraint_and_function_constraint():
    m = pynn.Sequential([layers.Dense(3, input_shape=(2,), bias_initializer="ones",
                                      bias_constraint=lambda b: b * 0 - 2.0)])
    m.compile(optimizer="sgd", loss="mse")
    m.train_on_batch(np.ones((2, 2), np.float32), np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(m.get_weights()[1], -2.0)


# ----------------------------------------------------------- configs and files --
def _reg_model():
    pynn.utils.set_random_seed(11)
    m = pynn.Sequential([
        layers.Conv2D(3, 3, input_shape=(6, 6, 1), activation="relu",
                      kernel_regularizer=regularizers.L2(0.01), kernel_constraint="max_norm",
                      activity_regularizer="l1"),
        layers.Flatten(),
        layers.Dense(8, activation="relu", kernel_regularizer=regularizers.L1L2(1e-3, 1e-3),
                     bias_constraint=constraints.NonNeg()),
        layers.Dropout(0.2),
        layers.Dense(3, activation="softmax", bias_regularizer="l2"),
    ])
    m.compile(optimizer=optimizers.Nadam(schedules.CosineDecay(0.0, 20, warmup_target=0.01,
                                                                warmup_steps=4),
                                         weight_decay=0.01, clipnorm=1.0),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def _data(n=30):
    rng = np.random.default_rng(4)
    return rng.standard_normal((n, 6, 6, 1)).astype(np.float32), rng.integers(0, 3, n)


def test_layer_configs_round_trip():
    for layer in _reg_model().layers:
        cfg = layer.get_config()
        again = type(layer).from_config(cfg)
        assert again.get_config() == cfg
    d = layers.Dense(2, kernel_regularizer=regularizers.L1L2(0.1, 0.2))
    cfg = d.get_config()
    assert cfg["kernel_regularizer"]["class_name"] == "L1L2"
    assert cfg["kernel_regularizer"]["config"] == {"l1": 0.1, "l2": 0.2}
    assert cfg["bias_regularizer"] is None and cfg["activity_regularizer"] is None


def test_save_load_with_schedule_and_regularizers(tmp_path):
    x, y = _data()
    m = _reg_model()
    m.fit(x, y, batch_size=8, epochs=1, verbose=0)
    m.save(tmp_path / "m.npz")
    m2 = pynn.load_model(tmp_path / "m.npz")
    assert isinstance(m2.optimizer, optimizers.Nadam)
    assert isinstance(m2.optimizer._learning_rate, schedules.CosineDecay)
    assert m2.optimizer.get_config() == m.optimizer.get_config()
    assert m2.optimizer.iterations == m.optimizer.iterations == 4
    assert m2.get_config() == m.get_config()
    assert isinstance(m2.layers[0].kernel_constraint, constraints.MaxNorm)
    assert m2.layers[2].kernel_regularizer.l1 == 1e-3
    assert m2.evaluate(x, y, verbose=0) == m.evaluate(x, y, verbose=0)
    # training goes on identically (slots, step count, schedule position, penalties)
    m.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    m2.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(m.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)


class _Interrupt(Exception):
    pass


class _StopAt(callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if self.model.optimizer.iterations == 6:
            raise _Interrupt()


@pytest.mark.parametrize("make_opt", [
    lambda: optimizers.Nadam(schedules.CosineDecay(0.0, 20, warmup_target=0.01, warmup_steps=4),
                             weight_decay=0.01, clipnorm=1.0),
    lambda: optimizers.Adagrad(0.05),
    lambda: optimizers.Lion(schedules.ExponentialDecay(0.003, 3, 0.5), weight_decay=0.1),
    lambda: optimizers.Adamax(0.01, global_clipnorm=0.5),
    lambda: optimizers.AdamW(0.01, amsgrad=True),
], ids=["nadam", "adagrad", "lion", "adamax", "adamw-ams"])
def test_backup_and_restore_exact_with_new_optimizers(tmp_path, make_opt):
    x, y = _data()
    kw = dict(batch_size=8, epochs=3, verbose=0)

    def model(seed):
        m = _reg_model()
        m.compile(optimizer=make_opt(), loss="sparse_categorical_crossentropy")
        if seed:
            m._reseed(seed)
        return m
    ref = model(0)
    ref.fit(x, y, **kw)
    bar = lambda: callbacks.BackupAndRestore(tmp_path / "ck", save_freq=3,   # noqa: E731
                                             delete_checkpoint=False)
    first = model(0)
    with pytest.raises(_Interrupt):
        first.fit(x, y, callbacks=[bar(), _StopAt()], **kw)
    second = model(999)
    second.fit(x, y, callbacks=[bar()], **kw)
    assert second.optimizer.iterations == ref.optimizer.iterations == 12
    for a, b in zip(ref.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_keeps_a_changed_learning_rate(tmp_path):
    x, y = _data(16)

    class Lower(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.model.optimizer.learning_rate = 1e-4

    m = pynn.Sequential([layers.Flatten(input_shape=(6, 6, 1)), layers.Dense(3)])
    m.compile(optimizer=optimizers.Adam(0.01), loss="mse")
    m.fit(x, np.zeros((16, 3), np.float32), batch_size=8, epochs=1, verbose=0,
          callbacks=[Lower(), callbacks.BackupAndRestore(tmp_path / "c.npz",
                                                         delete_checkpoint=False)])
    m2 = pynn.Sequential([layers.Flatten(input_shape=(6, 6, 1)), layers.Dense(3)])
    m2.compile(optimizer=optimizers.Adam(0.01), loss="mse")
    m2.fit(x, np.zeros((16, 3), np.float32), batch_size=8, epochs=1, verbose=0,
           callbacks=[callbacks.BackupAndRestore(tmp_path / "c.npz")])
    assert m2.optimizer.learning_rate == pytest.approx(1e-4)


# ---------------------------------------------------------------------- MPI --
from test_mpi import WORKER, _worker_module, needs_mpi, reference_fit, run_mpi  # noqa: E402


@needs_mpi
def test_penalties_under_mpi_equal_one_process(tmp_path):
    """2 ranks: each adds the weight penalties' gradient once after the sum
    over the ranks and 1/2 of its activity penalty's: the same training (and
    logged loss, penalties included) as one process on the global batches."""
    import sys
    import nnkernels
    # not -I: the worker imports the pynn this test imports (PYTHONPATH honoured)
    run_mpi([sys.executable, WORKER, "penalties", str(tmp_path)], n=2, timeout=120)
    w = _worker_module()
    threads = nnkernels.get_num_threads()
    nnkernels.set_num_threads(1)
    try:
        ref, ref_logs = reference_fit(w, w.model_d, 2)
    finally:
        nnkernels.set_num_threads(threads)
    r0, r1 = (np.load(tmp_path / f"d_rank{r}.npz") for r in range(2))
    assert np.array_equal(r0["params"], r1["params"])
    np.testing.assert_allclose(r0["params"], ref, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(r0["logs"], ref_logs, rtol=1e-5, atol=1e-6)
