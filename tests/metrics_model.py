"""The model and data shared by test_metrics_keras.py and mpi_metrics_worker.py."""
import numpy as np

import pynn
from pynn import layers as L

N, BATCH, STEPS = 24, 8, 3


def data():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, 5))
    y = (x[:, :1] + 0.5 * rng.standard_normal((N, 1)) > 0).astype(np.float64)
    w = rng.uniform(0.2, 3.0, N)
    return x, y, w


def model():
    pynn.utils.set_random_seed(3)
    m = pynn.Sequential([L.Dense(4, activation="tanh", input_shape=(5,)),
                         L.Dense(1, activation="sigmoid")], dtype="float64")
    m.compile(optimizer=pynn.optimizers.SGD(0.1), loss="binary_crossentropy",
              metrics=["accuracy", pynn.metrics.AUC(), "mae", pynn.metrics.Precision()],
              weighted_metrics=[pynn.metrics.Recall()])
    return m
