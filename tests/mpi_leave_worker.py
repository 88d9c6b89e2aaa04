"""Run by tests/test_mpi_leave.py under ``mpiexec -n 2 python mpi_leave_worker.py MODE OUT``:
a rank that leaves the job early must end it within seconds, not hang it
(issue 15, item 6).

exit:     rank 1 calls sys.exit(3) inside fit (its third step) while rank 0
          waits in the gradient allreduce.
return:   rank 1 catches an exception raised inside fit and returns
          normally (exit 0) while rank 0 waits in the allreduce.
normal:   both ranks finish fit and exit in step (exit 0, not slowed).
late:     after fit rank 1 exits at once; rank 0 works on alone for 2 s
          (local work: no collective) and writes OUT/late.txt (exit 0: it
          must not be aborted).
late_collective: after fit rank 1 exits; rank 0 then calls evaluate, a
          collective call that rank 1 will never join (the job must end).
"""
import os
import sys
import time

import numpy as np

import pynn
from pynn import layers as L


class Leave(pynn.callbacks.Callback):
    def __init__(self, how):
        super().__init__()
        self.how = how

    def on_train_batch_begin(self, batch, logs=None):
        if self.model._dist.rank == 1 and batch == 2:
            if self.how == "exit":
                sys.exit(3)
            raise RuntimeError("rank 1 gives up")


def main():
    mode, out = sys.argv[1], sys.argv[2]
    dist = pynn.distributed.init(threads=1)
    assert dist.size == 2 and dist.active
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    pynn.utils.set_random_seed(0)
    m = pynn.Sequential([L.Dense(8, activation="relu", input_shape=(8,)),
                         L.Dense(3, activation="softmax")])
    m.compile("sgd", "sparse_categorical_crossentropy")
    dist.attach(m)
    cbs = [Leave(mode)] if mode in ("exit", "return") else []
    try:
        m.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=cbs)
    except RuntimeError as e:
        print(f"rank {dist.rank} caught {e}; returning normally", flush=True)
        return 0
    if mode == "late" and dist.rank == 0:
        time.sleep(2)
        with open(os.path.join(out, "late.txt"), "w") as f:
            f.write("done\n")
    if mode == "late_collective" and dist.rank == 0:
        time.sleep(0.5)
        m.evaluate(x, y, verbose=0)
    print(f"rank {dist.rank} done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
