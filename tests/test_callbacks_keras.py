"""Keras 3 callbacks: ReduceLROnPlateau on a controlled loss sequence and in
fit, LambdaCallback, the order of every hook for a custom Callback in fit
(with validation), evaluate and predict, stop_training, params, and the
verbose=2 lines."""
import re

import numpy as np
import pytest

import pynn
from pynn import callbacks as C, layers as L


class FakeModel:
    def __init__(self, lr):
        self.optimizer = pynn.optimizers.SGD(lr)
        self.stop_training = False


def drive(cb, values, monitor="val_loss", lr=1.0):
    model = FakeModel(lr)
    cb.set_model(model)
    cb.on_train_begin({})
    lrs, logged = [], []
    for e, v in enumerate(values):
        logs = {monitor: v}
        cb.on_epoch_end(e, logs)
        logged.append(logs["learning_rate"])
        lrs.append(float(model.optimizer.current_learning_rate()))
    return lrs, logged


def test_reduce_lr_on_plateau_sequence():
    """patience 2, factor 0.5, cooldown 1, min_lr 0.2; improvements need
    > 1e-4.  Keras' rule: at an epoch in cooldown the counter is decremented
    first, so with cooldown=1 that epoch already counts towards patience."""
    cb = C.ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1, min_lr=0.2)
    vals = [1.0, 0.9,              # improvements
            0.95, 0.92,            # two epochs without: 0.5 after epoch 3 (cooldown 1)
            0.91, 0.93,            # cooldown ends at epoch 4, which counts: 0.25 after epoch 5
            0.94, 0.95,            # 0.125 clipped to min_lr 0.2 after epoch 7
            0.96, 0.97, 0.98,      # at min_lr: no further change
            0.89995]               # better by less than min_delta: not an improvement
    lrs, logged = drive(cb, vals)
    assert lrs == pytest.approx([1, 1, 1, .5, .5, .25, .25, .2, .2, .2, .2, .2])
    # the logs carry the learning rate at the end of the epoch, before a reduction
    assert logged == pytest.approx([1, 1, 1, 1, .5, .5, .25, .25, .2, .2, .2, .2])
    assert cb.best == 0.9
    # a longer cooldown: no counting for 2 epochs after a reduction
    cb = C.ReduceLROnPlateau(factor=0.5, patience=1, cooldown=3)
    lrs, _ = drive(cb, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # reduce after epoch 1; epochs 2, 3 in cooldown; epoch 4 decrements to 0 and counts
    assert lrs == pytest.approx([1, .5, .5, .5, .25, .25])


def test_reduce_lr_on_plateau_max_mode_and_args():
    cb = C.ReduceLROnPlateau(monitor="val_accuracy", factor=0.1, patience=1)   # auto -> max
    lrs, _ = drive(cb, [0.5, 0.6, 0.6, 0.7, 0.65], monitor="val_accuracy")
    assert lrs == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    with pytest.raises(ValueError, match="factor"):
        C.ReduceLROnPlateau(factor=1.0)
    with pytest.warns(DeprecationWarning, match="min_delta"):
        assert C.ReduceLROnPlateau(epsilon=0.5).min_delta == 0.5
    with pytest.warns(RuntimeWarning, match="not in the logs"):
        drive(C.ReduceLROnPlateau(), [1.0], monitor="loss")


def small_model(seed=0):
    pynn.utils.set_random_seed(seed)
    m = pynn.Sequential([L.Dense(2, activation="softmax", input_shape=(3,))], dtype="float64")
    return m


def test_reduce_lr_on_plateau_in_fit():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3)), rng.integers(0, 2, 8)
    m = small_model()
    m.compile(pynn.optimizers.SGD(1e-9), "sparse_categorical_crossentropy")
    # the loss moves by far less than min_delta: a plateau from the first epoch
    h = m.fit(x, y, epochs=5, verbose=0, callbacks=[C.ReduceLROnPlateau("loss", patience=2)])
    assert h.history["learning_rate"] == pytest.approx([1e-9, 1e-9, 1e-9, 1e-10, 1e-10])
    assert m.optimizer.current_learning_rate() == pytest.approx(1e-11)


def test_lambda_callback():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((6, 3)), rng.integers(0, 2, 6)
    m = small_model()
    m.compile("sgd", "sparse_categorical_crossentropy")
    seen = []
    cb = C.LambdaCallback(on_train_begin=lambda logs: seen.append("begin"),
                          on_epoch_end=lambda epoch, logs: seen.append((epoch, sorted(logs))),
                          on_test_end=lambda logs: seen.append("test"))
    m.fit(x, y, epochs=2, batch_size=3, verbose=0, callbacks=[cb], validation_data=(x, y))
    assert seen == ["begin", "test", (0, ["images_per_s", "loss", "val_loss"]), "test",
                    (1, ["images_per_s", "loss", "val_loss"])]
    with pytest.raises(TypeError, match="unknown hook"):
        C.LambdaCallback(on_epoch_ending=print)


class Recorder(C.Callback):
    def __init__(self):
        super().__init__()
        self.calls = []

    def _rec(name):
        def hook(self, *args):
            self.calls.append((name,) + tuple(a for a in args if not isinstance(a, dict)))
            logs = [a for a in args if isinstance(a, dict) or a is None]
            assert logs and isinstance(logs[-1], dict), (name, args)   # Keras passes dicts
        return hook

    for _h in ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
               "on_train_batch_begin", "on_train_batch_end", "on_test_begin", "on_test_end",
               "on_test_batch_begin", "on_test_batch_end", "on_predict_begin", "on_predict_end",
               "on_predict_batch_begin", "on_predict_batch_end"):
        locals()[_h] = _rec(_h)
    del _h


def test_hook_order_fit_evaluate_predict():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((4, 3)), rng.integers(0, 2, 4)
    m = small_model()
    m.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    r = Recorder()
    m.fit(x, y, epochs=2, batch_size=2, verbose=0, callbacks=[r], validation_data=(x[:3], y[:3]),
          validation_batch_size=2)
    epoch = lambda e: [("on_epoch_begin", e),
                       ("on_train_batch_begin", 0), ("on_train_batch_end", 0),
                       ("on_train_batch_begin", 1), ("on_train_batch_end", 1),
                       ("on_test_begin",),
                       ("on_test_batch_begin", 0), ("on_test_batch_end", 0),
                       ("on_test_batch_begin", 1), ("on_test_batch_end", 1),
                       ("on_test_end",), ("on_epoch_end", e)]
    assert r.calls == [("on_train_begin",)] + epoch(0) + epoch(1) + [("on_train_end",)]
    assert r.params["epochs"] == 2 and r.params["steps"] == 2 and r.model is m
    r.calls.clear()
    m.evaluate(x, y, batch_size=3, verbose=0, callbacks=[r])
    assert r.calls == [("on_test_begin",), ("on_test_batch_begin", 0), ("on_test_batch_end", 0),
                       ("on_test_batch_begin", 1), ("on_test_batch_end", 1), ("on_test_end",)]
    r.calls.clear()
    out = []

    class Outputs(C.Callback):
        def on_predict_batch_end(self, batch, logs=None):
            out.append(np.array(logs["outputs"]))
    p = m.predict(x, batch_size=3, verbose=0, callbacks=[r, Outputs()])
    assert r.calls == [("on_predict_begin",), ("on_predict_batch_begin", 0),
                       ("on_predict_batch_end", 0), ("on_predict_batch_begin", 1),
                       ("on_predict_batch_end", 1), ("on_predict_end",)]
    np.testing.assert_array_equal(np.concatenate(out), p)


def test_batch_and_epoch_logs_and_stop_training():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((6, 3)), rng.integers(0, 2, 6)
    m = small_model()
    m.compile(pynn.optimizers.SGD(0.0), "sparse_categorical_crossentropy", metrics=["accuracy"])
    p = m.predict(x, verbose=0)
    per = -np.log(p[np.arange(6), y])

    class Check(C.Callback):
        def __init__(self):
            super().__init__()
            self.batch_logs, self.old = [], []

        def on_train_batch_end(self, batch, logs=None):
            self.batch_logs.append(dict(logs))
            if batch == 1:
                self.model.stop_training = True

        def on_batch_end(self, batch, logs=None):      # Keras 2 name, still called
            self.old.append(batch)

    class Old(C.Callback):
        def on_batch_end(self, batch, logs=None):
            seen.append(batch)
    seen = []
    c = Check()
    m.fit(x, y, epochs=3, batch_size=2, shuffle=False, verbose=0, callbacks=[c, Old()])
    assert len(c.batch_logs) == 2 and c.old == [] and seen == [0, 1]
    # running means over the batches so far, as Keras' batch logs
    assert c.batch_logs[0]["loss"] == pytest.approx(per[:2].mean(), rel=1e-12)
    assert c.batch_logs[1]["loss"] == pytest.approx(per[:4].mean(), rel=1e-12)
    assert c.batch_logs[1]["accuracy"] == pytest.approx(np.mean(p[:4].argmax(1) == y[:4]))


def test_verbose_2_lines(capsys):
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((6, 3)), rng.integers(0, 2, 6)
    m = small_model()
    m.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(x, y, epochs=2, batch_size=4, verbose=2, validation_data=(x, y))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Epoch 1/2" and out[2] == "Epoch 2/2"
    line = (r"2/2 - \d+s - \d+(us|ms|s)/step - loss: [0-9.e-]+ - accuracy: [0-9.e-]+ - "
            r"val_loss: [0-9.e-]+ - val_accuracy: [0-9.e-]+$")
    assert re.match(line, out[1]), out[1]
    m.evaluate(x, y, batch_size=4, verbose=2)
    ev = capsys.readouterr().out.strip()
    assert re.match(r"2/2 - \d+s - \d+(us|ms|s)/step - loss: [0-9.e-]+ - accuracy: [0-9.e-]+$",
                    ev), ev
