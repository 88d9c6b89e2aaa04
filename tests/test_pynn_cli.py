"""The `pynn` command end to end: the installed console script in a
subprocess, on a small fake IDX data set written into tmp_path (and on the
real Fashion-MNIST when the Debian package's files are there)."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_data import write_idx   # the IDX writer of the data-layer tests

from pynn import cli, data

REAL_DATA = Path("/usr/share/datasets/fashion-mnist")
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None


def pynn_cmd():
    """The installed console script (next to this interpreter), else the module."""
    here = Path(sys.executable).parent / "pynn"
    if here.exists():
        return [str(here)]
    found = shutil.which("pynn")
    return [found] if found else [sys.executable, "-m", "pynn.cli"]


def run(args, env=None, timeout=120, cwd=None):
    e = dict(os.environ)
    e.pop("PYNN_DATA", None)
    e.update(env or {})
    return subprocess.run(pynn_cmd() + list(args), capture_output=True, text=True, env=e,
                          timeout=timeout, cwd=cwd)


def write_fake_dataset(folder, n_train=300, n_test=100, seed=0):
    """A learnable MNIST-shaped data set: class c has a bright 6x6 square at a
    class-dependent place, plus noise.  Gzipped IDX files, as the package ships."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(y):
            r, q = divmod(int(c), 5)
            x[i, 3 + 12 * r:9 + 12 * r, 1 + 5 * q:7 + 5 * q] = 250
        write_idx(folder / f"{name}-images-idx3-ubyte.gz", x, compress=True)
        write_idx(folder / f"{name}-labels-idx1-ubyte.gz", y, compress=True)
    return folder


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    return write_fake_dataset(tmp_path_factory.mktemp("fake_fashion"))


def test_train_end_to_end(fake_data, tmp_path):
    out = tmp_path / "out"
    r = run(["train", "--data", str(fake_data), "--limit", "200", "--epochs", "1",
             "--batch-size", "32", "--out", str(out), "--threads", "2"])
    assert r.returncode == 0, r.stderr + r.stdout
    assert "Total params: 1,199,882" in r.stdout
    assert "200 training / 100 test images" in r.stdout
    line = [l for l in r.stdout.splitlines() if "test accuracy" in l]
    assert len(line) == 1, r.stdout
    acc = float(line[0].split("test accuracy")[1].split()[0])
    assert 0.0 <= acc <= 1.0
    hist = json.loads((out / "history.json").read_text())
    assert hist["test_accuracy"] == pytest.approx(acc, abs=1e-4)
    assert hist["model"] == "cnn" and hist["threads"] == 2
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(hist["history"])
    assert len(hist["history"]["loss"]) == 1
    assert "Epoch 1/1" in r.stdout          # not a TTY: one line per epoch
    if HAVE_MPL:
        png = out / "curves.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "no curves.png" in r.stdout
        assert not (out / "curves.png").exists()
    pictures = ["confusion_matrix.png", "curves.png", "filters.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        (pictures if HAVE_MPL else []) + ["history.json", "model.npz"])
    # the confusion matrix of the 100 test images agrees with the reported accuracy
    m = np.array(hist["confusion_matrix"])
    assert m.shape == (10, 10) and m.sum() == 100
    assert np.trace(m) / 100 == pytest.approx(acc, abs=1e-4)
    if HAVE_MPL:
        from test_plots import check_png
        check_png(out / "filters.png")              # 32 3x3 filters of the first Conv2D
        check_png(out / "confusion_matrix.png")


def test_train_mlp_learns(fake_data, tmp_path):
    r = run(["train", "--model", "mlp", "--data", str(fake_data), "--epochs", "3",
             "--batch-size", "32", "--out", str(tmp_path), "--verbose", "2"])
    assert r.returncode == 0, r.stderr + r.stdout
    assert "Total params: 669,706" in r.stdout
    hist = json.loads((tmp_path / "history.json").read_text())
    assert len(hist["history"]["loss"]) == 3
    assert hist["test_accuracy"] > 0.5    # the fake classes are easy
    assert not (tmp_path / "filters.png").exists()      # no convolution in the mlp
    assert (tmp_path / "confusion_matrix.png").exists() == HAVE_MPL


def test_checkpoint_and_resume(fake_data, tmp_path):
    common = ["train", "--model", "mlp", "--data", str(fake_data), "--limit", "200",
              "--batch-size", "32", "--threads", "2", "--seed", "3"]
    full = run(common + ["--epochs", "2", "--out", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr
    ck = tmp_path / "ck.npz"
    first = run(common + ["--epochs", "1", "--checkpoint", str(ck), "--out", str(tmp_path / "a")])
    assert first.returncode == 0, first.stderr
    assert ck.exists()
    second = run(common + ["--epochs", "2", "--checkpoint", str(ck), "--resume",
                           "--out", str(tmp_path / "b")])
    assert second.returncode == 0, second.stderr
    assert "no checkpoint" not in second.stdout
    hb = json.loads((tmp_path / "b" / "history.json").read_text())
    hf = json.loads((tmp_path / "full" / "history.json").read_text())
    # only epoch 2 ran, and history.json covers the whole run (epoch 1 from the checkpoint)
    assert "Epoch 2/2" in second.stdout and "Epoch 1/2" not in second.stdout
    assert hb["history"]["loss"] == hf["history"]["loss"]
    assert hb["history"]["val_accuracy"] == hf["history"]["val_accuracy"]
    # and it ended exactly where the uninterrupted run did
    assert hb["history"]["loss"][-1] == hf["history"]["loss"][-1]
    assert hb["test_loss"] == hf["test_loss"]
    assert hb["test_accuracy"] == hf["test_accuracy"]


def test_final_model_is_written(fake_data, tmp_path):
    # 200 images, batch 32: 7 steps; a checkpoint every 5 steps misses the last 2
    ck, out = tmp_path / "ck.npz", tmp_path / "out"
    r = run(["train", "--model", "mlp", "--data", str(fake_data), "--limit", "200", "--epochs", "1",
             "--batch-size", "32", "--threads", "1", "--checkpoint", str(ck), "--save-every", "5",
             "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert f"wrote {out / 'model.npz'}" in r.stdout
    from pynn import load_model
    final, mid = load_model(out / "model.npz"), load_model(ck)
    assert final.optimizer.iterations == 7 and mid.optimizer.iterations == 5
    x = np.random.default_rng(0).random((5, 784)).astype(np.float32)
    assert not np.array_equal(final.predict(x, verbose=0), mid.predict(x, verbose=0))
    assert "model.npz" in run(["train", "--help"]).stdout


def test_diverging_run_exits_non_zero(fake_data, tmp_path):
    ck = tmp_path / "ck.npz"
    r = run(["train", "--model", "mlp", "--data", str(fake_data), "--limit", "200", "--epochs", "2",
             "--batch-size", "32", "--threads", "1", "--lr", "1e30", "--checkpoint", str(ck),
             "--save-every", "1", "--out", str(tmp_path / "out")])
    assert r.returncode == 3, r.stdout + r.stderr
    assert "training diverged" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "model.npz").exists()
    # what was written before the loss turned NaN is a valid checkpoint
    if ck.exists():
        from pynn import load_model
        load_model(ck)


@pytest.mark.parametrize("content", [b"garbage", b"PK\x03\x04" + b"\0" * 40])
def test_bad_checkpoint_is_one_line(fake_data, tmp_path, content):
    ck = tmp_path / "ck.npz"
    ck.write_bytes(content)
    r = run(["train", "--model", "mlp", "--data", str(fake_data), "--limit", "64", "--epochs", "1",
             "--checkpoint", str(ck), "--resume", "--out", str(tmp_path / "o")])
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert str(ck) in r.stderr and "not a readable pynn file" in r.stderr


def test_resume_without_checkpoint_file_starts_fresh(fake_data, tmp_path):
    ck = tmp_path / "none" / "ck.npz"
    r = run(["train", "--model", "mlp", "--data", str(fake_data), "--limit", "64", "--epochs", "1",
             "--checkpoint", str(ck), "--resume", "--out", str(tmp_path / "o")])
    assert r.returncode == 0, r.stderr
    assert "no checkpoint" in r.stdout
    assert ck.exists()


def test_resume_needs_checkpoint(fake_data, tmp_path):
    r = run(["train", "--data", str(fake_data), "--resume", "--out", str(tmp_path)])
    assert r.returncode != 0
    assert "--checkpoint" in r.stderr


def test_info():
    r = run(["info"])
    assert r.returncode == 0, r.stderr
    assert "isa:" in r.stdout and "threads:" in r.stdout
    assert r.stdout.startswith("pynn ")


def test_info_threads_follow_env():
    r = run(["info"], env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0
    assert "  threads: 1" in r.stdout


def test_missing_explicit_data_dir(tmp_path):
    missing = tmp_path / "nothing-here"
    r = run(["train", "--data", str(missing), "--out", str(tmp_path / "o")])
    assert r.returncode == 2
    assert str(missing) in r.stderr and "t10k-labels-idx1-ubyte" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_data_explains_how_to_get_it(tmp_path, monkeypatch, capsys):
    """Nothing in $PYNN_DATA nor in the system folder: exit 2 and a message
    naming the Debian package (apt-get) and PYNN_DATA."""
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", str(tmp_path / "no-system-datasets"))
    monkeypatch.setenv("PYNN_DATA", str(tmp_path / "empty"))
    code = cli.main(["train", "--out", str(tmp_path / "o"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "apt-get install -y dataset-fashion-mnist" in err
    assert "PYNN_DATA" in err
    assert not (tmp_path / "o").exists()


def test_missing_data_subprocess_pynn_data(tmp_path):
    """$PYNN_DATA pointing at an empty folder, MNIST (no system package)."""
    r = run(["train", "--dataset", "mnist", "--out", str(tmp_path / "o")],
            env={"PYNN_DATA": str(tmp_path)})
    assert r.returncode == 2
    assert "PYNN_DATA" in r.stderr and "Traceback" not in r.stderr


def test_bad_arguments():
    r = run(["train", "--model", "resnet"])
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = run([])
    assert r.returncode == 2


@pytest.mark.skipif(not (REAL_DATA / "train-images-idx3-ubyte.gz").exists()
                    and not (REAL_DATA / "train-images-idx3-ubyte").exists(),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist(tmp_path):
    """The issue's CI run: 2000 real images, one epoch, the default CNN."""
    r = run(["train", "--limit", "2000", "--epochs", "1", "--out", str(tmp_path)], timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    line = [l for l in r.stdout.splitlines() if "test accuracy" in l]
    assert len(line) == 1, r.stdout
    acc = float(line[0].split("test accuracy")[1].split()[0])
    assert acc > 0.5, line[0]
    hist = json.loads((tmp_path / "history.json").read_text())
    assert hist["test_accuracy"] == pytest.approx(acc, abs=1e-4)


def test_train_resnet20_on_cifar10_files(tmp_path):
    """pynn train --model resnet20 --dataset cifar10 on small files in the
    CIFAR binary format."""
    from test_datasets_cifar import write_cifar10
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar10(folder, counts=(12, 12, 12, 12, 12, 20))
    out = tmp_path / "out"
    r = run(["train", "--model", "resnet20", "--dataset", "cifar10", "--data", str(tmp_path),
             "--epochs", "1", "--batch-size", "16", "--out", str(out), "--verbose", "2"],
            env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    hist = json.loads((out / "history.json").read_text())
    assert hist["model"] == "resnet20" and len(hist["history"]["loss"]) == 1
    assert np.isfinite(hist["history"]["loss"][0])
