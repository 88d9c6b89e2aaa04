"""The corpus of Keras-style scripts in examples/keras_scripts runs end to end,
each launched as a user launches it (``python script.py``), with only the
import changed from the Keras original.  Data: small synthetic files in the
real formats (IDX for MNIST/Fashion-MNIST, the CIFAR binary version) under
$PYNN_DATA; EPOCHS=1 keeps each run short."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_data import write_idx   # the IDX writer of the data-layer tests
from test_datasets_cifar import write_cifar10   # the CIFAR binary writer

SCRIPTS = Path(__file__).resolve().parents[1] / "examples" / "keras_scripts"
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _write_mnist_like(directory, seed, n_train=640, n_test=160):
    """Images whose mean brightness encodes the label, so a model can learn."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    arrays = []
    for n in (n_train, n_test):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 100, (n, 28, 28)) + (y[:, None, None] * 15)
        arrays += [x.astype(np.uint8), y]
    for name, arr in zip(IDX_NAMES, arrays):
        write_idx(directory / name, arr)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("keras_data")
    _write_mnist_like(root / "mnist", 1)
    _write_mnist_like(root / "fashion-mnist", 2)
    write_cifar10(root / "cifar-10-batches-bin", counts=(64, 64, 64, 64, 64, 96))
    return root


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.py")))
def test_keras_script_runs_unchanged(script, data_root, tmp_path):
    env = dict(os.environ, PYNN_DATA=str(data_root), EPOCHS="1", CKPT_DIR=str(tmp_path),
               OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, str(SCRIPTS / script)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{script} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr


def test_corpus_is_there():
    assert len(list(SCRIPTS.glob("*.py"))) >= 6
