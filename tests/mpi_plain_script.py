"""A plain Keras-style script with no MPI code in it, run by tests/test_mpi.py
as ``mpiexec -n 2 python mpi_plain_script.py OUT`` and as one process.

The model joins the MPI job by itself (its first fit).  Test instruments
only: each process writes its weights after every step to
OUT/steps_<r>.npy (r from the launcher's environment), and saves the model
and a CSV log under per-process names so the test sees who wrote files."""
import os
import sys

import numpy as np

import pynn as keras
from pynn import layers

out = sys.argv[1]
r = os.environ.get("OMPI_COMM_WORLD_RANK", "single")
# SEED_PER_RANK=1: each rank its own seed (the test checks that fit starts from rank 0's)
keras.utils.set_random_seed(3 + (100 * int(r) if os.environ.get("SEED_PER_RANK") == "1" else 0))
rng = np.random.default_rng(1)
x = rng.standard_normal((48, 6, 6, 1)).astype(np.float32)
y = rng.integers(0, 10, 48).astype(np.int32)

model = keras.Sequential([
    layers.Conv2D(4, 3, activation="relu", input_shape=(6, 6, 1)),
    layers.Flatten(),
    layers.Dense(10, activation="softmax"),
])
model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
weights = []


class Record(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        weights.append(np.concatenate([w.ravel() for w in self.model.get_weights()]))


history = model.fit(x, y, batch_size=8, epochs=2, verbose=0,
                    callbacks=[Record(), keras.callbacks.CSVLogger(os.path.join(out, f"log_{r}.csv"))])
model.save(os.path.join(out, f"model_{r}.npz"))
model.save_weights(os.path.join(out, f"w_{r}.npz"))
scores = model.evaluate(x, y, verbose=0)
pred = model.predict(x[:5], verbose=0)
np.save(os.path.join(out, f"steps_{r}.npy"), np.stack(weights))
np.save(os.path.join(out, f"eval_{r}.npy"), np.array(scores))
np.save(os.path.join(out, f"pred_{r}.npy"), pred)
