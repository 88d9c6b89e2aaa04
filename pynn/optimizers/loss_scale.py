"""keras.optimizers.LossScaleOptimizer (also keras.mixed_precision's): a
pass-through.

Loss scaling keeps small float16 gradients from underflowing.  pynn's mixed
precision is bfloat16, which has float32's exponent range, and its
gradients are float32 arrays: there is nothing to scale.  So
``LossScaleOptimizer(inner)`` accepts Keras' arguments and trains exactly
as ``inner`` does: ``compile`` uses the inner optimizer itself
(``model.optimizer`` is ``inner``, and files store it), and the wrapper
hands every attribute to it (``learning_rate``, ``iterations``, slots ...).
Its scale is 1: ``scale_loss(loss)`` returns ``loss``.
"""
import warnings

from .base import Optimizer


class LossScaleOptimizer(Optimizer):
    """``LossScaleOptimizer(inner_optimizer, initial_scale=2**15,
    dynamic_growth_steps=2000, name=None)`` (Keras 3; Keras 2's
    ``dynamic=True``, ``initial_scale=None``, ``dynamic_growth_steps=None``
    are accepted too): trains exactly like ``inner_optimizer`` (see the
    module docstring)."""

    def __init__(self, inner_optimizer, initial_scale=2.0 ** 15, dynamic_growth_steps=2000,
                 name=None, dynamic=True, **kwargs):
        # not Optimizer.__init__: the state and settings are the inner optimizer's
        if not isinstance(inner_optimizer, Optimizer):
            raise ValueError("LossScaleOptimizer: inner_optimizer must be a "
                             f"keras.optimizers.Optimizer instance, got {inner_optimizer!r:.100}")
        if isinstance(inner_optimizer, LossScaleOptimizer):
            raise ValueError("LossScaleOptimizer: the inner optimizer is already a "
                             "LossScaleOptimizer")
        # Keras 3 accepts (and ignores) the base optimizer options at their defaults
        neutral = {"weight_decay": None, "clipnorm": None, "global_clipnorm": None,
                   "clipvalue": None, "use_ema": False, "ema_momentum": 0.99,
                   "ema_overwrite_frequency": None, "loss_scale_factor": None,
                   "gradient_accumulation_steps": None}
        for k in list(kwargs):
            if k in neutral and kwargs[k] == neutral[k]:
                del kwargs[k]
        if kwargs:
            raise TypeError(f"LossScaleOptimizer: unexpected keyword argument(s) {sorted(kwargs)}"
                            " (set them on the inner optimizer)")
        if not dynamic:
            warnings.warn("LossScaleOptimizer(dynamic=False) is Keras 2 (Keras 3 has dynamic "
                          "scaling only); pynn needs no loss scaling with bfloat16 and trains "
                          "with the inner optimizer either way", DeprecationWarning, stacklevel=2)
        initial_scale = 2.0 ** 15 if initial_scale is None else float(initial_scale)
        dynamic_growth_steps = 2000 if dynamic_growth_steps is None else dynamic_growth_steps
        if not initial_scale > 0:
            raise ValueError(f"initial_scale must be > 0, got {initial_scale}")
        if isinstance(dynamic_growth_steps, bool) or int(dynamic_growth_steps) != \
                dynamic_growth_steps or dynamic_growth_steps < 1:
            raise ValueError(f"dynamic_growth_steps must be an int >= 1, got "
                             f"{dynamic_growth_steps!r}")
        d = self.__dict__
        d["inner_optimizer"] = inner_optimizer
        d["initial_scale"] = initial_scale
        d["dynamic_growth_steps"] = int(dynamic_growth_steps)
        d["dynamic"] = bool(dynamic)
        d["name"] = name or "loss_scale_optimizer"

    # everything else is the inner optimizer's: reads and writes
    def __getattr__(self, attr):
        if attr == "inner_optimizer":       # not set yet (a failed __init__)
            raise AttributeError(attr)
        return getattr(self.inner_optimizer, attr)

    def __setattr__(self, attr, value):
        if attr in ("name", "initial_scale", "dynamic_growth_steps", "dynamic"):
            self.__dict__[attr] = value
        else:
            setattr(self.inner_optimizer, attr, value)

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self.inner_optimizer.learning_rate = value

    @property
    def lr(self):
        return self.inner_optimizer.lr

    @lr.setter
    def lr(self, value):
        self.inner_optimizer.lr = value

    @property
    def slots(self):
        return self.inner_optimizer.slots

    @property
    def slot_init(self):
        return self.inner_optimizer.slot_init

    @property
    def loss_scale(self):
        """The scale applied to the loss: 1.0 (no scaling with bfloat16)."""
        return 1.0

    dynamic_scale = loss_scale

    def scale_loss(self, loss):
        """Keras 3's scale_loss: the loss unchanged (the scale is 1)."""
        return loss

    def get_scaled_loss(self, loss):
        """Keras 2's get_scaled_loss: the loss unchanged."""
        return loss

    def get_unscaled_gradients(self, grads):
        """Keras 2's get_unscaled_gradients: the gradients unchanged."""
        return grads

    def build(self, ops, n, dtype=None):
        return self.inner_optimizer.build(ops, n, *(() if dtype is None else (dtype,)))

    def apply(self, ops, params, grads, segments=()):
        return self.inner_optimizer.apply(ops, params, grads, segments)

    def current_learning_rate(self):
        return self.inner_optimizer.current_learning_rate()

    def _update(self, ops, p, g, lr):
        return self.inner_optimizer._update(ops, p, g, lr)

    def get_config(self):
        from . import serialize
        inner = serialize(self.inner_optimizer)
        inner = {"module": "keras.optimizers", "class_name": inner["class_name"],
                 "config": inner["config"], "registered_name": None}
        return {"name": self.name, "inner_optimizer": inner,
                "initial_scale": self.initial_scale,
                "dynamic_growth_steps": self.dynamic_growth_steps}

    @classmethod
    def from_config(cls, config):
        from . import get
        cfg = dict(config)
        inner = cfg.pop("inner_optimizer", None)
        if isinstance(inner, dict):
            inner = {"class_name": inner.get("class_name"), "config": inner.get("config") or {}}
        return cls(get(inner), **cfg)

    def __repr__(self):
        return f"<LossScaleOptimizer of {self.inner_optimizer!r}>"
