"""``Model``: a graph of layers (the functional API), the engine of every model.

``Model(inputs, outputs)`` takes KerasTensors from ``pynn.Input`` and layer
calls; ``Sequential`` is a Model whose graph is a chain.  This file holds the
graph side: construction, the flat weight buffers, forward/backward through
the plan, the layer interface that lets a model be called inside another,
and weights access.  Training (compile, fit, evaluate, predict) is in
training.py, files in saving.py, the summary table in summary.py.

Memory layout: every trainable weight of the model (nested models included)
is a view into ONE flat parameter buffer and every gradient a view into ONE
flat gradient buffer (same offsets), in ``model.layers`` order; the
non-trainable weights live in a third buffer, batch-norm moving statistics
first (what MPI ranks average at every step).  The optimizer updates all
parameters with one kernel call per step and data-parallel training
reduces the gradient buffer in buckets while backward runs (backward goes
from the last layer to the first, so a suffix of the buffer is final after
each node: ``grad_ready``).

Determinism: weights are initialised from generators derived from the seed
(``pynn.utils.set_random_seed``) and the layer's position, each epoch's
order is a function of (seed, epoch), a dropout mask of (seed, layer, step),
and every kernel reduction has a fixed order: the same seed and thread count
give bitwise-identical weights, and a resumed run continues exactly.
"""
import numpy as np

from .. import backend, checks, dtype_policies, utils
from ..layers.base import InputLayer, Layer, check_policy, unique_name
from ..symbolic import KerasTensor, flatten
from . import saving, summary as summary_mod, training
from . import alloc_limit, fusion
from .graph import Plan, RunState, map_graph, new_ctx


class Model(training.Trainer, saving.Saving, Layer):
    """A model of layers: ``Model(inputs, outputs)`` (functional API)."""
    is_model = True

    def __init__(self, inputs=None, outputs=None, name=None, *, trainable=True, dtype=None,
                 device=None, **kwargs):
        if inputs is None or outputs is None:
            raise NotImplementedError(
                "subclassed models (a Model with its own call()) are not supported: build the "
                "model with the functional API, Model(inputs, outputs), or with Sequential")
        Layer.__init__(self, name=name if name is not None else unique_name("functional"),
                       trainable=trainable, **kwargs)
        self._init_engine(dtype, device)
        self._set_graph(inputs, outputs)
        self._allocate()

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "call" in cls.__dict__ and cls.__name__ != "Sequential":
            cls.__init__ = _refuse_subclass(cls.__name__)

    # ------------------------------------------------------------ engine state --
    def _init_engine(self, dtype, device):
        # the model's arrays are float64 under a float64 policy, else float32 (mixed_bfloat16
        # keeps float32 variables); None: the global policy, which follows set_floatx
        try:
            self._dtype_policy = dtype_policies.get(dtype)
        except ValueError as e:
            raise TypeError(f"dtype must be float32, float64 or a dtype policy: {e}") from None
        self._dtype = np.dtype(self._dtype_policy.variable_dtype)
        self.ops = backend.get_ops(device)
        self._array_dtype = self._dtype
        self.seed = None
        self.optimizer = self.loss = None
        self.compiled = False
        self.stop_training = False
        self.history = None
        self._graph_built = False
        self._store = {}
        self._bufs = {}
        self._dist = training.LocalGroup()
        self._resume = None
        self._dist_synced = False
        self._dist_auto = True   # may still join an MPI launch by itself (training._join_launch)
        self._pos = {}
        self._trainable_sig = None

    def _set_graph(self, inputs, outputs):
        self._inputs_struct, self._outputs_struct = inputs, outputs
        self._inputs = flatten(inputs)
        self._outputs = flatten(outputs)
        nodes, layers = map_graph(self._inputs, self._outputs)
        self._layers = layers
        self._plan = Plan(self._inputs, self._outputs, nodes)          # the graph
        self._exec = Plan(self._inputs, self._outputs,                  # what runs
                          fusion.fuse(nodes, self._outputs) if fusion.ENABLED else nodes)
        self._graph_built = True
        self.built = True
        self.input_shape = self._inputs[0].shape if len(self._inputs) == 1 else \
            [t.shape for t in self._inputs]
        self.output_shape = self._outputs[0].shape if len(self._outputs) == 1 else \
            [t.shape for t in self._outputs]
        self._store = {}

    # ------------------------------------------------------------ layers --
    @property
    def layers(self):
        return list(self._layers)

    @property
    def inputs(self):
        return list(self._inputs)

    @property
    def outputs(self):
        return list(self._outputs)

    @property
    def input_names(self):
        return [t.node.layer.name for t in self._inputs]

    @property
    def output_names(self):
        return [t._keras_history[0].name for t in self._outputs]

    def get_layer(self, name=None, index=None):
        if index is not None:
            if name is not None:
                raise ValueError("give get_layer a name or an index, not both")
            if not -len(self.layers) <= int(index) < len(self.layers):
                raise ValueError(f"layer index {index} is out of range: the model has "
                                 f"{len(self.layers)} layers")
            return self.layers[int(index)]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r}; the layers are {[l.name for l in self.layers]}")

    def _leaves(self):
        """Leaf layers with weights or computation, nested models expanded,
        in Keras' weight order (InputLayers left out)."""
        out = []
        for layer in self.layers:
            if isinstance(layer, InputLayer):
                continue
            if getattr(layer, "is_model", False):
                layer._ensure_graph()
                out.extend(layer._leaves())
            else:
                out.append(layer)
        return out

    def _ensure_graph(self, x=None):
        pass

    def _can_build(self):
        return True

    @Layer.trainable.setter
    def trainable(self, value):
        self._trainable = bool(value)
        for layer in getattr(self, "_layers", ()):
            if not isinstance(layer, InputLayer):
                layer.trainable = value

    def _effective_trainable(self):
        """{leaf layer: trainable} with the models above it taken into account.
        (An explicit stack, not a recursive closure: a closure that refers to
        itself is a reference cycle, garbage that only the cycle collector
        frees -- called every step, it made the heap creep and page-fault.)"""
        out = {}
        stack = [(self, self._trainable)]
        while stack:
            model, on = stack.pop()
            for layer in model.layers:
                if isinstance(layer, InputLayer):
                    continue
                if getattr(layer, "is_model", False):
                    stack.append((layer, on and layer._trainable))
                else:
                    out[layer] = on and layer._trainable
        return out

    # ------------------------------------------------------------ weights in flat buffers --
    def _allocate(self, keep_values=True):
        """Place every leaf layer's weights in the model's flat buffers;
        weights that exist keep their values, new ones are initialised from
        the seed and the layer's position."""
        if self.seed is None:
            self.seed = utils.fresh_seed()
        ops, dt = self.ops, self._dtype
        leaves = self._leaves()
        eff = self._effective_trainable()
        old = {}
        for layer in leaves:
            if keep_values and layer.w and all(s.name in layer.w for s in layer.specs):
                old[layer] = {s.name: layer.ops.to_numpy(layer.w[s.name]) for s in layer.specs}
        specs = [(li, lay, s, bool(s.trainable and eff[lay]))
                 for li, lay in enumerate(leaves) for s in lay.specs]
        nt = sum(s.size for _, _, s, tr in specs if tr)
        nn = sum(s.size for _, _, s, tr in specs if not tr)
        alloc_limit.check(nt + nn, self.name)     # a model built from a file: its size is checked
        self._params = ops.alloc((nt,), dt, zeros=True)
        self._grads = ops.alloc((nt,), dt, zeros=True)
        self._state = ops.alloc((nn,), dt, zeros=True)
        self._n_averaged = sum(s.size for _, _, s, tr in specs if not tr and s.averaged)
        self._segments = []
        self._weight_offset = {}
        ot, on, oa = 0, self._n_averaged, 0
        for layer in leaves:
            layer.bind(ops, dt)
            layer.w, layer.g = {}, {}
            layer.__dict__.pop("_scratch_g", None)
            layer._owner = self
        for wi, (li, layer, s, tr) in enumerate(specs):
            if tr:
                view = self._params[ot:ot + s.size].reshape(s.shape)
                layer.g[s.name] = self._grads[ot:ot + s.size].reshape(s.shape)
                self._segments.append((ot, s.size))
                self._weight_offset.setdefault(layer, ot)
                ot += s.size
            else:
                o = oa if s.averaged else on
                view = self._state[o:o + s.size].reshape(s.shape)
                layer.g[s.name] = ops.alloc(s.shape, dt, zeros=True)  # scratch
                if s.averaged:
                    oa += s.size
                else:
                    on += s.size
            if layer in old:
                view[...] = ops.asarray(old[layer][s.name], dt)
            else:
                rng = np.random.default_rng(utils.derive_seed(self.seed, li, wi))
                view[...] = ops.asarray(s.initializer(s.shape, rng, dt), dt)
            layer.w[s.name] = view
        self._leaf_list = leaves
        self._trainable_leaves = {lay for lay in leaves if any(
            s.trainable for s in lay.specs) and eff[lay]}
        self._trainable_sig = tuple(sorted(id(l) for l in self._trainable_leaves))
        self._rng_layers = [(li, lay) for li, lay in enumerate(leaves)
                            if getattr(lay, "uses_rng", False)]
        self._set_seed(self.seed)
        self._plan_flags()
        self._store = {}
        self._bufs = {}
        self._allocated = True

    def _owns_weights(self):
        return getattr(self, "_allocated", False) and all(
            getattr(l, "_owner", None) is self for l in self._leaves())

    def _ensure_allocated(self):
        """Re-place the weights when a nested model or a trainable flag has
        changed since the last placement (values are kept)."""
        if not self._owns_weights():
            self._allocate()
            return
        eff = self._effective_trainable()
        sig = tuple(sorted(id(l) for l in self._leaf_list if any(
            s.trainable for s in l.specs) and eff[l]))
        if sig != self._trainable_sig:
            self._allocate()

    def _has_trainable(self, layer):
        layer = getattr(layer, "fused_of", layer)
        if getattr(layer, "is_model", False):
            return any(l in self._trainable_leaves for l in layer._leaves())
        return layer in self._trainable_leaves

    def _plan_flags(self):
        self._flags = self._exec.grad_flags(self._has_trainable, input_grads=False)
        # after the node at position p has run backward, grads[ready[p]:] is final
        nodes = self._exec.nodes
        last = {}
        for pos, node in enumerate(nodes):
            lay0 = getattr(node.layer, "fused_of", node.layer)
            lays = lay0._leaves() if getattr(lay0, "is_model", False) else [lay0]
            for lay in lays:
                last[lay] = min(last.get(lay, pos), pos)
        order = sorted(((off, last.get(lay, 0)) for lay, off in self._weight_offset.items()),
                       reverse=True)
        nt = self._params.shape[0]
        self._grad_ready = []
        for pos in range(len(nodes)):
            ready = nt
            for off, p in order:
                if p >= pos:
                    ready = off
                else:
                    break
            self._grad_ready.append(ready)

    def _set_seed(self, seed):
        """Adopt ``seed`` (shuffling, random layers' streams) after the weights exist."""
        self.seed = int(seed)
        for li, layer in self._rng_layers:
            layer.stream_seed = layer.seed if layer.seed is not None else \
                utils.derive_seed(self.seed, li, 0xD509)

    # ------------------------------------------------------------ running the graph --
    def _forward(self, xs, training, logits=False):
        """Outputs (a list) of the model on device arrays ``xs``."""
        run = RunState(self._trainable_leaves, getattr(self, "_logit_layers", ()) if logits else ())
        self._run = run
        return self._exec.forward(xs, training, self._store, run)

    def _backward(self, douts):
        dist, g, ready = self._dist, self._grads, self._grad_ready

        def hook(pos):
            dist.grads_ready(g, ready[pos])
        self._run.written.clear()
        self._exec.backward(douts, self._store, self._run, self._flags, self.ops, hook)

    # ------------------------------------------------------------ as a layer of another model --
    @property
    def takes_list(self):
        return len(self._inputs) > 1

    @property
    def returns_list(self):
        return len(self._outputs) > 1

    def _build_shape(self, input_shape):
        shapes = input_shape if isinstance(input_shape, list) else [input_shape]
        want = [t.shape[1:] for t in self._inputs]
        for got, exp in zip(shapes, want):
            if len(got) != len(exp) or any(a is not None and b is not None and a != b
                                           for a, b in zip(got, exp)):
                raise ValueError(f"model {self.name!r} expects inputs of shape "
                                 f"{[(None,) + tuple(w) for w in want]}, got "
                                 f"{[(None,) + tuple(s) for s in shapes]}")
        outs = [t.shape[1:] for t in self._outputs]
        return outs if len(outs) > 1 else outs[0]

    def compute_output_shape(self, input_shape):
        return self._build_shape(input_shape)

    def forward(self, x, training=False):
        xs = x if self.takes_list else [x]
        ctx = self.ctx
        store = ctx.__dict__.setdefault("store", {})
        outer = getattr(self, "_outer_run", None) or RunState(set())
        outs = self._exec.forward(xs, training, store, outer)
        return outs if self.returns_list else outs[0]

    def backward(self, dy, need_dx=True):
        ctx = self.ctx
        dys = dy if self.returns_list else [dy]
        run = getattr(self, "_outer_run", None) or RunState(set())
        flags = self._exec.grad_flags(run.has_trainable, input_grads=need_dx)
        dxs = self._exec.backward(dys, ctx.store, run, flags, self.ops)
        if not need_dx:
            return None
        return dxs if self.takes_list else dxs[0]

    def release_buffers(self):
        self._store = {}

    # ------------------------------------------------------------ weights --
    def count_params(self):
        self._ensure_graph()
        return sum(l.count_params() for l in self._leaves())

    def get_weights(self):
        self._ensure_graph()
        self._ensure_allocated()
        return [w for l in self._leaves() for w in l.get_weights()]

    def set_weights(self, weights):
        self._ensure_graph()
        self._ensure_allocated()
        weights = list(weights)
        want = [(l, s) for l in self._leaves() for s in l.specs]
        if len(weights) != len(want):
            raise ValueError(f"expected {len(want)} arrays, got {len(weights)}")
        for w, (l, s) in zip(weights, want):
            if np.shape(w) != s.shape:
                raise ValueError(f"{l.name}/{s.name}: expected shape {s.shape}, got {np.shape(w)}")
            checks.finite_array(f"{l.name}/{s.name}", w)   # the rule of model files too
        i = 0
        for l in self._leaves():
            k = len(l.specs)
            l.set_weights(weights[i:i + k])
            i += k

    @property
    def weights(self):
        self._ensure_graph()
        self._ensure_allocated()
        return [w for l in self._leaves() for w in l.weights]

    @property
    def trainable_weights(self):
        self._ensure_graph()
        self._ensure_allocated()
        eff = self._effective_trainable()
        return [l.w[s.name] for l in self._leaves() for s in l.specs if s.trainable and eff[l]]

    @property
    def non_trainable_weights(self):
        self._ensure_graph()
        self._ensure_allocated()
        eff = self._effective_trainable()
        return [l.w[s.name] for l in self._leaves() for s in l.specs
                if not (s.trainable and eff[l])]

    # ------------------------------------------------------------ data-parallel hooks --
    # What a process group (pynn/distributed.py) needs of a model; nothing else
    # of the model's insides is used there.
    @property
    def process_group(self):
        """The group whose collectives fit/evaluate use (a LocalGroup alone)."""
        return self._dist

    @process_group.setter
    def process_group(self, group):
        self._dist = group
        self._dist_synced = False
        self._dist_auto = False   # chosen explicitly: never replaced by the launch's group

    def replica_arrays(self):
        """[(name, array)] that every rank must hold identically: the flat
        weights, the flat non-trainable state and the optimizer's slots (the
        arrays themselves, to broadcast into)."""
        self._ensure_graph()
        self._ensure_allocated()
        out = [("params", self._params), ("state", self._state)]
        opt = self.optimizer
        if opt is not None and self.compiled:
            opt.build(self.ops, self._params.shape[0], self._dtype)
            out += [(f"optimizer/{k}", opt.state[k]) for k in sorted(opt.state)]
        return out

    def adopt_seed(self, seed):
        """Take ``seed`` for shuffling and random layers (rank 0's, under MPI)."""
        self._set_seed(seed)

    @property
    def resume_position(self):
        """The training position read from a checkpoint, or None."""
        return self._resume

    @resume_position.setter
    def resume_position(self, pos):
        """pos: the checkpoint's position, plus its "history" (the logs of the
        epochs done, which History prepends; not part of the position)."""
        self._resume = pos
        if pos is not None:
            self._pos.update({k: v for k, v in pos.items() if k != "history"})

    def replicas_synced(self):
        """Record that the ranks now hold rank 0's model."""
        self._dist_synced = True

    # ------------------------------------------------------------ device --
    def to_device(self, device):
        """Move the model (weights, optimizer state) to "cpu", "gpu" or
        "numpy"; returns self.  Buffers are reallocated on the new device."""
        ops = backend.get_ops(device)
        if ops is self.ops:
            return self
        for layer in self._leaves():    # a policy the new backend cannot run: refused up front
            check_policy(layer, layer._dtype_policy, ops, self._dtype)
        old = self.ops
        self.ops = ops
        if getattr(self, "_allocated", False):
            for layer in self._leaves():
                layer.release_buffers()
                layer.ctx = new_ctx()
            self._allocate()
            if self.optimizer is not None and self.optimizer.state:
                self.optimizer.state = {k: ops.asarray(old.to_numpy(v))
                                        for k, v in self.optimizer.state.items()}
        return self

    def to_gpu(self):
        return self.to_device("gpu")

    def to_cpu(self):
        return self.to_device("cpu")

    def export(self, filepath, format="tf_saved_model", verbose=True, input_signature=None,
               **kwargs):
        """Keras 3's export; pynn writes format="onnx" (pynn/export/onnx.py)."""
        from ..export import export
        return export(self, filepath, format=format, verbose=verbose,
                      input_signature=input_signature, **kwargs)

    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=False,
                show_trainable=False, layer_range=None):
        self._ensure_graph()
        summary_mod.print_summary(self, line_length=line_length, print_fn=print_fn)


def _refuse_subclass(name):
    def __init__(self, *a, **k):
        raise NotImplementedError(
            f"{name}: subclassed models with a hand-written call() are not supported; build the "
            "model with the functional API (pynn.Model(inputs, outputs)) or with Sequential")
    return __init__
