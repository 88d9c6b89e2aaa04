"""A Horovod Keras script (the pattern of Horovod's keras_mnist example) with
the import changed to pynn: run by tests/test_mpi.py under mpiexec -n 2 and
as one process.  Writes what the test checks to OUT/hvd_<rank>.npz."""
import os
import sys

import numpy as np

import pynn as keras
import pynn.horovod as hvd

out = sys.argv[1]
hvd.init()
keras.utils.set_random_seed(7)
rng = np.random.default_rng(2)
x = rng.standard_normal((64, 6, 6, 1)).astype(np.float32)
y = rng.integers(0, 10, 64).astype(np.int32)

model = keras.Sequential([
    keras.layers.Conv2D(4, 3, activation="relu", input_shape=(6, 6, 1)),
    keras.layers.Flatten(),
    keras.layers.Dense(10, activation="softmax"),
])
batch_size = 8
scaled_lr = 0.01 * hvd.size()       # Horovod: the script scales the learning rate itself
opt = keras.optimizers.SGD(learning_rate=scaled_lr, momentum=0.9)
opt = hvd.DistributedOptimizer(opt)
model.compile(loss=keras.losses.sparse_categorical_crossentropy, optimizer=opt,
              metrics=["accuracy"])

seen = []


class Probe(keras.callbacks.Callback):
    """Records the learning rate and momentum each batch runs with."""

    def on_train_batch_begin(self, batch, logs=None):
        seen.append((float(self.model.optimizer.learning_rate), self.model.optimizer.momentum))


callbacks = [
    hvd.callbacks.BroadcastGlobalVariablesCallback(0),
    hvd.callbacks.MetricAverageCallback(),
    hvd.callbacks.LearningRateWarmupCallback(initial_lr=scaled_lr, warmup_epochs=2, verbose=1),
    Probe(),
]
if hvd.rank() == 0:
    callbacks.append(keras.callbacks.ModelCheckpoint(os.path.join(out, "checkpoint-{epoch}.npz")))
history = model.fit(x, y, batch_size=batch_size, callbacks=callbacks, epochs=3,
                    verbose=1 if hvd.rank() == 0 else 0)
score = model.evaluate(x, y, verbose=0)
np.savez(os.path.join(out, f"hvd_{hvd.rank()}.npz"),
         seen=np.array(seen), weights=np.concatenate([w.ravel() for w in model.get_weights()]),
         score=np.array(score), size=hvd.size(), local=(hvd.local_rank(), hvd.local_size()),
         cross=(hvd.cross_rank(), hvd.cross_size()),
         mean=hvd.allreduce(np.array([hvd.rank() + 1.0])),
         total=hvd.allreduce(np.array([hvd.rank() + 1.0]), op=hvd.Sum),
         gathered=hvd.allgather(np.array([hvd.rank()])),
         bcast=hvd.broadcast(np.array([hvd.rank() * 10]), root_rank=hvd.size() - 1),
         lr_log=np.array(history.history["lr"]))
loaded = hvd.load_model(os.path.join(out, "checkpoint-3.npz")) if hvd.rank() == 0 else None
if loaded is not None:
    assert np.allclose(np.concatenate([w.ravel() for w in loaded.get_weights()]),
                       np.concatenate([w.ravel() for w in model.get_weights()]))
