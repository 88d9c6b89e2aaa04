"""fit / evaluate / predict on a PyDataset or a generator (mixed into Trainer).

``Trainer.fit`` / ``evaluate`` / ``predict`` hand over here when ``x`` is a
batch source (pynn/data_adapters.py); arrays never come here.  The step,
the loss sums, the callbacks and the checkpoints are the array path's; what
differs is where the batches come from, the position stored for a resume
(``source``, ``batches``, ``steps`` instead of samples and batch size), and
under MPI one more tiny reduction per step: the global batch (batches of a
PyDataset or of each rank's generator may differ in size) and whether every
rank still has a batch (one rank's input running out stops all of them
instead of deadlocking).  Also the Keras 2 names fit_generator /
evaluate_generator / predict_generator.
"""
import sys
import time
import warnings

import numpy as np

from .. import callbacks as cbks, data_adapters as da


def _ignored_loader_args(workers, use_multiprocessing):
    if (workers or 1) > 1 or use_multiprocessing:
        warnings.warn("workers / use_multiprocessing are accepted but not used by pynn: batches "
                      "are loaded in the training process", UserWarning, stacklevel=3)


def _deprecated(old, new):
    warnings.warn(f"Model.{old} is deprecated (Keras 2): use Model.{new}, which accepts "
                  "generators and PyDataset/Sequence objects", DeprecationWarning, stacklevel=3)


class SourceTrainer:
    # ---------------------------------------------------------------- batches --
    def _source_xy(self, batch, what):
        x, y, sw = da.unpack_batch(batch)
        if y is None:
            raise ValueError(f"{what} needs batches (x, y) or (x, y, sample_weight); the "
                             "generator/PyDataset gave x alone")
        if sw is not None:
            raise NotImplementedError("sample weights in the batches of a generator/PyDataset are "
                                      "not supported yet: yield (x, y)")
        return self._check_xy(x, y)

    def _make_source(self, x, steps, shuffle, what, shard=True):
        dist = self._dist
        rank, size = (dist.rank, dist.size) if shard else (0, 1)
        return da.adapter(x, steps, shuffle, 0, rank, size, what)

    def _ready_from(self, src):
        """Build and allocate from the first batch (a Sequential without an
        input shape learns it there)."""
        x, _, _ = da.unpack_batch(src.peek())
        self._require_ready(x if isinstance(x, (list, tuple, dict)) else np.asarray(x))
        src.seed = int(self.seed)

    # ---------------------------------------------------------------- fit --
    def _fit_source(self, x, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
                    validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
                    sample_weight=None, initial_epoch=0, steps_per_epoch=None,
                    validation_steps=None, validation_batch_size=None, validation_freq=1):
        kind = "a PyDataset" if da._is_pydataset(x) else "a generator"
        for nm, v in (("y", y), ("sample_weight", sample_weight), ("batch_size", batch_size)):
            if v is not None:
                raise ValueError(f"fit: {nm} must not be given when x is {kind}: its batches "
                                 "carry x, y (and sample weights) at their own batch size")
        if validation_split:
            raise ValueError(f"fit: validation_split needs array data, x is {kind}: pass "
                             "validation_data")
        if class_weight is not None:
            raise NotImplementedError("class_weight with a generator/PyDataset is not supported")
        if not self.compiled:
            raise RuntimeError("compile the model before fit")
        epochs, initial_epoch = int(epochs), int(initial_epoch)
        dist = self._dist
        src = self._make_source(x, steps_per_epoch, shuffle, "x")
        if dist.active and src.steps is None:
            raise ValueError("under MPI every rank consumes its own generator: give "
                             "steps_per_epoch so that all ranks take the same number of steps")
        self._ready_from(src)
        validate = self._validation_fn(validation_data, validation_steps,
                                       validation_batch_size or 32)
        verbose = (1 if sys.stdout.isatty() else 2) if verbose == "auto" else int(verbose)
        params = {"epochs": epochs, "steps": src.steps, "batch_size": None, "verbose": verbose,
                  "samples": None}
        history = cbks.History()
        cb_list = list(callbacks or []) + [history]
        if verbose:
            cb_list.append(cbks.ProgbarLogger(verbose))
        cbl = cbks.CallbackList(cb_list, self, params, chief=dist.rank == 0)
        self.stop_training = False
        zero = self._zero_sums()
        desc = dict(src.describe(), steps=src.steps, shuffle=bool(shuffle))
        self._pos = dict(desc, epoch=initial_epoch, step=0, sums=list(zero), seen=0,
                         seed=int(self.seed), batch_size=None, n=None, ranks=dist.size)
        self._resume = None
        cbl.on_train_begin()
        if dist.active:
            dist.check_same((desc["batches"], src.steps, epochs, initial_epoch, bool(shuffle)),
                            "(batches, steps_per_epoch, epochs, initial_epoch, shuffle)")
            dist.sync_model(self)
        src.seed = int(self.seed)      # a checkpoint (or rank 0) may have brought another seed
        start_epoch, start_step, sums, seen = initial_epoch, 0, list(zero), 0
        if self._resume is not None:
            start_epoch, start_step, sums, seen = self._resume_source(src, desc, zero)
        logs = {}
        for epoch in range(start_epoch, epochs):
            if self.stop_training:
                break
            self._pos.update(epoch=epoch, step=start_step)
            params["start_step"] = start_step
            cbl.on_epoch_begin(epoch)
            src.begin_epoch()
            t0 = time.perf_counter()
            seen0, step = seen, start_step
            it = src.epoch(epoch, start_step)
            while True:
                batch = next(it, None)
                if not self._all_have_batch(batch is not None):
                    break
                xs, ys = self._source_xy(batch, "fit")
                cbl.on_train_batch_begin(step)
                nb = xs[0].shape[0]
                total = dist.sum_scalars((nb,))[0] if dist.active else nb
                s_, nb = self._train_step(xs, ys, 1.0 / total, global_metrics=dist.active)
                sums = [a + b for a, b in zip(sums, s_)]
                seen += nb
                step += 1
                self._pos.update(step=step, sums=list(sums), seen=seen)
                logs = self._metric_logs(sums, seen)
                dt = time.perf_counter() - t0
                logs["images_per_s"] = (seen - seen0) / dt if dt > 0 else 0.0
                cbl.on_train_batch_end(step - 1, logs)
                if self.stop_training:
                    break
            self._check_ran_out(src, step, epoch, epochs)
            src.end_epoch()
            start_step, sums, seen = 0, list(zero), 0
            epoch_logs = dict(logs)
            if validate is not None and (epoch + 1) % validation_freq == 0:
                epoch_logs.update({"val_" + k: v for k, v in validate().items()})
            self._pos.update(epoch=epoch + 1, step=0, sums=list(zero), seen=0)
            cbl.on_epoch_end(epoch, epoch_logs)
        cbl.on_train_end(logs)
        self.history = history
        return history

    def _all_have_batch(self, have):
        """Under MPI: does every rank have a batch for this step?  (A rank
        whose input ran out stops every rank, with a warning, rather than
        leaving the others waiting in the gradient reduction.)"""
        dist = self._dist
        if not dist.active:
            return have
        n = int(dist.sum_scalars((int(have),))[0])
        if 0 < n < dist.size:
            warnings.warn(f"the input of {dist.size - n} rank(s) ran out: every rank ends the "
                          "epoch and training stops", RuntimeWarning, stacklevel=3)
            self.stop_training = True
        return n == dist.size

    def _check_ran_out(self, src, step, epoch, epochs):
        """Keras' rule: an iterator that ran out before steps_per_epoch (or a
        consumed one with epochs left) interrupts training, with a warning."""
        if not isinstance(src, da.IterSource) or self.stop_training:
            return
        short = src.steps is not None and step < src.steps
        if src.reiterable:
            if short:
                warnings.warn(f"epoch {epoch + 1} ended after {step} of {src.steps} steps: the "
                              "input has fewer batches than steps_per_epoch", UserWarning,
                              stacklevel=3)
            return
        if short or (src.exhausted and epoch + 1 < epochs):
            warnings.warn(f"your input ran out of data after {step} steps of epoch {epoch + 1}; "
                          "interrupting training.  Make sure the generator can yield at least "
                          "steps_per_epoch * epochs batches (an infinite generator with "
                          "steps_per_epoch, or a PyDataset)", UserWarning, stacklevel=3)
            self.stop_training = True

    def _resume_source(self, src, desc, zero):
        r, dist = self._resume, self._dist
        got = {k: r.get(k) for k in ("source", "batches", "steps", "shuffle")}
        want = {k: desc[k] for k in got}
        if got != want:
            raise ValueError(f"the checkpoint was written by a run with {got}; this run has {want}")
        start_epoch, start_step = int(r["epoch"]), int(r["step"])
        if start_step and int(r.get("ranks", 1)) != dist.size:
            raise NotImplementedError(
                f"resuming in the middle of an epoch under {dist.size} ranks a checkpoint of "
                f"{r.get('ranks')} ranks with a PyDataset/generator is not supported: use the same "
                "number of ranks, or BackupAndRestore(save_freq='epoch')")
        self._pos["ranks"] = dist.size
        if not src.resumable and dist.rank == 0:
            warnings.warn(
                f"BackupAndRestore resumed at epoch {start_epoch + 1}, step {start_step} with the "
                "weights and optimizer state of the checkpoint, but a generator cannot be rewound: "
                "the following batches come from the generator as it starts now, not those the "
                "interrupted run would have seen (use a PyDataset for an exact resume)",
                UserWarning, stacklevel=3)
        sums, seen = list(r["sums"]), r["seen"]
        if src.steps is not None and start_step >= src.steps:
            return start_epoch + 1, 0, list(zero), 0
        return start_epoch, start_step, sums, seen

    def _validation_fn(self, validation_data, validation_steps, batch_size):
        """A function returning the validation logs, or None."""
        if validation_data is None:
            return None
        if da.is_batch_source(validation_data):
            vsrc = self._make_source(validation_data, validation_steps, False, "validation_data")
            return lambda: self._evaluate_source(vsrc, validation_steps)
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            if isinstance(validation_data, (tuple, list)) and len(validation_data) == 3:
                raise NotImplementedError("validation_data with sample weights is not supported")
            raise ValueError("validation_data must be (x_val, y_val), a PyDataset or a generator")
        vxs, vys = self._check_xy(*validation_data)
        if validation_steps is not None:
            k = int(validation_steps) * batch_size
            vxs, vys = [a[:k] for a in vxs], [a[:k] for a in vys]
        return lambda: self._evaluate_arrays(vxs, vys, batch_size)

    # ---------------------------------------------------------------- evaluate --
    def _evaluate_source(self, src, steps):
        """Loss and metrics over the source's batches (this rank's share of a
        PyDataset's, or its own generator's), summed over the ranks."""
        dist = self._dist
        sums, seen = self._zero_sums(), 0
        for batch in src.eval_batches(steps):
            xs, ys = self._source_xy(batch, "evaluate")
            outs = self._forward(self._to_device(xs, "x"), False, logits=True)
            s_ = self._losses_sums(outs, self._to_device(ys, "y"), 1.0, None)
            sums = [a + float(b) for a, b in zip(sums, s_)]
            seen += xs[0].shape[0]
        if dist.active:
            res = dist.sum_scalars(tuple(sums) + (seen,))
            sums, seen = list(res[:-1]), int(res[-1])
        if seen == 0:
            raise ValueError("evaluate: the generator/PyDataset gave no batches (a generator "
                             "consumed by an earlier evaluation needs steps / validation_steps)")
        return self._metric_logs(sums, seen)

    def _evaluate_from_source(self, x, y, batch_size, verbose, sample_weight, steps, return_dict):
        for nm, v in (("y", y), ("sample_weight", sample_weight), ("batch_size", batch_size)):
            if v is not None:
                raise ValueError(f"evaluate: {nm} must not be given when x is a generator or a "
                                 "PyDataset (its batches carry them)")
        if not self.compiled:
            raise RuntimeError("compile the model before training or evaluating it")
        src = self._make_source(x, steps, False, "x")
        self._ready_from(src)
        t0 = time.perf_counter()
        logs = self._evaluate_source(src, steps)
        verbose = (1 if sys.stdout.isatty() else 2) if verbose == "auto" else int(verbose)
        if verbose and self._dist.rank == 0:
            print(f"evaluate: {time.perf_counter() - t0:.1f}s - {cbks._fmt_logs(logs)}", flush=True)
        return self._result(logs, return_dict)

    # ---------------------------------------------------------------- predict --
    def _predict_from_source(self, x, batch_size, steps):
        if batch_size is not None:
            raise ValueError("predict: batch_size must not be given when x is a generator or a "
                             "PyDataset")
        src = self._make_source(x, steps, False, "x", shard=False)
        parts = None
        for batch in src.eval_batches(steps):
            xb, _, _ = da.unpack_batch(batch)
            xs = self._check_x(xb)
            self._ensure_allocated()
            outs = self._forward(self._to_device(xs, "x"), False)
            outs = [np.array(self.ops.to_numpy(o), copy=True) for o in outs]
            if parts is None:
                parts = [[] for _ in outs]
            for p, o in zip(parts, outs):
                p.append(o)
        if parts is None:
            raise ValueError("predict: the generator/PyDataset gave no batches")
        res = [np.concatenate(p, axis=0) for p in parts]
        if isinstance(self._outputs_struct, dict):
            return dict(zip(self._outputs_struct.keys(), res))
        return res[0] if len(res) == 1 else res

    # ---------------------------------------------------------------- Keras 2 names --
    def fit_generator(self, generator, steps_per_epoch=None, epochs=1, verbose=1, callbacks=None,
                      validation_data=None, validation_steps=None, validation_freq=1,
                      class_weight=None, max_queue_size=10, workers=1, use_multiprocessing=False,
                      shuffle=True, initial_epoch=0):
        _deprecated("fit_generator", "fit")
        _ignored_loader_args(workers, use_multiprocessing)
        return self.fit(generator, steps_per_epoch=steps_per_epoch, epochs=epochs, verbose=verbose,
                        callbacks=callbacks, validation_data=validation_data,
                        validation_steps=validation_steps, validation_freq=validation_freq,
                        class_weight=class_weight, shuffle=shuffle, initial_epoch=initial_epoch)

    def evaluate_generator(self, generator, steps=None, callbacks=None, max_queue_size=10,
                           workers=1, use_multiprocessing=False, verbose=0):
        _deprecated("evaluate_generator", "evaluate")
        _ignored_loader_args(workers, use_multiprocessing)
        return self.evaluate(generator, steps=steps, callbacks=callbacks, verbose=verbose)

    def predict_generator(self, generator, steps=None, callbacks=None, max_queue_size=10,
                          workers=1, use_multiprocessing=False, verbose=0):
        _deprecated("predict_generator", "predict")
        _ignored_loader_args(workers, use_multiprocessing)
        return self.predict(generator, steps=steps, callbacks=callbacks, verbose=verbose)
