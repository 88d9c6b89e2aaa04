"""Callbacks with Keras names and semantics.

History, ProgbarLogger (tqdm bar on a terminal, one line per epoch
otherwise), EarlyStopping, ModelCheckpoint, LearningRateScheduler,
TerminateOnNaN, CSVLogger and BackupAndRestore (checkpoint and resume,
mid-epoch too).  Under MPI only rank 0 runs the callbacks that write or
print (``chief_only``); every rank runs the others, with the same averaged
logs, so that decisions such as early stopping agree.
"""
import csv
import io
import math
import os
import sys
import time

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

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)
        if self.model is not None:
            self.model.history = self


def _fmt_logs(logs, skip=("images_per_s",)):
    parts = []
    for k, v in logs.items():
        if k in skip:
            continue
        parts.append(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    return " - ".join(parts)


class ProgbarLogger(Callback):
    """verbose=1: a tqdm progress bar per epoch with loss, accuracy and
    images/s; verbose=2: one line per epoch (batch jobs, logs)."""
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
            ips = logs.get("images_per_s")
            extra = f" - {ips:.0f} img/s" if ips else ""
            print(f"Epoch {epoch + 1}/{self.params.get('epochs')} - {self.params.get('steps')} steps - "
                  f"{dt:.1f}s - {_fmt_logs(logs)}{extra}", file=self._out(), flush=True)


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
        lr = opt.current_learning_rate()
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
        if self.resume and self.model._is_chief() and os.path.exists(self.path):
            self.model._restore_checkpoint(self.path)

    def on_train_batch_end(self, batch, logs=None):
        if isinstance(self.save_freq, int) and self.model.optimizer.iterations % self.save_freq == 0:
            self.model._save_checkpoint(self.path)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self.model._save_checkpoint(self.path)

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and not self.model.stop_training and os.path.exists(self.path):
            if self.model._is_chief():
                os.unlink(self.path)
