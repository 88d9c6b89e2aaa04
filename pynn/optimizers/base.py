"""The optimizer base class: learning rate (float, schedule or callable),
clipping, decoupled weight decay, the step count, configs, and the Keras 2
spellings (``lr=``, ``decay=``).

Every trainable weight of a model lives in one flat parameter buffer and its
gradient in one flat gradient buffer; an optimizer keeps its slots (momentum,
moments, ...) as flat buffers of the same length and updates all parameters
with one in-place call per step (``ops.<name>_update``: fused kernels for
SGD/Adam/RMSprop/Adadelta, vectorised references for the others).  A step is
Keras 3's ``apply``: clip the gradient (``clipnorm`` per weight,
``global_clipnorm`` over all, or ``clipvalue``: at most one of them), weight
decay ``p -= p * weight_decay * lr``, the update, ``iterations += 1``.  The
learning rate of a step is read at ``iterations`` before the increment.
"""
import inspect
import math
import warnings

import numpy as np

from . import schedules


class _LearningRate(float):
    """``optimizer.learning_rate`` for a float learning rate: a float that
    can also be written back like Keras' variable (``.assign(v)``, which
    ``keras.backend.set_value`` calls) and read with ``.numpy()``."""

    def __new__(cls, value, optimizer):
        obj = super().__new__(cls, value)
        obj._optimizer = optimizer
        return obj

    def assign(self, value):
        self._optimizer.learning_rate = value
        return self._optimizer.learning_rate

    def numpy(self):
        return np.float32(self)

    def __reduce__(self):
        return (float, (float(self),))


def _warn(old, new):
    warnings.warn(f"{old} is deprecated (Keras 2); use {new}", DeprecationWarning, stacklevel=4)


def _positional_arity(fn):
    """1 if ``fn`` takes the step as an argument, 0 if it takes none."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 1
    return 1 if pos else 0


def _check_lr_value(value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        try:
            value = float(np.asarray(value).reshape(()))
        except (TypeError, ValueError):
            raise TypeError("learning_rate must be a float, a keras.optimizers.schedules "
                            f"LearningRateSchedule or a callable, got {value!r:.100}") from None
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"learning_rate must be a finite number >= 0, got {value}")
    return value


def _opt_float(value, what, positive=True):
    if value is None:
        return None
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0) or v < 0:
        raise ValueError(f"{what} must be a {'positive' if positive else 'non-negative'} "
                         f"finite number, got {value!r}")
    return v


class Optimizer:
    name = "optimizer"
    slots = ()
    slot_init = {}        # slot -> initial value (zeros otherwise)

    def __init__(self, learning_rate=0.001, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, **kwargs):
        cls = type(self).__name__
        if use_ema:
            raise NotImplementedError(f"{cls}(use_ema=True) is not supported")
        for k, v in (("ema_overwrite_frequency", ema_overwrite_frequency),
                     ("loss_scale_factor", loss_scale_factor),
                     ("gradient_accumulation_steps", gradient_accumulation_steps)):
            if v is not None:
                raise NotImplementedError(f"{cls}({k}=...) is not supported")
        if "lr" in kwargs:        # Keras 2
            lr = kwargs.pop("lr")
            _warn(f"{cls}(lr=...)", "learning_rate=")
            if learning_rate != self._default_learning_rate():
                raise TypeError(f"{cls}: give learning_rate or lr (Keras 2), not both")
            learning_rate = lr
        decay = kwargs.pop("decay", None)
        if decay:
            _warn(f"{cls}(decay=...)", "learning_rate=keras.optimizers.schedules."
                  "InverseTimeDecay(lr, decay_steps=1, decay_rate=decay)")
        if kwargs:
            raise TypeError(f"{cls}: unexpected keyword argument(s) {sorted(kwargs)}")
        if sum(v is not None for v in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError("Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be "
                             f"set. Received: clipnorm={clipnorm}, clipvalue={clipvalue}, "
                             f"global_clipnorm={global_clipnorm}")
        self._learning_rate = None
        self.learning_rate = learning_rate
        self.decay = _opt_float(decay or 0.0, "decay", positive=False)
        self.weight_decay = _opt_float(weight_decay, "weight_decay", positive=False)
        self.clipnorm = _opt_float(clipnorm, "clipnorm")
        self.global_clipnorm = _opt_float(global_clipnorm, "global_clipnorm")
        self.clipvalue = _opt_float(clipvalue, "clipvalue")
        if name:
            self.name = name
        self.iterations = 0
        self.state = {}

    @classmethod
    def _default_learning_rate(cls):
        p = inspect.signature(cls.__init__).parameters.get("learning_rate")
        return None if p is None else p.default

    # -- learning rate -------------------------------------------------------
    @property
    def learning_rate(self):
        """The learning rate as Keras reads it: the float (writable, also with
        ``.assign``), or a schedule's value at the current step."""
        lr = self._learning_rate
        if isinstance(lr, schedules.LearningRateSchedule):
            return float(lr(self.iterations))
        if callable(lr):
            return float(self._call_lr())
        return _LearningRate(lr, self)

    @learning_rate.setter
    def learning_rate(self, value):
        if isinstance(value, schedules.LearningRateSchedule) or \
                (callable(value) and not isinstance(value, (float, np.generic))):
            self._learning_rate = value
            self._lr_arity = None if isinstance(value, schedules.LearningRateSchedule) else \
                _positional_arity(value)
            return
        if isinstance(self._learning_rate, schedules.LearningRateSchedule):
            raise TypeError("This optimizer was created with a `LearningRateSchedule` object as "
                            "its `learning_rate` constructor argument, hence its learning rate "
                            "is not settable. If you need the learning rate to be settable, you "
                            "should instantiate the optimizer with a float `learning_rate` "
                            "argument.")
        self._learning_rate = _check_lr_value(value)

    @property
    def lr(self):
        _warn("optimizer.lr", "optimizer.learning_rate")
        return self.learning_rate

    @lr.setter
    def lr(self, value):
        _warn("optimizer.lr", "optimizer.learning_rate")
        self.learning_rate = value

    def _call_lr(self):
        lr = self._learning_rate
        return lr(self.iterations) if self._lr_arity else lr()

    def current_learning_rate(self):
        """The learning rate of the next step (schedule at ``iterations``,
        Keras 2's ``decay`` applied)."""
        lr = self._learning_rate
        if isinstance(lr, schedules.LearningRateSchedule):
            lr = lr(self.iterations)
        elif callable(lr):
            lr = self._call_lr()
        lr = float(lr)
        if self.decay:
            lr = lr / (1.0 + self.decay * self.iterations)
        return lr

    # -- state ----------------------------------------------------------------
    def build(self, ops, n, dtype=np.float32):
        """Allocate the slots for a flat parameter vector of n elements."""
        if self.state and set(self.state) == set(self.slots) and \
                all(v.shape == (n,) for v in self.state.values()):
            return
        self.state = {}
        for s in self.slots:
            buf = ops.alloc((n,), dtype, zeros=True)
            if self.slot_init.get(s):
                buf[...] = self.slot_init[s]
            self.state[s] = buf

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        raise NotImplementedError("exclude_from_weight_decay is not supported: weight_decay "
                                  "applies to every trainable weight (use a kernel_regularizer "
                                  "on the layers to decay only some weights)")

    # -- one step -----------------------------------------------------------------
    def apply(self, ops, params, grads, segments=()):
        """Clip as asked, decay the weights, then update params in place from
        grads (both flat).  segments: (offset, size) of each weight, for
        per-weight clipnorm."""
        if self.clipnorm is not None:
            for off, size in segments:
                g = grads[off:off + size]
                norm = math.sqrt(ops.sum_squares(g))
                if norm > self.clipnorm:
                    g *= g.dtype.type(self.clipnorm / norm)
        elif self.global_clipnorm is not None:
            norm = math.sqrt(ops.sum_squares(grads))
            if norm > self.global_clipnorm:
                grads *= grads.dtype.type(self.global_clipnorm / norm)
        elif self.clipvalue is not None:
            ops.xp.clip(grads, -self.clipvalue, self.clipvalue, out=grads)
        lr = self.current_learning_rate()
        if self.weight_decay:
            ops.weight_decay_update(params, lr, self.weight_decay)
        self.iterations += 1
        self._update(ops, params, grads, lr)

    def _update(self, ops, p, g, lr):
        raise NotImplementedError

    # -- config ----------------------------------------------------------------
    def get_config(self):
        lr = self._learning_rate
        if isinstance(lr, schedules.LearningRateSchedule):
            lr = schedules.serialize(lr)
        elif callable(lr):
            lr = None       # code is not saved: the loaded optimizer gets the default rate
        c = {"name": self.name, "learning_rate": lr}
        for k in ("weight_decay", "clipnorm", "global_clipnorm", "clipvalue"):
            if getattr(self, k) is not None:
                c[k] = getattr(self, k)
        if self.decay:
            c["decay"] = self.decay
        return c

    @classmethod
    def from_config(cls, config):
        cfg = dict(config)
        lr = cfg.get("learning_rate")
        if isinstance(lr, dict):
            cfg["learning_rate"] = schedules.deserialize(lr)
        elif lr is None:
            cfg.pop("learning_rate", None)
        if cfg.get("decay"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return cls(**cfg)
        return cls(**cfg)
