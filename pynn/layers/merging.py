"""Merge layers: Add, Subtract, Multiply, Average, Maximum, Minimum,
Concatenate, and the functions add, subtract, ... (Keras' shape rules:
element-wise merges take shapes that are equal or broadcast along
dimensions of size 1; Concatenate takes shapes equal except on its axis)."""
import numpy as np

from .base import Layer


class _Merge(Layer):
    takes_list = True
    min_inputs = 2

    def _check_count(self, shapes):
        if not isinstance(shapes, list) or len(shapes) < self.min_inputs:
            raise ValueError(f"{type(self).__name__} needs a list of at least {self.min_inputs} "
                             f"inputs, got {0 if not isinstance(shapes, list) else len(shapes)}")


class _Elementwise(_Merge):
    def compute_output_shape(self, input_shape):
        self._check_count(input_shape)
        out = list(input_shape[0])
        for s in input_shape[1:]:
            if len(s) != len(out):
                raise ValueError(f"{type(self).__name__}: inputs have incompatible shapes "
                                 f"{[tuple(t) for t in input_shape]} (different ranks)")
            for i, (a, b) in enumerate(zip(out, s)):
                if a is None or b is None:
                    out[i] = a if b is None else b
                elif a != b and 1 not in (a, b):
                    raise ValueError(f"{type(self).__name__}: inputs have incompatible shapes "
                                     f"{[tuple(t) for t in input_shape]}")
                else:
                    out[i] = max(a, b)
        return tuple(out)

    def _out(self, xs):
        shape = np.broadcast_shapes(*[x.shape for x in xs])
        return self._buf("y", shape)

    def _reduce_to(self, g, shape, key):
        """g summed over the axes broadcast to reach g.shape from shape."""
        if g.shape == tuple(shape):
            return g
        axes = tuple(i for i, (a, b) in enumerate(zip(g.shape, shape)) if b == 1 and a != 1)
        out = self._buf(key, shape)
        out[...] = g.sum(axis=axes, keepdims=True)
        return out


class Add(_Elementwise):
    def forward(self, xs, training=False):
        self.ctx.shapes = [x.shape for x in xs]
        return self.ops.add_n(xs, out=self._out(xs))

    def backward(self, dy, need_dx=True):
        return [self._reduce_to(dy, s, f"dx{i}") for i, s in enumerate(self.ctx.shapes)]


class Subtract(_Elementwise):
    def _check_count(self, shapes):
        if not isinstance(shapes, list) or len(shapes) != 2:
            raise ValueError("Subtract needs a list of exactly 2 inputs")

    def forward(self, xs, training=False):
        self.ctx.shapes = [x.shape for x in xs]
        out = self._out(xs)
        self.ops.xp.subtract(xs[0], xs[1], out=out)
        return out

    def backward(self, dy, need_dx=True):
        neg = self._buf("neg", dy.shape)
        self.ops.xp.negative(dy, out=neg)
        s0, s1 = self.ctx.shapes
        return [self._reduce_to(dy, s0, "dx0"), self._reduce_to(neg, s1, "dx1")]


class Multiply(_Elementwise):
    def forward(self, xs, training=False):
        self.ctx.xs = list(xs)
        out = self._out(xs)
        self.ops.xp.multiply(xs[0], xs[1], out=out)
        for x in xs[2:]:
            out *= x
        return out

    def backward(self, dy, need_dx=True):
        xs, xp = self.ctx.xs, self.ops.xp
        grads = []
        for i, x in enumerate(xs):
            g = self._buf(f"g{i}", dy.shape)
            g[...] = dy
            for j, o in enumerate(xs):
                if j != i:
                    g *= o
            grads.append(self._reduce_to(g, x.shape, f"dx{i}"))
        return grads


class Average(_Elementwise):
    def forward(self, xs, training=False):
        self.ctx.shapes = [x.shape for x in xs]
        out = self.ops.add_n(xs, out=self._out(xs))
        out *= out.dtype.type(1.0 / len(xs))
        return out

    def backward(self, dy, need_dx=True):
        g = self._buf("g", dy.shape)
        self.ops.xp.multiply(dy, dy.dtype.type(1.0 / len(self.ctx.shapes)), out=g)
        return [self._reduce_to(g, s, f"dx{i}") for i, s in enumerate(self.ctx.shapes)]


class _Extremum(_Elementwise):
    """Pairwise max/min from the left; the first input wins ties and takes
    the gradient (TensorFlow's rule for maximum(x, y): x where x >= y)."""

    def forward(self, xs, training=False):
        xp = self.ops.xp
        out = self._out(xs)
        win = self._buf("win", out.shape, np.int32)
        out[...] = xs[0]
        win[...] = 0
        for i, x in enumerate(xs[1:], 1):
            better = (x > out) if self.is_max else (x < out)
            xp.copyto(out, x, where=better)
            xp.copyto(win, np.int32(i), where=better)
        self.ctx.shapes, self.ctx.win = [x.shape for x in xs], win
        return out

    def backward(self, dy, need_dx=True):
        grads = []
        for i, s in enumerate(self.ctx.shapes):
            g = self._buf(f"g{i}", dy.shape)
            self.ops.xp.multiply(dy, self.ctx.win == i, out=g)
            grads.append(self._reduce_to(g, s, f"dx{i}"))
        return grads


class Maximum(_Extremum):
    is_max = True


class Minimum(_Extremum):
    is_max = False


class Concatenate(_Merge):
    fresh_grads = True      # its input gradients are buffers of its own
    def __init__(self, axis=-1, **kw):
        super().__init__(**kw)
        self.axis = int(axis)

    def compute_output_shape(self, input_shape):
        self._check_count(input_shape)
        rank = len(input_shape[0])           # batch-less rank
        full = self.axis if self.axis >= 0 else self.axis + rank + 1
        if not 1 <= full <= rank:
            raise ValueError(f"Concatenate(axis={self.axis}) is out of range for inputs of rank "
                             f"{rank + 1} (the batch axis cannot be concatenated)")
        ax = full - 1
        out = list(input_shape[0])
        for s in input_shape[1:]:
            if len(s) != rank or any(a != b for i, (a, b) in enumerate(zip(out, s)) if i != ax):
                raise ValueError("Concatenate needs inputs with matching shapes except on the "
                                 f"concatenation axis; got {[tuple(t) for t in input_shape]}")
            out[ax] = None if out[ax] is None or s[ax] is None else out[ax] + s[ax]
        self._ax = ax + 1
        return tuple(out)

    def forward(self, xs, training=False):
        shape = list(xs[0].shape)
        shape[self._ax] = sum(x.shape[self._ax] for x in xs)
        out = self._buf("y", shape)
        self.ops.xp.concatenate(xs, axis=self._ax, out=out)
        self.ctx.sizes = [x.shape[self._ax] for x in xs]
        return out

    def backward(self, dy, need_dx=True):
        grads, o = [], 0
        for i, k in enumerate(self.ctx.sizes):
            sl = [slice(None)] * dy.ndim
            sl[self._ax] = slice(o, o + k)
            part = dy[tuple(sl)]
            g = self._buf(f"dx{i}", part.shape)
            g[...] = part
            grads.append(g)
            o += k
        return grads

    def get_config(self):
        c = super().get_config()
        c["axis"] = self.axis
        return c


def add(inputs, **kwargs):
    return Add(**kwargs)(inputs)


def subtract(inputs, **kwargs):
    return Subtract(**kwargs)(inputs)


def multiply(inputs, **kwargs):
    return Multiply(**kwargs)(inputs)


def average(inputs, **kwargs):
    return Average(**kwargs)(inputs)


def maximum(inputs, **kwargs):
    return Maximum(**kwargs)(inputs)


def minimum(inputs, **kwargs):
    return Minimum(**kwargs)(inputs)


def concatenate(inputs, axis=-1, **kwargs):
    return Concatenate(axis=axis, **kwargs)(inputs)
