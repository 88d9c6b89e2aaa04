"""``Sequential``: build, compile, fit, evaluate, predict, summary, save/load.

Memory layout: every trainable weight of the model is a view into ONE flat
parameter buffer, every gradient a view into ONE flat gradient buffer (same
offsets), and non-trainable weights (batch-norm moving statistics) live in a
third flat buffer.  The optimizer updates all parameters with one fused
kernel call per step, and data-parallel training allreduces the gradient
buffer with one call (``model._dist``, see pynn/distributed.py).  Layer outputs, gradients, the input batch and the
loss gradient are buffers allocated at the first step of each batch shape
and reused, so steady-state steps allocate no fresh memory.

Determinism: weights are initialised from generators derived from the seed
(``pynn.utils.set_random_seed``), each epoch's order is a function of
(seed, epoch), the dropout mask of a step is a function of (seed, layer,
step) (under MPI: step*size + rank), and every kernel reduction has a fixed order: the same seed and
thread count give bitwise-identical weights, and a run resumed from a
checkpoint continues exactly as the uninterrupted one would have.
"""
import math
import os
import re
import sys
import time

import numpy as np

from . import backend, callbacks as cbks, data, io, layers as L, losses, optimizers, utils


def _snake(name):
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


class _Single:
    """The process group of a non-distributed run (``model._dist``); the MPI
    group with the same methods is ``pynn.distributed.Group``."""
    rank, size = 0, 1
    active = False

    def allreduce_sum_(self, flat):
        """In place: ``flat`` <- its sum over the ranks (one rank: itself)."""
        pass

    def sync_state_(self, flat):
        """In place: ``flat`` <- its mean over the ranks."""
        pass

    def sync_state_async(self, flat):
        """Start :meth:`sync_state_`; returns the function that finishes it."""
        return lambda: None

    def sync_model(self, model):
        """Every rank <- rank 0's seed, weights, optimizer state, position."""
        pass

    def sum_scalars(self, values):
        return values

    def sum_scalars_async(self, values):
        return lambda: values

    def grads_ready(self, flat, start):
        """Backward has finished ``flat[start:]`` (a hook for overlapping
        the reduction with the rest of backward)."""
        pass

    def broadcast_(self, arr):
        pass

    def check_same(self, value, what):
        pass


_METRIC_NAMES = {"accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy",
                 "binary_accuracy"}


class Sequential:
    def __init__(self, layers=None, name=None, *, dtype="float32", device=None, trainable=True):
        self.name = name or "sequential"
        self.layers = []
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.ops = backend.get_ops(device)
        self.built = False
        self.optimizer = self.loss = None
        self.compiled = False
        self.metrics_names = []
        self.stop_training = False
        self.history = None
        self.seed = None
        self._dist = _Single()
        self._resume = None
        self._dist_synced = False   # set by the MPI group's sync_model (rank 0's weights)
        self._pos = {}
        for layer in layers or ():
            self.add(layer)

    # ---------------------------------------------------------------- device --
    def to_device(self, device):
        """Move the model (weights, optimizer state) to "cpu", "gpu" or
        "numpy"; returns self.  Buffers are reallocated on the new device."""
        ops = backend.get_ops(device)
        if ops is self.ops:
            return self
        old, self.ops = self.ops, ops
        if self.built:
            weights = [old.to_numpy(w) for l in self.layers for w in l.weights]
            for layer in self.layers:
                layer.ops = ops
                layer.w, layer.g = {}, {}
                layer.release_buffers()
            self._allocate()
            self.set_weights(weights)
            if self.optimizer is not None and self.optimizer.state:
                self.optimizer.state = {k: ops.asarray(old.to_numpy(v))
                                        for k, v in self.optimizer.state.items()}
        return self

    def to_gpu(self):
        return self.to_device("gpu")

    def to_cpu(self):
        return self.to_device("cpu")

    # ---------------------------------------------------------------- layers --
    def add(self, layer):
        if not isinstance(layer, L.Layer):
            raise TypeError(f"Sequential.add expects a pynn layer, got {type(layer).__name__}")
        if self.built:
            raise RuntimeError("cannot add layers to a built model")
        if isinstance(layer, L.InputLayer) and self.layers:
            raise ValueError("an Input can only be the first layer")
        self.layers.append(layer)

    def pop(self):
        if self.built:
            raise RuntimeError("cannot pop layers from a built model")
        return self.layers.pop()

    def _declared_input_shape(self):
        if self.layers and self.layers[0].input_shape_arg is not None:
            return self.layers[0].input_shape_arg
        return None

    def build(self, input_shape=None):
        """Build for inputs of shape (batch, ...) (Keras convention; the batch
        size is ignored).  Without an argument, uses the first layer's
        input_shape= / Input."""
        if self.built:
            return
        if input_shape is not None:
            shape = tuple(input_shape)[1:]
        else:
            shape = self._declared_input_shape()
            if shape is None:
                raise ValueError("the model does not know its input shape: give the first layer "
                                 "input_shape=..., start with pynn.Input(shape), or call fit/build")
        if not self.layers:
            raise ValueError("the model has no layers")
        if any(s is None or s < 1 for s in shape):
            raise ValueError(f"every input dimension must be known and >= 1, got {shape}")
        self.input_shape = (None,) + tuple(shape)
        seen = {}
        for layer in self.layers:
            base = layer.name or _snake(type(layer).__name__)
            if layer.name is None:
                k = seen.get(base, 0)
                layer.name = base if k == 0 else f"{base}_{k}"
                seen[base] = k + 1
            layer._build(shape, self.ops, self.dtype)
            shape = layer.output_shape
        self.output_shape = (None,) + tuple(shape)
        names = [l.name for l in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique, got {names}")
        self._allocate()
        self.built = True

    def _allocate(self):
        if self.seed is None:
            self.seed = utils.fresh_seed()
        specs = [(li, l, s) for li, l in enumerate(self.layers) for s in l.specs]
        nt = sum(s.size for _, _, s in specs if s.trainable)
        nn = sum(s.size for _, _, s in specs if not s.trainable)
        ops = self.ops
        self._params = ops.alloc((nt,), self.dtype, zeros=True)
        self._grads = ops.alloc((nt,), self.dtype, zeros=True)
        self._state = ops.alloc((nn,), self.dtype, zeros=True)
        # the state that forward updates (batch-norm moving statistics) comes first:
        # self._state[:self._n_averaged] is what MPI ranks average at every step; frozen
        # weights (trainable=False) follow and are never reduced
        self._n_averaged = sum(s.size for _, _, s in specs if s.averaged)
        self._segments = []
        ot, on, oa = 0, self._n_averaged, 0
        starts = {}
        for wi, (li, layer, s) in enumerate(specs):
            rng = np.random.default_rng(utils.derive_seed(self.seed, li, wi))
            init = s.initializer(s.shape, rng, self.dtype)
            if s.trainable:
                view = self._params[ot:ot + s.size].reshape(s.shape)
                layer.g[s.name] = self._grads[ot:ot + s.size].reshape(s.shape)
                self._segments.append((ot, s.size))
                starts.setdefault(li, ot)
                ot += s.size
            else:
                o = oa if s.averaged else on
                view = self._state[o:o + s.size].reshape(s.shape)
                layer.g[s.name] = ops.alloc(s.shape, self.dtype, zeros=True)  # scratch
                if s.averaged:
                    oa += s.size
                else:
                    on += s.size
            view[...] = ops.asarray(init, self.dtype)
            layer.w[s.name] = view
        self._dropouts = [l for l in self.layers if isinstance(l, L.Dropout)]
        self._set_seed(self.seed)
        # layers before the first one with weights need no backward at all
        self._first_grad = next((i for i, l in enumerate(self.layers)
                                 if any(s.trainable for s in l.specs)), len(self.layers))
        # after layer i's backward, self._grads[self._grad_ready[i]:] is final (the buffer
        # is in layer order and backward runs from the last layer to the first)
        self._grad_ready = [nt] * (len(self.layers) + 1)
        for i in range(len(self.layers) - 1, -1, -1):
            self._grad_ready[i] = starts.get(i, self._grad_ready[i + 1])
        self._bufs = {}

    # ---------------------------------------------------------------- compile --
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None,
                weighted_metrics=None, run_eagerly=False, steps_per_execution=1, jit_compile="auto",
                **kwargs):
        if loss is None:
            raise ValueError("compile needs a loss")
        if loss_weights is not None or weighted_metrics is not None:
            raise NotImplementedError("loss_weights / weighted_metrics are not supported")
        self.optimizer = optimizers.get(optimizer)
        self.loss = losses.get(loss)
        self.metrics_names = []
        for m in metrics or ():
            name = m if isinstance(m, str) else getattr(m, "name", None)
            if name not in _METRIC_NAMES:
                raise ValueError(f"unsupported metric {m!r}; supported: {sorted(_METRIC_NAMES)}")
            self.metrics_names.append(name)
        self.compiled = True
        if self.built:
            self._configure_output()

    def _configure_output(self):
        """Fuse a final softmax (sigmoid) into the cross-entropy: the last
        layer then emits logits in training and evaluation, and predict
        applies the activation."""
        last = self.layers[-1]
        self._logits = False
        self._final_act = None
        if hasattr(last, "emit_logits"):
            last.emit_logits = False
            act = getattr(last, "activation", None)
            from_logits = getattr(self.loss, "from_logits", False)
            if not from_logits and ((act == "softmax" and self.loss.fuses_softmax) or
                                    (act == "sigmoid" and getattr(self.loss, "fuses_sigmoid", False))):
                last.emit_logits = True
                self._logits = True
                self._final_act = act
        n_out = self.output_shape[-1]
        if len(self.output_shape) != 2:
            raise ValueError(f"the model output must be (batch, units), got {self.output_shape}")
        self._n_out = n_out

    def _require_ready(self, x=None):
        if not self.compiled:
            raise RuntimeError("compile the model before training or evaluating it")
        if not self.built:
            if x is None:
                self.build()
            else:
                self.build((None,) + np.shape(x)[1:])
        if not hasattr(self, "_logits"):
            self._configure_output()
        self.optimizer.build(self.ops, self._params.shape[0], self.dtype)

    # ---------------------------------------------------------------- data --
    def _check_x(self, x):
        if x is None:
            raise ValueError("x is None")
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise TypeError(f"x must be numeric, got dtype {x.dtype}")
        if not self.built:
            if self._declared_input_shape() is None:
                self.build((None,) + x.shape[1:])
            else:
                self.build()
        want = self.input_shape[1:]
        if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != tuple(want):
            raise ValueError(f"the model expects inputs of shape {self.input_shape}, got an array "
                             f"of shape {x.shape}")
        if x.shape[0] == 0:
            raise ValueError("the dataset is empty (0 samples)")
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        elif not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        if x.dtype.kind == "f" and not (np.isfinite(x.min()) and np.isfinite(x.max())):
            raise ValueError("x contains NaN or inf")
        return x

    def _check_xy(self, x, y):
        x = self._check_x(x)
        if y is None:
            raise ValueError("y is None")
        if len(y) != x.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {len(y)}")
        if not hasattr(self, "_n_out"):
            self._configure_output()
        return x, self.loss.check_targets(y, self._n_out, self.dtype)

    def _buf(self, key, shape, dtype):
        k = (key, tuple(shape), np.dtype(dtype).str)
        b = self._bufs.get(k)
        if b is None:
            b = self._bufs[k] = self.ops.alloc(tuple(shape), dtype)
        return b

    # ---------------------------------------------------------------- steps --
    def _forward(self, x, training):
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def _backward(self, d):
        first, ready, g, dist = self._first_grad, self._grad_ready, self._grads, self._dist
        for i in range(len(self.layers) - 1, first - 1, -1):
            d = self.layers[i].backward(d, need_dx=i > first)
            dist.grads_ready(g, ready[i])    # g[ready[i]:] is final: its allreduce may start

    def _train_step(self, xb, yb, grad_scale, global_metrics=False):
        """One step on this rank's batch.  ``grad_scale`` is
        1/(global batch), so the SUM over the ranks of the gradient buffer
        is the global-batch mean gradient.  Returns (loss sum, correct,
        samples): this rank's, or with ``global_metrics`` their sums over
        the ranks (reduced while backward runs)."""
        dist = self._dist
        # dropout stream counter: step*size + rank (independent masks per rank)
        step = self.optimizer.iterations * dist.size + dist.rank
        for layer in self._dropouts:
            layer.step = step
        xb, yb = self.ops.batch_to_device(xb, "x"), self.ops.batch_to_device(yb, "y")
        out = self._forward(xb, True)
        # batch-norm moving statistics (final after forward): mean over the ranks
        state = (dist.sync_state_async(self._state[:self._n_averaged])
                 if dist.active and self._n_averaged else None)
        dout = self._buf("dout", out.shape, self.dtype)
        loss, correct = self.loss.compute(self.ops, out, yb, dout, grad_scale, self._logits)
        n = int(xb.shape[0])
        sums = dist.sum_scalars_async((loss, correct, n)) if global_metrics else None
        self._backward(dout)
        dist.allreduce_sum_(self._grads)
        self.optimizer.apply(self.ops, self._params, self._grads, self._segments)
        if state is not None:
            state()
        return sums() if sums is not None else (loss, correct, n)

    def _metric_logs(self, loss_sum, correct, seen):
        logs = {"loss": loss_sum / seen if seen else float("nan")}
        for m in self.metrics_names:
            logs[m] = correct / seen if seen else float("nan")
        return logs

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None, return_dict=False):
        if sample_weight is not None or class_weight is not None:
            raise NotImplementedError("sample_weight / class_weight are not supported")
        self._require_ready(x)
        x, y = self._check_xy(x, y)
        # under MPI every rank passes its own batch of the same size: one step on their union,
        # from rank 0's weights
        dist = self._dist
        if dist.active and not self._dist_synced:
            dist.sync_model(self)
        loss, correct, n = self._train_step(x, y, 1.0 / (x.shape[0] * dist.size),
                                            global_metrics=dist.active)
        return self._result(self._metric_logs(loss, correct, n), return_dict)

    def test_on_batch(self, x, y, sample_weight=None, return_dict=False):
        self._require_ready(x)
        x, y = self._check_xy(x, y)
        out = self._forward(self.ops.batch_to_device(x, "x"), False)
        loss, correct = self.loss.compute(self.ops, out, self.ops.batch_to_device(y, "y"), None,
                                          1.0, self._logits)
        return self._result(self._metric_logs(loss, correct, x.shape[0]), return_dict)

    def _result(self, logs, return_dict):
        if return_dict:
            return logs
        vals = [logs["loss"]] + [logs[m] for m in self.metrics_names]
        return vals[0] if len(vals) == 1 else vals

    # ---------------------------------------------------------------- fit --
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1):
        for nm, v in (("class_weight", class_weight), ("sample_weight", sample_weight),
                      ("steps_per_epoch", steps_per_epoch), ("validation_steps", validation_steps)):
            if v is not None:
                raise NotImplementedError(f"fit({nm}=...) is not supported")
        if not self.compiled:
            raise RuntimeError("compile the model before fit")
        batch_size = 32 if batch_size is None else int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        epochs, initial_epoch = int(epochs), int(initial_epoch)
        x, y = self._check_xy(x, y)
        self._require_ready(x)
        if validation_data is None and validation_split:
            if not 0.0 < validation_split < 1.0:
                raise ValueError(f"validation_split must be in (0, 1), got {validation_split}")
            k = int(x.shape[0] * (1.0 - validation_split))   # Keras: the last fraction, unshuffled
            if k == 0 or k == x.shape[0]:
                raise ValueError(f"validation_split={validation_split} leaves an empty split")
            validation_data = (x[k:], y[k:])
            x, y = x[:k], y[:k]
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ValueError("validation_data must be (x_val, y_val)")
            vx, vy = self._check_xy(*validation_data)
        dist = self._dist
        n = x.shape[0]
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
        self._pos = {"epoch": initial_epoch, "step": 0, "loss_sum": 0.0, "correct": 0.0, "seen": 0,
                     "seed": int(self.seed), "shuffle": bool(shuffle), "batch_size": batch_size,
                     "n": n, "ranks": dist.size}
        self._resume = None
        cbl.on_train_begin()
        if dist.active:
            # rank 0's seed, weights, optimizer state and resume position everywhere
            dist.check_same((n, batch_size, epochs, initial_epoch, bool(shuffle)),
                            "(samples, batch_size, epochs, initial_epoch, shuffle)")
            dist.sync_model(self)
        start_epoch, start_step, sums = initial_epoch, 0, (0.0, 0.0, 0)
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
            sums = (r["loss_sum"], r["correct"], r["seen"])
            self._pos["ranks"] = dist.size   # the checkpoint's count was converted above
            if start_step >= steps:
                start_epoch, start_step, sums = start_epoch + 1, 0, (0.0, 0.0, 0)
        batcher = data.Batcher((x, y), batch_size, shuffle=shuffle, seed=self.seed,
                               rank=dist.rank, size=dist.size)
        logs = {}
        for epoch in range(start_epoch, epochs):
            if self.stop_training:
                break
            self._pos.update(epoch=epoch, step=start_step)
            params["start_step"] = start_step
            cbl.on_epoch_begin(epoch)
            loss_sum, correct, seen = sums
            t0 = time.perf_counter()
            seen0 = seen
            step = start_step
            for xb, yb in batcher.epoch(epoch, start_step):
                cbl.on_train_batch_begin(step)
                nb = xb.shape[0]
                gscale = 1.0 / (nb * dist.size)
                l_, c_, nb = self._train_step(xb, yb, gscale, global_metrics=dist.active)
                loss_sum += l_
                correct += c_
                seen += nb
                step += 1
                self._pos.update(step=step, loss_sum=loss_sum, correct=correct, seen=seen)
                logs = self._metric_logs(loss_sum, correct, seen)
                dt = time.perf_counter() - t0
                logs["images_per_s"] = (seen - seen0) / dt if dt > 0 else 0.0
                cbl.on_train_batch_end(step - 1, logs)
                if self.stop_training:
                    break
            start_step, sums = 0, (0.0, 0.0, 0)
            epoch_logs = dict(logs)
            if validation_data is not None and (epoch + 1) % validation_freq == 0:
                vl = self._evaluate_arrays(vx, vy, validation_batch_size or batch_size)
                epoch_logs.update({"val_" + k: v for k, v in vl.items()})
            self._pos.update(epoch=epoch + 1, step=0, loss_sum=0.0, correct=0.0, seen=0)
            cbl.on_epoch_end(epoch, epoch_logs)
        cbl.on_train_end(logs)
        self.history = history
        return history

    # ---------------------------------------------------------------- evaluate --
    def _evaluate_arrays(self, x, y, batch_size):
        """Loss and metrics over (x, y), sharded over ranks when distributed."""
        dist = self._dist
        n = x.shape[0]
        lo = n * dist.rank // dist.size
        hi = n * (dist.rank + 1) // dist.size
        loss_sum = correct = 0.0
        for s in range(lo, hi, batch_size):
            e = min(s + batch_size, hi)
            out = self._forward(self.ops.batch_to_device(x[s:e], "x"), False)
            l_, c_ = self.loss.compute(self.ops, out, self.ops.batch_to_device(y[s:e], "y"), None,
                                       1.0, self._logits)
            loss_sum += l_
            correct += c_
        if dist.active:
            loss_sum, correct = dist.sum_scalars((loss_sum, correct))
        return self._metric_logs(loss_sum, correct, n)

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False):
        if sample_weight is not None or steps is not None:
            raise NotImplementedError("sample_weight / steps are not supported")
        self._require_ready(x)
        x, y = self._check_xy(x, y)
        t0 = time.perf_counter()
        logs = self._evaluate_arrays(x, y, 32 if batch_size is None else int(batch_size))
        verbose = (1 if sys.stdout.isatty() else 2) if verbose == "auto" else int(verbose)
        if verbose and self._dist.rank == 0:
            dt = time.perf_counter() - t0
            print(f"evaluate: {x.shape[0]} samples - {dt:.1f}s - {cbks._fmt_logs(logs)}", flush=True)
        return self._result(logs, return_dict)

    # ---------------------------------------------------------------- predict --
    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        x = self._check_x(x)
        if not hasattr(self, "_logits"):
            self._logits, self._final_act = False, None
        bs = 32 if batch_size is None else int(batch_size)
        if bs < 1:
            raise ValueError(f"batch_size must be >= 1, got {bs}")
        res = np.empty((x.shape[0],) + tuple(self.output_shape[1:]), dtype=self.dtype)
        for s in range(0, x.shape[0], bs):
            out = self._forward(self.ops.batch_to_device(x[s:s + bs], "x"), False)
            if self._final_act is not None:
                out = self.ops.activation(self._final_act, out,
                                          out=self._buf("pred", out.shape, self.dtype))
            res[s:s + bs] = self.ops.to_numpy(out)
        return res

    def predict_on_batch(self, x):
        return self.predict(x, batch_size=max(1, len(x)), verbose=0)

    def __call__(self, x, training=False):
        if training:
            raise NotImplementedError("call the model with training=False (use fit to train)")
        return self.predict(x, batch_size=max(1, len(x)), verbose=0)

    # ---------------------------------------------------------------- weights --
    def count_params(self):
        if not self.built:
            self.build()
        return sum(l.count_params() for l in self.layers)

    def get_weights(self):
        if not self.built and self._declared_input_shape() is not None:
            self.build()
        return [w for l in self.layers for w in l.get_weights()]

    def set_weights(self, weights):
        if not self.built:
            self.build()
        weights = list(weights)
        want = [s.shape for l in self.layers for s in l.specs]
        if len(weights) != len(want):
            raise ValueError(f"expected {len(want)} arrays, got {len(weights)}")
        for w, s in zip(weights, want):
            if np.shape(w) != s:
                raise ValueError(f"weight shapes differ: expected {s}, got {np.shape(w)}")
        i = 0
        for l in self.layers:
            k = len(l.specs)
            l.set_weights(weights[i:i + k])
            i += k

    @property
    def weights(self):
        return [w for l in self.layers for w in l.weights]

    @property
    def trainable_weights(self):
        return [l.w[s.name] for l in self.layers for s in l.specs if s.trainable]

    # ---------------------------------------------------------------- summary --
    def summary(self, line_length=None, positions=None, print_fn=None, **kwargs):
        if not self.built:
            self.build()
        p = print_fn or print
        first = max([29] + [len(f" {l.name} ({type(l).__name__})") + 2 for l in self.layers])
        w = max(line_length or 0, first + 36)
        widths = [first, 26, w - first - 26]

        def row(fields):
            out = ""
            for f, wd in zip(fields, widths):
                f = str(f)
                out += (f[:wd - 1] + " ") if len(f) >= wd else f.ljust(wd)
            return out.rstrip()

        def fmt_shape(shape):
            return "(" + ", ".join("None" if d is None else str(d) for d in shape) + \
                ("," if len(shape) == 1 else "") + ")"

        p(f'Model: "{self.name}"')
        p("_" * w)
        p(row([" Layer (type)", "Output Shape", "Param #"]))
        p("=" * w)
        for i, l in enumerate(self.layers):
            p(row([f" {l.name} ({type(l).__name__})", fmt_shape((None,) + l.output_shape),
                   f"{l.count_params():,}"]))
            p("=" * w if i == len(self.layers) - 1 else "")
        total = self.count_params()
        trainable = sum(s.size for l in self.layers for s in l.specs if s.trainable)
        isz = self.dtype.itemsize

        def mb(k):
            b = k * isz
            return f"{b / 2**20:.2f} MB" if b >= 2**20 else (f"{b / 2**10:.2f} KB" if b >= 2**10
                                                             else f"{b:.2f} B")
        p(f"Total params: {total:,} ({mb(total)})")
        p(f"Trainable params: {trainable:,} ({mb(trainable)})")
        p(f"Non-trainable params: {total - trainable:,} ({mb(total - trainable)})")
        p("_" * w)

    # ---------------------------------------------------------------- files --
    def get_config(self):
        cfg = {"name": self.name, "dtype": self.dtype.name, "layers": []}
        if self.built:
            cfg["input_shape"] = list(self.input_shape[1:])
        for l in self.layers:
            cfg["layers"].append({"class_name": type(l).__name__, "config": l.get_config()})
        return cfg

    @classmethod
    def from_config(cls, cfg, seed=None):
        m = cls([L.from_config(d["class_name"], d["config"]) for d in cfg["layers"]],
                name=cfg.get("name"), dtype=cfg.get("dtype", "float32"))
        m.seed = seed
        if cfg.get("input_shape") is not None:
            m.build((None,) + tuple(cfg["input_shape"]))
        return m

    def _weight_arrays(self):
        return {f"weights/{i}/{l.name}/{s.name}": self.ops.to_numpy(l.w[s.name])
                for i, l in enumerate(self.layers) for s in l.specs}

    def _meta(self, fmt, include_optimizer):
        meta = {"format": fmt, "config": self.get_config(), "seed": int(self.seed)}
        if include_optimizer and self.compiled:
            meta["compile"] = {"optimizer": optimizers.serialize(self.optimizer),
                               "loss": losses.serialize(self.loss),
                               "metrics": list(self.metrics_names),
                               "iterations": int(self.optimizer.iterations)}
        return meta

    def _opt_arrays(self):
        if not self.compiled:
            return {}
        return {f"optimizer/{k}": self.ops.to_numpy(v) for k, v in self.optimizer.state.items()}

    def save_weights(self, filepath, overwrite=True):
        """The weights alone in one .npz (see pynn.io); overwrite=False: an
        existing file raises FileExistsError instead of being replaced."""
        self._write_model(filepath, "pynn.weights", False, overwrite=overwrite)

    def save(self, filepath, overwrite=True, include_optimizer=True):
        """Architecture + weights + optimizer state in one .npz (see pynn.io);
        overwrite=False: an existing file raises FileExistsError."""
        self._write_model(filepath, "pynn.model", include_optimizer, overwrite=overwrite)

    def _write_model(self, path, fmt, include_optimizer, overwrite=True, **extra_meta):
        if not overwrite and os.path.exists(path):
            raise FileExistsError(f"{path} exists (overwrite=False)")
        if not self.built:
            self.build()
        arrays = self._weight_arrays()
        if include_optimizer:
            arrays.update(self._opt_arrays())
        meta = self._meta(fmt, include_optimizer)
        meta.update(extra_meta)
        io.write_atomic(path, arrays, meta)

    def _check_weight_arrays(self, arrays, path):
        want = self._weight_arrays()
        missing = [k for k in want if k not in arrays]
        if missing:
            raise ValueError(f"{path}: the file does not match this model: missing {missing[:3]}"
                             f"{' ...' if len(missing) > 3 else ''} (has {sorted(k for k in arrays if k.startswith('weights/'))[:3]} ...)")
        for k, v in want.items():
            if arrays[k].shape != v.shape:
                raise ValueError(f"{path}: {k} has shape {arrays[k].shape}, the model expects {v.shape}")
            if not np.all(np.isfinite(arrays[k])):
                raise ValueError(f"{path}: {k} contains NaN or inf")

    def _assign_weights(self, arrays):
        for i, l in enumerate(self.layers):
            for s in l.specs:
                l.w[s.name][...] = self.ops.asarray(arrays[f"weights/{i}/{l.name}/{s.name}"])

    def load_weights(self, filepath):
        arrays, meta = io.read(filepath, expect=("pynn.weights", "pynn.model", "pynn.checkpoint"))
        if not self.built:
            cfg_shape = meta.get("config", {}).get("input_shape")
            self.build(None if cfg_shape is None or self._declared_input_shape() else
                       (None,) + tuple(cfg_shape))
        self._check_weight_arrays(arrays, filepath)   # everything checked before anything changes
        self._assign_weights(arrays)

    def _load_optimizer(self, arrays, meta, path):
        comp = meta.get("compile")
        if comp is None or not self.compiled:
            return
        self.optimizer.build(self.ops, self._params.shape[0], self.dtype)
        for k, v in self.optimizer.state.items():
            a = arrays.get(f"optimizer/{k}")
            if a is None or a.shape != v.shape:
                raise ValueError(f"{path}: optimizer slot {k!r} missing or of the wrong shape")
        for k, v in self.optimizer.state.items():
            v[...] = self.ops.asarray(arrays[f"optimizer/{k}"])
        self.optimizer.iterations = int(comp.get("iterations", 0))

    def _set_seed(self, seed):
        """Adopt ``seed`` (shuffling, dropout streams) after the weights exist."""
        self.seed = int(seed)
        for li, layer in enumerate(self.layers):
            if isinstance(layer, L.Dropout):
                layer.stream_seed = layer.seed if layer.seed is not None else \
                    utils.derive_seed(self.seed, li, 0xD509)

    # checkpoints (BackupAndRestore): model file + training position
    def _is_chief(self):
        return self._dist.rank == 0

    def _save_checkpoint(self, path):
        if self._is_chief():
            self._write_model(path, "pynn.checkpoint", True, position=dict(self._pos))

    def _restore_checkpoint(self, path):
        arrays, meta = io.read(path, expect=("pynn.checkpoint",))
        self._check_weight_arrays(arrays, path)
        pos = meta.get("position")
        if not pos:
            raise io.FileFormatError(f"{path}: checkpoint has no training position")
        # resuming under another rank count is allowed: fit converts the step
        self._assign_weights(arrays)
        self._load_optimizer(arrays, meta, path)
        if int(meta["seed"]) != int(self.seed):
            self._set_seed(int(meta["seed"]))
        self._resume = pos
        self._pos.update(pos)


def load_model(filepath, compile=True):
    """A Sequential from a file written by model.save (or a checkpoint)."""
    arrays, meta = io.read(filepath, expect=("pynn.model", "pynn.checkpoint"))
    cfg = meta.get("config")
    if not cfg:
        raise io.FileFormatError(f"{filepath}: no model architecture in the file")
    model = Sequential.from_config(cfg, seed=int(meta.get("seed", 0)))
    if not model.built:
        model.build()
    model._check_weight_arrays(arrays, filepath)
    model._assign_weights(arrays)
    comp = meta.get("compile")
    if compile and comp:
        model.compile(optimizer=optimizers.get(comp["optimizer"]), loss=losses.get(comp["loss"]),
                      metrics=comp.get("metrics") or None)
        model._load_optimizer(arrays, meta, filepath)
    return model
