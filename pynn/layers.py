"""Layers with Keras names, arguments and defaults (NHWC, channels_last).

A layer declares its weights in ``build`` (``add_weight``); the model then
places every trainable weight in one flat parameter buffer and every gradient
in one flat gradient buffer, and hands the layer views of them (``self.w``,
``self.g``).  ``forward(x, training)`` keeps what ``backward`` needs;
``backward(dy, need_dx)`` fills ``self.g`` and returns dx.  Layers compute
only through ``self.ops`` (see backend.py) and write into buffers they
allocate once per input shape, so a training step allocates nothing after
the first one.  Buffers are reused by the next call: a layer's output is
valid until that layer runs again.
"""
import numpy as np

from . import initializers

# -------------------------------------------------------------- activations --

_ACT_ALIASES = {None: "linear", "linear": "linear", "relu": "relu", "sigmoid": "sigmoid",
                "tanh": "tanh", "softmax": "softmax", "leaky_relu": "leaky_relu", "elu": "elu"}


def activation_name(act):
    """Canonical activation name from a string, None or a pynn.activations function."""
    if callable(act) and hasattr(act, "__name__"):
        act = act.__name__
    if isinstance(act, str):
        act = act.lower()
    if act not in _ACT_ALIASES:
        raise ValueError(f"unknown activation {act!r}; expected one of "
                         f"{sorted(k for k in _ACT_ALIASES if k)}")
    return _ACT_ALIASES[act]


def _pair(v, what):
    if isinstance(v, (int, np.integer)):
        if v < 1:
            raise ValueError(f"{what} must be >= 1, got {v}")
        return int(v), int(v)
    try:
        t = tuple(int(a) for a in v)
    except TypeError:
        raise TypeError(f"{what} must be an int or a pair of ints, got {v!r}") from None
    if len(t) != 2 or min(t) < 1:
        raise ValueError(f"{what} must be an int or a pair of ints >= 1, got {v!r}")
    return t


def _padding(p):
    if not isinstance(p, str) or p.lower() not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {p!r}")
    return p.lower()


def _channels_last(data_format):
    if data_format not in (None, "channels_last"):
        raise ValueError(f"only data_format='channels_last' (NHWC) is supported, got {data_format!r}")


class Weight:
    """A declared weight: where it lives is decided by the model."""

    def __init__(self, name, shape, initializer, trainable, averaged=False):
        self.name, self.shape = name, tuple(int(s) for s in shape)
        self.initializer, self.trainable = initializer, trainable
        # non-trainable state that training's forward updates (batch-norm moving
        # statistics): averaged over MPI ranks at every step
        self.averaged = bool(averaged) and not trainable
        self.size = int(np.prod(self.shape, dtype=np.int64))


class Layer:
    _registry = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        Layer._registry[cls.__name__] = cls

    def __init__(self, name=None, input_shape=None, input_dim=None, trainable=True, dtype=None,
                 batch_input_shape=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected keyword argument(s) {sorted(kwargs)}")
        self.name = name
        if input_dim is not None:
            input_shape = (int(input_dim),)
        if batch_input_shape is not None:
            input_shape = tuple(batch_input_shape)[1:]
        self.input_shape_arg = None if input_shape is None else tuple(
            None if s is None else int(s) for s in input_shape)
        self.trainable = trainable
        self.dtype = dtype
        self.ops = None
        self.built = False
        self.specs = []            # declared Weights, in Keras order
        self.w, self.g = {}, {}    # name -> array view (set by the model)
        self.input_shape = self.output_shape = None
        self._bufs = {}

    # -- declared by subclasses ---------------------------------------------
    def add_weight(self, name, shape, initializer="zeros", trainable=True, averaged=False):
        spec = Weight(name, shape, initializers.get(initializer), trainable and self.trainable,
                      averaged)
        self.specs.append(spec)
        return spec

    def build(self, input_shape):
        """Declare weights for this (batch-less) input shape."""

    def compute_output_shape(self, input_shape):
        return input_shape

    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, dy, need_dx=True):
        raise NotImplementedError

    def get_config(self):
        cfg = {"name": self.name, "trainable": self.trainable}
        if self.input_shape_arg is not None:
            cfg["input_shape"] = list(self.input_shape_arg)
        return cfg

    # -- helpers --------------------------------------------------------------
    def _build(self, input_shape, ops, dtype):
        self.ops, self.dtype = ops, np.dtype(dtype)
        self.input_shape = tuple(input_shape)
        self.build(self.input_shape)
        self.output_shape = tuple(self.compute_output_shape(self.input_shape))
        self.built = True

    def _buf(self, key, shape, dtype=None):
        """A buffer owned by this layer, reused for every call with this shape."""
        dt = self.dtype if dtype is None else np.dtype(dtype)
        k = (key, tuple(shape), dt.str)
        b = self._bufs.get(k)
        if b is None:
            b = self._bufs[k] = self.ops.alloc(tuple(shape), dt)
        return b

    def release_buffers(self):
        self._bufs.clear()

    def count_params(self):
        return sum(s.size for s in self.specs)

    @property
    def weights(self):
        return [self.w[s.name] for s in self.specs]

    def get_weights(self):
        return [np.array(self.ops.to_numpy(self.w[s.name])) for s in self.specs]

    def set_weights(self, values):
        if len(values) != len(self.specs):
            raise ValueError(f"{self.name}: expected {len(self.specs)} arrays, got {len(values)}")
        for s, v in zip(self.specs, values):
            v = np.asarray(v)
            if v.shape != s.shape:
                raise ValueError(f"{self.name}/{s.name}: expected shape {s.shape}, got {v.shape}")
            self.w[s.name][...] = self.ops.asarray(v)

    def __call__(self, x, training=False):
        return self.forward(x, training)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"


class InputLayer(Layer):
    """Declares the model's input shape (batch-less); identity."""

    def __init__(self, shape=None, input_shape=None, name=None, **kw):
        super().__init__(name=name, input_shape=shape if shape is not None else input_shape, **kw)
        if self.input_shape_arg is None:
            raise ValueError("InputLayer needs shape=")

    def forward(self, x, training=False):
        return x

    def backward(self, dy, need_dx=True):
        return dy

    def get_config(self):
        return {"name": self.name, "shape": list(self.input_shape_arg)}


def Input(shape=None, batch_size=None, name=None, **kw):
    """keras.Input for Sequential models: a batch-less shape."""
    return InputLayer(shape=shape, name=name)


class _Activated(Layer):
    """Mixin for layers with an activation fused when the kernel can
    (None/linear/relu), else applied with ops.activation after it."""

    def _set_activation(self, activation):
        self.activation = activation_name(activation)
        # the model sets this when it fuses a final softmax with the loss
        self.emit_logits = False

    @property
    def _fused(self):
        return self.activation in ("linear", "relu")

    def _kernel_act(self):
        if self.emit_logits:
            return None
        return "relu" if self.activation == "relu" else None

    def _post_activation(self, z):
        if self.emit_logits or self._fused:
            return z
        y = self._buf("y", z.shape)
        return self.ops.activation(self.activation, z, out=y)

    def _pre_backward(self, dy):
        """dz from dy for the non-fused activations."""
        if self.emit_logits or self._fused:
            return dy
        dz = self._buf("dz", dy.shape)
        return self.ops.activation_backward(self.activation, dy, self._y, out=dz)


class Dense(_Activated):
    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None, **kw):
        super().__init__(**kw)
        for nm, v in (("kernel_regularizer", kernel_regularizer), ("bias_regularizer", bias_regularizer),
                      ("activity_regularizer", activity_regularizer),
                      ("kernel_constraint", kernel_constraint), ("bias_constraint", bias_constraint)):
            if v is not None:
                raise NotImplementedError(f"Dense({nm}=...) is not supported")
        self.units = int(units)
        if self.units < 1:
            raise ValueError(f"Dense units must be >= 1, got {units}")
        self._set_activation(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError("Dense needs the last input dimension")
        self.add_weight("kernel", (input_shape[-1], self.units), self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def forward(self, x, training=False):
        x2 = x.reshape(-1, x.shape[-1])
        z = self._buf("z", (x2.shape[0], self.units))
        self.ops.dense_forward(x2, self.w["kernel"], self.w.get("bias"),
                               activation=self._kernel_act(), out=z)
        y = self._post_activation(z)
        self._x, self._z, self._y = x2, z, y
        self._xshape = x.shape
        return y.reshape(x.shape[:-1] + (self.units,))

    def backward(self, dy, need_dx=True):
        dy2 = dy.reshape(-1, self.units)
        dz = self._pre_backward(dy2)
        act = self._kernel_act()
        dx = self._buf("dx", self._x.shape) if need_dx else None
        self.ops.dense_backward(dz, self._x, self.w["kernel"], y=self._z if act else None,
                                activation=act, need_dx=need_dx, dx=dx, dw=self.g["kernel"],
                                db=self.g.get("bias"))
        return None if dx is None else dx.reshape(self._xshape)

    def get_config(self):
        c = super().get_config()
        c.update(units=self.units, activation=self.activation, use_bias=self.use_bias,
                 kernel_initializer=initializers.serialize(self.kernel_initializer),
                 bias_initializer=initializers.serialize(self.bias_initializer))
        return c


class Conv2D(_Activated):
    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, **kw):
        super().__init__(**kw)
        for nm, v in (("kernel_regularizer", kernel_regularizer), ("bias_regularizer", bias_regularizer),
                      ("activity_regularizer", activity_regularizer),
                      ("kernel_constraint", kernel_constraint), ("bias_constraint", bias_constraint)):
            if v is not None:
                raise NotImplementedError(f"Conv2D({nm}=...) is not supported")
        _channels_last(data_format)
        if groups != 1:
            raise NotImplementedError("Conv2D(groups != 1) is not supported")
        self.filters = int(filters)
        if self.filters < 1:
            raise ValueError(f"Conv2D filters must be >= 1, got {filters}")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        self.padding = _padding(padding)
        self.dilation_rate = _pair(dilation_rate, "dilation_rate")
        if self.strides != (1, 1) and self.dilation_rate != (1, 1):
            raise ValueError("strides > 1 together with dilation_rate > 1 is not supported (as in Keras)")
        self._set_activation(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"Conv2D expects (H, W, C) inputs, got shape {input_shape}")
        self.add_weight("kernel", self.kernel_size + (input_shape[-1], self.filters),
                        self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer)

    def compute_output_shape(self, input_shape):
        from .backend import conv_padding
        h, w, _ = input_shape
        oh = conv_padding(h, self.kernel_size[0], self.strides[0], self.dilation_rate[0], self.padding)[0]
        ow = conv_padding(w, self.kernel_size[1], self.strides[1], self.dilation_rate[1], self.padding)[0]
        if oh < 1 or ow < 1:
            raise ValueError(f"Conv2D {self.kernel_size} on input {input_shape} gives an empty output")
        return (oh, ow, self.filters)

    def _geom(self):
        return dict(strides=self.strides, padding=self.padding, dilation=self.dilation_rate)

    def forward(self, x, training=False):
        z = self._buf("z", (x.shape[0],) + self.output_shape)
        self.ops.conv2d_forward(x, self.w["kernel"], self.w.get("bias"),
                                activation=self._kernel_act(), out=z, **self._geom())
        y = self._post_activation(z)
        self._x, self._z, self._y = x, z, y
        return y

    def backward(self, dy, need_dx=True):
        dz = self._pre_backward(dy)
        act = self._kernel_act()
        dx = self._buf("dx", self._x.shape) if need_dx else None
        self.ops.conv2d_backward(dz, self._x, self.w["kernel"], y=self._z if act else None,
                                 activation=act, need_dx=need_dx, dx=dx, dw=self.g["kernel"],
                                 db=self.g.get("bias"), **self._geom())
        return dx

    def get_config(self):
        c = super().get_config()
        c.update(filters=self.filters, kernel_size=list(self.kernel_size), strides=list(self.strides),
                 padding=self.padding, dilation_rate=list(self.dilation_rate),
                 activation=self.activation, use_bias=self.use_bias,
                 kernel_initializer=initializers.serialize(self.kernel_initializer),
                 bias_initializer=initializers.serialize(self.bias_initializer))
        return c


class MaxPooling2D(Layer):
    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None, **kw):
        super().__init__(**kw)
        _channels_last(data_format)
        self.pool_size = _pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else _pair(strides, "strides")
        self.padding = _padding(padding)

    def compute_output_shape(self, input_shape):
        from .backend import conv_padding
        if len(input_shape) != 3:
            raise ValueError(f"MaxPooling2D expects (H, W, C) inputs, got shape {input_shape}")
        h, w, c = input_shape
        oh = conv_padding(h, self.pool_size[0], self.strides[0], 1, self.padding)[0]
        ow = conv_padding(w, self.pool_size[1], self.strides[1], 1, self.padding)[0]
        if oh < 1 or ow < 1:
            raise ValueError(f"MaxPooling2D {self.pool_size} on input {input_shape} gives an empty output")
        return (oh, ow, c)

    def forward(self, x, training=False):
        shp = (x.shape[0],) + self.output_shape
        y = self._buf("y", shp)
        idx = self._buf("idx", shp, np.int32)
        self.ops.max_pool2d(x, self.pool_size, self.strides, self.padding, out=y, indices=idx)
        self._xshape, self._idx = x.shape, idx
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        dx = self._buf("dx", self._xshape)
        return self.ops.max_pool2d_backward(dy, self._idx, self._xshape, out=dx,
                                            pool_size=self.pool_size, strides=self.strides,
                                            padding=self.padding)

    def get_config(self):
        c = super().get_config()
        c.update(pool_size=list(self.pool_size), strides=list(self.strides), padding=self.padding)
        return c


class Flatten(Layer):
    def __init__(self, data_format=None, **kw):
        super().__init__(**kw)
        _channels_last(data_format)

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, training=False):
        self._xshape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True):
        return dy.reshape(self._xshape) if need_dx else None


class Reshape(Layer):
    def __init__(self, target_shape, **kw):
        super().__init__(**kw)
        self.target_shape = tuple(int(s) for s in target_shape)

    def compute_output_shape(self, input_shape):
        n = int(np.prod(input_shape))
        t = list(self.target_shape)
        if t.count(-1) == 1:
            rest = int(np.prod([s for s in t if s != -1]))
            t[t.index(-1)] = n // rest if rest else 0
        if int(np.prod(t)) != n:
            raise ValueError(f"cannot reshape {input_shape} to {self.target_shape}")
        return tuple(t)

    def forward(self, x, training=False):
        self._xshape = x.shape
        return x.reshape((x.shape[0],) + self.output_shape)

    def backward(self, dy, need_dx=True):
        return dy.reshape(self._xshape) if need_dx else None

    def get_config(self):
        c = super().get_config()
        c["target_shape"] = list(self.target_shape)
        return c


class Dropout(Layer):
    """Inverted dropout; the keep mask is a Philox4x32 stream of (seed, step):
    the same for any thread count, regenerated in backward, never stored.
    Without seed=, the seed comes from pynn.utils.set_random_seed and the
    layer's position."""

    def __init__(self, rate, noise_shape=None, seed=None, **kw):
        super().__init__(**kw)
        if noise_shape is not None:
            raise NotImplementedError("Dropout(noise_shape=...) is not supported")
        self.rate = float(rate)
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"Dropout rate must be in [0, 1), got {rate}")
        self.seed = None if seed is None else int(seed)
        self.stream_seed = 0   # set by the model
        self.step = 0          # set by the model before each training step

    def forward(self, x, training=False):
        self._active = training and self.rate > 0
        if not self._active:
            return x
        y = self._buf("y", x.shape)
        return self.ops.dropout(x, self.rate, self.stream_seed, offset=self.step, out=y)

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        if not self._active:
            return dy
        dx = self._buf("dx", dy.shape)
        return self.ops.dropout_backward(dy, self.rate, self.stream_seed, offset=self.step, out=dx)

    def get_config(self):
        c = super().get_config()
        c.update(rate=self.rate, seed=self.seed)
        return c


class Activation(Layer):
    def __init__(self, activation, **kw):
        super().__init__(**kw)
        self.activation = activation_name(activation)
        self.emit_logits = False

    def forward(self, x, training=False):
        if self.emit_logits or self.activation == "linear":
            return x
        y = self._buf("y", x.shape)
        self._y = self.ops.activation(self.activation, x, out=y)
        return self._y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        if self.emit_logits or self.activation == "linear":
            return dy
        dx = self._buf("dx", dy.shape)
        return self.ops.activation_backward(self.activation, dy, self._y, out=dx)

    def get_config(self):
        c = super().get_config()
        c["activation"] = self.activation
        return c


class ReLU(Activation):
    def __init__(self, **kw):
        super().__init__("relu", **kw)

    def get_config(self):
        c = super().get_config()
        c.pop("activation")
        return c


class BatchNormalization(Layer):
    """Batch normalisation over the last axis (channels_last), Keras
    defaults: momentum 0.99, epsilon 1e-3, moving statistics updated with the
    biased batch variance."""

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones",
                 moving_mean_initializer="zeros", moving_variance_initializer="ones", **kw):
        super().__init__(**kw)
        if axis not in (-1,):
            raise NotImplementedError("BatchNormalization supports axis=-1 (channels_last) only")
        self.axis, self.momentum, self.epsilon = -1, float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self._inits = dict(beta=beta_initializer, gamma=gamma_initializer,
                           moving_mean=moving_mean_initializer,
                           moving_variance=moving_variance_initializer)

    def build(self, input_shape):
        c = input_shape[-1]
        if self.scale:
            self.add_weight("gamma", (c,), self._inits["gamma"])
        if self.center:
            self.add_weight("beta", (c,), self._inits["beta"])
        self.add_weight("moving_mean", (c,), self._inits["moving_mean"], trainable=False,
                        averaged=True)
        self.add_weight("moving_variance", (c,), self._inits["moving_variance"], trainable=False,
                        averaged=True)

    def forward(self, x, training=False):
        c = x.shape[-1]
        y = self._buf("y", x.shape)
        sm = self._buf("mean", (c,))
        si = self._buf("invstd", (c,))
        self.ops.batchnorm_forward(x, self.w.get("gamma"), self.w.get("beta"), training=training,
                                   moving_mean=self.w["moving_mean"],
                                   moving_var=self.w["moving_variance"], momentum=self.momentum,
                                   epsilon=self.epsilon, out=y, save_mean=sm, save_invstd=si)
        self._x, self._training = x, training
        return y

    def backward(self, dy, need_dx=True):
        c = dy.shape[-1]
        dx = self._buf("dx", dy.shape)
        dgamma = self.g.get("gamma", self._buf("dgamma_unused", (c,)))
        dbeta = self.g.get("beta", self._buf("dbeta_unused", (c,)))
        if not self._training:
            # after an inference-mode forward the statistics are constants:
            # y = gamma * (x - mm) * invstd + beta
            xp = self.ops.xp
            invstd = 1.0 / xp.sqrt(self.w["moving_variance"] + self.dtype.type(self.epsilon))
            xhat = (self._x - self.w["moving_mean"]) * invstd
            dbeta[...] = dy.reshape(-1, c).sum(axis=0)
            dgamma[...] = (dy * xhat).reshape(-1, c).sum(axis=0)
            gamma = self.w["gamma"] if "gamma" in self.w else 1.0
            xp.multiply(dy, gamma * invstd, out=dx)
            return dx if need_dx else None
        self.ops.batchnorm_backward(dy, self._x, self.w.get("gamma"), self._buf("mean", (c,)),
                                    self._buf("invstd", (c,)), dx=dx, dgamma=dgamma,
                                    dbeta=dbeta)
        return dx if need_dx else None

    def get_config(self):
        c = super().get_config()
        c.update(momentum=self.momentum, epsilon=self.epsilon, center=self.center, scale=self.scale)
        return c


def from_config(class_name, config):
    cls = Layer._registry.get(class_name)
    if cls is None:
        raise ValueError(f"unknown layer class {class_name!r}")
    config = dict(config)
    for k in ("kernel_initializer", "bias_initializer"):
        if isinstance(config.get(k), dict):
            config[k] = initializers.get(config[k])
    if class_name == "InputLayer":
        return InputLayer(shape=config["shape"], name=config.get("name"))
    return cls(**config)
