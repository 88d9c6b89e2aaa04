"""Run by tests/test_chaos.py: ``python chaos_worker.py DIR``.  A fit with
BackupAndRestore (a checkpoint every step) that the test kills with SIGKILL
after a random number of steps plus a random
delay and starts again until it completes; the final weights go
to DIR/final.npz.  Every step and every checkpoint write is slowed a little
(the write sleeps between filling the temporary file and renaming it), so
that kills land in steps and in writes alike."""
import sys
import time

import numpy as np

import pynn
from pynn import io, layers

_atomic_write = io.atomic_write


def slow_atomic_write(path, write):
    def slowly(f):
        write(f)
        f.flush()
        time.sleep(0.02)          # a kill here leaves a complete temporary file, not renamed
    _atomic_write(path, slowly)


class SlowSteps(pynn.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        print("step", flush=True)     # after the checkpoint of the step is written
        time.sleep(0.02)


def main(folder):
    io.atomic_write = slow_atomic_write
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 6)).astype(np.float32)
    y = rng.integers(0, 3, 96)
    pynn.utils.set_random_seed(7)
    m = pynn.Sequential([layers.Dense(16, activation="relu", input_shape=(6,)),
                         layers.Dropout(0.3),
                         layers.Dense(3, activation="softmax")])
    m.compile(pynn.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
              metrics=["accuracy"])
    m.fit(x, y, batch_size=16, epochs=4, verbose=0,
          callbacks=[pynn.callbacks.BackupAndRestore(folder, save_freq=1), SlowSteps()])
    m.save_weights(f"{folder}/final.npz")


if __name__ == "__main__":
    main(sys.argv[1])
