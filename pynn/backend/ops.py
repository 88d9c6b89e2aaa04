"""``Ops``: the reference implementation of the one interface every layer, loss and optimizer computes through.

``Ops`` is the pure NumPy reference: vectorised, written to be read, and the
specification the compiled kernels are tested against.  ``CPUOps`` overrides
the hot operations with ``nnkernels`` (fused GEMM epilogues, implicit-im2col
convolution, pooling, Philox dropout, fused softmax cross-entropy, optimizer
updates, batch norm) and falls back to ``Ops`` for anything it does not
handle (e.g. float16, unusual activations).

Conventions (see DESIGN.md §2): NHWC activations, conv kernels
(KH, KW, C_in, C_out), dense kernels (in, out).  Gradients of ``<op>`` are
``<op>_backward``.  Every op takes optional ``out=`` style buffers so that a
training step allocates nothing after the first one; ops write into them and
return them.
"""
import math

import numpy as np

from . import activation_ref
from .activation_ref import ACTIVATIONS
from .bf16 import is_bf16, round_operands
from . import image as _image
from .geometry import conv_geometry, conv_padding, pair as _pair


def _windows(xp_, g, xp=np):
    """(N, OH, OW, KH, KW, C) strided view of the padded input."""
    n, c = xp_.shape[0], xp_.shape[3]
    s = xp_.strides
    shape = (n, g["oh"], g["ow"], g["kh"], g["kw"], c)
    strides = (s[0], s[1] * g["sh"], s[2] * g["sw"], s[1] * g["dh"], s[2] * g["dw"], s[3])
    if xp is np:
        return np.lib.stride_tricks.as_strided(xp_, shape, strides, writeable=False)
    return xp.lib.stride_tricks.as_strided(xp_, shape, strides)


def _out(out, shape, dtype, xp=np):
    if out is None:
        return xp.empty(shape, dtype=dtype)
    if out.shape != tuple(shape) or out.dtype != dtype:
        raise ValueError(f"out has shape {out.shape} {out.dtype}, expected {tuple(shape)} {np.dtype(dtype)}")
    return out




def philox4x32(ctr, key):
    """Philox4x32-10 of each row of ctr ((n, 4) uint32) under key (2 uint32)."""
    c = [ctr[:, i].astype(np.uint64) for i in range(4)]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    m32 = np.uint64(0xFFFFFFFF)
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & m32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & m32]
        k0 = (k0 + np.uint64(0x9E3779B9)) & m32
        k1 = (k1 + np.uint64(0xBB67AE85)) & m32
    return np.stack(c, axis=1).astype(np.uint32)


def philox_blocks(nblocks, seed, offset):
    """(nblocks, 4) uint32: Philox block b has counter (b low, high, offset
    low, high) and key (seed low, high) -- the stream of every random layer."""
    b = np.arange(nblocks, dtype=np.uint64)
    m32 = np.uint64(0xFFFFFFFF)
    off, sd = np.uint64(offset), np.uint64(seed)
    ctr = np.stack([b & m32, b >> np.uint64(32), np.full_like(b, off & m32),
                    np.full_like(b, off >> np.uint64(32))], axis=1).astype(np.uint32)
    key = np.array([int(sd & m32), int(sd >> np.uint64(32))], np.uint32)
    return philox4x32(ctr, key)


def philox_words(n, seed, offset):
    """The first n words (uint32) of the stream (seed, offset): word e is
    word e % 4 of Philox block e // 4 (philox_blocks)."""
    return philox_blocks((n + 3) // 4, seed, offset).ravel()[:n]


def philox_uniform(shape, seed, offset):
    """Uniform float64 numbers in [0, 1) from the stream (seed, offset):
    element e (flat C order) is philox_words(...)[e] / 2**32."""
    n = int(np.prod(shape, dtype=np.int64))
    return (philox_words(n, seed, offset) * (1.0 / 4294967296.0)).reshape(shape)


def dropout_keep_mask(shape, rate, seed, offset):
    """The documented dropout stream (same as nnkernels.dropout and the GPU):
    element e (flat C order) takes philox_words(...)[e] and is kept iff that
    word >= floor(rate * 2**32)."""
    n = int(np.prod(shape, dtype=np.int64))
    words = philox_words(n, seed, offset)
    thr = min(int(math.floor(rate * 4294967296.0)), 4294967295)
    return (words >= thr).reshape(shape)


def philox_normal(shape, seed, offset):
    """Standard normal float64 numbers from the same Philox stream (Box-Muller):
    block b's words (w0, w1) give elements 4b, 4b+1 and (w2, w3) give 4b+2,
    4b+3, as r cos(t), r sin(t) with r = sqrt(-2 ln((w_even + 1) / 2**32)) and
    t = 2 pi w_odd / 2**32.  Counter-based: independent of thread count; the
    model gives every rank and step its own offset (as for dropout)."""
    n = int(np.prod(shape, dtype=np.int64))
    w = philox_blocks((n + 3) // 4, seed, offset).astype(np.float64)
    u1 = (w[:, 0::2] + 1.0) * 2.0 ** -32          # (0, 1]: the log is finite
    t = w[:, 1::2] * (2.0 * math.pi * 2.0 ** -32)
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.empty((w.shape[0], 4))
    z[:, 0::2] = r * np.cos(t)
    z[:, 1::2] = r * np.sin(t)
    return z.ravel()[:n].reshape(shape)


def resize_weights(in_size, out_size, interpolation):
    """(lo, hi, frac) of TensorFlow's resize with half-pixel centres (Keras'
    Resizing, antialias off), in TF's float32 arithmetic: output index o reads
    input lo[o] and hi[o] with weight frac[o] on hi ("nearest": lo == hi).
    bilinear: c = (o + .5) * in/out - .5, lo = max(floor(c), 0),
    hi = min(ceil(c), in - 1), frac = c - floor(c); nearest: i = clip(floor((o + .5)
    * in/out), 0, in - 1)."""
    f = np.float32
    scale = f(in_size) / f(out_size)
    o = np.arange(out_size, dtype=f)
    if interpolation == "nearest":
        i = np.clip(np.floor((o + f(0.5)) * scale), 0, in_size - 1).astype(np.int64)
        return i, i, np.zeros(out_size, f)
    c = (o + f(0.5)) * scale - f(0.5)
    fl = np.floor(c)
    lo = np.maximum(fl, 0).astype(np.int64)
    hi = np.minimum(np.ceil(c), in_size - 1).astype(np.int64)
    return lo, hi, (c - fl).astype(f)


def resize_box(height, width, target_height, target_width, crop, pad):
    """Keras' crop_to_aspect_ratio / pad_to_aspect_ratio box:
    (top, left, box height, box width) of the window of the image that is
    resized (crop: inside the image; pad: the image sits at (top, left) of a
    box filled around it)."""
    if crop:
        bh = max(min(height, int(float(width * target_height) / target_width)), 1)
        bw = max(min(width, int(float(height * target_width) / target_height)), 1)
        return int(float(height - bh) / 2), int(float(width - bw) / 2), bh, bw
    if pad:
        bh = max(height, int(float(width * target_height) / target_width))
        bw = max(width, int(float(height * target_width) / target_height))
        return int(float(bh - height) / 2), int(float(bw - width) / 2), bh, bw
    return 0, 0, height, width


def resize_matrix(in_size, out_size, interpolation):
    """(out_size, in_size) float64 matrix of resize_weights (rows sum to 1)."""
    lo, hi, frac = resize_weights(in_size, out_size, interpolation)
    m = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(m, (rows, lo), 1.0 - frac.astype(np.float64))
    np.add.at(m, (rows, hi), frac.astype(np.float64))
    return m


def _sum_to(a, shape):
    """a summed over the axes where ``shape`` (same rank) has size 1."""
    axes = tuple(i for i, (s, t) in enumerate(zip(a.shape, shape)) if t == 1 and s != 1)
    return a.sum(axis=axes, keepdims=True) if axes else a


# ----------------------------------------------------------------- the spec --


class Ops:
    """Reference implementation in NumPy (``xp``): the readable spec."""

    name = "numpy"
    xp = np

    # -- memory -------------------------------------------------------------
    def alloc(self, shape, dtype=np.float32, zeros=False):
        return (self.xp.zeros if zeros else self.xp.empty)(shape, dtype=dtype)

    def asarray(self, x, dtype=None):
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        return np.asarray(x)

    def batch_to_device(self, x, key="x"):
        """A host batch ready for the layers (the GPU backend copies it into
        a reused device buffer; ``key`` names the stream of batches)."""
        return x

    def check_precision(self, precision):
        """True when ``precision`` asks for bfloat16 products, False for
        None / "float32"; raises for what this backend cannot run (layers
        call it when they are placed in a model, not at the first step)."""
        return is_bf16(precision)

    # -- activations --------------------------------------------------------
    def activation(self, name, x, out=None, **params):
        """out = act(x) with Keras 3's formulas (activation_ref.py; params:
        its PARAMS, e.g. negative_slope, axis); out may be x."""
        if name is None:
            name = "linear"
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; expected one of {tuple(ACTIVATIONS)}")
        y = activation_ref.forward(self.xp, name, x, activation_ref.check_params(name, params))
        if out is None:
            return y.astype(x.dtype, copy=y is x)
        out[...] = y
        return out

    def activation_backward(self, name, dy, y, out=None, x=None, **params):
        """dx given dy, the forward output y and, where the derivative needs
        it (activation_ref.grad_needs_input), the forward input x; out may
        be dy."""
        if name is None:
            name = "linear"
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; expected one of {tuple(ACTIVATIONS)}")
        if x is None and activation_ref.grad_needs_input(name, params):
            raise ValueError(f"the gradient of activation {name!r} with {params} needs the "
                             "forward input x")
        dx = activation_ref.backward(self.xp, name, dy, x, y,
                                     activation_ref.check_params(name, params))
        if out is None:
            return dx.astype(dy.dtype, copy=dx is dy)
        out[...] = dx
        return out

    def prelu(self, x, alpha, out=None):
        """y = x where x > 0, alpha * x elsewhere (alpha broadcasts over x's
        trailing axes, batch axis excluded)."""
        out = self.xp.empty_like(x) if out is None else out
        out[...] = self.xp.where(x > 0, x, alpha * x)
        return out

    def prelu_backward(self, dy, x, alpha, dx=None, dalpha=None):
        """(dx or None, dalpha): dalpha sums dy * min(x, 0) over the batch
        and the axes alpha is broadcast along (size 1 in alpha)."""
        xp = self.xp
        if dalpha is not None:
            g = dy * xp.minimum(x, 0)
            axes = (0,) + tuple(i + 1 for i, n in enumerate(alpha.shape) if n == 1 and
                                x.shape[i + 1] != 1)
            dalpha[...] = g.sum(axis=axes).reshape(alpha.shape)
        if dx is not None:
            dx[...] = xp.where(x > 0, dy, alpha * dy)
        return dx, dalpha

    def l1l2_penalty(self, x, l1=0.0, l2=0.0):
        """Keras' L1L2 regularizer: l1 * sum |x| + l2 * sum x^2 (a float)."""
        xp, x64 = self.xp, x.astype(np.float64)
        total = 0.0
        if l1:
            total += l1 * float(xp.abs(x64).sum())
        if l2:
            total += l2 * float((x64 * x64).sum())
        return total

    def l1l2_penalty_backward(self, dy, x, l1=0.0, l2=0.0, scale=1.0, out=None):
        """out = dy + scale * d(l1l2_penalty)/dx = dy + scale * (l1 sign(x) + 2 l2 x)."""
        xp = self.xp
        out = xp.empty_like(dy) if out is None else out
        out[...] = dy + dy.dtype.type(scale) * (dy.dtype.type(l1) * xp.sign(x) +
                                                 dy.dtype.type(2 * l2) * x)
        return out

    # -- moving values --------------------------------------------------------
    def transpose(self, x, axes, out=None):
        """out = x transposed by axes (a permutation of x's axes)."""
        y = self.xp.transpose(x, axes)
        out = self.xp.empty(y.shape, x.dtype) if out is None else out
        out[...] = y
        return out

    def repeat_vector(self, x, n, out=None):
        """(N, F) -> (N, n, F): every row repeated n times."""
        out = self.xp.empty((x.shape[0], n, x.shape[1]), x.dtype) if out is None else out
        out[...] = x[:, None, :]
        return out

    def repeat_vector_backward(self, dy, out=None):
        """The gradient of repeat_vector: dy (N, n, F) summed over n."""
        s = dy.sum(axis=1)
        if out is None:
            return s
        out[...] = s
        return out

    # -- dense --------------------------------------------------------------
    # The matrix products (dense, conv2d, conv2d_backward_data) take
    # precision=None/"float32" (float32 or float64 products) or "bfloat16":
    # the operands of every product (x, w, dz = dy * act') rounded to
    # bfloat16, float32 accumulation; bias, activation and db on the
    # unrounded float32 values (pynn/backend/bf16.py).
    def dense_forward(self, x, w, b=None, activation=None, out=None, *, precision=None):
        """out = act(x @ w + b); activation None/"linear"/"relu" fused."""
        out = _out(out, (x.shape[0], w.shape[1]), x.dtype)
        if is_bf16(precision):
            x, w = round_operands(self.xp, x, w)
        self.xp.matmul(x, w, out=out)
        if b is not None:
            out += b
        if activation == "relu":
            self.xp.maximum(out, 0, out=out)
        return out

    def dense_backward(self, dy, x, w, y=None, activation=None, *, need_dx=True,
                       dx=None, dw=None, db=None, precision=None):
        """(dx or None, dw, db or None) of y = act(x @ w + b)."""
        dz = dy * (y > 0) if activation == "relu" else dy
        dw = _out(dw, w.shape, x.dtype)
        if db is not None:
            db[...] = dz.sum(axis=0)
        if is_bf16(precision):
            dz, x, w = round_operands(self.xp, dz, x, w)
        self.xp.matmul(x.T, dz, out=dw)
        if need_dx:
            dx = _out(dx, x.shape, x.dtype)
            self.xp.matmul(dz, w.T, out=dx)
        else:
            dx = None
        return dx, dw, db

    # -- convolution --------------------------------------------------------
    def conv2d_forward(self, x, w, b=None, *, strides=1, padding="valid", dilation=1, groups=1,
                       activation=None, out=None, precision=None):
        """out = act(conv(x, w) + b); groups: w is (KH, KW, C/groups, F) and
        output block j (F/groups channels) sees input block j."""
        if is_bf16(precision):
            x, w = round_operands(self.xp, x, w)
        if groups != 1:
            return self._grouped(self.conv2d_forward, x, w, b, groups, strides, padding,
                                 dilation, activation, out)
        g = conv_geometry(x.shape, w.shape, strides, padding, dilation)
        xp_ = self.xp.pad(x, ((0, 0), (g["pt"], g["pb"]), (g["pl"], g["pr"]), (0, 0)))
        win = _windows(xp_, g, self.xp)
        out = _out(out, (g["n"], g["oh"], g["ow"], g["f"]), x.dtype, self.xp)
        out[...] = self.xp.tensordot(win, w, axes=([3, 4, 5], [0, 1, 2]))
        if b is not None:
            out += b
        if activation == "relu":
            self.xp.maximum(out, 0, out=out)
        return out

    def _grouped(self, fn, x, w, b, groups, strides, padding, dilation, activation, out):
        c, f = x.shape[-1], w.shape[-1]
        if c % groups or f % groups or w.shape[2] * groups != c:
            raise ValueError(f"groups={groups}: x has {c} channels, w has shape {w.shape}")
        cg, fg = c // groups, f // groups
        parts = [fn(self.xp.ascontiguousarray(x[..., j * cg:(j + 1) * cg]),
                    self.xp.ascontiguousarray(w[..., j * fg:(j + 1) * fg]),
                    None if b is None else b[j * fg:(j + 1) * fg], strides=strides,
                    padding=padding, dilation=dilation, activation=activation)
                 for j in range(groups)]
        y = self.xp.concatenate(parts, axis=-1)
        out = _out(out, y.shape, x.dtype, self.xp)
        out[...] = y
        return out

    def conv2d_backward(self, dy, x, w, y=None, activation=None, *, strides=1, padding="valid",
                        dilation=1, groups=1, need_dx=True, need_dw=True, dx=None, dw=None,
                        db=None, accumulate_dx=False, precision=None):
        """(dx or None, dw or None, db or None) of y = act(conv(x, w) + b);
        accumulate_dx: dx += the data gradient (dx given)."""
        if accumulate_dx:
            acc = dx
            dx, dw, db = self.conv2d_backward(dy, x, w, y, activation, strides=strides,
                                              padding=padding, dilation=dilation, groups=groups,
                                              need_dx=need_dx, need_dw=need_dw, dw=dw, db=db,
                                              precision=precision)
            acc += dx
            return acc, dw, db
        dz = dy * (y > 0) if activation == "relu" else dy
        if db is not None:
            db[...] = dz.sum(axis=(0, 1, 2))
        if is_bf16(precision):
            dz, x, w = round_operands(self.xp, dz, x, w)
        if groups != 1:
            c, f = x.shape[-1], w.shape[-1]
            cg, fg = c // groups, f // groups
            if need_dw:
                dw = _out(dw, w.shape, x.dtype, self.xp)
            if need_dx:
                dx = _out(dx, x.shape, x.dtype, self.xp)
            for j in range(groups):
                dxj, dwj, _ = self.conv2d_backward(
                    self.xp.ascontiguousarray(dz[..., j * fg:(j + 1) * fg]),
                    self.xp.ascontiguousarray(x[..., j * cg:(j + 1) * cg]),
                    self.xp.ascontiguousarray(w[..., j * fg:(j + 1) * fg]), strides=strides,
                    padding=padding, dilation=dilation, need_dx=need_dx, need_dw=need_dw)
                if need_dw:
                    dw[..., j * fg:(j + 1) * fg] = dwj
                if need_dx:
                    dx[..., j * cg:(j + 1) * cg] = dxj
            return (dx if need_dx else None), (dw if need_dw else None), db
        g = conv_geometry(x.shape, w.shape, strides, padding, dilation)
        xp_ = self.xp.pad(x, ((0, 0), (g["pt"], g["pb"]), (g["pl"], g["pr"]), (0, 0)))
        win = _windows(xp_, g, self.xp)
        if need_dw:
            dw = _out(dw, w.shape, x.dtype, self.xp)
            dw[...] = self.xp.tensordot(win, dz, axes=([0, 1, 2], [0, 1, 2]))
        else:
            dw = None
        if not need_dx:
            return None, dw, db
        dx = self.conv2d_backward_data(dz, w, x.shape, strides=strides, padding=padding,
                                       dilation=dilation, out=dx)
        return dx, dw, db

    def conv2d_backward_data(self, dy, w, x_shape, *, strides=1, padding="valid", dilation=1,
                             groups=1, out=None, precision=None):
        """dx of a convolution of inputs of shape x_shape (the forward pass
        of a transposed convolution)."""
        x_shape = tuple(int(d) for d in x_shape)
        if is_bf16(precision):
            dy, w = round_operands(self.xp, dy, w)
        if groups != 1:
            c, f = x_shape[-1], w.shape[-1]
            cg, fg = c // groups, f // groups
            out = _out(out, x_shape, dy.dtype, self.xp)
            for j in range(groups):
                out[..., j * cg:(j + 1) * cg] = self.conv2d_backward_data(
                    self.xp.ascontiguousarray(dy[..., j * fg:(j + 1) * fg]),
                    self.xp.ascontiguousarray(w[..., j * fg:(j + 1) * fg]), x_shape[:3] + (cg,),
                    strides=strides, padding=padding, dilation=dilation)
            return out
        g = conv_geometry(x_shape, w.shape, strides, padding, dilation)
        if dy.shape != (g["n"], g["oh"], g["ow"], g["f"]):
            raise ValueError(f"dy has shape {dy.shape}, expected {(g['n'], g['oh'], g['ow'], g['f'])}")
        n, h, w_, c = x_shape
        dxp = self.xp.zeros((n, h + g["pt"] + g["pb"], w_ + g["pl"] + g["pr"], c), dy.dtype)
        dcols = self.xp.tensordot(dy, w, axes=([3], [3]))  # (N, OH, OW, KH, KW, C)
        for i in range(g["kh"]):
            for j in range(g["kw"]):
                h0, w0 = i * g["dh"], j * g["dw"]
                dxp[:, h0:h0 + g["sh"] * (g["oh"] - 1) + 1:g["sh"],
                    w0:w0 + g["sw"] * (g["ow"] - 1) + 1:g["sw"], :] += dcols[:, :, :, i, j, :]
        out = _out(out, x_shape, dy.dtype, self.xp)
        out[...] = dxp[:, g["pt"]:g["pt"] + h, g["pl"]:g["pl"] + w_, :]
        return out

    def depthwise_conv2d_forward(self, x, w, b=None, *, strides=1, padding="valid", dilation=1,
                                 activation=None, out=None):
        """Depthwise convolution, w (KH, KW, C, M): output channel c*M + m
        convolves input channel c with w[:, :, c, m] (groups = C)."""
        kh, kw, c, m = w.shape
        return self.conv2d_forward(x, w.reshape(kh, kw, 1, c * m), b, strides=strides,
                                   padding=padding, dilation=dilation, groups=c,
                                   activation=activation, out=out)

    def depthwise_conv2d_backward(self, dy, x, w, y=None, activation=None, *, strides=1,
                                  padding="valid", dilation=1, need_dx=True, dx=None, dw=None,
                                  db=None):
        kh, kw, c, m = w.shape
        dw2 = None if dw is None else dw.reshape(kh, kw, 1, c * m)
        dx, dw2, db = self.conv2d_backward(dy, x, w.reshape(kh, kw, 1, c * m), y, activation,
                                           strides=strides, padding=padding, dilation=dilation,
                                           groups=c, need_dx=need_dx, dx=dx, dw=dw2, db=db)
        return dx, dw2.reshape(w.shape), db

    # -- element-wise helpers of the graph ----------------------------------
    def add(self, a, b, out=None):
        """out = a + b (out may be a or b)."""
        return self.xp.add(a, b, out=out)

    def add_n(self, xs, out=None):
        """out = sum of xs (broadcasting as NumPy does)."""
        xp = self.xp
        out = xp.empty(np.broadcast_shapes(*[x.shape for x in xs]), xs[0].dtype) if out is None else out
        xp.add(xs[0], xs[1], out=out)
        for x in xs[2:]:
            out += x
        return out

    def bias_add(self, y, b):
        """In place: y += b along the last axis."""
        y += b
        return y

    def bias_grad(self, dy, out=None):
        """Sum of dy over every axis but the last."""
        xp = self.xp
        s = dy.reshape(-1, dy.shape[-1]).sum(axis=0)
        if out is None:
            return s
        out[...] = s
        return out

    # -- pooling ------------------------------------------------------------
    def conv2d_maxpool_forward(self, x, w, b=None, *, strides=1, padding="valid", dilation=1,
                               groups=1, activation=None, out=None, indices=None,
                               precision=None):
        """(pooled, indices): max_pool2d with 2x2 windows and stride 2
        ("valid") of conv2d_forward's output, which is not returned (here it
        is computed in full; the CPU kernel pools inside its Winograd output
        transform)."""
        y = self.conv2d_forward(x, w, b, strides=strides, padding=padding, dilation=dilation,
                                groups=groups, activation=activation, precision=precision)
        return self.max_pool2d(y, (2, 2), None, "valid", out=out, indices=indices)

    def conv2d_maxpool_backward(self, dy, indices, x, w, y=None, activation=None, *, strides=1,
                                padding="valid", dilation=1, groups=1, need_dx=True,
                                need_dw=True, dx=None, dw=None, db=None, accumulate_dx=False,
                                precision=None):
        """conv2d_backward of the convolution conv2d_maxpool_forward pooled,
        given dy of the pooled output, its indices and, with activation
        "relu", the pooled output y (the mask y > 0): here the pooling's
        backward then the convolution's (the CPU kernel reads the pooled
        gradient inside its Winograd transforms)."""
        g = conv_geometry(x.shape, tuple(w.shape[:2]) + (x.shape[3], w.shape[3]), strides,
                          padding, dilation)
        dz = self.max_pool2d_backward(dy, indices, (x.shape[0], g["oh"], g["ow"], dy.shape[3]),
                                      y=y if activation == "relu" else None,
                                      pool_size=(2, 2), strides=(2, 2), padding="valid")
        return self.conv2d_backward(dz, x, w, strides=strides, padding=padding,
                                    dilation=dilation, groups=groups, need_dx=need_dx,
                                    need_dw=need_dw, dx=dx, dw=dw, db=db,
                                    accumulate_dx=accumulate_dx, precision=precision)

    def max_pool2d(self, x, pool_size=(2, 2), strides=None, padding="valid", out=None, indices=None):
        """(y, int32 indices h*W+w of the winner in its plane); first max wins."""
        ph, pw = _pair(pool_size, "pool_size")
        sh, sw = _pair(strides if strides is not None else (ph, pw), "strides")
        n, h, w_, c = x.shape
        oh, pt, pb = conv_padding(h, ph, sh, 1, padding)
        ow, pl, pr = conv_padding(w_, pw, sw, 1, padding)
        xp_ = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-np.inf)
        g = dict(oh=oh, ow=ow, kh=ph, kw=pw, sh=sh, sw=sw, dh=1, dw=1)
        win = _windows(xp_, g).reshape(n, oh, ow, ph * pw, c)
        arg = np.argmax(win, axis=3)  # first maximum wins (NaN wins too)
        out = _out(out, (n, oh, ow, c), x.dtype)
        out[...] = np.take_along_axis(win, arg[:, :, :, None, :], axis=3)[:, :, :, 0, :]
        kh_, kw_ = arg // pw, arg % pw
        hh = np.arange(oh)[None, :, None, None] * sh + kh_ - pt
        ww = np.arange(ow)[None, None, :, None] * sw + kw_ - pl
        idx = (hh * w_ + ww).astype(np.int32)
        if indices is None:
            indices = idx
        else:
            indices[...] = idx
        return out, indices

    def max_pool2d_backward(self, dy, indices, x_shape, out=None, y=None, **geometry):
        """dx; with y (the pooled values) dy counts only where y > 0: the
        ReLU derivative of a relu'd input, in the same pass."""
        n, h, w_, c = x_shape
        if y is not None:
            dy = self.xp.where(y > 0, dy, self.xp.zeros((), dy.dtype))
        out = _out(out, tuple(x_shape), dy.dtype)
        out[...] = 0
        flat = out.reshape(n, h * w_, c)
        ni = np.arange(n)[:, None, None, None]
        ci = np.arange(c)[None, None, None, :]
        np.add.at(flat, (np.broadcast_to(ni, indices.shape), indices,
                         np.broadcast_to(ci, indices.shape)), dy)
        return out

    def avg_pool2d(self, x, pool_size=(2, 2), strides=None, padding="valid", out=None):
        """Mean over each window; "same" padding: only in-bounds elements
        count (TensorFlow/Keras)."""
        xp = self.xp
        ph, pw = _pair(pool_size, "pool_size")
        sh, sw = _pair(strides if strides is not None else (ph, pw), "strides")
        n, h, w_, c = x.shape
        oh, pt, pb = conv_padding(h, ph, sh, 1, padding)
        ow, pl, pr = conv_padding(w_, pw, sw, 1, padding)
        g = dict(oh=oh, ow=ow, kh=ph, kw=pw, sh=sh, sw=sw, dh=1, dw=1)
        xp_ = xp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        ones = xp.pad(xp.ones((1, h, w_, 1), x.dtype), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        s_ = _windows(xp_, g, xp).sum(axis=(3, 4))
        cnt = _windows(ones, g, xp).sum(axis=(3, 4))
        out = _out(out, (n, oh, ow, c), x.dtype)
        out[...] = s_ / cnt
        return out

    def avg_pool2d_backward(self, dy, x_shape, pool_size=(2, 2), strides=None, padding="valid",
                            out=None):
        xp = self.xp
        ph, pw = _pair(pool_size, "pool_size")
        sh, sw = _pair(strides if strides is not None else (ph, pw), "strides")
        n, h, w_, c = x_shape
        oh, pt, pb = conv_padding(h, ph, sh, 1, padding)
        ow, pl, pr = conv_padding(w_, pw, sw, 1, padding)
        g = dict(oh=oh, ow=ow, kh=ph, kw=pw, sh=sh, sw=sw, dh=1, dw=1)
        ones = xp.pad(xp.ones((1, h, w_, 1), dy.dtype), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        cnt = _windows(ones, g, xp).sum(axis=(3, 4))
        d = dy / cnt
        dxp = xp.zeros((n, h + pt + pb, w_ + pl + pr, c), dy.dtype)
        for i in range(ph):
            for j in range(pw):
                dxp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :] += d
        out = _out(out, tuple(x_shape), dy.dtype)
        out[...] = dxp[:, pt:pt + h, pl:pl + w_, :]
        return out

    def global_avg_pool2d(self, x, out=None):
        out = _out(out, (x.shape[0], x.shape[3]), x.dtype)
        out[...] = x.mean(axis=(1, 2), dtype=np.float64)
        return out

    def global_avg_pool2d_backward(self, dy, x_shape, out=None):
        n, h, w_, c = x_shape
        out = _out(out, tuple(x_shape), dy.dtype)
        out[...] = (dy / (h * w_))[:, None, None, :]
        return out

    def global_max_pool2d(self, x, out=None, indices=None):
        """(y (N, C), int32 index h*W + w of the first maximum)."""
        xp = self.xp
        n, h, w_, c = x.shape
        flat = x.reshape(n, h * w_, c)
        arg = xp.argmax(flat, axis=1)
        out = _out(out, (n, c), x.dtype)
        out[...] = xp.take_along_axis(flat, arg[:, None, :], axis=1)[:, 0, :]
        if indices is None:
            indices = arg.astype(np.int32)
        else:
            indices[...] = arg
        return out, indices

    def global_max_pool2d_backward(self, dy, indices, x_shape, out=None):
        xp = self.xp
        n, h, w_, c = x_shape
        out = _out(out, tuple(x_shape), dy.dtype)
        out[...] = 0
        flat = out.reshape(n, h * w_, c)
        xp.put_along_axis(flat, indices[:, None, :].astype(np.int64), dy[:, None, :], axis=1)
        return out

    def upsample2d(self, x, size, out=None):
        xp = self.xp
        sh, sw = _pair(size, "size")
        y = xp.repeat(xp.repeat(x, sh, axis=1), sw, axis=2)
        out = _out(out, y.shape, x.dtype)
        out[...] = y
        return out

    def upsample2d_backward(self, dy, size, out=None):
        sh, sw = _pair(size, "size")
        n, h, w_, c = dy.shape
        out = _out(out, (n, h // sh, w_ // sw, c), dy.dtype)
        out[...] = dy.reshape(n, h // sh, sh, w_ // sw, sw, c).sum(axis=(2, 4))
        return out

    def pad2d(self, x, padding, out=None):
        """Zero padding ((top, bottom), (left, right)) of an NHWC array."""
        (t, b), (l, r) = padding
        n, h, w_, c = x.shape
        out = _out(out, (n, h + t + b, w_ + l + r, c), x.dtype)
        out[...] = 0
        out[:, t:t + h, l:l + w_, :] = x
        return out

    def crop2d(self, x, cropping, out=None):
        """The inverse of pad2d: drop ((top, bottom), (left, right))."""
        (t, b), (l, r) = cropping
        n, h, w_, c = x.shape
        out = _out(out, (n, h - t - b, w_ - l - r, c), x.dtype)
        out[...] = x[:, t:h - b, l:w_ - r, :]
        return out

    # -- image augmentation (pynn/backend/image.py, written against xp) -------
    def image_affine(self, x, transforms, interpolation="bilinear", fill_mode="reflect",
                     fill_value=0.0, output_size=None, out=None):
        return _image.affine_transform(self.xp, x, self.asarray(transforms), interpolation,
                                       fill_mode, fill_value, output_size, out)

    def image_flip(self, x, horizontal=None, vertical=None, out=None):
        h = None if horizontal is None else self.asarray(horizontal)
        v = None if vertical is None else self.asarray(vertical)
        return _image.flip(self.xp, x, h, v, out)

    def image_contrast(self, x, factors, value_range=None, out=None):
        return _image.adjust_contrast(self.xp, x, self.asarray(factors), value_range, out)

    def image_brightness(self, x, deltas, value_range=None, out=None):
        return _image.adjust_brightness(self.xp, x, self.asarray(deltas), value_range, out)

    # -- dropout ------------------------------------------------------------
    def dropout(self, x, rate, seed, offset=0, out=None):
        out = _out(out, x.shape, x.dtype) if out is not x else x
        keep = dropout_keep_mask(x.shape, rate, seed, offset)
        np.multiply(x, keep, out=out)
        out *= x.dtype.type(1.0 / (1.0 - rate))
        return out

    def dropout_backward(self, dy, rate, seed, offset=0, out=None):
        return Ops.dropout(self, dy, rate, seed, offset, out)

    # -- losses -------------------------------------------------------------
    def softmax_xent(self, logits, labels, *, dlogits=None, probs=None, from_logits=True,
                     grad_scale=None):
        """Fused softmax + cross-entropy.  labels: int (N,) or float (N, K).
        Returns (loss summed over rows as float, number of rows whose argmax
        matches); writes dlogits = (softmax - target) * grad_scale (default
        1/N) and probs = softmax when given.  from_logits=False: the inputs
        are probabilities (rows renormalised to sum 1, then clipped to
        [1e-7, 1 - 1e-7], as Keras does); dlogits is then d loss / d p."""
        n, k = logits.shape
        sparse = labels.ndim == 1
        if sparse:
            lab = labels.astype(np.int64)
            if n and (lab.min() < 0 or lab.max() >= k):
                raise ValueError(f"labels must lie in [0, {k}), got values in [{lab.min()}, {lab.max()}]")
            target = np.zeros((n, k), dtype=logits.dtype)
            target[np.arange(n), lab] = 1
            want = lab
        else:
            if labels.shape != logits.shape:
                raise ValueError(f"targets have shape {labels.shape}, expected {logits.shape}")
            target = labels.astype(logits.dtype)
            want = np.argmax(target, axis=1)
        scale = (1.0 / n if n else 0.0) if grad_scale is None else grad_scale
        correct = int(np.count_nonzero(np.argmax(logits, axis=1) == want)) if n else 0
        if from_logits:
            z = logits - logits.max(axis=1, keepdims=True)
            lse = np.log(np.exp(z).sum(axis=1, keepdims=True))
            logp = z - lse
            loss = float(-(target.astype(np.float64) * logp).sum())
            if probs is not None:
                probs[...] = np.exp(logp)
            if dlogits is not None:
                dlogits[...] = (np.exp(logp) - target) * scale
        else:
            eps = 1e-7
            s_ = logits.sum(axis=1, keepdims=True)
            p = logits / s_                      # rows renormalised, as Keras does
            pc = np.clip(p, eps, 1 - eps)
            loss = float(-(target.astype(np.float64) * np.log(pc)).sum())
            if probs is not None:
                probs[...] = p
            if dlogits is not None:
                inside = (p >= eps) & (p <= 1 - eps)
                g = -target / pc * inside       # d loss / d p, then through p = logits / sum
                g = (g - (g * p).sum(axis=1, keepdims=True)) / s_
                dlogits[...] = g * scale
        return loss, correct

    def loss_rows(self, kind, y_pred, y_true, need_grad=True, **params):
        """(per-sample loss, d loss / d y_pred or None) of the loss ``kind``
        (a name in pynn/backend/loss_ops.py KINDS, Keras 3's formulas), the
        classes on the last axis; params: ``delta`` (huber), ``from_logits``
        (binary_crossentropy)."""
        from .loss_ops import KINDS
        fn = KINDS.get(kind)
        if fn is None:
            raise ValueError(f"unknown loss kind {kind!r}; expected one of {sorted(KINDS)}")
        return fn(self.xp, y_pred, y_true, need_grad, **params)

    # -- batch normalisation -----------------------------------------------
    # batchnorm_forward's save_scale and batchnorm_backward's save_scale /
    # beta (the ReLU mask recomputed from x) are implemented
    bn_relu_mask_from_x = True

    def batchnorm_forward(self, x, gamma, beta, *, training, moving_mean, moving_var,
                          momentum=0.99, epsilon=1e-3, out=None, save_mean=None, save_invstd=None,
                          residual=None, activation=None, save_scale=None):
        """out = act(BN(x) + residual) (residual optional, act None or "relu");
        the statistics are those of x.  training: moving_* updated, save_*
        (when given) receive the batch mean, 1/sqrt(var + epsilon) and the
        scale gamma/sqrt(var + epsilon); inference: nothing but out is
        written."""
        c = x.shape[-1]
        x2 = x.reshape(-1, c)
        out = _out(out, x.shape, x.dtype)
        if training:
            mean = x2.mean(axis=0, dtype=np.float64)
            var = ((x2 - mean) ** 2).mean(axis=0)
            moving_mean *= momentum
            moving_mean += (mean * (1 - momentum)).astype(moving_mean.dtype)
            moving_var *= momentum
            moving_var += (var * (1 - momentum)).astype(moving_var.dtype)
        else:
            mean, var = moving_mean.astype(np.float64), moving_var.astype(np.float64)
        invstd = 1.0 / np.sqrt(var + epsilon)
        g = gamma if gamma is not None else 1.0
        b = beta if beta is not None else 0.0
        z = (x2 - mean) * (invstd * g) + b
        if residual is not None:
            z = z + residual.reshape(-1, c)
        if activation == "relu":
            z = np.maximum(z, 0)
        out.reshape(-1, c)[...] = z
        if training:   # inference updates nothing (as the kernels: CPU and GPU)
            if save_mean is not None:
                save_mean[...] = mean
            if save_invstd is not None:
                save_invstd[...] = invstd
            if save_scale is not None:
                save_scale[...] = invstd * g
        return out

    def batchnorm_backward(self, dy, x, gamma, save_mean, save_invstd, *, y=None, activation=None,
                           dx=None, dgamma=None, dbeta=None, dresidual=None, save_scale=None,
                           beta=None):
        """Gradients of batchnorm_forward(training=True); with activation
        "relu" dy is masked first by y > 0 (y: the forward output) or, without
        y, by the forward's pre-activation recomputed from x with its
        save_scale and beta (a forward without residual), and dresidual
        receives the gradient of the residual input."""
        if activation == "relu":
            if y is None:
                y = (x - save_mean) * save_scale + (beta if beta is not None else 0)
            dy = dy * (y > 0)
        if dresidual is not None:
            dresidual[...] = dy
        c = x.shape[-1]
        x2 = x.reshape(-1, c).astype(np.float64)
        dy2 = dy.reshape(-1, c).astype(np.float64)
        m = x2.shape[0]
        xhat = (x2 - save_mean) * save_invstd
        db_ = dy2.sum(axis=0)
        dg_ = (dy2 * xhat).sum(axis=0)
        g = gamma.astype(np.float64) if gamma is not None else 1.0
        dx = _out(dx, x.shape, x.dtype)
        dx.reshape(-1, c)[...] = g * save_invstd / m * (m * dy2 - db_ - xhat * dg_)
        if dgamma is not None:
            dgamma[...] = dg_
        if dbeta is not None:
            dbeta[...] = db_
        return dx, dgamma, dbeta

    def batchnorm_backward_inference(self, dy, x, gamma, moving_mean, moving_var, epsilon, *,
                                     y=None, activation=None, dx=None, dgamma=None, dbeta=None,
                                     dresidual=None):
        """Backward of batch norm with constant statistics (an inference-mode
        forward, e.g. a frozen layer): y = gamma * (x - mm) * invstd + beta,
        invstd = 1 / sqrt(mv + epsilon)."""
        c = x.shape[-1]
        xp = self.xp
        if activation == "relu":
            dy = dy * (y > 0)
        if dresidual is not None:
            dresidual[...] = dy
        mean = moving_mean
        invstd = 1.0 / xp.sqrt(moving_var + x.dtype.type(epsilon))
        xhat = (x - mean) * invstd
        if dbeta is not None:
            dbeta[...] = dy.reshape(-1, c).sum(axis=0)
        if dgamma is not None:
            dgamma[...] = (dy * xhat).reshape(-1, c).sum(axis=0)
        g = gamma if gamma is not None else 1.0
        dx = _out(dx, x.shape, x.dtype) if xp is np else (dx if dx is not None else xp.empty_like(x))
        xp.multiply(dy, g * invstd, out=dx)
        return dx, dgamma, dbeta

    # -- layer / group normalisation (moments over some axes) --------------
    def _out_like(self, out, shape, dtype):
        """``out`` checked, or a new array of the backend (NumPy or CuPy)."""
        if out is None:
            return self.xp.empty(tuple(shape), dtype=dtype)
        if out.shape != tuple(shape) or out.dtype != dtype:
            raise ValueError(f"out has shape {out.shape} {out.dtype}, expected {tuple(shape)} "
                             f"{np.dtype(dtype)}")
        return out

    def norm_forward(self, x, axes, gamma=None, beta=None, epsilon=1e-3, out=None,
                     save_mean=None, save_invstd=None):
        """Keras 3's LayerNormalization / GroupNormalization: mean and biased
        variance of x over ``axes`` (kept as size-1 dims), inv = gamma /
        sqrt(var + epsilon), out = x * inv + (beta - mean * inv); gamma and
        beta (None: 1 and 0) broadcast against x."""
        axes = tuple(axes)
        mean = x.mean(axis=axes, keepdims=True, dtype=np.float64)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        invstd = 1.0 / self.xp.sqrt(var + epsilon)
        inv = invstd * gamma if gamma is not None else invstd
        res = -mean * inv
        if beta is not None:
            res = res + beta
        out = self._out_like(out, x.shape, x.dtype)
        out[...] = x * inv + res
        if save_mean is not None:
            save_mean[...] = mean
        if save_invstd is not None:
            save_invstd[...] = invstd
        return out

    def norm_backward(self, dy, x, axes, gamma, save_mean, save_invstd, *, dx=None,
                      dgamma=None, dbeta=None):
        """Gradients of norm_forward: with xhat = (x - mean) * invstd and
        g = dy * gamma, dx = invstd * (g - mean(g) - xhat * mean(g * xhat))
        (means over ``axes``); dgamma / dbeta (given in gamma's broadcast
        shape) sum dy * xhat / dy over the axes where they have size 1."""
        axes = tuple(axes)
        xhat = (x.astype(np.float64) - save_mean) * save_invstd
        dy64 = dy.astype(np.float64)
        g = dy64 * gamma if gamma is not None else dy64
        dx = self._out_like(dx, x.shape, x.dtype)
        dx[...] = save_invstd * (g - g.mean(axis=axes, keepdims=True)
                                 - xhat * (g * xhat).mean(axis=axes, keepdims=True))
        if dgamma is not None:
            dgamma[...] = _sum_to(dy64 * xhat, dgamma.shape)
        if dbeta is not None:
            dbeta[...] = _sum_to(dy64, dbeta.shape)
        return dx, dgamma, dbeta

    # -- preprocessing: rescale, normalise, resize -----------------------------
    def rescale(self, x, scale, offset=0.0, out=None):
        """out = x * scale + offset (Keras' Rescaling; scale and offset
        broadcast along the last axes); rescale(dy, scale) is its backward."""
        out = self._out_like(out, x.shape, x.dtype)
        out[...] = x * scale + offset
        return out

    def normalize(self, x, mean, variance, invert=False, epsilon=1e-7, out=None):
        """Keras' Normalization: (x - mean) / max(sqrt(variance), epsilon), or
        with invert mean + x * max(sqrt(variance), epsilon)."""
        d = self.xp.maximum(self.xp.sqrt(variance), x.dtype.type(epsilon))
        out = self._out_like(out, x.shape, x.dtype)
        out[...] = mean + x * d if invert else (x - mean) / d
        return out

    def normalize_backward(self, dy, variance, invert=False, epsilon=1e-7, out=None):
        d = self.xp.maximum(self.xp.sqrt(variance), dy.dtype.type(epsilon))
        out = self._out_like(out, dy.shape, dy.dtype)
        out[...] = dy * d if invert else dy / d
        return out

    def resize2d(self, x, size, interpolation="bilinear", crop_to_aspect_ratio=False,
                 pad_to_aspect_ratio=False, fill_value=0.0, out=None):
        """Keras' Resizing of NHWC images to ``size`` = (height, width): TF's
        resize with half-pixel centres, antialias off (see resize_weights),
        after Keras' aspect-ratio crop or pad (see resize_box).  bilinear is
        TF's lerp of lerps: along the width, then the height."""
        xp = self.xp
        n, h, w, c = x.shape
        th, tw = size
        top, left, bh, bw = resize_box(h, w, th, tw, crop_to_aspect_ratio, pad_to_aspect_ratio)
        if crop_to_aspect_ratio:
            src = x[:, top:top + bh, left:left + bw]
        elif (bh, bw) != (h, w):
            src = xp.full((n, bh, bw, c), fill_value, x.dtype)
            src[:, top:top + h, left:left + w] = x
        else:
            src = x
        lo_h, hi_h, fh = (xp.asarray(a) for a in resize_weights(bh, th, interpolation))
        lo_w, hi_w, fw = (xp.asarray(a) for a in resize_weights(bw, tw, interpolation))
        out = self._out_like(out, (n, th, tw, c), x.dtype)
        if interpolation == "nearest":
            out[...] = src[:, lo_h][:, :, lo_w]
            return out
        a, b = src[:, :, lo_w], src[:, :, hi_w]
        rows = a + (b - a) * fw.astype(x.dtype)[:, None]
        a, b = rows[:, lo_h], rows[:, hi_h]
        out[...] = a + (b - a) * fh.astype(x.dtype)[:, None, None]
        return out

    def resize2d_backward(self, dy, x_shape, interpolation="bilinear", crop_to_aspect_ratio=False,
                          pad_to_aspect_ratio=False, out=None):
        """dx of resize2d: dy through the transposed interpolation matrices
        (the fill value of a pad gets no gradient)."""
        xp = self.xp
        n, h, w, c = (int(d) for d in x_shape)
        _, th, tw, _ = dy.shape
        top, left, bh, bw = resize_box(h, w, th, tw, crop_to_aspect_ratio, pad_to_aspect_ratio)
        mh = xp.asarray(resize_matrix(bh, th, interpolation).T.astype(dy.dtype))
        mw = xp.asarray(resize_matrix(bw, tw, interpolation).T.astype(dy.dtype))
        g = xp.matmul(mh, dy.reshape(n, th, tw * c)).reshape(n * bh, tw, c)
        g = xp.matmul(mw, g).reshape(n, bh, bw, c)
        out = self._out_like(out, (n, h, w, c), dy.dtype)
        if crop_to_aspect_ratio:
            out[...] = 0
            out[:, top:top + bh, left:left + bw] = g
        else:
            out[...] = g[:, top:top + h, left:left + w]
        return out

    # -- noise (the Philox stream of dropout) ------------------------------
    def spatial_dropout(self, x, rate, seed, offset=0, out=None, mask=None):
        """Dropout of whole channels: the (N, C) dropout mask of (seed,
        offset) -- the dropout stream, scaled by 1 / (1 - rate) -- broadcast
        over the spatial axes of x (N, ..., C); ``mask`` an (N, C) buffer.
        Its own backward (the same mask)."""
        n, c = x.shape[0], x.shape[-1]
        mask = self._out_like(mask, (n, c), x.dtype)
        mask[...] = 1
        self.dropout(mask, rate, seed, offset, out=mask)
        out = self._out_like(out, x.shape, x.dtype)
        self.xp.multiply(x, mask.reshape((n,) + (1,) * (x.ndim - 2) + (c,)), out=out)
        return out

    def gaussian_noise(self, x, stddev, seed, offset=0, out=None):
        """out = x + stddev * z, z standard normal from philox_normal(seed, offset)."""
        z = self.xp.asarray((stddev * philox_normal(x.shape, seed, offset)).astype(x.dtype))
        out = self._out_like(out, x.shape, x.dtype)
        self.xp.add(x, z, out=out)
        return out

    def gaussian_dropout(self, x, rate, seed, offset=0, out=None):
        """out = x * (1 + sqrt(rate / (1 - rate)) * z) (Keras' GaussianDropout);
        its own backward (the same multipliers)."""
        sd = math.sqrt(rate / (1.0 - rate))
        m = self.xp.asarray((1.0 + sd * philox_normal(x.shape, seed, offset)).astype(x.dtype))
        out = self._out_like(out, x.shape, x.dtype)
        self.xp.multiply(x, m, out=out)
        return out

    # -- optimizer updates (in place; Keras 3 formulas) ---------------------
    def sum_squares(self, x):
        return float(np.dot(x.astype(np.float64).ravel(), x.astype(np.float64).ravel()))

    def sgd_update(self, p, g, lr, momentum=0.0, nesterov=False, m=None):
        if momentum == 0:
            p -= p.dtype.type(lr) * g
            return
        m *= m.dtype.type(momentum)
        m -= m.dtype.type(lr) * g
        if nesterov:
            p += m.dtype.type(momentum) * m - m.dtype.type(lr) * g
        else:
            p += m

    def adam_update(self, p, g, m, v, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1):
        t = p.dtype.type
        alpha = lr * math.sqrt(1 - beta_2 ** step) / (1 - beta_1 ** step)
        m += (g - m) * t(1 - beta_1)
        v += (g * g - v) * t(1 - beta_2)
        p -= t(alpha) * m / (np.sqrt(v) + t(epsilon))

    def rmsprop_update(self, p, g, v, lr, rho=0.9, epsilon=1e-7, momentum=0.0, m=None,
                       centered=False, mg=None):
        t = p.dtype.type
        v[...] = t(rho) * v + t(1 - rho) * g * g
        if centered:
            mg[...] = t(rho) * mg + t(1 - rho) * g
            denom = v - mg * mg + t(epsilon)
        else:
            denom = v + t(epsilon)
        inc = t(lr) * g / np.sqrt(denom)
        if momentum > 0:
            m[...] = t(momentum) * m + inc
            p -= m
        else:
            p -= inc

    def adadelta_update(self, p, g, acc_g, acc_d, lr, rho=0.95, epsilon=1e-7):
        t = p.dtype.type
        acc_g[...] = t(rho) * acc_g + t(1 - rho) * g * g
        delta = -np.sqrt(acc_d + t(epsilon)) / np.sqrt(acc_g + t(epsilon)) * g
        acc_d[...] = t(rho) * acc_d + t(1 - rho) * delta * delta
        p += t(lr) * delta



    def weight_decay_update(self, p, lr, weight_decay):
        """Keras 3's decoupled weight decay, before the update: p -= p * wd * lr."""
        p -= p * p.dtype.type(weight_decay * lr)

    def amsgrad_update(self, p, g, m, v, vhat, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                       step=1):
        """Adam(amsgrad=True): the denominator uses the running maximum of v."""
        xp, t = self.xp, p.dtype.type
        alpha = lr * math.sqrt(1 - beta_2 ** step) / (1 - beta_1 ** step)
        m += (g - m) * t(1 - beta_1)
        v += (g * g - v) * t(1 - beta_2)
        xp.maximum(vhat, v, out=vhat)
        p -= t(alpha) * m / (xp.sqrt(vhat) + t(epsilon))

    def adagrad_update(self, p, g, acc, lr, epsilon=1e-7):
        t = p.dtype.type
        acc += g * g
        p -= t(lr) * g / self.xp.sqrt(acc + t(epsilon))

    def adamax_update(self, p, g, m, u, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1):
        xp, t = self.xp, p.dtype.type
        m += (g - m) * t(1 - beta_1)
        xp.maximum(t(beta_2) * u, xp.abs(g), out=u)
        p -= t(lr) * m / (t(1 - beta_1 ** step) * (u + t(epsilon)))

    def nadam_update(self, p, g, m, v, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1,
                     u_product=None):
        """Keras 3's Nadam; ``u_product`` is prod_{k<=step} beta_1 (1 - 0.5 * 0.96**k)
        (the optimizer keeps it as a function of the step)."""
        t = p.dtype.type
        u_t = beta_1 * (1.0 - 0.5 * 0.96 ** step)
        u_t1 = beta_1 * (1.0 - 0.5 * 0.96 ** (step + 1))
        u_prod_t1 = u_product * u_t1
        m += (g - m) * t(1 - beta_1)
        v += (g * g - v) * t(1 - beta_2)
        m_hat = t(u_t1 / (1 - u_prod_t1)) * m + t((1 - u_t) / (1 - u_product)) * g
        v_hat = v / t(1 - beta_2 ** step)
        p -= m_hat * t(lr) / (self.xp.sqrt(v_hat) + t(epsilon))

    def lion_update(self, p, g, m, lr, beta_1=0.9, beta_2=0.99):
        xp, t = self.xp, p.dtype.type
        p -= t(lr) * xp.sign(m * t(beta_1) + g * t(1 - beta_1))
        m *= t(beta_2)
        m += g * t(1 - beta_2)
