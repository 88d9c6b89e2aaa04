"""Symbolic tensors and nodes: how a functional graph is recorded.

``pynn.Input(shape)`` returns a :class:`KerasTensor`; calling a layer on
KerasTensors records a :class:`Node` (the layer, its inbound tensors, its
outbound tensors) in ``layer._inbound_nodes`` and returns new KerasTensors
whose ``_keras_history`` is ``(layer, node_index, tensor_index)``, as in
Keras 3.  ``pynn.Model(inputs, outputs)`` walks these back from the outputs
(see ``pynn/models/graph.py``).  Arithmetic on KerasTensors (``x + y``,
``x - y``, ``x * y``) makes merge nodes (Add, Subtract, Multiply).
"""
import numpy as np


class KerasTensor:
    """A symbolic tensor: a shape (batch dimension None), a dtype and the
    node that produces it."""

    def __init__(self, shape, dtype="float32", name=None, history=None):
        self.shape = tuple(None if d is None else int(d) for d in shape)
        self.dtype = np.dtype(dtype).name
        self.name = name
        self._keras_history = history    # (layer, node_index, tensor_index)

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def node(self):
        layer, ni, _ = self._keras_history
        return layer._inbound_nodes[ni]

    def __repr__(self):
        return f"<KerasTensor shape={self.shape}, dtype={self.dtype}, name={self.name}>"

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other

    # arithmetic makes merge nodes, as in Keras
    def _merge(self, cls, other, reverse=False):
        from .layers import merging
        if not isinstance(other, KerasTensor):
            raise TypeError(f"symbolic arithmetic needs two KerasTensors, got {type(other).__name__}"
                            " (scalars: use layers.Rescaling or a Dense/Conv layer)")
        return getattr(merging, cls)()([other, self] if reverse else [self, other])

    def __add__(self, other):
        return self._merge("Add", other)

    def __radd__(self, other):
        return self._merge("Add", other, True)

    def __sub__(self, other):
        return self._merge("Subtract", other)

    def __rsub__(self, other):
        return self._merge("Subtract", other, True)

    def __mul__(self, other):
        return self._merge("Multiply", other)

    def __rmul__(self, other):
        return self._merge("Multiply", other, True)

    def __array__(self, *a, **k):
        raise TypeError("a KerasTensor is symbolic (it has no values): build a pynn.Model "
                        "from it and call predict")


class Node:
    """One call of a layer: ``layer(input_tensors) -> output_tensors``."""

    def __init__(self, layer, input_tensors, output_tensors, is_input=False):
        self.layer = layer
        self.input_tensors = list(input_tensors)
        self.output_tensors = list(output_tensors)
        self.is_input = is_input
        self.index = len(layer._inbound_nodes)
        layer._inbound_nodes.append(self)
        for i, t in enumerate(self.output_tensors):
            t._keras_history = (layer, self.index, i)
        for t in self.input_tensors:
            t.node.layer._outbound_nodes.append(self)

    @property
    def parent_nodes(self):
        return [t.node for t in self.input_tensors]


def is_symbolic(x):
    if isinstance(x, KerasTensor):
        return True
    if isinstance(x, (list, tuple)):
        return any(isinstance(t, KerasTensor) for t in x)
    return False


def flatten(x):
    """Tensors of a tensor, a list/tuple or a dict (dict order: insertion)."""
    if isinstance(x, dict):
        return [t for v in x.values() for t in flatten(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in flatten(v)]
    return [x]
