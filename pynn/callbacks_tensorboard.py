"""keras.callbacks.TensorBoard: event files that TensorBoard reads, in
Keras' layout, written with tensorboard's own writer and summary helpers
(the [tensorboard] extra: pip install tensorboard; TensorFlow is not needed).

- ``log_dir/train/`` and ``log_dir/validation/``: one run each;
- ``epoch_<key>`` for every key of the epoch logs (``val_<key>`` goes to
  the validation run as ``epoch_<key>``), plus ``epoch_learning_rate``,
  at step = epoch (0-based);
- ``batch_<key>`` for every key of the batch logs every ``update_freq``
  batches when update_freq is an int, at step = the batch count since
  fit began (1-based);
- ``evaluation_<key>_vs_iterations`` in the validation run after each
  validation, at step = optimizer iterations;
- histograms of every weight every ``histogram_freq`` epochs, tag
  ``<layer name>/<weight name>/histogram`` (Keras' weight path), step = epoch.

Scalars and histograms are the tensor summaries that tf.summary writes
(tensorboard.plugins.*.summary_v2.*_pb).  write_graph is accepted and
writes nothing (pynn has no TensorFlow graph to show); write_images,
profile_batch and embeddings_freq are accepted with a warning and write
nothing.  Under MPI only rank 0 writes (chief_only).
"""
import os
import time
import warnings

import numpy as np

from .callbacks import Callback

INSTALL_HINT = ("the TensorBoard callback needs the tensorboard package: pip install tensorboard "
                "(or the [tensorboard] extra: pip install 'nnkernels[tensorboard]')")


def _tb():
    try:
        from tensorboard.compat.proto import event_pb2
        from tensorboard.plugins.histogram.summary_v2 import histogram_pb
        from tensorboard.plugins.scalar.summary_v2 import scalar_pb
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return event_pb2, EventFileWriter, scalar_pb, histogram_pb


class TensorBoard(Callback):
    chief_only = True

    def __init__(self, log_dir="logs", histogram_freq=0, write_graph=True, write_images=False,
                 write_steps_per_second=False, update_freq="epoch", profile_batch=0,
                 embeddings_freq=0, embeddings_metadata=None):
        super().__init__()
        _tb()        # a missing package is said now, not after the first epoch
        self.log_dir = os.fspath(log_dir)
        if isinstance(histogram_freq, bool) or not isinstance(histogram_freq, int) or \
                histogram_freq < 0:
            raise ValueError(f"histogram_freq must be an int >= 0, got {histogram_freq!r}")
        self.histogram_freq = histogram_freq
        if update_freq == "batch":
            update_freq = 1
        if update_freq != "epoch" and (isinstance(update_freq, bool) or
                                       not isinstance(update_freq, int) or update_freq < 1):
            raise ValueError(f"update_freq must be 'epoch', 'batch' or an int >= 1, "
                             f"got {update_freq!r}")
        self.update_freq = update_freq
        self.write_graph = bool(write_graph)      # accepted: nothing to write (see the docstring)
        self.write_steps_per_second = bool(write_steps_per_second)
        for nm, v, default in (("write_images", write_images, False),
                               ("profile_batch", profile_batch, 0),
                               ("embeddings_freq", embeddings_freq, 0),
                               ("embeddings_metadata", embeddings_metadata, None)):
            if v != default and v is not None:
                warnings.warn(f"TensorBoard({nm}={v!r}) is not supported by pynn: nothing is "
                              "written for it", RuntimeWarning, stacklevel=2)
        self._writers = {}
        self._global_train_batch = 0

    # -- writing ---------------------------------------------------------------
    def _writer(self, run):
        w = self._writers.get(run)
        if w is None:
            _, EventFileWriter, _, _ = _tb()
            w = self._writers[run] = EventFileWriter(os.path.join(self.log_dir, run))
        return w

    def _write(self, run, summary, step):
        event_pb2 = _tb()[0]
        self._writer(run).add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                                    summary=summary))

    def _scalar(self, run, tag, value, step):
        try:
            v = float(value)
        except (TypeError, ValueError):
            return          # not a number (Keras writes numbers only)
        self._write(run, _tb()[2](tag, np.float32(v)), step)

    def _flush(self):
        for w in self._writers.values():
            w.flush()

    def close(self):
        for w in self._writers.values():
            w.close()
        self._writers = {}

    # -- hooks -----------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._global_train_batch = 0

    def on_train_batch_begin(self, batch, logs=None):
        self._global_train_batch += 1
        self._batch_t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq == "epoch" or self._global_train_batch % self.update_freq:
            return
        step = self._global_train_batch
        for k, v in (logs or {}).items():
            self._scalar("train", "batch_" + k, v, step)
        if self.write_steps_per_second:
            dt = time.perf_counter() - getattr(self, "_batch_t0", time.perf_counter())
            if dt > 0:
                self._scalar("train", "batch_steps_per_second", 1.0 / dt, step)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_t0 = time.perf_counter()
        self._epoch_batch0 = self._global_train_batch

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        opt = getattr(self.model, "optimizer", None)
        if opt is not None and hasattr(opt, "current_learning_rate"):
            train["learning_rate"] = float(opt.current_learning_rate())
        if self.write_steps_per_second:
            dt = time.perf_counter() - getattr(self, "_epoch_t0", time.perf_counter())
            steps = self._global_train_batch - getattr(self, "_epoch_batch0", 0)
            if dt > 0:
                train["steps_per_second"] = steps / dt
        for k, v in train.items():
            self._scalar("train", "epoch_" + k, v, epoch)
        for k, v in val.items():
            self._scalar("validation", "epoch_" + k, v, epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._log_weights(epoch)
        self._flush()

    def on_test_end(self, logs=None):
        opt = getattr(self.model, "optimizer", None)
        if opt is None or not logs:
            return
        step = int(getattr(opt, "iterations", 0))
        for k, v in logs.items():
            self._scalar("validation", f"evaluation_{k}_vs_iterations", v, step)

    def on_train_end(self, logs=None):
        self.close()

    def _log_weights(self, epoch):
        histogram_pb = _tb()[3]
        model = self.model
        for layer in model._leaves():
            for spec in layer.specs:
                values = np.asarray(layer.ops.to_numpy(layer.w[spec.name]), dtype=np.float64)
                tag = f"{layer.name}/{spec.name}/histogram"
                self._write("train", histogram_pb(tag, values), epoch)
