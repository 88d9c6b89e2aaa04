"""Fusing nodes of the execution plan (the graph itself is not changed).

In residual CNNs a batch norm is followed by a ReLU, or by an Add of the
shortcut and then a ReLU.  Run as written, each is its own memory-bound pass
over the activations, forward and backward.  Here such chains become one
node whose batch-norm kernel does ``relu(BN(x) [+ shortcut])`` in its write
pass, and in backward masks the gradient and writes the shortcut's gradient
in the same pass.

A ``Conv2D(activation="relu")`` whose output only a ``MaxPooling2D`` reads
(the classic CNN block): the ReLU's backward mask moves into the pooling --
the gradient of a window reaches only its maximum, where the ReLU's
derivative is ``window output > 0``, so masking the pooled gradient (a
quarter of the size for 2x2) gives the convolution its dz exactly, and its
backward kernels no longer read y for the mask.  With 2x2 windows, stride 2
and "valid" padding both run as one node (:class:`FusedConvPool`): one
kernel call that pools inside Winograd's output transform, so the
convolution's output is never written (nnkernels.conv2d_maxpool), and its
backward is one call too (nnkernels.conv2d_maxpool_backward: under bf16
products the convolution's gradient is read through the pooled one, never
written); other pool geometries keep two nodes (:class:`ConvMaskedByPool`,
:class:`PoolMasksRelu`).

A chain is fused only when its intermediate tensors have no other consumer
and are not outputs, so nothing observable changes (the values are the same
up to float rounding order, which is identical here: the conv-pool case
gives the same bits).

Under mixed_bfloat16 on the CPU backend, a Conv2D without activation whose
output only a batch norm reads (ResNet's Conv2D -> BN) stores that output
as bfloat16 (:class:`ConvBF16Out`), as Keras' bfloat16 compute dtype does;
the batch norm reads it widened to float32 (half the bytes of the largest
activations written and read twice; statistics in double as always).
Only the rounding of that tensor changes, to what Keras' layer outputs are.
"""
import os

from ..layers.conv import Conv2D
from ..layers.core import Activation
from ..layers.merging import Add
from ..layers.normalization import BatchNormalization
from ..layers.pooling import MaxPooling2D


# PYNN_FUSE=0 runs every layer on its own (for comparisons and debugging)
ENABLED = os.environ.get("PYNN_FUSE", "1") != "0"


class PlanNode:
    """A node of an execution plan that is not a node of the graph."""
    is_input = False

    def __init__(self, layer, input_tensors, output_tensors):
        self.layer, self.input_tensors, self.output_tensors = layer, input_tensors, output_tensors


class FusedBatchNorm:
    """BN [+ residual] + ReLU as one plan node; the weights are the BN layer's."""
    emit_logits = None
    fresh_grads = True
    dx_in_dy = True

    def __init__(self, bn, residual):
        self.fused_of = bn
        self.residual = residual
        self.name = bn.name
        self.takes_list = residual
        self.dres_in_y = residual
        self.ctx = None

    @property
    def ops(self):
        return self.fused_of.ops

    def forward(self, x, training=False):
        bn = self.fused_of
        bn.ctx = self.ctx
        if self.residual:
            return bn.forward(x[0], training, residual=x[1], activation="relu")
        return bn.forward(x, training, activation="relu")

    def backward(self, dy, need_dx=True, dy_free=False, y_free=False):
        bn = self.fused_of
        bn.ctx = self.ctx
        return bn.backward(dy, need_dx, dy_free, y_free)


class _Delegate:
    """A plan node's stand-in for one layer: runs it on the node's own ctx,
    and reads every other attribute from it."""

    def __init__(self, layer):
        self.fused_of = layer
        self.ctx = None

    def __getattr__(self, name):          # only for what the instance lacks
        return getattr(self.__dict__["fused_of"], name)

    def forward(self, x, training=False):
        lay = self.fused_of
        lay.ctx = self.ctx
        return lay.forward(x, training)


class ConvBF16Out(_Delegate):
    """Conv2D whose output (read only by a batch norm) is stored as bf16
    where the backend stores bf16 activations (checked per call: the model
    may move to another device)."""

    def forward(self, x, training=False):
        lay = self.fused_of
        lay.ctx = self.ctx
        return lay.forward(x, training, bf16_out=getattr(lay.ops, "bf16_storage", False))

    def backward(self, dy, need_dx=True, dx_into=None):
        lay = self.fused_of
        lay.ctx = self.ctx
        return lay.backward(dy, need_dx, dx_into)


class ConvMaskedByPool(_Delegate):
    """Conv2D(activation="relu") whose gradient arrives already masked."""

    def backward(self, dy, need_dx=True, dx_into=None):
        lay = self.fused_of
        lay.ctx = self.ctx
        return lay.backward(dy, need_dx, dx_into, relu_masked=True)


class PoolMasksRelu(_Delegate):
    """MaxPooling2D that applies its producer's ReLU mask to the gradient."""

    def backward(self, dy, need_dx=True):
        lay = self.fused_of
        lay.ctx = self.ctx
        return lay.backward(dy, need_dx, relu_mask=True)


class FusedConvPool(_Delegate):
    """Conv2D(relu) -> MaxPooling2D(2, strides=2, "valid") as one plan node;
    the weights are the convolution's, the pooling keeps its own ctx."""

    def __init__(self, conv, pool):
        super().__init__(conv)
        self.pool = pool

    def _ctxs(self):
        conv, pool = self.fused_of, self.pool
        conv.ctx = self.ctx
        sub = getattr(self.ctx, "pool_ctx", None)
        if sub is None:
            sub = self.ctx.pool_ctx = type(self.ctx)(bufs={})
        pool.ctx = sub
        return conv, pool

    def forward(self, x, training=False):
        conv, pool = self._ctxs()
        if min(conv._out_hw_checked(x.shape[1:])) < 2:     # no 2x2 window: run them apart
            return pool.forward(conv.forward(x, training), training)
        return conv.forward_maxpool(x, pool)

    def backward(self, dy, need_dx=True, dx_into=None):
        conv, pool = self._ctxs()
        if conv.ctx.z is None:      # pooled in one call: so is the backward
            return conv.backward_maxpool(dy, pool, need_dx, dx_into)
        dz = pool.backward(dy, True, relu_mask=True)
        return conv.backward(dz, need_dx, dx_into, relu_masked=True)


def _pool_2x2(layer):
    return tuple(layer.pool_size) == (2, 2) and tuple(layer.strides) == (2, 2) and \
        layer.padding == "valid"


def _relu_conv(layer):
    """A Conv2D whose ReLU runs in its kernels (nothing between them)."""
    return type(layer) is Conv2D and layer.activation == "relu" and \
        layer.activity_regularizer is None and len(layer._inbound_nodes) == 1


def _bf16_conv(layer):
    """A Conv2D computing in bfloat16 with nothing after its products (no
    activation, no activity regularizer)."""
    return type(layer) is Conv2D and layer.activation in (None, "linear") and \
        layer.activity_regularizer is None and len(layer._inbound_nodes) == 1 and \
        layer.compute_dtype == "bfloat16"


def _is_relu(layer):
    return isinstance(layer, Activation) and layer.activation == "relu" and \
        not layer.act_params and not getattr(layer, "emit_logits", False)


def fuse(nodes, outputs):
    """The nodes of an execution plan with BN -> ReLU and
    BN -> Add(shortcut) -> ReLU chains fused."""
    consumers = {}
    for node in nodes:
        for t in node.input_tensors:
            consumers.setdefault(id(t), []).append(node)
    for t in outputs:
        consumers.setdefault(id(t), []).append(None)

    def only_consumer(t):
        c = consumers.get(id(t), [])
        return c[0] if len(c) == 1 else None

    drop, replace = set(), {}
    for node in nodes:
        if _bf16_conv(node.layer):
            nxt = only_consumer(node.output_tensors[0])
            if nxt is not None and type(nxt.layer) is BatchNormalization and \
                    nxt.input_tensors[0] is node.output_tensors[0]:
                replace[node] = PlanNode(ConvBF16Out(node.layer), list(node.input_tensors),
                                         list(node.output_tensors))
            continue
        if _relu_conv(node.layer):
            nxt = only_consumer(node.output_tensors[0])
            if nxt is not None and type(nxt.layer) is MaxPooling2D and \
                    len(nxt.layer._inbound_nodes) == 1:
                if _pool_2x2(nxt.layer):
                    replace[node] = PlanNode(FusedConvPool(node.layer, nxt.layer),
                                             list(node.input_tensors), list(nxt.output_tensors))
                    drop.add(nxt)
                    continue
                replace[node] = PlanNode(ConvMaskedByPool(node.layer), list(node.input_tensors),
                                         list(node.output_tensors))
                replace[nxt] = PlanNode(PoolMasksRelu(nxt.layer), list(nxt.input_tensors),
                                        list(nxt.output_tensors))
            continue
        bn = node.layer
        if type(bn) is not BatchNormalization or len(bn._inbound_nodes) != 1 or node in drop:
            continue
        nxt = only_consumer(node.output_tensors[0])
        if nxt is None or nxt in drop:
            continue
        if _is_relu(nxt.layer):
            replace[node] = PlanNode(FusedBatchNorm(bn, False), list(node.input_tensors),
                                     list(nxt.output_tensors))
            drop.add(nxt)
        elif type(nxt.layer) is Add and len(nxt.input_tensors) == 2:
            a, b = nxt.input_tensors
            other = b if a is node.output_tensors[0] else a
            if other is node.output_tensors[0] or tuple(other.shape) != \
                    tuple(node.output_tensors[0].shape):
                continue
            act = only_consumer(nxt.output_tensors[0])
            if act is None or not _is_relu(act.layer):
                continue
            # the shortcut must be computed before the batch norm runs
            pos = {id(n): i for i, n in enumerate(nodes)}
            prod = getattr(other, "_keras_history", None)
            src = prod[0]._inbound_nodes[prod[1]] if prod else None
            if src is not None and not src.is_input and pos.get(id(src), -1) > pos[id(node)]:
                continue
            replace[node] = PlanNode(FusedBatchNorm(bn, True),
                                     list(node.input_tensors) + [other], list(act.output_tensors))
            drop.update((nxt, act))
    return [replace.get(n, n) for n in nodes if n not in drop]
