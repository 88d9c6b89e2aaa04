"""The Layer base class, declared weights and the InputLayer.

A layer declares its weights in ``build(input_shape)`` with ``add_weight``;
the model then places every trainable weight in one flat parameter buffer
and every gradient in one flat gradient buffer and hands the layer views of
them (``self.w``, ``self.g``).  ``forward(x, training)`` keeps what
``backward`` needs in ``self.ctx`` (one context per call of the layer in a
graph, so a layer called twice keeps two sets); ``backward(dy, need_dx)``
fills ``self.g`` and returns dx.  Layers compute only through ``self.ops``
(pynn/backend) and write into buffers from ``self._buf``, allocated once per
call site and shape, so a training step allocates nothing after the first.
Merge layers take and return lists.

Calling a layer on KerasTensors records a node (pynn/symbolic.py); calling
it on arrays computes eagerly (inference) and builds it first if needed.

dtype policies (Keras 3): ``dtype=`` takes a policy name ("float32",
"float64", "mixed_bfloat16"), a ``DTypePolicy`` or its serialized dict; the
default is the global policy when the layer is constructed.  The arrays of
a layer (weights, activations, gradients) have its model's dtype, float32
or float64, whatever the policy: under "mixed_bfloat16" only the matrix
products of the layers that have them (``self._product_kw``) round their
operands to bfloat16.  ``layer.dtype`` (the variable dtype, as Keras 3),
``variable_dtype`` and ``compute_dtype`` report what the layer runs once it
is placed in a model (a float64 model computes every layer in float64).
"""
import re
import types

import numpy as np

from .. import dtype_policies, initializers
from ..activations import canonical_name
from ..backend.activation_ref import grad_needs_input
from ..symbolic import KerasTensor, Node, flatten, is_symbolic

_NAME_COUNTS = {}


def snake_case(name):
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def unique_name(base):
    """Keras' automatic names: dense, dense_1, dense_2, ... per session
    (pynn.utils.clear_session resets the counters)."""
    k = _NAME_COUNTS.get(base, 0)
    _NAME_COUNTS[base] = k + 1
    return base if k == 0 else f"{base}_{k}"


def reset_names():
    _NAME_COUNTS.clear()


def activation_name(act):
    return canonical_name(act)


class Weight:
    """A declared weight: where it lives is decided by the model."""

    def __init__(self, name, shape, initializer, trainable, averaged=False):
        self.name, self.shape = name, tuple(int(s) for s in shape)
        self.initializer, self.trainable = initializer, bool(trainable)
        # non-trainable state that training's forward updates (batch-norm moving
        # statistics): averaged over MPI ranks at every step
        self.averaged = bool(averaged) and not trainable
        self.size = int(np.prod(self.shape, dtype=np.int64))


def _new_ctx():
    return types.SimpleNamespace(bufs={})


# keyword arguments of the product ops (dense_*, conv2d_*): none for float32
_FLOAT32_PRODUCTS = types.MappingProxyType({})
_BF16_PRODUCTS = types.MappingProxyType({"precision": "bfloat16"})


def check_policy(layer, policy, ops, dtype):
    """Refuse a policy that ``ops`` / a model of ``dtype`` cannot run, when
    the layer is placed (not at its first step)."""
    if policy.compute_dtype != "bfloat16":
        return
    if dtype is not None and np.dtype(dtype) != np.float32:
        raise NotImplementedError(
            f"layer {layer.name!r} has the dtype policy {policy.name!r} and its model computes "
            f"in {np.dtype(dtype).name}: {policy.name} runs in float32 models only (give the "
            "model dtype='float32', or the layer dtype='float64')")
    if ops is not None:
        ops.check_precision("bfloat16")


class Layer:
    _registry = {}
    fresh_grads = False     # backward returns buffers of its own (not views of dy)
    accumulates_dx = False  # backward(dy, need_dx, dx_into=g) adds its dx to g

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if not cls.__name__.startswith("_"):
            Layer._registry[cls.__name__] = cls

    def __init__(self, name=None, input_shape=None, input_dim=None, trainable=True, dtype=None,
                 batch_input_shape=None, batch_size=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected keyword argument(s) {sorted(kwargs)}")
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(f"a layer name must be a non-empty string without '/', got {name!r}")
        self.name = name if name is not None else unique_name(snake_case(type(self).__name__))
        if input_dim is not None:
            input_shape = (int(input_dim),)
        if batch_input_shape is not None:
            input_shape = tuple(batch_input_shape)[1:]
        self.input_shape_arg = None if input_shape is None else tuple(
            None if s is None else int(s) for s in input_shape)
        self._trainable = bool(trainable)
        try:
            self._dtype_policy = dtype_policies.get(dtype)
        except (NotImplementedError, ValueError, TypeError) as e:
            raise type(e)(f"{type(self).__name__}(dtype={dtype!r}): {e}") from None
        self._array_dtype = None   # the model's dtype (bind): float32 or float64
        self.ops = None
        self.built = False
        self.specs = []            # declared Weights, in Keras order
        self.w, self.g = {}, {}    # name -> array view (set by the model)
        self.input_shape = self.output_shape = None
        self._inbound_nodes, self._outbound_nodes = [], []
        self.ctx = _new_ctx()      # the current call's state (set by the graph)

    # -- trainable (a model passes it on to its layers, as Keras) -------------
    @property
    def trainable(self):
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        self._trainable = bool(value)

    # -- dtype policy (Keras 3) -------------------------------------------------
    @property
    def dtype_policy(self):
        """The layer's DTypePolicy: the one it was given (or the global policy
        at construction), as it runs in its model (float64 in a float64 model,
        float32 for a float32/float64 policy in a float32 model)."""
        return dtype_policies.effective_policy(self._dtype_policy, self._array_dtype)

    @dtype_policy.setter
    def dtype_policy(self, value):
        policy = dtype_policies.get(value)
        check_policy(self, policy, self.ops, self._array_dtype)
        self._dtype_policy = policy

    @property
    def dtype(self):
        """The variable dtype (Keras 3's ``layer.dtype``): "float32" or "float64"."""
        return self.dtype_policy.variable_dtype

    @property
    def variable_dtype(self):
        return self.dtype_policy.variable_dtype

    @property
    def compute_dtype(self):
        """"float32", "float64" or "bfloat16" (the layer's matrix products)."""
        return self.dtype_policy.compute_dtype

    @property
    def _product_kw(self):
        """Keyword arguments of this layer's product ops: {"precision":
        "bfloat16"} under mixed_bfloat16, else none (the float32 call)."""
        if self._dtype_policy.compute_dtype == "bfloat16":
            return _BF16_PRODUCTS
        return _FLOAT32_PRODUCTS

    # -- declared by subclasses ---------------------------------------------
    def add_weight(self, name, shape, initializer="zeros", trainable=True, averaged=False):
        spec = Weight(name, shape, initializers.get(initializer), trainable, averaged)
        self.specs.append(spec)
        return spec

    def build(self, input_shape):
        """Declare weights for this (batch-less) input shape (a list of
        shapes for merge layers)."""

    def compute_output_shape(self, input_shape):
        return input_shape

    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, dy, need_dx=True):
        raise NotImplementedError

    def get_config(self):
        cfg = {"name": self.name, "trainable": self.trainable,
               "dtype": dtype_policies.serialize(self.dtype_policy)}
        if self.input_shape_arg is not None:
            cfg["input_shape"] = list(self.input_shape_arg)
        return cfg

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # -- building -------------------------------------------------------------
    def _build_shape(self, input_shape):
        """Declare weights and compute the output shape for a batch-less
        input shape (the first call decides the weights' shapes)."""
        if self.built:
            out = tuple(self.compute_output_shape(input_shape)) if not isinstance(
                input_shape, list) else self.compute_output_shape(input_shape)
            if self.specs and _shapes_differ(input_shape, self.input_shape):
                raise ValueError(f"layer {self.name!r} was built for inputs of shape "
                                 f"{_fmt(self.input_shape)} and is called on {_fmt(input_shape)}")
            return out
        self.input_shape = input_shape if isinstance(input_shape, list) else tuple(input_shape)
        self.build(self.input_shape)
        out = self.compute_output_shape(self.input_shape)
        self.output_shape = out if isinstance(out, list) else tuple(out)
        self.built = True
        return self.output_shape

    def bind(self, ops, dtype):
        """Attach the device ops and dtype (the model does this when it
        places the weights); a dtype policy they cannot run raises here."""
        dtype = np.dtype(dtype)
        check_policy(self, self._dtype_policy, ops, dtype)
        if ops is not self.ops or (self._array_dtype is not None and dtype != self._array_dtype):
            self.release_buffers()
        self.ops, self._array_dtype = ops, dtype

    def _build(self, input_shape, ops, dtype):
        """Build and bind in one call (layers used on their own, tests)."""
        self._build_shape(tuple(input_shape) if not isinstance(input_shape, list) else input_shape)
        self.bind(ops, dtype)

    # -- helpers --------------------------------------------------------------
    def _buf(self, key, shape, dtype=None):
        """A buffer of the current call site, reused for every call with this shape."""
        dt = self._array_dtype if dtype is None else np.dtype(dtype)
        k = (key, tuple(shape), dt.str)
        bufs = self.ctx.bufs
        b = bufs.get(k)
        if b is None:
            b = bufs[k] = self.ops.alloc(tuple(shape), dt)
        return b

    def release_buffers(self):
        self.ctx.bufs.clear()

    def count_params(self):
        return sum(s.size for s in self.specs)

    def _need_weights(self):
        """A layer of a model whose weights are placed lazily (Sequential)."""
        if self.specs and not self.w:
            owner = getattr(self, "_graph_owner", None)
            if owner is None:
                raise RuntimeError(f"layer {self.name!r} has no weights yet: build its model "
                                   "(or call the layer on data)")
            owner._ensure_allocated()

    @property
    def weights(self):
        self._need_weights()
        return [self.w[s.name] for s in self.specs]

    @property
    def trainable_weights(self):
        return [self.w[s.name] for s in self.specs if s.trainable and self.trainable]

    @property
    def non_trainable_weights(self):
        return [self.w[s.name] for s in self.specs if not (s.trainable and self.trainable)]

    def get_weights(self):
        self._need_weights()
        return [np.array(self.ops.to_numpy(self.w[s.name])) for s in self.specs]

    def set_weights(self, values):
        self._need_weights()
        values = list(values)
        if len(values) != len(self.specs):
            raise ValueError(f"{self.name}: expected {len(self.specs)} arrays, got {len(values)}")
        for s, v in zip(self.specs, values):
            v = np.asarray(v)
            if v.shape != s.shape:
                raise ValueError(f"{self.name}/{s.name}: expected shape {s.shape}, got {v.shape}")
            if v.dtype.kind not in "fiub":
                raise TypeError(f"{self.name}/{s.name}: weights must be real numbers, got {v.dtype}")
        for s, v in zip(self.specs, values):
            self.w[s.name][...] = self.ops.asarray(np.asarray(v, dtype=self._array_dtype))

    # -- losses of a call (Keras' add_loss / layer.losses) ---------------------
    def add_loss(self, value):
        """Add a scalar penalty computed in this forward call to the model's
        loss (ActivityRegularization).  The model adds it, weighted by the
        batch size, to the reported loss; its gradient is the layer's own:
        backward adds d(penalty)/dx times ``self.loss_scale``."""
        losses = getattr(self.ctx, "losses", None)
        if losses is None:
            losses = self.ctx.losses = []
        losses.append(float(value))

    @property
    def losses(self):
        """The penalties added by the layer's latest call in a model."""
        return list(getattr(self.ctx, "losses", ()))

    @property
    def loss_scale(self):
        """The weight of add_loss gradients in this backward: 1, or this
        process' share of the global batch under MPI (set by the model)."""
        return getattr(self.ctx, "loss_scale", 1.0)

    # -- the graph ------------------------------------------------------------
    def __call__(self, inputs, training=None, **kwargs):
        if kwargs:
            raise NotImplementedError(f"{type(self).__name__}: call arguments {sorted(kwargs)} "
                                      "are not supported")
        if is_symbolic(inputs):
            return self._call_symbolic(inputs)
        return self._call_eager(inputs, bool(training))

    def _call_symbolic(self, inputs):
        tensors = flatten(inputs)
        if not all(isinstance(t, KerasTensor) for t in tensors):
            raise TypeError(f"{self.name}: mix of KerasTensors and arrays in the inputs")
        multi = isinstance(inputs, (list, tuple, dict))
        if multi and not getattr(self, "takes_list", False):
            if len(tensors) != 1:
                raise ValueError(f"layer {self.name!r} ({type(self).__name__}) takes one input, "
                                 f"got {len(tensors)}")
        if getattr(self, "takes_list", False) and not multi:
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}) takes a list of inputs")
        shapes = [t.shape[1:] for t in tensors]
        in_shape = shapes if getattr(self, "takes_list", False) else shapes[0]
        out_shape = self._build_shape(in_shape)
        outs = self._make_outputs(out_shape)
        Node(self, tensors, outs)
        return outs[0] if len(outs) == 1 and not getattr(self, "returns_list", False) else outs

    def _make_outputs(self, out_shape):
        shapes = out_shape if isinstance(out_shape, list) else [out_shape]
        return [KerasTensor((None,) + tuple(s), name=f"{self.name}_out{i}" if i else self.name)
                for i, s in enumerate(shapes)]

    def _call_eager(self, x, training):
        xs = [np.asarray(a) for a in x] if isinstance(x, (list, tuple)) else np.asarray(x)
        first = xs[0] if isinstance(xs, list) else xs
        if not self.built or not self.w and self.specs:
            shape = [a.shape[1:] for a in xs] if isinstance(xs, list) else xs.shape[1:]
            self._build_shape(shape)
            from ..backend import get_ops
            dt = first.dtype if first.dtype in (np.float32, np.float64) and \
                self._dtype_policy.compute_dtype != "bfloat16" else np.float32
            self.bind(self.ops or get_ops(), dt)
            self._allocate_standalone()
        if self.ops is None:
            from ..backend import get_ops
            self.bind(get_ops(), np.float32)
        dt = self._array_dtype
        cast = [np.ascontiguousarray(a, dtype=dt) for a in xs] if isinstance(xs, list) \
            else np.ascontiguousarray(xs, dtype=dt)
        saved = self.ctx
        self.ctx = _new_ctx()
        try:
            y = self.forward([self.ops.asarray(a) for a in cast] if isinstance(cast, list)
                             else self.ops.asarray(cast), training)
        finally:
            self.ctx = saved
        if isinstance(y, list):
            return [np.array(self.ops.to_numpy(a)) for a in y]
        return np.array(self.ops.to_numpy(y))

    def _allocate_standalone(self):
        from .. import utils
        seed = utils.fresh_seed()
        for wi, s in enumerate(self.specs):
            rng = np.random.default_rng(utils.derive_seed(seed, 0, wi))
            dt = self._array_dtype
            self.w[s.name] = self.ops.asarray(s.initializer(s.shape, rng, dt), dt)
            self.g[s.name] = self.ops.alloc(s.shape, dt, zeros=True)

    def _single_node(self, what):
        if not self._inbound_nodes:
            raise AttributeError(f"layer {self.name!r} has no {what}: it is not connected "
                                 "(call it on a tensor, or build the model)")
        if len(self._inbound_nodes) > 1:
            raise AttributeError(f"layer {self.name!r} has several inbound nodes (it is called "
                                 f"more than once): its {what} is ambiguous")
        return self._inbound_nodes[0]

    @property
    def input(self):
        t = self._single_node("input").input_tensors
        return t[0] if len(t) == 1 else list(t)

    @property
    def output(self):
        t = self._single_node("output").output_tensors
        return t[0] if len(t) == 1 else list(t)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"


def _fmt(shape):
    return str(shape if isinstance(shape, list) else tuple(shape))


def _shapes_differ(a, b):
    if isinstance(a, list) or isinstance(b, list):
        return [tuple(s) for s in a] != [tuple(s) for s in b]
    return tuple(a) != tuple(b)


class InputLayer(Layer):
    """The layer behind ``pynn.Input``: declares an input (batch-less shape)."""

    def __init__(self, shape=None, batch_size=None, dtype=None, input_tensor=None, sparse=None,
                 name=None, input_shape=None, batch_shape=None, **kw):
        if shape is None:
            shape = input_shape if input_shape is not None else \
                (tuple(batch_shape)[1:] if batch_shape is not None else None)
        if shape is None:
            raise ValueError("InputLayer needs shape=")
        if isinstance(shape, (int, np.integer)):
            shape = (int(shape),)
        if sparse:
            raise NotImplementedError("sparse inputs are not supported")
        # the policy of an input is its dtype: float64 inputs stay float64, others are float32
        try:
            dt = "float64" if dtype is not None and np.dtype(dtype) == np.float64 else "float32"
        except TypeError:
            dt = "float32"
        super().__init__(name=name if name is not None else unique_name("input_layer"), dtype=dt,
                         **kw)
        self.input_shape_arg = tuple(None if s is None else int(s) for s in shape)
        for d in self.input_shape_arg:
            if d is not None and d < 1:
                raise ValueError(f"Input shape dimensions must be >= 1, got {shape}")
        self.input_shape = self.output_shape = self.input_shape_arg
        self.built = True
        t = KerasTensor((None,) + self.input_shape_arg, name=self.name)
        Node(self, [], [t], is_input=True)
        self._tensor = t

    def forward(self, x, training=False):
        return x

    def backward(self, dy, need_dx=True):
        return dy

    def get_config(self):
        return {"name": self.name, "batch_shape": [None] + list(self.input_shape_arg),
                "dtype": "float32", "sparse": False}


def Input(shape=None, batch_size=None, dtype=None, sparse=None, batch_shape=None, name=None,
          tensor=None, **kw):
    """keras.Input: a symbolic tensor of batch-less ``shape``, the start of a
    functional model (also accepted as the first entry of a Sequential)."""
    if tensor is not None:
        raise NotImplementedError("Input(tensor=...) is not supported")
    if kw:
        raise TypeError(f"Input: unexpected keyword argument(s) {sorted(kw)}")
    if shape is None and batch_shape is not None:
        shape = tuple(batch_shape)[1:]
    return InputLayer(shape=shape, dtype=dtype, sparse=sparse, name=name)._tensor


class _Activated(Layer):
    """Layers with an activation fused when the kernel can (linear/relu),
    else applied with ops.activation after it.  Subclasses keep the
    pre-activation in ``ctx.z`` (the x of activations whose derivative
    reads the input: activation_ref.ACTIVATIONS)."""

    def _set_activation(self, activation):
        self.activation = activation_name(activation)
        # the model sets this when it fuses a final softmax/sigmoid with the loss
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

    def _pre_backward(self, dy, y):
        """dz from dy for the non-fused activations (y: the forward output)."""
        if self.emit_logits or self._fused:
            return dy
        dz = self._buf("dz", dy.shape)
        x = self.ctx.z.reshape(dy.shape) if grad_needs_input(self.activation) else None
        return self.ops.activation_backward(self.activation, dy, y, out=dz, x=x)
