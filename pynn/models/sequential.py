"""``Sequential``: a Model whose graph is a chain of layers.

The graph is made when the input shape is known (the first layer's
``input_shape=``, a leading ``pynn.Input``, ``build``, or the first data);
until then the model is a list of layers.  Everything else (training, files,
MPI, devices) is the Model's.
"""
import numpy as np

from ..layers.base import InputLayer, Layer, unique_name
from ..symbolic import KerasTensor
from .functional import Model


class Sequential(Model):
    def __init__(self, layers=None, name=None, *, trainable=True, dtype=None, device=None,
                 **kwargs):
        Layer.__init__(self, name=name if name is not None else unique_name("sequential"),
                       trainable=trainable, **kwargs)
        self._init_engine(dtype, device)
        self._stack = []
        self._input_layer = None
        self._layers = []
        self.built = False
        for layer in layers or ():
            self.add(layer, rebuild=False)
        if self._can_build():
            self._ensure_graph()     # the graph now; the weights when first needed

    # ---------------------------------------------------------------- layers --
    def add(self, layer, rebuild=True):
        if isinstance(layer, KerasTensor):
            layer = layer._keras_history[0]
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add expects a pynn layer, got {type(layer).__name__}")
        if isinstance(layer, InputLayer):
            if self._stack or self._input_layer is not None:
                raise ValueError("an Input can only be the first layer of a Sequential")
            self._input_layer = layer
        else:
            self._stack.append(layer)
        self._layers = self._stack_layers()
        if self._graph_built or (rebuild and self._can_build()):
            self._graph_built = False
            self.built = False
            if rebuild:
                self._ensure_graph()

    def pop(self, rebuild=True):
        if not self._stack:
            raise IndexError("there are no layers to pop")
        layer = self._stack.pop()
        if self._graph_built:
            self._graph_built = False
            self.built = False
            if rebuild and self._stack:
                self._ensure_graph()
        self._layers = self._stack_layers()
        return layer

    def _stack_layers(self):
        return ([self._input_layer] if self._input_layer is not None else []) + list(self._stack)

    @property
    def layers(self):
        return list(self._stack)

    def _declared_input_shape(self):
        if self._input_layer is not None:
            return self._input_layer.input_shape_arg
        if self._stack and self._stack[0].input_shape_arg is not None:
            return self._stack[0].input_shape_arg
        return None

    def build(self, input_shape=None):
        """Build for inputs of shape (batch, ...) (Keras convention; the batch
        size is ignored).  Without an argument, uses the first layer's
        input_shape= / Input."""
        if self._graph_built:
            return
        if input_shape is not None:
            shape = tuple(input_shape)[1:]
        else:
            shape = self._declared_input_shape()
            if shape is None:
                raise ValueError("the model does not know its input shape: give the first layer "
                                 "input_shape=..., start with pynn.Input(shape), or call fit/build")
        self._make_graph(shape)

    def _make_graph(self, shape):
        if not self._stack:
            raise ValueError("the model has no layers")
        shape = tuple(None if s is None else int(s) for s in shape)
        if any(s is not None and s < 1 for s in shape):
            raise ValueError(f"every input dimension must be >= 1, got {shape}")
        if self._input_layer is None or tuple(self._input_layer.input_shape_arg) != shape:
            if self._input_layer is not None:
                raise ValueError(f"the model's Input has shape {self._input_layer.input_shape_arg}, "
                                 f"data of shape {shape}")
            self._input_layer = InputLayer(shape=shape, name=unique_name("input_layer"))
        x = inp = self._input_layer._tensor
        for layer in self._stack:
            if getattr(layer, "takes_list", False) and not getattr(layer, "is_model", False):
                raise ValueError(f"{type(layer).__name__} takes several inputs: it cannot be a "
                                 "layer of a Sequential (use the functional API)")
            x = layer(x)
            if isinstance(x, list):
                raise ValueError(f"layer {layer.name!r} has several outputs: it cannot be in the "
                                 "middle of a Sequential")
        self._set_graph(inp, x)
        self._layers = self._stack_layers()
        self._allocated = False
        for layer in self._leaves():
            layer._graph_owner = self

    def _ensure_graph(self, x=None):
        if self._graph_built:
            return
        shape = self._declared_input_shape()
        if shape is None:
            if x is None:
                raise ValueError("the model does not know its input shape: give the first layer "
                                 "input_shape=..., start with pynn.Input(shape), or call fit/build")
            a = x[0] if isinstance(x, (list, tuple)) else x
            shape = np.shape(a)[1:]
        self._make_graph(shape)

    def _build_shape(self, input_shape):
        # called on a KerasTensor before its input shape is known (e.g. a
        # data-augmentation Sequential without Input): build for that shape
        if not self._graph_built and not isinstance(input_shape, list) and self._stack:
            self._make_graph(tuple(input_shape))
        return super()._build_shape(input_shape)

    def _can_build(self):
        return bool(self._stack) and self._declared_input_shape() is not None

    @property
    def output_names(self):
        if not self._graph_built:
            return [self._stack[-1].name] if self._stack else ["output"]
        return super().output_names

    def _set_graph(self, inputs, outputs):
        super()._set_graph(inputs, outputs)
        if isinstance(self._outputs_struct, list):
            self._outputs_struct = self._outputs_struct[0]

    # ---------------------------------------------------------------- files --
    def get_config(self):
        layers = []
        if self._input_layer is not None:
            layers.append({"class_name": "InputLayer", "config": self._input_layer.get_config()})
        from .saving import _class_name
        for l in self._stack:
            layers.append({"class_name": _class_name(l), "config": l.get_config()})
        cfg = {"name": self.name, "trainable": self.trainable, "dtype": self.dtype_policy.name,
               "layers": layers}
        if self._graph_built:
            cfg["build_input_shape"] = [None] + list(self._inputs[0].shape[1:])
        return cfg

    @classmethod
    def from_config(cls, cfg, seed=None):
        from .saving import layer_or_model_from_config
        from .. import io
        if not isinstance(cfg, dict) or not isinstance(cfg.get("layers"), list):
            raise io.FileFormatError("the Sequential config has no list of layers")
        m = cls(name=cfg.get("name"), dtype=cfg.get("dtype", "float32"))
        for d in cfg["layers"]:
            if not isinstance(d, dict) or "class_name" not in d:
                raise io.FileFormatError(f"a layer entry of the config is malformed: {d!r:.200}")
            m.add(layer_or_model_from_config(d["class_name"], d.get("config", {})))
        m.seed = None if seed is None else int(seed)
        shape = cfg.get("build_input_shape")
        if shape is not None:
            m.build(tuple(shape))
        elif cfg.get("input_shape") is not None:     # written before graph models
            m.build((None,) + tuple(cfg["input_shape"]))
        return m

    def _ensure_graph_from_file(self, meta):
        if not self._graph_built:
            cfg = meta.get("config", {}) if isinstance(meta, dict) else {}
            shape = cfg.get("build_input_shape")
            if shape is None and cfg.get("input_shape") is not None:
                shape = [None] + list(cfg["input_shape"])
            if self._declared_input_shape() is None and shape is not None:
                self.build(tuple(shape))
            else:
                self._ensure_graph()
