"""keras.callbacks.TensorBoard: the event files are read back with
tensorboard's own reader (EventAccumulator) and checked against the
History of the same fit: runs, tags, steps and values."""
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorboard", reason="the TensorBoard callback needs tensorboard: "
                                          "pip install '.[tensorboard]'")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

import pynn  # noqa: E402
from pynn import layers as L  # noqa: E402


def read_run(folder):
    """{tag: [(step, value array)]} of the run in ``folder`` (every event kept)."""
    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        out[tag] = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
    assert not acc.Tags()["scalars"]     # everything is a tf.summary-style tensor summary
    return out


def scalars(run, tag):
    return [(s, float(v)) for s, v in run[tag]]


def small_model(seed=0):
    pynn.utils.set_random_seed(seed)
    inp = pynn.Input((6,))
    x = L.Dense(8, activation="relu", name="hidden")(inp)
    out = L.Dense(3, activation="softmax", name="out")(x)
    model = pynn.Model(inp, out)
    model.compile(optimizer=pynn.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 1).astype(np.int32)


def test_epoch_scalars_train_and_validation(tmp_path):
    x, y = data()
    model = small_model()
    tb = pynn.callbacks.TensorBoard(log_dir=str(tmp_path / "logs"))
    hist = model.fit(x, y, batch_size=10, epochs=3, validation_split=0.25, verbose=0,
                     callbacks=[tb]).history
    assert sorted(os.listdir(tmp_path / "logs")) == ["train", "validation"]
    train, val = read_run(tmp_path / "logs" / "train"), read_run(tmp_path / "logs" / "validation")
    for key in ("loss", "accuracy"):
        got = scalars(train, "epoch_" + key)
        assert [s for s, _ in got] == [0, 1, 2]
        np.testing.assert_allclose([v for _, v in got], hist[key], rtol=1e-6)
        got = scalars(val, "epoch_" + key)
        np.testing.assert_allclose([v for _, v in got], hist["val_" + key], rtol=1e-6)
    lr = scalars(train, "epoch_learning_rate")
    assert [s for s, _ in lr] == [0, 1, 2] and lr[0][1] == pytest.approx(0.05)
    assert not any(t.startswith("epoch_val_") for t in train)
    assert not any(t.startswith("batch_") for t in train)         # update_freq="epoch"
    assert not any(t.endswith("/histogram") for t in train)        # histogram_freq=0
    # after each validation: evaluation_<key>_vs_iterations at the optimizer's step
    ev = scalars(val, "evaluation_loss_vs_iterations")
    assert [s for s, _ in ev] == [3, 6, 9]
    np.testing.assert_allclose([v for _, v in ev], hist["val_loss"], rtol=1e-6)


def test_learning_rate_follows_scheduler(tmp_path):
    x, y = data()
    model = small_model()
    sched = pynn.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))
    tb = pynn.callbacks.TensorBoard(log_dir=str(tmp_path))
    model.fit(x, y, batch_size=20, epochs=3, verbose=0, callbacks=[sched, tb])
    lr = scalars(read_run(tmp_path / "train"), "epoch_learning_rate")
    np.testing.assert_allclose([v for _, v in lr], [0.1, 0.05, 0.1 / 3], rtol=1e-6)
    assert not (tmp_path / "validation").exists()     # no validation data: no run


def test_batch_scalars_every_update_freq(tmp_path):
    x, y = data(n=50)
    model = small_model()
    seen = []
    rec = pynn.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(dict(logs)))
    tb = pynn.callbacks.TensorBoard(log_dir=str(tmp_path), update_freq=2)
    model.fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[rec, tb])   # 5 steps/epoch
    train = read_run(tmp_path / "train")
    got = scalars(train, "batch_loss")
    assert [s for s, _ in got] == [2, 4, 6, 8, 10]
    np.testing.assert_allclose([v for _, v in got], [seen[s - 1]["loss"] for s in (2, 4, 6, 8, 10)],
                               rtol=1e-6)
    assert [s for s, _ in scalars(train, "batch_accuracy")] == [2, 4, 6, 8, 10]
    assert [s for s, _ in scalars(train, "epoch_loss")] == [0, 1]


def test_weight_histograms(tmp_path):
    x, y = data()
    model = small_model()
    tb = pynn.callbacks.TensorBoard(log_dir=str(tmp_path), histogram_freq=2)
    model.fit(x, y, batch_size=10, epochs=3, verbose=0, callbacks=[tb])
    train = read_run(tmp_path / "train")
    tags = sorted(t for t in train if t.endswith("/histogram"))
    assert tags == ["hidden/bias/histogram", "hidden/kernel/histogram", "out/bias/histogram",
                    "out/kernel/histogram"]
    steps = [s for s, _ in train["hidden/kernel/histogram"]]
    assert steps == [0, 2]
    buckets = train["out/kernel/histogram"][-1][1]        # (buckets, 3): left, right, count
    k = model.get_layer("out").get_weights()[0]            # the weights after the last epoch
    assert buckets.shape[1] == 3 and buckets[:, 2].sum() == k.size
    assert buckets[0, 0] == pytest.approx(k.min()) and buckets[-1, 1] == pytest.approx(k.max())


def test_arguments(tmp_path):
    with pytest.raises(ValueError, match="update_freq"):
        pynn.callbacks.TensorBoard(str(tmp_path), update_freq=0)
    with pytest.raises(ValueError, match="histogram_freq"):
        pynn.callbacks.TensorBoard(str(tmp_path), histogram_freq=-1)
    with pytest.warns(RuntimeWarning, match="profile_batch"):
        pynn.callbacks.TensorBoard(str(tmp_path), profile_batch=2)
    assert pynn.callbacks.TensorBoard(str(tmp_path), update_freq="batch").update_freq == 1
    assert pynn.callbacks.TensorBoard.chief_only


def test_cli_tensorboard(tmp_path):
    from test_pynn_cli import run, write_fake_dataset
    fake = write_fake_dataset(tmp_path / "data", n_train=64, n_test=32)
    r = run(["train", "--model", "mlp", "--data", str(fake), "--epochs", "2", "--batch-size", "32",
             "--out", str(tmp_path / "out"), "--tensorboard", str(tmp_path / "tb"),
             "--threads", "1"])
    assert r.returncode == 0, r.stderr + r.stdout
    train = read_run(tmp_path / "tb" / "train")
    val = read_run(tmp_path / "tb" / "validation")
    assert [s for s, _ in scalars(train, "epoch_loss")] == [0, 1]
    assert [s for s, _ in scalars(val, "epoch_accuracy")] == [0, 1]
    assert "epoch_learning_rate" in train
