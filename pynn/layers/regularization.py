"""ActivityRegularization: the identity, adding (l1 * sum|x| + l2 * sum x^2)
/ batch size of its input to the model's loss (Keras 3.15: activity
penalties are divided by the batch size, keras-team/keras#22021; checked
against Keras 3.15.1: l2=0.01 on a (5, 5) batch of 2s adds 0.2)."""
from .base import Layer


class ActivityRegularization(Layer):
    def __init__(self, l1=0.0, l2=0.0, **kw):
        super().__init__(**kw)
        try:
            self.l1, self.l2 = float(l1), float(l2)
        except (TypeError, ValueError):
            raise ValueError(f"ActivityRegularization: l1 and l2 must be numbers, got "
                             f"{l1!r}, {l2!r}") from None
        if self.l1 < 0 or self.l2 < 0:
            raise ValueError(f"ActivityRegularization: l1 and l2 must be >= 0, got "
                             f"{self.l1}, {self.l2}")

    def forward(self, x, training=False):
        self.ctx.x = x
        batch = max(1, int(x.shape[0]))
        self.ctx.batch = batch
        self.add_loss(self.ops.l1l2_penalty(x, self.l1, self.l2) / batch)
        return x

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        if not (self.l1 or self.l2):
            return dy
        return self.ops.l1l2_penalty_backward(dy, self.ctx.x, self.l1, self.l2,
                                              scale=self.loss_scale / self.ctx.batch,
                                              out=self._buf("dx", dy.shape))

    def get_config(self):
        c = super().get_config()
        c.update(l1=self.l1, l2=self.l2)
        return c
