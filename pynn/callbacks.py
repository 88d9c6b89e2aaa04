"""Callbacks with Keras names and semantics.

History, ProgbarLogger (tqdm bar on a terminal, Keras' line per epoch
otherwise), EarlyStopping, ModelCheckpoint, LearningRateScheduler,
ReduceLROnPlateau, LambdaCallback, TerminateOnNaN, CSVLogger and
BackupAndRestore (checkpoint and resume, mid-epoch too).  Custom callbacks
get every Keras 3 hook (on_{train,test,predict}_{begin,end},
on_{train,test,predict}_batch_{begin,end}, on_epoch_{begin,end}).  Under MPI only rank 0 runs the callbacks that write or
print (``chief_only``); every rank runs the others, with the same averaged
logs, so that decisions such as early stopping agree.
"""
import csv
import io
import math
import os
import sys
import time
import warnings

import numpy as np

from .io import write_text_atomic


class Callback:
    chief_only = False   # True: runs on MPI rank 0 only (writes files / prints)

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    # Keras 3's hooks; fit runs the on_test_* hooks during validation
    def on_train_begin(self, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None): pass
    def on_batch_begin(self, batch, logs=None): pass   # Keras 2 names: every training batch
    def on_batch_end(self, batch, logs=None): pass

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs=logs)

    def on_test_begin(self, logs=None): pass
    def on_test_end(self, logs=None): pass
    def on_test_batch_begin(self, batch, logs=None): pass
    def on_test_batch_end(self, batch, logs=None): pass
    def on_predict_begin(self, logs=None): pass
    def on_predict_end(self, logs=None): pass
    def on_predict_batch_begin(self, batch, logs=None): pass
    def on_predict_batch_end(self, batch, logs=None): pass


class CallbackList:
    def __init__(self, callbacks, model, params, chief=True):
        self.callbacks = [c for c in callbacks if chief or not c.chief_only]
        for c in self.callbacks:
            c.set_model(model)
            c.set_params(params)

    def __getattr__(self, hook):
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def call(*args):
            for c in self.callbacks:
                fn = getattr(c, hook, None)
                if fn is not None:
                    fn(*args)
        return call


class History(Callback):
    def __init__(self):
        super().__init__()
        self.history, self.epoch = {}, []

    def on_train_begin(self, logs=None):
        self.epoch = []
        # resumed from a checkpoint (BackupAndRestore, which runs before): the
        # epochs done before the interruption come first
        done = (getattr(self.model, "_resume", None) or {}).get("history") or {}
        if done:
            self.history = {k: list(v) for k, v in done.items()}
            self.epoch = list(range(max(len(v) for v in done.values())))

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)
        if self.model is not None:
            self.model.history = self


def _fmt_value(v):
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) > 1e-3 or v == 0 else f"{v:.4e}"   # as Keras' Progbar
    return str(v)


def _fmt_logs(logs, skip=("images_per_s",)):
    return " - ".join(f"{k}: {_fmt_value(v)}" for k, v in logs.items() if k not in skip)


def _per_step(seconds):
    if seconds >= 1:
        return f"{seconds:.0f}s/step"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/step"
    return f"{seconds * 1e6:.0f}us/step"


def keras_line(steps, seconds, logs):
    """Keras 3's verbose=2 line: ``32/32 - 1s - 3ms/step - loss: 0.6931 - ...``."""
    per = _per_step(seconds / steps) if steps else ""
    return f"{steps}/{steps} - {seconds:.0f}s - {per} - {_fmt_logs(logs)}".rstrip(" -")


class ProgbarLogger(Callback):
    """verbose=1: a tqdm progress bar per epoch with loss, accuracy and
    images/s; verbose=2: Keras 3's ``Epoch 1/10`` then one line per epoch
    (``32/32 - 1s - 3ms/step - loss: ... - val_loss: ...``: batch jobs, logs)."""
    chief_only = True

    def __init__(self, verbose=1, file=None):
        super().__init__()
        self.verbose = verbose
        self.file = file
        self.bar = None

    def _out(self):
        return self.file if self.file is not None else sys.stdout

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()
        self.seen0 = None
        steps = self.params.get("steps")
        self.epoch = epoch
        if self.verbose == 1:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=steps, desc=f"Epoch {epoch + 1}/{self.params.get('epochs')}",
                            unit="step", file=self._out(), leave=True, dynamic_ncols=True)
            start = self.params.get("start_step", 0)
            if start:
                self.bar.update(start)

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is not None:
            logs = logs or {}
            post = {k: f"{v:.4f}" for k, v in logs.items() if k in ("loss", "accuracy", "acc")}
            if "images_per_s" in logs:
                post["img/s"] = f"{logs['images_per_s']:.0f}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        dt = time.perf_counter() - self.t0
        if self.bar is not None:
            post = {k: f"{v:.4f}" for k, v in logs.items() if isinstance(v, float) and k != "images_per_s"}
            if "images_per_s" in logs:
                post["img/s"] = f"{logs['images_per_s']:.0f}"
            self.bar.set_postfix(post, refresh=True)
            self.bar.close()
            self.bar = None
        elif self.verbose == 2:
            print(f"Epoch {epoch + 1}/{self.params.get('epochs')}\n"
                  f"{keras_line(self.params.get('steps'), dt, logs)}", file=self._out(), flush=True)


class _Monitor(Callback):
    def _init_monitor(self, monitor, mode, min_delta=0.0):
        self.monitor = monitor
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be auto, min or max, got {mode!r}")
        if mode == "auto":
            mode = "max" if ("acc" in monitor or monitor.endswith("auc")) else "min"
        self.mode = mode
        self.min_delta = abs(min_delta) * (1 if mode == "max" else -1)

    def _better(self, current, reference):
        if reference is None:
            return True
        if self.mode == "max":
            return current - self.min_delta > reference
        return current - self.min_delta < reference


class EarlyStopping(_Monitor):
    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        self._init_monitor(monitor, mode, min_delta)
        self.patience, self.verbose, self.baseline = int(patience), verbose, baseline
        self.restore_best_weights, self.start_from_epoch = restore_best_weights, int(start_from_epoch)

    def on_train_begin(self, logs=None):
        self.wait, self.stopped_epoch = 0, 0
        self.best = self.baseline
        self.best_weights, self.best_epoch = None, 0

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
        self.wait += 1
        if self._better(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._better(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.restore_best_weights and self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")


class ModelCheckpoint(_Monitor):
    """Save the model (or its weights) at the end of every epoch, or every
    save_freq steps; filepath may hold {epoch:02d}, {val_loss:.2f} ... fields.
    Files are written atomically."""
    chief_only = True

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto", save_freq="epoch", initial_value_threshold=None):
        super().__init__()
        self._init_monitor(monitor, mode)
        self.filepath, self.verbose = os.fspath(filepath), verbose
        self.save_best_only, self.save_weights_only = save_best_only, save_weights_only
        if save_freq != "epoch" and not (isinstance(save_freq, int) and save_freq > 0):
            raise ValueError(f"save_freq must be 'epoch' or a positive int, got {save_freq!r}")
        self.save_freq = save_freq
        self.best = initial_value_threshold
        self._batches = 0

    def _save(self, epoch, logs):
        logs = logs or {}
        path = self.filepath.format(epoch=epoch + 1, **logs)
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None or not self._better(current, self.best):
                return
            self.best = current
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)
        if self.verbose:
            print(f"Epoch {epoch + 1}: saved to {path}")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if isinstance(self.save_freq, int):
            self._batches += 1
            if self._batches % self.save_freq == 0:
                self._save(self._epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, logs)


class LearningRateScheduler(Callback):
    """Sets optimizer.learning_rate = schedule(epoch, lr) (or schedule(epoch))
    at the start of each epoch."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        opt = self.model.optimizer
        lr = float(opt.learning_rate)   # the set rate (Keras 2's decay= is applied on top of it)
        try:
            new = self.schedule(epoch, lr)
        except TypeError:
            new = self.schedule(epoch)
        new = float(new)
        if not math.isfinite(new):
            raise ValueError(f"the schedule returned a non-finite learning rate {new}")
        opt.learning_rate = new
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {new}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.current_learning_rate())


def _set_learning_rate(opt, value, who):
    if callable(getattr(opt, "learning_rate", None)):
        raise TypeError(f"{who}: the optimizer's learning rate is a schedule "
                        f"({opt.learning_rate!r}); give it a float learning rate to let "
                        f"{who} change it")
    opt.learning_rate = float(value)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not
    improved by more than ``min_delta`` for ``patience`` epochs, then wait
    ``cooldown`` epochs; never below ``min_lr`` (Keras 3's rules: mode
    "auto" maximises when the name contains "acc"; adds ``learning_rate`` to
    the epoch logs).  Keras 2's ``epsilon=`` is accepted for ``min_delta``."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0, **kwargs):
        super().__init__()
        if "epsilon" in kwargs:
            warnings.warn("ReduceLROnPlateau(epsilon=...) is Keras 2's spelling; use min_delta",
                          DeprecationWarning, stacklevel=2)
            min_delta = kwargs.pop("epsilon")
        if kwargs:
            raise TypeError(f"ReduceLROnPlateau: unexpected argument(s) {sorted(kwargs)}")
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau does not support a factor >= 1.0, got {factor}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be auto, min or max, got {mode!r}")
        self.monitor, self.factor, self.patience = monitor, float(factor), int(patience)
        self.verbose, self.mode, self.min_delta = verbose, mode, float(min_delta)
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)
        self._reset()

    def _reset(self):
        self._maximise = self.mode == "max" or (self.mode == "auto" and "acc" in self.monitor)
        self.best = -math.inf if self._maximise else math.inf
        self.cooldown_counter = 0
        self.wait = 0

    def _improved(self, current):
        if self._maximise:
            return current > self.best + self.min_delta
        return current < self.best - self.min_delta

    def in_cooldown(self):
        return self.cooldown_counter > 0

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        opt = self.model.optimizer
        logs["learning_rate"] = float(opt.current_learning_rate())
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"ReduceLROnPlateau: the metric {self.monitor!r} is not in the logs "
                          f"(available: {sorted(logs)})", RuntimeWarning, stacklevel=2)
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(current):
            self.best, self.wait = current, 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                old = float(opt.current_learning_rate())
                if old > float(np.float32(self.min_lr)):
                    new = max(old * self.factor, self.min_lr)
                    _set_learning_rate(opt, new, "ReduceLROnPlateau")
                    if self.verbose > 0:
                        print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate "
                              f"to {new}.")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


class LambdaCallback(Callback):
    """A callback from functions: ``LambdaCallback(on_epoch_end=lambda epoch,
    logs: ...)``; any Keras hook name may be given (``on_train_begin(logs)``,
    ``on_train_batch_end(batch, logs)``, ``on_test_end(logs)``...)."""
    _HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
              "on_batch_begin", "on_batch_end", "on_train_batch_begin", "on_train_batch_end",
              "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end",
              "on_predict_begin", "on_predict_end", "on_predict_batch_begin",
              "on_predict_batch_end")

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None,
                 on_train_end=None, on_train_batch_begin=None, on_train_batch_end=None, **kwargs):
        super().__init__()
        given = dict(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end,
                     on_train_begin=on_train_begin, on_train_end=on_train_end,
                     on_train_batch_begin=on_train_batch_begin,
                     on_train_batch_end=on_train_batch_end, **kwargs)
        for hook, fn in given.items():
            if hook not in self._HOOKS:
                raise TypeError(f"LambdaCallback: unknown hook {hook!r}; hooks: {self._HOOKS}")
            if fn is None:
                continue
            if not callable(fn):
                raise TypeError(f"LambdaCallback: {hook} must be callable, got {fn!r}")
            setattr(self, hook, fn)


class TerminateOnNaN(Callback):
    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: invalid loss, terminating training")
            self.model.stop_training = True


class CSVLogger(Callback):
    """One row per epoch; the file is rewritten atomically after each epoch."""
    chief_only = True

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename, self.sep, self.append = os.fspath(filename), separator, append

    def on_train_begin(self, logs=None):
        self.rows, self.keys = [], None
        if self.append and os.path.exists(self.filename):
            with open(self.filename, newline="") as f:
                r = list(csv.reader(f, delimiter=self.sep))
            if r:
                self.keys, self.rows = r[0][1:], [row for row in r[1:]]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
        self.rows.append([str(epoch)] + [repr(float(logs[k])) if k in logs else "NA" for k in self.keys])
        buf = io.StringIO()
        w = csv.writer(buf, delimiter=self.sep, lineterminator="\n")
        w.writerow(["epoch"] + self.keys)
        w.writerows(self.rows)
        write_text_atomic(self.filename, buf.getvalue())


class BackupAndRestore(Callback):
    """Checkpoint the whole training state (weights, optimizer state, epoch,
    step in the epoch, seed, running metric sums) every epoch or every
    save_freq steps, and resume from it when fit starts again: the resumed
    run produces the same weights as one that was never interrupted.

    backup_dir: a folder (the file is backup_dir/checkpoint.npz) or a path
    ending in .npz.  delete_checkpoint: remove it when training completes
    (Keras' default).  resume=False ignores an existing checkpoint (it is
    overwritten at the first save)."""
    chief_only = False   # rank 0 reads and writes; fit broadcasts what it read (MPI)

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True, resume=True,
                 double_checkpoint=False):
        super().__init__()
        p = os.fspath(backup_dir)
        self.path = p if p.endswith(".npz") else os.path.join(p, "checkpoint.npz")
        if save_freq != "epoch" and not (isinstance(save_freq, int) and save_freq > 0):
            raise ValueError(f"save_freq must be 'epoch' or a positive int, got {save_freq!r}")
        self.save_freq, self.delete_checkpoint, self.resume = save_freq, delete_checkpoint, resume

    def on_train_begin(self, logs=None):
        # under MPI only rank 0 reads the file (it need not be on a shared
        # file system): fit then broadcasts rank 0's state to every rank
        self._history = {}     # the logs of the epochs done, kept in the checkpoint
        if self.resume and self.model._is_chief() and os.path.exists(self.path):
            self.model._restore_checkpoint(self.path, epochs=self.params.get("epochs"))
            self._history = {k: list(v) for k, v in
                             self.model._resume.get("history", {}).items()}

    def on_train_batch_end(self, batch, logs=None):
        if isinstance(self.save_freq, int) and self.model.optimizer.iterations % self.save_freq == 0:
            self.model._save_checkpoint(self.path, self._history)

    def on_epoch_end(self, epoch, logs=None):
        for k, v in (logs or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self._history.setdefault(k, []).append(v)
        if self.save_freq == "epoch":
            self.model._save_checkpoint(self.path, self._history)

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and not self.model.stop_training and os.path.exists(self.path):
            if self.model._is_chief():
                os.unlink(self.path)


# the TensorBoard callback lives in its own module (it imports tensorboard's writer)
from .callbacks_tensorboard import TensorBoard  # noqa: E402,F401
