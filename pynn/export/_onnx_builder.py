"""A small helper that collects ONNX nodes and constants (initializers)
while the layers are translated; onnx.helper makes the protobuf."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

OPSET = 17          # opset 17: Reduce* take axes as attributes, LayerNormalization exists
IR_VERSION = 8      # the IR version of opset 17 (read by every runtime that has opset 17)

ELEM_TYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}


class Builder:
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self.nodes, self.initializers = [], []
        self._names = set()
        self._consts = {}     # key -> name: a weight used by several calls is stored once

    def fresh(self, hint):
        """A tensor / node name not used yet, made from ``hint``."""
        base = "".join(c if c.isalnum() or c in "_/.:-" else "_" for c in str(hint)) or "t"
        name, k = base, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def const(self, hint, value, dtype=None, key=None):
        """An initializer holding ``value`` (in the model's dtype unless
        ``dtype``); ``key`` shares one initializer between calls."""
        if key is not None and key in self._consts:
            return self._consts[key]
        arr = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        if key is not None:
            self._consts[key] = name
        return name

    def ints(self, hint, values):
        """An int64 1-D initializer (shapes, pads, axes)."""
        return self.const(hint, np.asarray(values, dtype=np.int64).reshape(-1), dtype=np.int64)

    def scalar(self, hint, value):
        return self.const(hint, np.asarray(value, dtype=self.dtype))

    def op(self, op_type, inputs, hint, **attrs):
        """Append one node; returns the name of its (single) output."""
        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out],
                                           name=self.fresh(f"{hint}/{op_type}"), **attrs))
        return out

    def value_info(self, name, shape):
        """A graph input/output: batch dimension dynamic ("batch")."""
        dims = ["batch"] + [None if d is None else int(d) for d in shape[1:]]
        return helper.make_tensor_value_info(name, ELEM_TYPE[self.dtype], dims)

    def model(self, name, inputs, outputs, producer="pynn"):
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        m = helper.make_model(graph, producer_name=producer,
                              opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = IR_VERSION
        return m
