"""Run by tests/test_mpi.py under ``mpiexec -n 2 python mpi_worker.py MODE OUT``
(``-n N`` with ``PYNN_TEST_RANKS=N`` for another number of ranks).

train: trains the tiny models of test_mpi.py (model_a: conv + batch norm
       + dropout + a frozen dense, manual gradient-accumulation reference; model_b: dense, fit
       reference on the global batches; model_c: a residual graph, accumulation reference) and writes each rank's weights and
       batch-norm state after every step to OUT/<model>_rank<r>.npz.
penalties: model_d only (regularizers, constraint, Nadam with a schedule).
fail:  rank 1 raises inside fit (at its third step) while rank 0 waits in
       the gradient allreduce: the job must abort, not hang.
"""
import os
import sys

import numpy as np

import pynn
from pynn import layers as L

SEED, N, BATCH, EPOCHS = 3, 48, 8, 2
TOB_STEPS = 2          # global batches of BATCH * ranks rows: 2 * 8 * 3 <= N


def data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 10, N).astype(np.int32)
    return x, y


def model_a():
    m = pynn.Sequential([
        L.Conv2D(4, 3, activation="relu", input_shape=(6, 6, 1)),
        L.BatchNormalization(),
        L.Flatten(),
        L.Dropout(0.3),
        L.Dense(12, activation="relu", trainable=False),   # frozen: in the state buffer, not
        L.Dense(10, activation="softmax"),                  # averaged, read by backward
    ])
    m.compile(optimizer=pynn.optimizers.SGD(0.05, momentum=0.9),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def model_b():
    m = pynn.Sequential([
        L.Flatten(input_shape=(6, 6, 1)),
        L.Dense(16, activation="relu"),
        L.Dense(10, activation="softmax"),
    ])
    m.compile(optimizer=pynn.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    return m


def model_c():
    """A graph: a residual block with batch norm and a strided 1x1 projection."""
    inp = L.Input((6, 6, 1))
    h = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
    y = L.BatchNormalization()(L.Conv2D(4, 3, strides=2, padding="same")(h))
    s = L.Conv2D(4, 1, strides=2)(h)
    x = L.Activation("relu")(L.add([y, s]))
    out = L.Dense(10, activation="softmax")(L.GlobalAveragePooling2D()(x))
    m = pynn.Model(inp, out)
    m.compile(optimizer=pynn.optimizers.SGD(0.05, momentum=0.9),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def model_d():
    """Regularizers (kernel, bias, activity), a constraint, Nadam with a
    schedule and weight decay (tests/test_regularizers.py)."""
    m = pynn.Sequential([
        L.Flatten(input_shape=(6, 6, 1)),
        L.Dense(16, activation="relu", kernel_regularizer=pynn.regularizers.L1L2(1e-3, 1e-2),
                bias_regularizer="l2", activity_regularizer=pynn.regularizers.L2(1e-3),
                kernel_constraint=pynn.constraints.MaxNorm(0.6)),
        L.Dense(10, activation="softmax", activity_regularizer="l1"),
    ])
    sched = pynn.optimizers.schedules.ExponentialDecay(0.01, 3, 0.7)
    m.compile(optimizer=pynn.optimizers.Nadam(sched, weight_decay=0.01),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


class Record(pynn.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights, self.state, self.logs = [], [], []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append(np.array(self.model._params))
        self.state.append(np.array(self.model._state))
        self.logs.append([logs["loss"], logs["accuracy"]])


class FailOnRank1(pynn.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        if self.model._dist.rank == 1 and batch == 2:
            raise RuntimeError("rank 1 fails on purpose")


def main():
    mode, out = sys.argv[1], sys.argv[2]
    dist = pynn.distributed.init(threads=1)
    want = int(os.environ.get("PYNN_TEST_RANKS", "2"))
    assert dist.size == want and dist.active, (dist.size, want, dist.active)
    x, y = data()
    if mode == "fail":
        pynn.utils.set_random_seed(SEED)
        m = dist.attach(model_b())
        m.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[FailOnRank1()])
        return
    models = (("d", model_d),) if mode == "penalties" else \
        (("a", model_a), ("b", model_b), ("c", model_c))
    for name, make in models:
        # each rank starts from its own seed: attach/fit must broadcast rank 0's
        pynn.utils.set_random_seed(SEED + 100 * dist.rank)
        m = make()
        dist.attach(m)
        rec = Record()
        m.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=True, verbose=0, callbacks=[rec])
        np.savez(os.path.join(out, f"{name}_rank{dist.rank}.npz"), params=np.stack(rec.weights),
                 state=np.stack(rec.state), logs=np.array(rec.logs), seed=m.seed,
                 allreduce_calls=dist.stats.allreduce_calls,
                 overlapped_calls=dist.stats.overlapped_calls, overlap=dist.overlap)
        dist.stats.reset()
    if mode == "penalties":
        return
    # train_on_batch: rank r passes rows r::size of each global batch of 2*BATCH
    pynn.utils.set_random_seed(SEED + 100 * dist.rank)
    m = dist.attach(model_b())
    params, logs = [], []
    for s in range(TOB_STEPS):
        rows = slice(s * BATCH * dist.size + dist.rank, (s + 1) * BATCH * dist.size, dist.size)
        logs.append(m.train_on_batch(x[rows], y[rows]))
        params.append(np.array(m._params))
    np.savez(os.path.join(out, f"tob_rank{dist.rank}.npz"), params=np.stack(params),
             logs=np.array(logs))


if __name__ == "__main__":
    main()
