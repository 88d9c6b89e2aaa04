"""compile / fit / evaluate / predict / train_on_batch for every model.

One code path for Sequential and graph models, single or multiple inputs
and outputs (arrays, lists or dicts keyed by input/output names), one loss
per output (a dict of losses, ``loss_weights``), callbacks, checkpoints and
resume (BackupAndRestore), and MPI (``model._dist``, see
pynn/distributed.py).  The input batches, each output's loss gradient and
every layer buffer are allocated at the first step of a batch shape and
reused.
"""
import sys
import time

import numpy as np

from .. import callbacks as cbks, checks, data, data_adapters, losses, optimizers
from . import compile_metrics as cm, penalties
from .training_sources import SourceTrainer


class LocalGroup:
    """The process group of a non-distributed run (``model._dist``); the MPI
    group with the same methods is ``pynn.distributed.Group``."""
    rank, size = 0, 1
    active = False

    def allreduce_sum_(self, flat):
        """In place: ``flat`` <- its sum over the ranks (one rank: itself)."""

    def sync_state_(self, flat):
        """In place: ``flat`` <- its mean over the ranks."""

    def sync_state_async(self, flat):
        """Start :meth:`sync_state_`; returns the function that finishes it."""
        return lambda: None

    def sync_model(self, model):
        """Every rank <- rank 0's seed, weights, optimizer state, position."""

    def sum_scalars(self, values):
        return values

    def sum_scalars_async(self, values):
        return lambda: values

    def grads_ready(self, flat, start):
        """Backward has finished ``flat[start:]`` (a hook for overlapping
        the reduction with the rest of backward)."""

    def broadcast_(self, arr):
        pass

    def check_same(self, value, what):
        pass


def _per_output(value, names, what, allow_single=True):
    """A list with one entry per output from a single value, a list or a
    dict keyed by output names."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(f"{what}: unknown output name(s) {unknown}; the outputs are {names}")
        return [value.get(n) for n in names]
    if isinstance(value, (list, tuple)) and not (len(names) == 1 and what == "metrics"):
        if len(value) != len(names):
            raise ValueError(f"{what}: got {len(value)} entries for a model with {len(names)} "
                             f"outputs {names}")
        return list(value)
    if not allow_single and len(names) > 1:
        raise ValueError(f"{what}: give one entry per output ({names}) as a list or a dict")
    return [value] * len(names)


def _as_list(value, names, what):
    """Arrays for the model's inputs/outputs from an array, a list or a dict."""
    if isinstance(value, dict):
        missing = [n for n in names if n not in value]
        if missing:
            raise ValueError(f"{what}: missing {missing}; expected keys {names}")
        extra = sorted(set(value) - set(names))
        if extra:
            raise ValueError(f"{what}: unknown keys {extra}; expected {names}")
        return [value[n] for n in names]
    if isinstance(value, (list, tuple)) and len(names) > 1:
        if len(value) != len(names):
            raise ValueError(f"{what}: expected {len(names)} arrays ({names}), got {len(value)}")
        return list(value)
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], np.ndarray):
        return [value[0]]
    if len(names) > 1:
        raise ValueError(f"{what}: the model has {len(names)} of them ({names}): pass a list "
                         "or a dict")
    return [value]


class Trainer(SourceTrainer):
    """The training half of Model (mixed into pynn.models.Model)."""

    # ---------------------------------------------------------------- compile --
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None,
                weighted_metrics=None, run_eagerly=False, steps_per_execution=1, jit_compile="auto",
                auto_scale_loss=True, **kwargs):
        if kwargs:
            raise TypeError(f"compile: unexpected keyword argument(s) {sorted(kwargs)}")
        if loss is None:
            raise ValueError("compile needs a loss")
        if self._graph_built or self._can_build():
            self._ensure_graph()
        names = self.output_names
        self.optimizer = optimizers.get(optimizer)
        if isinstance(self.optimizer, optimizers.LossScaleOptimizer):
            # a pass-through (no loss scaling with bfloat16): the model trains with, and
            # files store, the inner optimizer
            self.optimizer = self.optimizer.inner_optimizer
        per_loss = _per_output(loss, names, "loss")
        if any(l is None for l in per_loss):
            raise ValueError(f"loss: every output needs a loss; got {loss!r} for outputs {names}")
        self._losses = [losses.get(l) for l in per_loss]
        for l in self._losses:
            if l.reduction not in ("sum_over_batch_size", "mean", "sum"):
                raise NotImplementedError(
                    f"compile: a loss with reduction={l.reduction!r} cannot train (the "
                    "gradient needs a scalar): use 'sum_over_batch_size' or 'sum'")
        self.loss = self._losses[0] if len(self._losses) == 1 else loss
        lw = [1.0] * len(names) if loss_weights is None else \
            _per_output(loss_weights, names, "loss_weights", allow_single=False)
        self._loss_weights = [1.0 if w is None else float(w) for w in lw]
        self._metric_specs = cm.per_output_specs(metrics, weighted_metrics, names, _per_output)
        self._metric_names = cm.names(self._metric_specs)
        self.compiled = True
        self.__dict__.pop("_n_out", None)
        if self._graph_built:
            self._configure_outputs()

    @property
    def metrics_names(self):
        """Keras' names of evaluate's results: "loss", the per-output losses
        (several outputs), then the metrics."""
        if not getattr(self, "compiled", False):
            return []
        names = self.output_names
        k = len(names)
        out = ["loss"] + ([f"{o}_loss" for o in names] if k > 1 else [])
        return out + cm.log_names(self._metric_names, names)

    def _configure_outputs(self):
        """Fuse a final softmax (sigmoid) into the cross-entropy: the layer
        producing an output then emits logits in training and evaluation,
        and predict applies the activation."""
        self._logit_layers = set()
        self._logits = []
        consumers = {}
        for node in self._plan.nodes:
            for t in node.input_tensors:
                consumers[id(t)] = consumers.get(id(t), 0) + 1
        for t, loss in zip(self._outputs, self._losses):
            layer = t._keras_history[0]
            act = getattr(layer, "activation", None)
            fuse = (hasattr(layer, "emit_logits") and consumers.get(id(t), 0) == 0 and
                    getattr(layer, "activity_regularizer", None) is None and
                    not getattr(loss, "from_logits", False) and
                    ((act == "softmax" and loss.fuses_softmax) or
                     (act == "sigmoid" and getattr(loss, "fuses_sigmoid", False))) and
                    sum(1 for o in self._outputs if o._keras_history[0] is layer) == 1)
            if fuse:
                self._logit_layers.add(layer)
            self._logits.append(fuse)
        for t in self._outputs:
            if len(t.shape) != 2:
                raise ValueError(f"the loss needs outputs of shape (batch, units); output "
                                 f"{t._keras_history[0].name!r} has shape {t.shape}")
        self._n_out = [t.shape[-1] for t in self._outputs]
        self._slots = cm.resolve(self._metric_specs, self._losses, self._n_out,
                                 first=1 + (k if (k := len(self._outputs)) > 1 else 0) + k)
        self._fused_act = [getattr(t._keras_history[0], "activation", None) if f else None
                           for t, f in zip(self._outputs, self._logits)]

    def _require_ready(self, x=None):
        if not self.compiled:
            raise RuntimeError("compile the model before training or evaluating it")
        self._join_launch()
        self._ensure_graph(x)
        self._ensure_allocated()
        if not hasattr(self, "_n_out"):
            self._configure_outputs()
        self.optimizer.build(self.ops, self._params.shape[0], self._dtype)

    # ---------------------------------------------------------------- data --
    def _check_x(self, x):
        if x is None:
            raise ValueError("x is None")
        self._ensure_graph(x)
        xs = _as_list(x, self.input_names, "x")
        out = []
        for arr, t, nm in zip(xs, self._inputs, self.input_names):
            a = np.asarray(arr)
            if a.dtype.kind not in "fiub":
                raise TypeError(f"input {nm!r} must be numeric, got dtype {a.dtype}")
            want = t.shape[1:]
            if a.ndim != len(want) + 1 or any(w is not None and w != g
                                              for w, g in zip(want, a.shape[1:])):
                one = (" (one sample? add the batch axis: x[None] or np.expand_dims(x, 0))"
                       if a.ndim == len(want) else "")
                raise ValueError(f"input {nm!r}: the model expects inputs of shape {t.shape}, "
                                 f"got an array of shape {a.shape}{one}")
            if a.shape[0] == 0:
                raise ValueError("the dataset is empty (0 samples)")
            if a.dtype != self._dtype:
                a = a.astype(self._dtype)
            elif not a.flags.c_contiguous:
                a = np.ascontiguousarray(a)
            if a.dtype.kind == "f" and not (np.isfinite(a.min()) and np.isfinite(a.max())):
                raise ValueError(f"input {nm!r} contains NaN or inf")
            out.append(a)
        n = out[0].shape[0]
        for a, nm in zip(out, self.input_names):
            if a.shape[0] != n:
                raise ValueError(f"inputs have different numbers of samples: "
                                 f"{[b.shape[0] for b in out]}")
        return out

    def _check_xy(self, x, y):
        xs = self._check_x(x)
        if y is None:
            raise ValueError("y is None")
        ys = _as_list(y, self.output_names, "y")
        if not hasattr(self, "_n_out"):
            self._configure_outputs()
        out = []
        for arr, loss, k, nm in zip(ys, self._losses, self._n_out, self.output_names):
            if len(arr) != xs[0].shape[0]:
                which = "y" if len(ys) == 1 else f"y ({nm!r})"
                raise ValueError(f"x has {xs[0].shape[0]} samples but {which} has {len(arr)}")
            out.append(loss.check_targets(arr, k, self._dtype))
        return xs, out

    def _check_weights(self, sample_weight, class_weight, ys):
        """Per-output sample weights (float arrays of shape (N,)) or None, from
        ``sample_weight`` (an array for every output, or a list/dict per
        output) or ``class_weight`` ({class: weight}, Keras' rule: the class
        of a sample is its label, the argmax of a one-hot target, or its
        rounded value for one output unit)."""
        n = len(ys[0])
        if class_weight is not None:
            if sample_weight is not None:
                raise ValueError("give class_weight or sample_weight, not both")
            if not isinstance(class_weight, dict):
                raise TypeError(f"class_weight must be a dict {{class: weight}}, got "
                                f"{type(class_weight).__name__}")
            if len(ys) > 1:
                raise ValueError("class_weight is only supported for models with a single "
                                 "output; give sample_weight per output instead")
            y = np.asarray(ys[0])
            if y.ndim > 1:
                y = np.argmax(y, axis=-1) if y.shape[-1] != 1 else y[..., 0]
            cls = np.round(y).astype(np.int64)
            w = np.ones(n, dtype=self._dtype)
            for c, v in class_weight.items():
                w[cls == int(c)] = float(v)
            return [w] * len(ys)
        if sample_weight is None:
            return None
        if isinstance(sample_weight, (dict, list, tuple)) and len(ys) > 1:
            sw = _as_list(sample_weight, self.output_names, "sample_weight")
        else:
            sw = [sample_weight] * len(ys)
        out = []
        for w in sw:
            if w is None:
                out.append(np.ones(n, dtype=self._dtype))
                continue
            a = checks.numeric_array("sample_weight", w).astype(np.float64)
            if a.ndim == 2 and a.shape[1] == 1:
                a = a[:, 0]
            if a.shape != (n,):
                raise ValueError(f"sample_weight must have shape ({n},) (one weight per "
                                 f"sample), got {np.shape(w)}")
            if not np.all(np.isfinite(a)):
                raise ValueError("sample_weight contains NaN or inf")
            out.append(np.ascontiguousarray(a, dtype=self._dtype))
        return out

    def _buf(self, key, shape, dtype):
        k = (key, tuple(shape), np.dtype(dtype).str)
        b = self._bufs.get(k)
        if b is None:
            b = self._bufs[k] = self.ops.alloc(tuple(shape), dtype)
        return b

    def _to_device(self, arrays, prefix):
        return [self.ops.batch_to_device(a, prefix if i == 0 else f"{prefix}{i}")
                for i, a in enumerate(arrays)]

    # ---------------------------------------------------------------- steps --
    def _losses_sums(self, outs, ys, grad_scale, douts, sws=None, batch_total=None):
        """[weighted loss sum, per-output loss sums..., per-output correct
        counts..., other metrics' states...] (see compile_metrics); writes
        each output's loss gradient into douts.  ``grad_scale``: 1/(global
        batch) for reduction sum_over_batch_size (the gradient of "sum" is
        not scaled); ``sws``: per-output sample weights (device arrays) or
        None; ``batch_total``: the global batch size (a "sum" loss enters
        the running mean as batch sum * batch size, as Keras' loss
        tracker)."""
        tot, per, cor = 0.0, [], []
        nb = int(outs[0].shape[0]) if batch_total is None else batch_total
        for i, (out, y, loss) in enumerate(zip(outs, ys, self._losses)):
            w = self._loss_weights[i]
            d = None if douts is None else douts[i]
            summed = loss.reduction == "sum"
            sw = None if sws is None else sws[i]
            kw = {} if sw is None else {"sample_weight": sw}
            l_, c_ = loss.compute(self.ops, out, y, d, w if summed else grad_scale * w,
                                  self._logits[i], **kw)
            if summed:
                l_ = float(l_) * nb
            tot += w * float(l_)
            per.append(l_)
            cor.append(c_)
        tot += penalties.loss_sum(self, int(outs[0].shape[0]))   # regularizers, as Keras
        sums = [tot] + (per if len(per) > 1 else []) + cor
        if len(sums) < self._n_sums:
            sums += [0.0] * (self._n_sums - len(sums))
            for i, out in enumerate(outs):
                if cm.needs_outputs(self._slots[i]):
                    cm.add_generic(sums, self._slots[i], self.ops.to_numpy(ys[i]),
                                   self._host_predictions(i, out),
                                   None if sws is None else self.ops.to_numpy(sws[i]))
        return sums

    def _host_predictions(self, i, out):
        """What the model outputs (probabilities where the final activation
        was fused into the loss), as a float64 host array."""
        o = self.ops.to_numpy(out).astype(np.float64)
        act = self._fused_act[i]
        if act == "softmax":
            z = np.exp(o - o.max(axis=-1, keepdims=True))
            return z / z.sum(axis=-1, keepdims=True)
        if act == "sigmoid":
            return 0.5 * (1 + np.tanh(0.5 * o))
        return o

    @property
    def _n_sums(self):
        k = len(self._outputs)
        return cm.total_size(self._slots, 1 + (k if k > 1 else 0) + k)

    def _add_layer_losses(self, sums, n):
        """Keras adds the layers' add_loss penalties (ActivityRegularization)
        to each batch's loss: here to the loss sum, once per sample."""
        if self._run.losses:
            sums[0] += n * sum(self._run.losses)

    def _train_step(self, xbs, ybs, grad_scale, global_metrics=False, sws=None):
        """One step on this rank's batch.  ``grad_scale`` is 1/(global batch),
        so the SUM over the ranks of the gradient buffer is the global-batch
        mean gradient.  Returns the metric sums (see _losses_sums) plus the
        sample count: this rank's, or with ``global_metrics`` their sums
        over the ranks (reduced while backward runs)."""
        dist = self._dist
        # random layers' stream counter: step*size + rank (independent masks per rank)
        step = self.optimizer.iterations * dist.size + dist.rank
        for _, layer in self._rng_layers:
            layer.step = step
        xbs, ybs = self._to_device(xbs, "x"), self._to_device(ybs, "y")
        if sws is not None:
            sws = self._to_device(sws, "sw")
        outs = self._forward(xbs, True, logits=True)
        # batch-norm moving statistics (final after forward): mean over the ranks
        state = (dist.sync_state_async(self._state[:self._n_averaged])
                 if dist.active and self._n_averaged else None)
        douts = [self._buf(f"dout{i}", o.shape, self._dtype) for i, o in enumerate(outs)]
        sums = self._losses_sums(outs, ybs, grad_scale, douts, sws,
                                 batch_total=int(round(1.0 / grad_scale)))
        n = int(xbs[0].shape[0])
        self._add_layer_losses(sums, n)
        self._run.loss_scale = grad_scale * n      # the layers' add_loss gradients' weight
        pending = dist.sum_scalars_async(tuple(sums) + (n,)) if global_metrics else None
        self._backward(douts)
        dist.allreduce_sum_(self._grads)
        penalties.add_weight_gradients(self)     # once, after the sum over the ranks
        self.optimizer.apply(self.ops, self._params, self._grads, self._segments)
        penalties.apply_constraints(self)
        if state is not None:
            state()
        res = pending() if pending is not None else tuple(sums) + (n,)
        return [float(v) for v in res[:-1]], int(res[-1])

    def _metric_logs(self, sums, seen):
        """Keras' logs from the metric sums: loss, then per output
        ``<name>_loss`` (several outputs) and the metrics."""
        def r(v):
            return v / seen if seen else float("nan")
        names = self.output_names
        k = len(names)
        logs = {"loss": r(sums[0])}
        per = sums[1:1 + k] if k > 1 else []
        cor = sums[1 + len(per):1 + len(per) + k]
        for i, nm in enumerate(names):     # Keras 3's order: the losses, then the metrics
            if k > 1:
                logs[f"{nm}_loss"] = r(per[i])
        for i, nm in enumerate(names):
            for m, v in cm.results(self._slots[i], sums, float(cor[i]), seen).items():
                logs[m if k == 1 else f"{nm}_{m}"] = v
        return logs

    def _zero_sums(self):
        return [0.0] * self._n_sums

    def _join_launch(self):
        """Under an MPI launch (``mpiexec -n N python script.py``), the
        model's first fit / evaluate / train_on_batch / test_on_batch /
        predict / save joins the job's process group by itself
        (pynn.distributed.auto_group): no code change.  Joining makes no
        collective call (rank 0's weights are broadcast by the next fit,
        train_on_batch or evaluate), so a rank-0-only save cannot hang.
        ``PYNN_MPI=0`` or setting ``model.process_group`` keeps it off."""
        if not self._dist_auto:
            return
        self._dist_auto = False
        from .. import distributed
        group = distributed.auto_group()
        if group is not None:
            self.process_group = group

    def _sync_replicas(self):
        """Under MPI, every rank <- rank 0's model once (a collective call)."""
        if self._dist.active and not self._dist_synced:
            self._dist.sync_model(self)

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None, return_dict=False):
        self._require_ready(x)
        xs, ys = self._check_xy(x, y)
        sws = self._check_weights(sample_weight, class_weight, ys)
        # under MPI every rank passes its own batch of the same size: one step on their union,
        # from rank 0's weights
        dist = self._dist
        self._sync_replicas()
        sums, n = self._train_step(xs, ys, 1.0 / (xs[0].shape[0] * dist.size),
                                   global_metrics=dist.active, sws=sws)
        return self._result(self._metric_logs(sums, n), return_dict)

    def test_on_batch(self, x, y, sample_weight=None, return_dict=False):
        self._require_ready(x)
        xs, ys = self._check_xy(x, y)
        sws = self._check_weights(sample_weight, None, ys)
        outs = self._forward(self._to_device(xs, "x"), False, logits=True)
        sums = self._losses_sums(outs, self._to_device(ys, "y"), 1.0, None,
                                 None if sws is None else self._to_device(sws, "sw"))
        self._add_layer_losses(sums, xs[0].shape[0])
        return self._result(self._metric_logs(sums, xs[0].shape[0]), return_dict)

    def _result(self, logs, return_dict):
        if return_dict:
            return logs
        vals = list(logs.values())
        return vals[0] if len(vals) == 1 else vals

    # ---------------------------------------------------------------- fit --
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1):
        if data_adapters.is_batch_source(x):     # a PyDataset or a generator: training_sources.py
            return self._fit_source(
                x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data,
                shuffle, class_weight, sample_weight, initial_epoch, steps_per_epoch,
                validation_steps, validation_batch_size, validation_freq)
        for nm, v in (("steps_per_epoch", steps_per_epoch),):
            if v is not None:
                raise NotImplementedError(f"fit({nm}=...) is not supported")
        if not self.compiled:
            raise RuntimeError("compile the model before fit")
        batch_size = checks.optional_integer("batch_size", batch_size, 32, 1)
        epochs = checks.integer("epochs", epochs, 0)
        initial_epoch = checks.integer("initial_epoch", initial_epoch, 0)
        validation_freq = checks.integer("validation_freq", validation_freq, 1)
        validation_batch_size = checks.optional_integer("validation_batch_size",
                                                        validation_batch_size, batch_size, 1)
        xs, ys = self._check_xy(x, y)
        self._require_ready(xs)
        sws = self._check_weights(sample_weight, class_weight, ys) or []
        vsws, validate = None, None
        n = xs[0].shape[0]
        has_val = validation_data is not None or bool(validation_split)
        if validation_data is None and validation_split:
            if not 0.0 < validation_split < 1.0:
                raise ValueError(f"validation_split must be in (0, 1), got {validation_split}")
            k = int(n * (1.0 - validation_split))   # Keras: the last fraction, unshuffled
            if k == 0 or k == n:
                raise ValueError(f"validation_split={validation_split} leaves an empty split")
            vxs, vys = [a[k:] for a in xs], [a[k:] for a in ys]
            xs, ys = [a[:k] for a in xs], [a[:k] for a in ys]
            vsws = [a[k:] for a in sws] or None
            sws = [a[:k] for a in sws]
            n = k
        elif validation_data is not None and data_adapters.is_batch_source(validation_data):
            validate = self._validation_fn(validation_data, validation_steps,
                                           validation_batch_size or batch_size)
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be (x_val, y_val), "
                                 "(x_val, y_val, sample_weight_val), a PyDataset or a generator")
            vxs, vys = self._check_xy(*validation_data[:2])
            if len(validation_data) == 3:
                vsws = self._check_weights(validation_data[2], None, vys)
        if validation_steps is not None and validate is None and has_val:
            k = int(validation_steps) * (validation_batch_size or batch_size)
            vxs, vys = [a[:k] for a in vxs], [a[:k] for a in vys]
            vsws = None if vsws is None else [a[:k] for a in vsws]
        dist = self._dist
        steps = data.steps_per_epoch(n, batch_size, dist.size)
        verbose = (1 if sys.stdout.isatty() else 2) if verbose == "auto" else int(verbose)
        history = cbks.History()
        # History after the user callbacks (as Keras): it records what they add to
        # the logs (e.g. LearningRateScheduler's learning_rate)
        cb_list = list(callbacks or []) + [history]
        if verbose:
            cb_list.append(cbks.ProgbarLogger(verbose))
        params = {"epochs": epochs, "steps": steps, "batch_size": batch_size, "verbose": verbose,
                  "samples": n}
        cbl = cbks.CallbackList(cb_list, self, params, chief=dist.rank == 0)
        self.stop_training = False
        zero = self._zero_sums()
        self._pos = {"epoch": initial_epoch, "step": 0, "sums": list(zero), "seen": 0,
                     "seed": int(self.seed), "shuffle": bool(shuffle), "batch_size": batch_size,
                     "n": n, "ranks": dist.size}
        self._resume = None
        cbl.on_train_begin({})
        if dist.active:
            # rank 0's seed, weights, optimizer state and resume position everywhere
            dist.check_same((n, batch_size, epochs, initial_epoch, bool(shuffle)),
                            "(samples, batch_size, epochs, initial_epoch, shuffle)")
            dist.sync_model(self)
        start_epoch, start_step, sums, seen = initial_epoch, 0, list(zero), 0
        if self._resume is not None:
            r = self._resume
            if (r["n"], r["batch_size"], r["shuffle"]) != (n, batch_size, bool(shuffle)):
                raise ValueError(f"the checkpoint was written by a run with {r['n']} samples, "
                                 f"batch_size {r['batch_size']}, shuffle {r['shuffle']}; this run has "
                                 f"{n}, {batch_size}, {bool(shuffle)}")
            start_epoch, start_step = r["epoch"], r["step"]
            old = int(r.get("ranks", 1))
            if start_step and old != dist.size:
                # the steps done cover the first step*batch*ranks entries of the
                # epoch's permutation; continue from there with this rank count
                done = start_step * batch_size * old
                start_step = done // (batch_size * dist.size)
                if done % (batch_size * dist.size) and dist.rank == 0:
                    print(f"(resuming a checkpoint of {old} ranks under {dist.size}: "
                          f"{done % (batch_size * dist.size)} samples of epoch {start_epoch + 1} "
                          "are seen twice)", file=sys.stderr)
            sums, seen = list(r["sums"]), r["seen"]
            self._pos["ranks"] = dist.size   # the checkpoint's count was converted above
            if start_step >= steps:
                start_epoch, start_step, sums, seen = start_epoch + 1, 0, list(zero), 0
        batcher = data.Batcher(tuple(xs) + tuple(ys) + tuple(sws), batch_size, shuffle=shuffle,
                               seed=self.seed, rank=dist.rank, size=dist.size)
        nx, ny = len(xs), len(ys)
        logs = {}
        for epoch in range(start_epoch, epochs):
            if self.stop_training:
                break
            self._pos.update(epoch=epoch, step=start_step)
            params["start_step"] = start_step
            cbl.on_epoch_begin(epoch, {})
            t0 = time.perf_counter()
            seen0 = seen
            step = start_step
            for batch in batcher.epoch(epoch, start_step):
                cbl.on_train_batch_begin(step, {})
                nb = batch[0].shape[0]
                gscale = 1.0 / (nb * dist.size)
                s_, nb = self._train_step(list(batch[:nx]), list(batch[nx:nx + ny]), gscale,
                                          global_metrics=dist.active,
                                          sws=list(batch[nx + ny:]) or None)
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
            start_step, sums, seen = 0, list(zero), 0
            epoch_logs = dict(logs)
            if has_val and (epoch + 1) % validation_freq == 0:
                vl = (validate() if validate is not None else
                      self._evaluate_arrays(vxs, vys, validation_batch_size or batch_size, vsws,
                                            cbl))
                epoch_logs.update({"val_" + k: v for k, v in vl.items()})
            self._pos.update(epoch=epoch + 1, step=0, sums=list(zero), seen=0)
            cbl.on_epoch_end(epoch, epoch_logs)
        cbl.on_train_end(logs)
        self.history = history
        return history

    # ---------------------------------------------------------------- evaluate --
    def _evaluate_arrays(self, xs, ys, batch_size, sws=None, cbl=None):
        """Loss and metrics over (xs, ys) (sample weights ``sws``: a list per
        output or None), sharded over ranks when distributed.  ``cbl``: the
        callbacks that get the on_test_* hooks (batch logs are this rank's
        running figures)."""
        dist = self._dist
        n = xs[0].shape[0]
        lo = n * dist.rank // dist.size
        hi = n * (dist.rank + 1) // dist.size
        sums = self._zero_sums()
        if cbl is not None:
            cbl.on_test_begin({})
        for b, s in enumerate(range(lo, hi, batch_size)):
            e = min(s + batch_size, hi)
            if cbl is not None:
                cbl.on_test_batch_begin(b, {})
            outs = self._forward(self._to_device([a[s:e] for a in xs], "x"), False, logits=True)
            sw = None if sws is None else self._to_device([a[s:e] for a in sws], "sw")
            s_ = self._losses_sums(outs, self._to_device([a[s:e] for a in ys], "y"), 1.0, None,
                                   sw)
            self._add_layer_losses(s_, e - s)
            sums = [a + float(b) for a, b in zip(sums, s_)]
            if cbl is not None:
                cbl.on_test_batch_end(b, self._metric_logs(sums, e - lo))
        if dist.active:
            sums = list(dist.sum_scalars(tuple(sums)))
        logs = self._metric_logs(sums, n)
        if cbl is not None:
            cbl.on_test_end(dict(logs))
        return logs

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False):
        if data_adapters.is_batch_source(x):     # a PyDataset or a generator
            return self._evaluate_from_source(x, y, batch_size, verbose, sample_weight, steps,
                                              return_dict)
        if steps is not None:
            raise NotImplementedError("evaluate(steps=...) with arrays: pass x[:steps * batch_size]")
        bs = checks.optional_integer("batch_size", batch_size, 32, 1)
        self._require_ready(x)
        self._sync_replicas()   # evaluate is collective under MPI: rank 0's weights everywhere
        xs, ys = self._check_xy(x, y)
        sws = self._check_weights(sample_weight, None, ys)
        t0 = time.perf_counter()
        cbl = None
        if callbacks:
            steps_ = -(-xs[0].shape[0] // bs)
            cbl = cbks.CallbackList(list(callbacks), self, {"verbose": 0, "epochs": 1,
                                                             "steps": steps_},
                                    chief=self._dist.rank == 0)
        logs = self._evaluate_arrays(xs, ys, bs, sws, cbl)
        verbose = (1 if sys.stdout.isatty() else 2) if verbose == "auto" else int(verbose)
        if verbose and self._dist.rank == 0:
            dt = time.perf_counter() - t0
            print(cbks.keras_line(-(-xs[0].shape[0] // bs), dt, logs), flush=True)
        return self._result(logs, return_dict)

    # ---------------------------------------------------------------- predict --
    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        self._join_launch()   # no collective call: each rank predicts all of x with its weights
        if data_adapters.is_batch_source(x):     # a PyDataset or a generator
            return self._predict_from_source(x, batch_size, steps)
        xs = self._check_x(x)
        self._ensure_allocated()
        bs = checks.optional_integer("batch_size", batch_size, 32, 1)
        n = xs[0].shape[0]
        res = None
        cbl = None
        if callbacks:
            cbl = cbks.CallbackList(list(callbacks), self, {"verbose": 0, "epochs": 1,
                                                             "steps": -(-n // bs)},
                                    chief=self._dist.rank == 0)
            cbl.on_predict_begin({})
        for b, s in enumerate(range(0, n, bs)):
            if cbl is not None:
                cbl.on_predict_batch_begin(b, {})
            outs = self._forward(self._to_device([a[s:s + bs] for a in xs], "x"), False)
            if res is None:
                res = [np.empty((n,) + tuple(o.shape[1:]), dtype=self._dtype) for o in outs]
            for r, o in zip(res, outs):
                r[s:s + bs] = self.ops.to_numpy(o)
            if cbl is not None:
                got = [r[s:s + bs] for r in res]
                cbl.on_predict_batch_end(b, {"outputs": got[0] if len(got) == 1 else got})
        if cbl is not None:
            cbl.on_predict_end({})
        if isinstance(self._outputs_struct, dict):
            return dict(zip(self._outputs_struct.keys(), res))
        return res[0] if len(res) == 1 else res

    def predict_on_batch(self, x):
        xs = x if isinstance(x, (list, tuple, dict)) else [x]
        first = next(iter(xs.values())) if isinstance(xs, dict) else xs[0]
        return self.predict(x, batch_size=max(1, len(first)), verbose=0)

    def __call__(self, x, training=None, **kwargs):
        from ..symbolic import is_symbolic
        if is_symbolic(x) or (isinstance(x, dict) and any(is_symbolic(v) for v in x.values())):
            if isinstance(x, dict):
                x = [x[n] for n in self.input_names]
            return super().__call__(x, **kwargs)
        if training is not False and self._weightless_random(x):
            return self._random_call(x)     # e.g. a data-augmentation Sequential (Keras 3)
        if training:
            raise NotImplementedError("call the model with training=False (use fit to train)")
        return self.predict_on_batch(x)

    def _weightless_random(self, x):
        """A model without weights whose layers include random ones (the
        augmentation layers): called on arrays it runs in training mode, as
        Keras 3 does, drawing new numbers at every call."""
        self._ensure_graph(x)
        leaves = self._leaves()
        return not any(l.specs for l in leaves) and any(getattr(l, "uses_rng", False)
                                                      for l in leaves)

    def _random_call(self, x):
        xs = self._check_x(x)
        self._ensure_allocated()
        k = self._eager_calls = getattr(self, "_eager_calls", -1) + 1
        for _, layer in self._rng_layers:
            layer.step = k
        outs = self._forward(self._to_device(xs, "x"), True)
        res = [np.array(self.ops.to_numpy(o)) for o in outs]
        return res[0] if len(res) == 1 else res
