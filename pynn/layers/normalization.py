"""BatchNormalization (channels_last)."""
from .base import Layer


class BatchNormalization(Layer):
    """Batch normalisation over the last axis, Keras defaults: momentum 0.99,
    epsilon 1e-3, moving statistics updated with the biased batch variance.
    A non-trainable layer normalises with its moving statistics even in
    training (Keras 3), which is what fine-tuning a frozen base needs."""
    fresh_grads = True      # its input gradients are buffers of its own

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones",
                 moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None, beta_constraint=None,
                 gamma_constraint=None, synchronized=False, **kw):
        super().__init__(**kw)
        for nm, v in (("beta_regularizer", beta_regularizer), ("gamma_regularizer", gamma_regularizer),
                      ("beta_constraint", beta_constraint), ("gamma_constraint", gamma_constraint)):
            if v is not None:
                raise NotImplementedError(f"BatchNormalization({nm}=...) is not supported yet")
        if synchronized:
            raise NotImplementedError("BatchNormalization(synchronized=True) is not supported: "
                                      "under MPI each rank normalises with its own batch")
        if axis not in (-1, 3):
            raise NotImplementedError("BatchNormalization supports axis=-1 (channels_last) only")
        self.axis, self.momentum, self.epsilon = -1, float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self._inits = dict(beta=beta_initializer, gamma=gamma_initializer,
                           moving_mean=moving_mean_initializer,
                           moving_variance=moving_variance_initializer)

    def build(self, input_shape):
        c = input_shape[-1]
        if c is None:
            raise ValueError("BatchNormalization needs a known channel dimension")
        if self.scale:
            self.add_weight("gamma", (c,), self._inits["gamma"])
        if self.center:
            self.add_weight("beta", (c,), self._inits["beta"])
        self.add_weight("moving_mean", (c,), self._inits["moving_mean"], trainable=False,
                        averaged=True)
        self.add_weight("moving_variance", (c,), self._inits["moving_variance"], trainable=False,
                        averaged=True)

    def forward(self, x, training=False, residual=None, activation=None):
        """y = BN(x); the graph may fuse what follows: act(BN(x) + residual)
        (pynn/models/fusion.py)."""
        ctx = self.ctx
        c = x.shape[-1]
        training = bool(training) and self.trainable
        y = self._buf("y", x.shape)
        sm = self._buf("mean", (c,))
        si = self._buf("invstd", (c,))
        self.ops.batchnorm_forward(x, self.w.get("gamma"), self.w.get("beta"), training=training,
                                   moving_mean=self.w["moving_mean"],
                                   moving_var=self.w["moving_variance"], momentum=self.momentum,
                                   epsilon=self.epsilon, out=y, save_mean=sm, save_invstd=si,
                                   residual=residual, activation=activation)
        ctx.x, ctx.training, ctx.mean, ctx.invstd = x, training, sm, si
        ctx.y, ctx.activation, ctx.residual = y, activation, residual is not None
        return y

    def backward(self, dy, need_dx=True):
        """dx; after a fused forward with a residual, (dx, d residual)."""
        ctx = self.ctx
        c = dy.shape[-1]
        dx = self._buf("dx", dy.shape)
        dgamma = self.g.get("gamma", self._buf("dgamma_unused", (c,)))
        dbeta = self.g.get("beta", self._buf("dbeta_unused", (c,)))
        dres = self._buf("dres", dy.shape) if ctx.residual else None
        fused = dict(y=ctx.y, activation=ctx.activation, dresidual=dres)
        if not ctx.training:
            # the statistics were constants: the moving ones
            self.ops.batchnorm_backward_inference(dy, ctx.x, self.w.get("gamma"),
                                                  self.w["moving_mean"],
                                                  self.w["moving_variance"], self.epsilon,
                                                  dx=dx, dgamma=dgamma, dbeta=dbeta, **fused)
        else:
            self.ops.batchnorm_backward(dy, ctx.x, self.w.get("gamma"), ctx.mean, ctx.invstd,
                                        dx=dx, dgamma=dgamma, dbeta=dbeta, **fused)
        if ctx.residual:
            return [dx if need_dx else None, dres]
        return dx if need_dx else None

    def get_config(self):
        c = super().get_config()
        c.update(axis=-1, momentum=self.momentum, epsilon=self.epsilon, center=self.center,
                 scale=self.scale)
        return c
