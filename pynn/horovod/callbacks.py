"""Horovod's Keras callbacks (``hvd.callbacks.*``) with Horovod's formulas.

pynn's ``fit`` under MPI already starts every rank from rank 0's weights and
reports metrics over the global batch on every rank; the broadcast and
metric-average callbacks therefore keep Horovod scripts running and change
nothing that is already identical.  The learning-rate callbacks set
``model.optimizer.learning_rate`` (a float) at the batch or epoch where
Horovod does, with its momentum correction.
"""
from .. import callbacks as _cbks, distributed as _distributed


def _group():
    g = _distributed.get_group()
    return g if g is not None else _distributed.init()


def _lr(opt):
    """The optimizer's set learning rate (as Horovod's K.get_value(opt.lr))."""
    return float(opt.learning_rate)


class BroadcastGlobalVariablesCallback(_cbks.Callback):
    """Start every rank from the root rank's weights and optimizer state.
    fit already does this from rank 0 (pynn.distributed): with
    ``root_rank=0`` the callback checks that and does nothing more."""

    def __init__(self, root_rank=0, device=""):
        super().__init__()
        if int(root_rank) != 0:
            raise NotImplementedError(
                f"BroadcastGlobalVariablesCallback(root_rank={root_rank}): pynn broadcasts rank "
                "0's weights at the start of fit; use root_rank=0")
        self.root_rank = 0


class MetricAverageCallback(_cbks.Callback):
    """At the end of every epoch, each numeric log value becomes its mean
    over the ranks (Horovod's MetricAverageCallback).  pynn's metrics are
    global already (equal on every rank): those are left bit for bit."""

    def __init__(self, device=""):
        super().__init__()

    def on_epoch_end(self, epoch, logs=None):
        g = _group()
        if logs is None or not g.active:
            return
        keys = sorted(k for k, v in logs.items() if isinstance(v, (int, float)))
        values = g.comm.allgather([float(logs[k]) for k in keys])
        for i, k in enumerate(keys):
            col = [v[i] for v in values]
            if any(c != col[0] for c in col[1:]):
                logs[k] = sum(col) / len(col)


class LearningRateScheduleCallback(_cbks.Callback):
    """``lr = initial_lr * multiplier(epoch)`` for epochs in
    ``[start_epoch, end_epoch)``: at the first batch of each epoch
    (``staircase=True``) or at every batch with the fractional epoch
    ``epoch + batch / steps_per_epoch``.  ``multiplier`` may be a number.
    With ``momentum_correction`` the optimizer's momentum is scaled by
    new_lr / old_lr for the batch where the rate changes (Goyal et al.)."""

    def __init__(self, initial_lr, multiplier, start_epoch=0, end_epoch=None, staircase=True,
                 momentum_correction=True, steps_per_epoch=None):
        super().__init__()
        if initial_lr is None:
            raise ValueError("initial_lr is required (the scaled learning rate of the script)")
        self.initial_lr = float(initial_lr)
        self.multiplier = multiplier if callable(multiplier) else (lambda epoch, m=multiplier: m)
        self.start_epoch, self.end_epoch = int(start_epoch), end_epoch
        self.staircase, self.momentum_correction = bool(staircase), bool(momentum_correction)
        self.steps_per_epoch = steps_per_epoch
        self.current_epoch = 0
        self._restore = None

    def on_train_begin(self, logs=None):
        if not self.staircase and not self.steps_per_epoch:
            steps = self.params.get("steps")
            if not steps:
                raise ValueError(f"{type(self).__name__}: give steps_per_epoch (fit's number of "
                                 "steps is not known)")
            self.steps_per_epoch = steps

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch

    def _in_scope(self):
        e = self.current_epoch
        return e >= self.start_epoch and (self.end_epoch is None or e < self.end_epoch)

    def _adjust(self, epoch):
        opt = self.model.optimizer
        old = _lr(opt)
        new = self.initial_lr * float(self.multiplier(epoch))
        opt.learning_rate = new
        if self.momentum_correction and getattr(opt, "momentum", None) and old:
            self._restore = opt.momentum
            opt.momentum = opt.momentum * new / old

    def on_train_batch_begin(self, batch, logs=None):
        if not self._in_scope():
            return
        if self.staircase and batch == 0:
            self._adjust(self.current_epoch)
        elif not self.staircase:
            self._adjust(self.current_epoch + float(batch) / self.steps_per_epoch)

    def on_train_batch_end(self, batch, logs=None):
        if self._restore is not None:
            self.model.optimizer.momentum = self._restore
            self._restore = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = _lr(self.model.optimizer)


class LearningRateWarmupCallback(LearningRateScheduleCallback):
    """Horovod's gradual warm-up: over ``warmup_epochs`` the rate grows from
    ``initial_lr / size`` to ``initial_lr`` (the size-scaled rate),
    ``lr = initial_lr / size * (e * (size - 1) / warmup_epochs + 1)`` with
    ``e = epoch + (batch + 1) / steps_per_epoch``."""

    def __init__(self, initial_lr, warmup_epochs=5, momentum_correction=True,
                 steps_per_epoch=None, verbose=0):
        def multiplier(epoch):
            n = _group().size
            epoch += 1.0 / self.steps_per_epoch
            return 1.0 / n * (epoch * (n - 1) / warmup_epochs + 1)
        super().__init__(initial_lr, multiplier, start_epoch=0, end_epoch=warmup_epochs,
                         staircase=False, momentum_correction=momentum_correction,
                         steps_per_epoch=steps_per_epoch)
        self.warmup_epochs, self.verbose = warmup_epochs, verbose

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if epoch == self.end_epoch - 1 and self.verbose > 0 and _group().rank == 0:
            print(f"\nEpoch {epoch + 1}: finished gradual learning rate warmup to "
                  f"{_lr(self.model.optimizer):g}.")
