"""Optimizers with Keras 3 names, defaults and update formulas.

Every trainable weight of a model lives in one flat parameter buffer and its
gradient in one flat gradient buffer; an optimizer keeps its slots (momentum,
moments, ...) as flat buffers of the same length and updates all parameters
with one fused in-place kernel call per step (``ops.<name>_update``).
``clipnorm`` clips each weight's gradient to that L2 norm (as Keras does,
per variable); ``global_clipnorm`` clips the whole gradient.
``learning_rate`` may be a float or a callable ``schedule(step) -> float``.
"""
import math

import numpy as np


class Optimizer:
    name = "optimizer"
    slots = ()

    def __init__(self, learning_rate=0.001, clipnorm=None, global_clipnorm=None, clipvalue=None,
                 name=None, **kwargs):
        for k in ("weight_decay", "use_ema"):
            if kwargs.pop(k, None):
                raise NotImplementedError(f"{type(self).__name__}({k}=...) is not supported")
        for k in ("ema_momentum", "ema_overwrite_frequency", "loss_scale_factor",
                  "gradient_accumulation_steps"):
            if kwargs.pop(k, None) not in (None, 0.99):
                raise NotImplementedError(f"{type(self).__name__}({k}=...) is not supported")
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected keyword argument(s) {sorted(kwargs)}")
        if clipnorm is not None and global_clipnorm is not None:
            raise ValueError("use clipnorm or global_clipnorm, not both")
        self.learning_rate = learning_rate
        self.clipnorm = None if clipnorm is None else float(clipnorm)
        self.global_clipnorm = None if global_clipnorm is None else float(global_clipnorm)
        self.clipvalue = None if clipvalue is None else float(clipvalue)
        if name:
            self.name = name
        self.iterations = 0
        self.state = {}

    # -- state ----------------------------------------------------------------
    def build(self, ops, n, dtype=np.float32):
        """Allocate the slots for a flat parameter vector of n elements."""
        if self.state and all(v.shape == (n,) for v in self.state.values()):
            return
        self.state = {s: ops.alloc((n,), dtype, zeros=True) for s in self.slots}

    def current_learning_rate(self):
        lr = self.learning_rate
        return float(lr(self.iterations) if callable(lr) else lr)

    # -- one step -----------------------------------------------------------------
    def apply(self, ops, params, grads, segments=()):
        """Clip as asked, then update params in place from grads (both flat).
        segments: (offset, size) of each weight, for per-weight clipnorm."""
        if self.clipvalue is not None:
            ops.xp.clip(grads, -self.clipvalue, self.clipvalue, out=grads)
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
        lr = self.current_learning_rate()
        self.iterations += 1
        self._update(ops, params, grads, lr)

    def _update(self, ops, p, g, lr):
        raise NotImplementedError

    # -- config ----------------------------------------------------------------
    def get_config(self):
        lr = self.learning_rate
        c = {"name": self.name, "learning_rate": None if callable(lr) else float(lr)}
        for k in ("clipnorm", "global_clipnorm", "clipvalue"):
            if getattr(self, k) is not None:
                c[k] = getattr(self, k)
        return c


class SGD(Optimizer):
    name = "SGD"

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, **kw):
        super().__init__(learning_rate, **kw)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.slots = ("momentum",) if self.momentum > 0 else ()

    def _update(self, ops, p, g, lr):
        ops.sgd_update(p, g, lr, momentum=self.momentum, nesterov=self.nesterov,
                       m=self.state.get("momentum"))

    def get_config(self):
        c = super().get_config()
        c.update(momentum=self.momentum, nesterov=self.nesterov)
        return c


class Adam(Optimizer):
    name = "adam"
    slots = ("m", "v")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
                 **kw):
        super().__init__(learning_rate, **kw)
        if amsgrad:
            raise NotImplementedError("Adam(amsgrad=True) is not supported")
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def _update(self, ops, p, g, lr):
        ops.adam_update(p, g, self.state["m"], self.state["v"], lr, beta_1=self.beta_1,
                        beta_2=self.beta_2, epsilon=self.epsilon, step=self.iterations)

    def get_config(self):
        c = super().get_config()
        c.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return c


class RMSprop(Optimizer):
    name = "rmsprop"

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
                 **kw):
        super().__init__(learning_rate, **kw)
        self.rho, self.momentum, self.epsilon = float(rho), float(momentum), float(epsilon)
        self.centered = bool(centered)
        self.slots = ("velocity",) + (("momentum",) if self.momentum > 0 else ()) + \
            (("average_gradient",) if self.centered else ())

    def _update(self, ops, p, g, lr):
        s = self.state
        ops.rmsprop_update(p, g, s["velocity"], lr, rho=self.rho, epsilon=self.epsilon,
                           momentum=self.momentum, m=s.get("momentum"), centered=self.centered,
                           mg=s.get("average_gradient"))

    def get_config(self):
        c = super().get_config()
        c.update(rho=self.rho, momentum=self.momentum, epsilon=self.epsilon, centered=self.centered)
        return c


class Adadelta(Optimizer):
    name = "adadelta"
    slots = ("accumulated_grad", "accumulated_delta_var")

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, **kw):
        super().__init__(learning_rate, **kw)
        self.rho, self.epsilon = float(rho), float(epsilon)

    def _update(self, ops, p, g, lr):
        ops.adadelta_update(p, g, self.state["accumulated_grad"], self.state["accumulated_delta_var"],
                            lr, rho=self.rho, epsilon=self.epsilon)

    def get_config(self):
        c = super().get_config()
        c.update(rho=self.rho, epsilon=self.epsilon)
        return c


_BY_NAME = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop, "adadelta": Adadelta}


def get(identifier):
    """An Optimizer from a name ("sgd", "adam", "rmsprop", "adadelta": Keras
    defaults), a config dict or an instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if isinstance(identifier, dict):
        cls = _BY_NAME.get(str(identifier.get("class_name", "")).lower())
        if cls is None:
            raise ValueError(f"unknown optimizer config {identifier!r}")
        cfg = dict(identifier.get("config", {}))
        cfg.pop("name", None)
        if cfg.get("learning_rate") is None:
            cfg.pop("learning_rate", None)
        return cls(**cfg)
    raise ValueError(f"unknown optimizer {identifier!r}; known: {sorted(_BY_NAME)}")


def serialize(opt):
    return {"class_name": type(opt).__name__, "config": opt.get_config()}
