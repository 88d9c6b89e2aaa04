"""The optimizers, with Keras 3's names, argument order, defaults and update
formulas (each an ``ops.<name>_update`` over the flat buffers).  ``epsilon=None``
(Keras 2's "use K.epsilon()") means 1e-7."""
from .base import Optimizer


def _eps(epsilon):
    return 1e-7 if epsilon is None else float(epsilon)


def _beta(value, what, low_open=False):
    v = float(value)
    if not (0.0 < v <= 1.0 if low_open else 0.0 <= v <= 1.0):
        raise ValueError(f"{what} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value}")
    return v


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

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
                 **kw):
        super().__init__(learning_rate, **kw)
        self.beta_1, self.beta_2 = _beta(beta_1, "beta_1"), _beta(beta_2, "beta_2")
        self.epsilon, self.amsgrad = _eps(epsilon), bool(amsgrad)
        self.slots = ("m", "v") + (("vhat",) if self.amsgrad else ())

    def _update(self, ops, p, g, lr):
        s = self.state
        kw = dict(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
                  step=self.iterations)
        if self.amsgrad:
            ops.amsgrad_update(p, g, s["m"], s["v"], s["vhat"], lr, **kw)
        else:
            ops.adam_update(p, g, s["m"], s["v"], lr, **kw)

    def get_config(self):
        c = super().get_config()
        c.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        if self.amsgrad:
            c["amsgrad"] = True
        return c


class AdamW(Adam):
    """Adam with decoupled weight decay (default 0.004, as Keras 3)."""
    name = "adamw"

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, **kw):
        if weight_decay is None:
            raise ValueError("Argument `weight_decay` must be a float. Received: "
                             "weight_decay=None")
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad,
                         weight_decay=weight_decay, **kw)


class RMSprop(Optimizer):
    name = "rmsprop"

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
                 **kw):
        super().__init__(learning_rate, **kw)
        self.rho, self.momentum, self.epsilon = float(rho), float(momentum), _eps(epsilon)
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
        self.rho, self.epsilon = float(rho), _eps(epsilon)

    def _update(self, ops, p, g, lr):
        ops.adadelta_update(p, g, self.state["accumulated_grad"], self.state["accumulated_delta_var"],
                            lr, rho=self.rho, epsilon=self.epsilon)

    def get_config(self):
        c = super().get_config()
        c.update(rho=self.rho, epsilon=self.epsilon)
        return c


class Adagrad(Optimizer):
    name = "adagrad"
    slots = ("accumulator",)

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, **kw):
        super().__init__(learning_rate, **kw)
        v = float(initial_accumulator_value)
        if not v >= 0:
            raise ValueError(f"initial_accumulator_value must be >= 0, got "
                             f"{initial_accumulator_value}")
        self.initial_accumulator_value, self.epsilon = v, _eps(epsilon)
        self.slot_init = {"accumulator": v}

    def _update(self, ops, p, g, lr):
        ops.adagrad_update(p, g, self.state["accumulator"], lr, epsilon=self.epsilon)

    def get_config(self):
        c = super().get_config()
        c.update(initial_accumulator_value=self.initial_accumulator_value, epsilon=self.epsilon)
        return c


class Adamax(Optimizer):
    name = "adamax"
    slots = ("momentum", "norm")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kw):
        super().__init__(learning_rate, **kw)
        self.beta_1, self.beta_2 = _beta(beta_1, "beta_1"), _beta(beta_2, "beta_2")
        self.epsilon = _eps(epsilon)

    def _update(self, ops, p, g, lr):
        ops.adamax_update(p, g, self.state["momentum"], self.state["norm"], lr,
                          beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
                          step=self.iterations)

    def get_config(self):
        c = super().get_config()
        c.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return c


class Nadam(Optimizer):
    """Keras 3's Nadam.  Its scalar u_product (prod over steps k of
    beta_1 * (1 - 0.5 * 0.96**k)) is a function of ``iterations``: kept as a
    running product and recomputed when the step count was set (checkpoint
    resume, MPI broadcast)."""
    name = "nadam"
    slots = ("momentum", "velocity")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 schedule_decay=None, **kw):
        if schedule_decay is not None:
            raise NotImplementedError("Nadam(schedule_decay=...) (Keras 2) is not supported: Keras "
                                      "3's Nadam uses the fixed momentum schedule 0.96")
        super().__init__(learning_rate, **kw)
        self.beta_1, self.beta_2 = _beta(beta_1, "beta_1"), _beta(beta_2, "beta_2")
        self.epsilon = _eps(epsilon)
        self._u = (0, 1.0)       # (step, u_product after that step)

    def u_product(self, step):
        k, u = self._u if self._u[0] <= step else (0, 1.0)
        while k < step:
            k += 1
            u *= self.beta_1 * (1.0 - 0.5 * 0.96 ** k)
        self._u = (k, u)
        return u

    def _update(self, ops, p, g, lr):
        step = self.iterations
        ops.nadam_update(p, g, self.state["momentum"], self.state["velocity"], lr,
                         beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon, step=step,
                         u_product=self.u_product(step))

    def get_config(self):
        c = super().get_config()
        c.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return c


class Lion(Optimizer):
    name = "lion"
    slots = ("momentum",)

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.99, **kw):
        super().__init__(learning_rate, **kw)
        if not 0 < float(beta_1) <= 1:
            raise ValueError("Argument `beta_1` must be in the [0, 1] range. Otherwise, the "
                             f"optimizer degenerates to SignSGD. Received: beta_1={beta_1}.")
        self.beta_1, self.beta_2 = float(beta_1), _beta(beta_2, "beta_2")

    def _update(self, ops, p, g, lr):
        ops.lion_update(p, g, self.state["momentum"], lr, beta_1=self.beta_1, beta_2=self.beta_2)

    def get_config(self):
        c = super().get_config()
        c.update(beta_1=self.beta_1, beta_2=self.beta_2)
        return c


ALL = (SGD, Adam, AdamW, RMSprop, Adadelta, Adagrad, Adamax, Nadam, Lion)
