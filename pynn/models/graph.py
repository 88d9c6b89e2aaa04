"""The graph of a model and its execution plan.

:func:`map_graph` walks the nodes back from the outputs (Keras 3's
``map_graph``): node depth = longest path to an output; layers are ordered
by decreasing depth, ties by first visit of a depth-first walk from the
outputs, which is Keras' ``model.layers`` order and so its weight order.
Nodes run in decreasing depth, a topological order.

:class:`Plan` runs the nodes forward and backward.  Per-call state (saved
activations, the call's buffers) lives in a context per node held in a
``store`` (a dict owned by the model, or by the outer node for a nested
model), so a layer called twice keeps two sets, and buffers are allocated
once per shape.  In backward, a tensor with several consumers gets the sum
of their gradients (in a buffer of the store); a layer with weights called
several times adds the gradients of its later calls into the first's
(``RunState.written``); and after each node the plan reports its position
to ``hook`` (the MPI overlap asks which suffix of the flat gradient buffer is
final).
"""
import collections
import types

from ..symbolic import KerasTensor


def map_graph(inputs, outputs):
    """(nodes in execution order, layers in Keras order) of the graph from
    the KerasTensors ``inputs`` to ``outputs``; ValueError for a cycle, a
    disconnected graph or duplicate layer names."""
    for t in list(inputs) + list(outputs):
        if not isinstance(t, KerasTensor) or t._keras_history is None:
            raise TypeError(f"model inputs and outputs must be KerasTensors from pynn.Input and "
                            f"layer calls, got {t!r}")
    for t in inputs:
        if not t.node.is_input:
            raise ValueError(f"model inputs must come from pynn.Input, got the output of layer "
                             f"{t.node.layer.name!r} ({t})")
    input_ids = {id(t) for t in inputs}
    finished, in_progress = set(), set()
    ordered = []             # nodes, inputs -> outputs
    layer_index = {}         # layer -> first visit in the walk

    def visit(tensor):
        node = tensor.node
        if node in finished:
            return
        if node in in_progress:
            raise ValueError(f"the graph has a cycle through layer {node.layer.name!r}")
        layer_index.setdefault(node.layer, len(layer_index))
        in_progress.add(node)
        if not node.is_input and id(tensor) not in input_ids:
            for t in node.input_tensors:
                visit(t)
        finished.add(node)
        in_progress.discard(node)
        ordered.append(node)

    for t in outputs:
        visit(t)

    node_depth, layer_depth = {}, {}
    for node in reversed(ordered):
        d = max(node_depth.setdefault(node, 0), layer_depth.get(node.layer, 0))
        layer_depth[node.layer] = d
        node_depth[node] = d
        for parent in node.parent_nodes:
            node_depth[parent] = max(d + 1, node_depth.get(parent, 0))
    for t in inputs:   # inputs that reach no output still belong to the model
        lay = t.node.layer
        if lay not in layer_depth:
            layer_depth[lay] = 0
            layer_index[lay] = -1
            node_depth[t.node] = 0

    by_depth = collections.defaultdict(list)
    for lay, d in layer_depth.items():
        by_depth[d].append(lay)
    layers = []
    for d in sorted(by_depth, reverse=True):
        layers.extend(sorted(by_depth[d], key=lambda lay: layer_index[lay]))

    nodes = sorted(node_depth, key=lambda n: -node_depth[n])   # stable: walk order in a depth
    computable = {id(t) for t in inputs}
    for node in nodes:
        if node.is_input:
            if id(node.output_tensors[0]) not in computable:
                raise ValueError(f"graph disconnected: input {node.layer.name!r} is not one of "
                                 "the model's inputs")
            continue
        for t in node.input_tensors:
            if id(t) not in computable:
                raise ValueError(f"graph disconnected: cannot reach tensor {t.name!r} (input of "
                                 f"layer {node.layer.name!r}) from the model's inputs "
                                 f"{[i.name for i in inputs]}")
        computable.update(id(t) for t in node.output_tensors)
    for t in outputs:
        if id(t) not in computable:
            raise ValueError(f"graph disconnected: output {t.name!r} cannot be computed from the "
                             "model's inputs")
    names = [lay.name for lay in layers]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"layer names must be unique in a model; repeated: {dup}")
    return [n for n in nodes if not n.is_input], layers


class RunState:
    """What one training step shares across nested plans."""

    def __init__(self, trainable_layers, logit_layers=()):
        self.trainable = trainable_layers     # leaf layers whose weights get gradients
        self.logits = set(logit_layers)       # layers that emit logits (fused final softmax)
        self.written = set()                  # leaf layers whose gradients this step has written
        self.losses = []                      # layers' add_loss penalties of this forward
        self.loss_scale = 1.0                 # their gradients' weight (set by the model)

    def has_trainable(self, layer):
        layer = getattr(layer, "fused_of", layer)
        if getattr(layer, "is_model", False):
            return any(lay in self.trainable for lay in layer._leaves())
        return layer in self.trainable


def new_ctx():
    return types.SimpleNamespace(bufs={})


class Plan:
    """Forward and backward over the nodes of a graph."""

    def __init__(self, inputs, outputs, nodes):
        self.inputs, self.outputs, self.nodes = list(inputs), list(outputs), list(nodes)

    # -- what needs a gradient -------------------------------------------------
    def grad_flags(self, has_trainable, input_grads):
        """(node needs backward, tensor needs a gradient) given
        ``has_trainable(layer)`` and whether the inputs want gradients."""
        tgrad = {id(t): bool(input_grads) for t in self.inputs}
        nback = []
        for node in self.nodes:
            upstream = any(tgrad.get(id(t), False) for t in node.input_tensors)
            own = has_trainable(node.layer)
            nback.append(upstream or own)
            for t in node.output_tensors:
                tgrad[id(t)] = upstream or own
        return nback, tgrad

    # -- execution --------------------------------------------------------------
    @staticmethod
    def _ctx(store, node):
        c = store.get(node)
        if c is None:
            c = store[node] = new_ctx()
        return c

    def forward(self, xs, training, store, run):
        values = {id(t): x for t, x in zip(self.inputs, xs)}
        shapes = store.setdefault("__shapes__", {})
        for node in self.nodes:
            layer = node.layer
            layer.ctx = self._ctx(store, node)
            if hasattr(layer, "emit_logits"):
                layer.emit_logits = layer in run.logits
            if getattr(layer, "is_model", False):
                layer._outer_run = run
            ins = [values[id(t)] for t in node.input_tensors]
            layer.ctx.losses = []
            y = layer.forward(ins if getattr(layer, "takes_list", False) else ins[0], training)
            run.losses.extend(layer.ctx.losses)
            outs = y if len(node.output_tensors) > 1 else [y]
            for t, v in zip(node.output_tensors, outs):
                values[id(t)] = v
                shapes[id(t)] = (v.shape, v.dtype)
        return [values[id(t)] for t in self.outputs]

    def backward(self, douts, store, run, flags, ops, hook=None):
        """Input gradients (None where not wanted) given the output
        gradients (None: zero); ``flags`` from :meth:`grad_flags`.

        A tensor's second gradient is added to its first: by the consumer's
        own kernel when it can accumulate (``accumulates_dx``: the
        convolution's data gradient is added in its write pass) and the
        first is a buffer that only this tensor holds (``fresh_grads``),
        else in a buffer of the store.  A layer that can write its input
        gradient over its output gradient (``dx_in_dy``: batch norm) is
        given ``dy_free=True`` when that gradient is such a buffer: nothing
        reads it after the layer's backward.  One that can write a gradient
        over its own output (``dres_in_y``: batch norm after a residual
        forward) is given ``y_free=True`` when that output is not an output
        of the graph: its consumers' backwards, the last to read it, have
        run (one backward per forward)."""
        nback, tgrad = flags
        grads, owners, fresh = {}, {}, {}
        acc = store.setdefault("__acc__", {})
        shapes = store["__shapes__"]

        def add(t, g, is_fresh):
            prev = grads.get(id(t))
            if prev is None:
                grads[id(t)] = g
                owners[id(g)] = owners.get(id(g), 0) + 1
                fresh[id(g)] = is_fresh
                return
            key = ("acc", id(t), tuple(g.shape), str(g.dtype))
            buf = acc.get(key)
            if buf is None:
                buf = acc[key] = ops.alloc(tuple(g.shape), g.dtype)
            ops.add(prev, g, out=buf)
            owners[id(prev)] -= 1
            grads[id(t)] = buf
            owners[id(buf)], fresh[id(buf)] = 1, True

        for t, g in zip(self.outputs, douts):
            if g is not None:
                add(t, g, False)
        out_ids = {id(t) for t in self.outputs}
        for pos in range(len(self.nodes) - 1, -1, -1):
            node = self.nodes[pos]
            if nback[pos]:
                layer = node.layer
                layer.ctx = self._ctx(store, node)
                layer.ctx.loss_scale = run.loss_scale
                if hasattr(layer, "emit_logits"):
                    layer.emit_logits = layer in run.logits
                dys = []
                for t in node.output_tensors:
                    g = grads.pop(id(t), None)
                    if g is None:    # an output nobody differentiates: a zero gradient
                        shape, dt = shapes[id(t)]
                        key = ("zeros", id(t), tuple(shape), str(dt))
                        g = acc.get(key)
                        if g is None:
                            g = acc[key] = ops.alloc(tuple(shape), dt, zeros=True)
                    dys.append(g)
                need_dx = any(tgrad.get(id(t), False) for t in node.input_tensors)
                free = (len(dys) == 1 and getattr(layer, "dx_in_dy", False)
                        and fresh.get(id(dys[0])) and owners.get(id(dys[0])) == 1)
                if free:    # its buffer may come back as an input gradient
                    owners[id(dys[0])] = 0
                y_free = (getattr(layer, "dres_in_y", False)
                          and not any(id(t) in out_ids for t in node.output_tensors))
                into = None
                if need_dx and getattr(layer, "accumulates_dx", False):
                    prev = grads.get(id(node.input_tensors[0]))
                    if prev is not None and fresh.get(id(prev)) and owners.get(id(prev)) == 1:
                        into = prev
                dx = self._call_backward(layer, dys if len(dys) > 1 else dys[0], need_dx, run,
                                         into, free, y_free)
                if need_dx and into is None:
                    dxs = dx if getattr(layer, "takes_list", False) else [dx]
                    is_fresh = getattr(layer, "fresh_grads", False)
                    for t, g in zip(node.input_tensors, dxs):
                        if tgrad.get(id(t), False) and g is not None:
                            add(t, g, is_fresh)
            if hook is not None:
                hook(pos)
        return [grads.get(id(t)) for t in self.inputs]

    @staticmethod
    def _call_backward(layer, dy, need_dx, run, into=None, dy_free=False, y_free=False):
        kw = {} if into is None else {"dx_into": into}
        if dy_free:
            kw["dy_free"] = True
        if y_free:
            kw["y_free"] = True
        if getattr(layer, "is_model", False):
            layer._outer_run = run
            return layer.backward(dy, need_dx)
        if layer not in run.trainable:
            return layer.backward(dy, need_dx, **kw)
        if layer not in run.written:
            run.written.add(layer)
            return layer.backward(dy, need_dx, **kw)
        # a shared layer's later call: its gradients go to scratch, then add up
        scratch = layer.__dict__.setdefault("_scratch_g", {})
        real = layer.g
        layer.g = {}
        for k, v in real.items():
            b = scratch.get(k)
            if b is None or b.shape != v.shape:
                b = scratch[k] = layer.ops.alloc(v.shape, v.dtype)
            layer.g[k] = b
        try:
            dx = layer.backward(dy, need_dx, **kw)
        finally:
            tmp, layer.g = layer.g, real
        for k, v in tmp.items():
            real[k] += v
        return dx
