"""BatchNormalization (channels_last), LayerNormalization, GroupNormalization."""
import numpy as np

from .. import initializers
from .base import Layer


class BatchNormalization(Layer):
    """Batch normalisation over the last axis, Keras defaults: momentum 0.99,
    epsilon 1e-3, moving statistics updated with the biased batch variance.
    A non-trainable layer normalises with its moving statistics even in
    training (Keras 3), which is what fine-tuning a frozen base needs."""
    fresh_grads = True      # its input gradients are buffers of its own
    dx_in_dy = True         # backward(dy_free=True) may write dx over dy (graph.py)
    dres_in_y = True        # backward(y_free=True), after a residual forward: dres over y

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
        # BN -> ReLU without residual: the backward recomputes the ReLU mask
        # from x with the scale applied (one array fewer to read than y)
        ss = None
        if (training and activation == "relu" and residual is None
                and self.ops.bn_relu_mask_from_x):
            ss = self._buf("scale", (c,))
        self.ops.batchnorm_forward(x, self.w.get("gamma"), self.w.get("beta"), training=training,
                                   moving_mean=self.w["moving_mean"],
                                   moving_var=self.w["moving_variance"], momentum=self.momentum,
                                   epsilon=self.epsilon, out=y, save_mean=sm, save_invstd=si,
                                   residual=residual, activation=activation,
                                   **({} if ss is None else {"save_scale": ss}))
        ctx.x, ctx.training, ctx.mean, ctx.invstd, ctx.scale = x, training, sm, si, ss
        ctx.y, ctx.activation, ctx.residual = y, activation, residual is not None
        return y

    def backward(self, dy, need_dx=True, dy_free=False, y_free=False):
        """dx; after a fused forward with a residual, (dx, d residual).
        dy_free / y_free: nothing reads dy / this layer's output after this
        call (the graph says so); where the backend allows it
        (``bn_backward_in_place``) the training backward then writes dx over
        dy and d residual over the output, so that its memory-bound write
        pass stores to lines it has just read instead of buffers of its own."""
        ctx = self.ctx
        c = dy.shape[-1]
        in_place = ctx.training and getattr(self.ops, "bn_backward_in_place", False)
        dx = (dy if in_place and dy_free and dy.dtype == self._array_dtype
              else self._buf("dx", dy.shape))
        dgamma = self.g.get("gamma", self._buf("dgamma_unused", (c,)))
        dbeta = self.g.get("beta", self._buf("dbeta_unused", (c,)))
        dres = None
        if ctx.residual:
            y = ctx.y
            dres = (y if in_place and y_free and y.dtype == dy.dtype and y.shape == dy.shape
                    else self._buf("dres", dy.shape))
        fused = dict(y=ctx.y, activation=ctx.activation, dresidual=dres)
        if ctx.scale is not None:
            fused.update(y=None, save_scale=ctx.scale, beta=self.w.get("beta"))
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


def _refuse_extras(cls, **options):
    for nm, v in options.items():
        if v is not None:
            raise NotImplementedError(f"{cls}({nm}=...) is not supported yet")


def _positive_axis(axis, ndim, cls):
    """An axis of the batched input (rank ndim) as a non-negative index, not the batch axis."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{cls}: axis must be an int or a list/tuple of ints, got {axis!r}")
    a = int(axis) + ndim if axis < 0 else int(axis)
    if not 0 <= a < ndim:
        raise ValueError(f"{cls}: axis {axis} is out of bounds for inputs of rank {ndim}")
    if a == 0:
        raise ValueError(f"{cls}: axis {axis} is the batch axis; normalise over feature axes")
    return a


class _MomentNorm(Layer):
    """Shared by LayerNormalization and GroupNormalization: x viewed as
    ``self._view(shape)`` is normalised with its mean and variance over
    ``self._axes`` (Ops.norm_forward), then scaled by gamma and shifted by
    beta seen in ``self._pshape`` (their broadcast shape in the view)."""
    fresh_grads = True      # its input gradients are buffers of its own

    def _init_common(self, epsilon, center, scale, beta_initializer, gamma_initializer):
        self.epsilon, self.center, self.scale = float(epsilon), bool(center), bool(scale)
        if self.epsilon < 0:
            raise ValueError(f"{type(self).__name__}: epsilon must be >= 0, got {epsilon}")
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)

    def _add_params(self, shape):
        if self.scale:
            self.add_weight("gamma", shape, self.gamma_initializer)
        if self.center:
            self.add_weight("beta", shape, self.beta_initializer)

    def _param(self, d, name):
        v = d.get(name)
        return None if v is None else v.reshape(self._pshape)

    def forward(self, x, training=False):
        ctx = self.ctx
        xv = x.reshape(self._view(x.shape))
        stat = tuple(1 if i in self._axes else s for i, s in enumerate(xv.shape))
        y = self._buf("y", xv.shape)
        mean, invstd = self._buf("mean", stat), self._buf("invstd", stat)
        self.ops.norm_forward(xv, self._axes, self._param(self.w, "gamma"),
                              self._param(self.w, "beta"), self.epsilon, out=y,
                              save_mean=mean, save_invstd=invstd)
        ctx.x, ctx.mean, ctx.invstd = xv, mean, invstd
        return y.reshape(x.shape)

    def backward(self, dy, need_dx=True):
        ctx = self.ctx
        dx = self._buf("dx", ctx.x.shape)
        self.ops.norm_backward(dy.reshape(ctx.x.shape), ctx.x, self._axes,
                               self._param(self.w, "gamma"), ctx.mean, ctx.invstd, dx=dx,
                               dgamma=self._param(self.g, "gamma"),
                               dbeta=self._param(self.g, "beta"))
        return dx.reshape(dy.shape) if need_dx else None

    def get_config(self):
        c = super().get_config()
        c.update(epsilon=self.epsilon, center=self.center, scale=self.scale,
                 beta_initializer=initializers.serialize(self.beta_initializer),
                 gamma_initializer=initializers.serialize(self.gamma_initializer))
        return c


class LayerNormalization(_MomentNorm):
    """Keras 3's LayerNormalization: each sample normalised over ``axis``
    (an int or a list; default the last axis) with its own mean and biased
    variance, epsilon 1e-3 added to the variance; gamma and beta span the
    normalised axes (their shape is the input's along ``axis``, in that order)."""

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, rms_scaling=False,
                 beta_initializer="zeros", gamma_initializer="ones", beta_regularizer=None,
                 gamma_regularizer=None, beta_constraint=None, gamma_constraint=None, **kw):
        super().__init__(**kw)
        _refuse_extras("LayerNormalization", beta_regularizer=beta_regularizer,
                       gamma_regularizer=gamma_regularizer, beta_constraint=beta_constraint,
                       gamma_constraint=gamma_constraint)
        if rms_scaling:
            raise NotImplementedError("LayerNormalization(rms_scaling=True) is not supported: "
                                      "use the default rms_scaling=False")
        if isinstance(axis, (list, tuple)):
            self.axis = [int(a) for a in axis]
            if not self.axis:
                raise ValueError("LayerNormalization: axis must name at least one axis")
        elif isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
            self.axis = int(axis)
        else:
            raise TypeError("LayerNormalization: expected an int or a list/tuple of ints for "
                            f"axis, got {axis!r}")
        self._init_common(epsilon, center, scale, beta_initializer, gamma_initializer)

    def build(self, input_shape):
        ndim = len(input_shape) + 1
        full = (None,) + tuple(input_shape)
        axes = [_positive_axis(a, ndim, "LayerNormalization")
                for a in (self.axis if isinstance(self.axis, list) else [self.axis])]
        if len(set(axes)) != len(axes):
            raise ValueError(f"LayerNormalization: repeated axis in {self.axis}")
        if any(full[a] is None for a in axes):
            raise ValueError(f"LayerNormalization needs known sizes along axis {self.axis}, "
                             f"got input shape {full}")
        self._axes = tuple(sorted(axes))
        # Keras reshapes gamma (shape in the order of `axis`) to the broadcast shape
        self._pshape = tuple(full[a] if a in axes else 1 for a in range(ndim))
        self._add_params(tuple(full[a] for a in axes))

    def _view(self, shape):
        return shape

    def get_config(self):
        c = super().get_config()
        c.update(axis=self.axis, rms_scaling=False)
        return c


class GroupNormalization(_MomentNorm):
    """Keras 3's GroupNormalization: the channels (``axis``, default last)
    split into ``groups`` groups; each sample's group normalised with the
    mean and biased variance over its channels and every non-batch axis;
    gamma and beta per channel.  groups=-1: one group per channel
    (instance normalisation)."""

    def __init__(self, groups=32, axis=-1, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones", beta_regularizer=None,
                 gamma_regularizer=None, beta_constraint=None, gamma_constraint=None, **kw):
        super().__init__(**kw)
        _refuse_extras("GroupNormalization", beta_regularizer=beta_regularizer,
                       gamma_regularizer=gamma_regularizer, beta_constraint=beta_constraint,
                       gamma_constraint=gamma_constraint)
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or \
                (groups < 1 and groups != -1):
            raise ValueError(f"GroupNormalization: groups must be a positive int or -1, got {groups!r}")
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"GroupNormalization: axis must be an int, got {axis!r}")
        self.groups, self.axis = int(groups), int(axis)
        self._init_common(epsilon, center, scale, beta_initializer, gamma_initializer)

    def build(self, input_shape):
        ndim = len(input_shape) + 1
        a = _positive_axis(self.axis, ndim, "GroupNormalization")
        dim = input_shape[a - 1]
        if dim is None:
            raise ValueError(f"GroupNormalization: axis {self.axis} of the input must have a "
                             f"known size, got input shape {(None,) + tuple(input_shape)}")
        if self.groups == -1:
            self.groups = dim
        if dim < self.groups:
            raise ValueError(f"Number of groups ({self.groups}) cannot be more than the number "
                             f"of channels ({dim}).")
        if dim % self.groups:
            raise ValueError(f"Number of groups ({self.groups}) must divide the number of "
                             f"channels ({dim}).")
        self._a = a
        # the view: the channel axis split into (groups, channels per group)
        self._axes = tuple(i for i in range(1, ndim + 1) if i != a)
        self._pshape = tuple(self.groups if i == a else dim // self.groups if i == a + 1 else 1
                             for i in range(ndim + 1))
        self._add_params((dim,))

    def _view(self, shape):
        a = self._a
        return tuple(shape[:a]) + (self.groups, shape[a] // self.groups) + tuple(shape[a + 1:])

    def get_config(self):
        c = super().get_config()
        c.update(groups=self.groups, axis=self.axis)
        return c
