"""Run by tests/test_metrics_keras.py under ``mpiexec -n 2 python mpi_metrics_worker.py OUT``:
each rank trains on its half of every global batch with sample weights and
Keras metrics (train_on_batch), then evaluates the whole set (sharded), and
writes the logs to OUT/rank<r>.npz."""
import sys

import numpy as np

import pynn
from pynn import distributed

import metrics_model as mm

group = distributed.init(threads=1)
x, y, w = mm.data()
m = mm.model()
group.attach(m)
r, size = group.rank, group.size
assert size == 2, size
half = mm.BATCH // size
steps = []
for s in range(mm.STEPS):
    g = slice(s * mm.BATCH + r * half, s * mm.BATCH + (r + 1) * half)
    steps.append(m.train_on_batch(x[g], y[g], sample_weight=w[g]))
ev = m.evaluate(x, y, sample_weight=w, batch_size=5, verbose=0)
np.savez(f"{sys.argv[1]}/rank{r}.npz", steps=np.array(steps), ev=np.array(ev),
         params=np.array(m._params))
