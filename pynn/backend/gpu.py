"""GPUOps: the Ops interface on an NVIDIA GPU through CuPy.

GEMMs go to cuBLAS (``cupy.matmul``), everything else to the CUDA kernels of
``nnkernels.cuda`` (compiled at first use by NVRTC): im2col/col2im, bias and
ReLU epilogues, max pooling with argmax, Philox dropout (the same masks as
the CPU, bit for bit), fused softmax cross-entropy, batch norm, optimizer
updates.  Convolution is im2col + one GEMM per batch tile: forward
``cols @ W`` lands in NHWC, ``dW = colsᵀ·dz``, ``dX = col2im(dz·Wᵀ)``, with
the column buffer bounded by ``WORKSPACE_BYTES`` (the batch is tiled).

Determinism: every reduction (bias/batch-norm sums, col2im, pooling
backward, loss) sums fixed blocks in a fixed order without atomics, and
cuBLAS is deterministic for a given GPU and shapes: the same seed gives the
same bits run after run on the same GPU.  GPU and CPU agree within float
rounding (cuBLAS sums in another order; nvcc contracts a*b+c into FMAs).

Importing this module does not import CuPy; ``GPUOps()`` does, and
``get_ops("gpu")`` raises RuntimeError naming what is missing (CuPy, a
device) when it cannot run.

Host synchronisation: ``softmax_xent`` returns the loss sum and the number
of correct rows as lazy numbers (``DeviceResult``): they are copied to
pinned host memory asynchronously and waited for (that copy only) when first
used as numbers, so a training step that reads them after enqueueing its
backward pass keeps the GPU busy.  ``batch_to_device`` copies host batches
through double-buffered pinned memory on a copy stream.
"""
import math
import operator

import numpy as np

from .geometry import conv_geometry, conv_padding, pair as _pair
from .ops import Ops, _out

# Bound of the im2col column buffer of one convolution call (the batch is
# tiled to stay under it).
WORKSPACE_BYTES = 256 << 20
_THREADS = 256          # threads per block of the elementwise kernels
_MAX_BLOCKS = 65535     # grid-stride loops cover the rest
_INT_MAX = 2**31 - 1    # kernels index a tensor with int
_TNAME = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


# ----------------------------------------------------- pure arithmetic (tested on CPU) --

def blocks_for(n, threads=_THREADS, max_blocks=_MAX_BLOCKS):
    """Grid size of a grid-stride loop over n items (at least 1)."""
    return int(max(1, min(-(-int(n) // threads), max_blocks)))


def conv_batch_tile(n, rows_per_item, k, itemsize, budget=WORKSPACE_BYTES):
    """Batch items per im2col tile: the tile's (rows_per_item * items, k)
    column buffer fits in ``budget`` bytes and has < 2**31 elements; at
    least 1 (a single item larger than the budget still runs), at most n."""
    per = max(1, int(rows_per_item) * int(k))
    t = min(int(budget) // (per * int(itemsize)), _INT_MAX // per)
    return int(max(1, min(int(n), t)))


def colsum_blocks(m, min_rows=64, max_blocks=1024):
    """(nb, bs): rows [0, m) in nb blocks of bs rows (the last may be
    shorter, none empty) for the per-channel sums; a function of m only, so
    that the sums have the same bits on every GPU and grid."""
    m = int(m)
    if m <= 0:
        return 0, 1
    nb = min(max_blocks, -(-m // min_rows))
    bs = -(-m // nb)
    return -(-m // bs), bs


def sumsq_blocks(n, min_bs=8192, align=64, max_blocks=256):
    """(nb, bs) of sum_squares, as the CPU kernel splits: a function of n."""
    n = int(n)
    b = max(1, min_bs)
    if -(-n // b) > max_blocks:
        b = -(-n // max_blocks)
    b = -(-b // align) * align
    return (-(-n // b) if n > 0 else 0), b


def dropout_params(rate, seed, offset):
    """(threshold, scale, key words, offset words) of the dropout stream."""
    r = float(rate)
    if not 0.0 <= r < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
    for nm, v in (("seed", seed), ("offset", offset)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) < 2**64:
            raise ValueError(f"{nm} must be an int in [0, 2**64), got {v!r}")
    thr = min(int(math.floor(r * 4294967296.0)), 4294967295)
    s, o = int(seed), int(offset)
    return thr, 1.0 / (1.0 - r), (s & 0xFFFFFFFF, s >> 32), (o & 0xFFFFFFFF, o >> 32)


def gpu_available():
    """(True, "") when CuPy imports and sees a CUDA device, else (False, why)."""
    try:
        import cupy
    except ImportError as e:
        return False, (f"CuPy is not installed ({e}); install the extra: pip install "
                       "'.[gpu]' in the checkout (cupy-cuda13x), or cupy-cuda12x for CUDA 12")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:   # CUDARuntimeError: no driver / no device
        return False, f"no CUDA device: {e}"
    if n < 1:
        return False, "no CUDA device (CuPy sees 0 GPUs)"
    return True, ""


# -------------------------------------------------------------- lazy host values --

class DeviceResult:
    """A few float64 values computed on the device, copied asynchronously to
    pinned host memory; ``values()`` waits for that copy only (an event),
    once.  ``check(values)`` may raise (e.g. labels out of range)."""

    __slots__ = ("_host", "_event", "_vals", "_check")

    def __init__(self, host, event, check=None):
        self._host, self._event, self._vals, self._check = host, event, None, check

    def values(self):
        if self._vals is None:
            self._event.synchronize()
            vals = tuple(float(v) for v in self._host)
            if self._check is not None:
                self._check(vals)          # raises again on every read, not only the first
            self._vals = vals
            self._host = self._event = None
        return self._vals


class LazyNumber:
    """One value of a DeviceResult that behaves as a Python number (float,
    or int when integral=True); reading it waits for the device."""

    __slots__ = ("_res", "_i", "_int")

    def __init__(self, res, i, integral=False):
        self._res, self._i, self._int = res, i, integral

    def item(self):
        v = self._res.values()[self._i]
        return int(round(v)) if self._int and math.isfinite(v) else v

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if not self._int:
            raise TypeError("a float LazyNumber is not an index")
        return int(self.item())

    def __repr__(self):
        return repr(self.item())

    def __format__(self, spec):
        return format(self.item(), spec)

    def __bool__(self):
        return bool(self.item())

    def __hash__(self):
        return hash(self.item())

    def __neg__(self):
        return -self.item()

    def __abs__(self):
        return abs(self.item())

    def __round__(self, nd=None):
        return round(self.item(), nd)


def _binop(fn, reflected):
    def f(self, other):
        if isinstance(other, LazyNumber):
            other = other.item()
        return fn(other, self.item()) if reflected else fn(self.item(), other)
    return f


for _n in ("add", "sub", "mul", "truediv", "floordiv", "pow"):
    setattr(LazyNumber, f"__{_n}__", _binop(getattr(operator, _n), False))
    setattr(LazyNumber, f"__r{_n}__", _binop(getattr(operator, _n), True))
for _n in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(LazyNumber, f"__{_n}__", _binop(getattr(operator, _n), False))
del _n


# -------------------------------------------------------------- host -> device --

class _Staging:
    """Two pinned host buffers and two device buffers for one batch shape.
    Call k copies into buffer k % 2 on the copy stream once the compute work
    that read that buffer (call k - 2's step) is done, so the copy overlaps
    the previous step."""

    def __init__(self, cupy, cupyx, shape, dtype):
        self.host = [cupyx.empty_pinned(shape, dtype) for _ in range(2)]
        self.dev = [cupy.empty(shape, dtype) for _ in range(2)]
        ev = cupy.cuda.Event
        self.copied = [ev(disable_timing=True) for _ in range(2)]   # H2D of buffer i done
        self.freed = [ev(disable_timing=True) for _ in range(2)]    # its readers done
        self.i = 1


# ----------------------------------------------------------------- the ops --

class GPUOps(Ops):
    """Ops on the current CUDA device (float32 / float64; float16 and other
    dtypes fall back to the CuPy versions of the Ops reference)."""

    name = "gpu"
    workspace_bytes = WORKSPACE_BYTES   # im2col buffer bound (tests lower it to force tiles)

    def __init__(self):
        ok, why = gpu_available()
        if not ok:
            raise RuntimeError(f"the GPU backend is not available: {why}")
        import cupy
        import cupyx
        from nnkernels import cuda
        self.xp = cupy
        self._cupyx = cupyx
        self._cuda = cuda
        self._ws = {}
        self._staging = {}
        self._copy_stream = None

    def check_precision(self, precision):
        """float32 products only: mixed_bfloat16 layers are refused when they
        are placed in a model on this backend (Layer.bind), not in a kernel."""
        if super().check_precision(precision):
            raise NotImplementedError(
                "mixed_bfloat16 on the GPU backend is not supported yet; use float32 on the "
                "GPU or mixed_bfloat16 on the CPU")
        return False

    # -- plumbing -------------------------------------------------------------
    def _fn(self, module, name, dtype=None):
        expr = name if dtype is None else f"{name}<{_TNAME[np.dtype(dtype)]}>"
        return self._cuda.function(module, expr)

    def _launch(self, module, name, dtype, n, args, threads=_THREADS):
        if n > 0:
            self._fn(module, name, dtype)((blocks_for(n, threads),), (threads,), args)

    def _fast(self, *arrays):
        """True when every array is a C-contiguous float32/float64 CuPy array
        of one dtype (the kernels' domain)."""
        cp = self.xp
        dt = arrays[0].dtype
        return dt in _TNAME and all(isinstance(a, cp.ndarray) and a.dtype == dt and
                                    a.flags.c_contiguous for a in arrays if a is not None)

    def _c(self, a, name):
        """a as a C-contiguous CuPy array for the kernels (None stays None):
        TypeError for host arrays and for floats other than float32/64."""
        if a is None:
            return None
        cp = self.xp
        if not isinstance(a, cp.ndarray):
            raise TypeError(f"{name} must be a cupy.ndarray on the GPU backend (move data with "
                            f"ops.asarray / ops.batch_to_device), got {type(a).__name__}")
        if a.dtype.kind == "f" and a.dtype not in _TNAME:
            raise TypeError(f"{name}: the GPU kernels take float32 or float64, got {a.dtype}")
        return a if a.flags.c_contiguous else cp.ascontiguousarray(a)

    def _same_dtype(self, named):
        dts = {nm: a.dtype for nm, a in named if a is not None}
        if len(set(dts.values())) > 1:
            raise TypeError(f"arrays of different dtypes: {dts}")

    @staticmethod
    def _per_channel(named, c):
        for nm, a in named:
            if a is not None and a.shape != (c,):
                raise ValueError(f"{nm} must have shape ({c},), got {a.shape}")

    def _out(self, out, shape, dtype):
        out = _out_cupy(self.xp, out, shape, dtype)
        if not out.flags.c_contiguous:
            raise ValueError("out must be C-contiguous")
        return out

    def _workspace(self, key, size, dtype):
        """A flat device buffer of ``size`` elements, reused across calls
        (grown when needed; never freed)."""
        dtype = np.dtype(dtype)
        nbytes = max(1, int(size) * dtype.itemsize)
        buf = self._ws.get(key)
        if buf is None or buf.size < nbytes:
            buf = self._ws[key] = self.xp.empty(nbytes, dtype=np.uint8)
        return buf[:int(size) * dtype.itemsize].view(dtype)

    @staticmethod
    def _scalar(dtype, v):
        return np.dtype(dtype).type(v)

    # -- memory -------------------------------------------------------------
    def to_numpy(self, x):
        return self.xp.asnumpy(x)

    def batch_to_device(self, x, key="x"):
        cp = self.xp
        if isinstance(x, cp.ndarray):
            return x
        x = np.ascontiguousarray(x)
        k = (key, x.shape, x.dtype.str)
        slot = self._staging.get(k)
        if slot is None:
            slot = self._staging[k] = _Staging(cp, self._cupyx, x.shape, x.dtype)
        if self._copy_stream is None:
            self._copy_stream = cp.cuda.Stream(non_blocking=True)
        compute, copy = cp.cuda.get_current_stream(), self._copy_stream
        prev = slot.i
        i = slot.i = 1 - prev
        slot.freed[prev].record(compute)      # the last step's reads of dev[prev] are queued
        slot.copied[i].synchronize()          # host[i] is no longer being copied from
        np.copyto(slot.host[i], x)
        copy.wait_event(slot.freed[i])        # dev[i]'s readers (two calls ago) are done
        rt = cp.cuda.runtime
        rt.memcpyAsync(slot.dev[i].data.ptr, slot.host[i].ctypes.data, x.nbytes,
                       rt.memcpyHostToDevice, copy.ptr)
        slot.copied[i].record(copy)
        compute.wait_event(slot.copied[i])
        return slot.dev[i]

    # -- activations --------------------------------------------------------
    def activation(self, name, x, out=None, **params):
        if name == "relu" and not params and self._fast(x, out):
            out = self._out(out, x.shape, x.dtype)
            self._launch("conv", "nk_relu", x.dtype, x.size, (x, out, np.int64(x.size)))
            return out
        return super().activation(name, x, out, **params)

    def activation_backward(self, name, dy, y, out=None, x=None, **params):
        if name == "relu" and not params and self._fast(dy, y, out):
            return self._relu_bwd(dy, y, self._out(out, dy.shape, dy.dtype))
        return super().activation_backward(name, dy, y, out, x, **params)

    def _relu_bwd(self, dy, y, out):
        self._launch("conv", "nk_relu_backward", dy.dtype, dy.size,
                     (dy, y, out, np.int64(dy.size)))
        return out

    def _dz(self, dy, y, activation):
        """dz of a fused ReLU (a workspace), or dy itself."""
        if activation != "relu":
            return dy
        dz = self._workspace("dz", dy.size, dy.dtype).reshape(dy.shape)
        return self._relu_bwd(dy, y, dz)

    def _bias_act(self, y, b, activation):
        act = 1 if activation == "relu" else 0
        if b is None and not act:
            return
        c = y.shape[-1]
        self._per_channel((("bias", b),), c)
        self._launch("conv", "nk_bias_act", y.dtype, y.size,
                     (y, b if b is not None else np.uint64(0), np.int64(y.size), np.int32(c),
                      np.int32(act)))

    def _colsum(self, a2, out):
        """out[j] = sum over rows of the (m, c) array a2 (deterministic)."""
        m, c = a2.shape
        nb, bs = colsum_blocks(m)
        if nb == 0:
            out[...] = 0
            return out
        part = self._workspace("colsum", nb * 2 * c, np.float64)
        self._fn("conv", f"nk_colsums<{_TNAME[a2.dtype]}, 0>")(
            (-(-c // 32), nb), (32, 8),
            (a2, np.uint64(0), np.uint64(0), np.int64(m), np.int32(c), np.int64(bs), part))
        self._launch("conv", "nk_colsum_finish", a2.dtype, c, (part, np.int32(nb), np.int32(c), out))
        return out

    # -- dense --------------------------------------------------------------
    def dense_forward(self, x, w, b=None, activation=None, out=None, *, precision=None):
        self.check_precision(precision)
        if not self._fast(x, w, b, out):
            return super().dense_forward(x, w, b, activation, out)
        out = self._out(out, (x.shape[0], w.shape[1]), x.dtype)
        self.xp.matmul(x, w, out=out)
        self._bias_act(out, b, activation)
        return out

    def dense_backward(self, dy, x, w, y=None, activation=None, *, need_dx=True,
                       dx=None, dw=None, db=None, precision=None):
        self.check_precision(precision)
        if not self._fast(dy, x, w, y, dx, dw, db):
            return super().dense_backward(dy, x, w, y, activation, need_dx=need_dx, dx=dx,
                                          dw=dw, db=db)
        cp = self.xp
        dz = self._dz(dy, y, activation)
        dw = self._out(dw, w.shape, x.dtype)
        cp.matmul(x.T, dz, out=dw)
        if db is not None:
            self._colsum(dz, self._out(db, (w.shape[1],), x.dtype))
        if need_dx:
            dx = self._out(dx, x.shape, x.dtype)
            cp.matmul(dz, w.T, out=dx)
        else:
            dx = None
        return dx, dw, db

    # -- convolution --------------------------------------------------------
    @staticmethod
    def _is_pointwise(g):
        return (g["kh"], g["kw"], g["sh"], g["sw"], g["pt"], g["pb"], g["pl"], g["pr"]) == \
            (1, 1, 1, 1, 0, 0, 0, 0)

    def _geom_args(self, g, n):
        return tuple(np.int32(v) for v in (n, g["h"], g["w"], g["c"], g["kh"], g["kw"], g["sh"],
                                           g["sw"], g["dh"], g["dw"], g["pt"], g["pl"], g["oh"],
                                           g["ow"]))

    def _check_int32(self, g):
        # per-tile kernels index with int (im2col: at least one image's column block per
        # tile); whole-batch ones need the tensors below 2**31 elements too
        if max(g["n"] * g["h"] * g["w"] * g["c"], g["n"] * g["oh"] * g["ow"] * g["f"],
               g["oh"] * g["ow"] * g["kh"] * g["kw"] * g["c"]) > _INT_MAX:
            raise ValueError(f"tensor too large for the GPU kernels (> 2**31 elements): {g}")

    def _tiles(self, g, dtype):
        k = g["kh"] * g["kw"] * g["c"]
        rows = g["oh"] * g["ow"]
        tile = conv_batch_tile(g["n"], rows, k, np.dtype(dtype).itemsize, self.workspace_bytes)
        cols = self._workspace("cols", tile * rows * k, dtype)
        for b0 in range(0, g["n"], tile):
            b1 = min(g["n"], b0 + tile)
            yield b0, b1, cols[:(b1 - b0) * rows * k].reshape((b1 - b0) * rows, k)

    def conv2d_forward(self, x, w, b=None, *, strides=1, padding="valid", dilation=1, groups=1,
                       activation=None, out=None, precision=None):
        self.check_precision(precision)
        if groups != 1:   # one GPU convolution per group (the reference's split)
            return super().conv2d_forward(x, w, b, strides=strides, padding=padding,
                                          dilation=dilation, groups=groups,
                                          activation=activation, out=out)
        x, w, b = self._c(x, "x"), self._c(w, "w"), self._c(b, "b")
        self._same_dtype((("x", x), ("w", w), ("b", b)))
        g = conv_geometry(x.shape, w.shape, strides, padding, dilation)
        out = self._out(out, (g["n"], g["oh"], g["ow"], g["f"]), x.dtype)
        if out.size == 0:
            return out
        self._check_int32(g)
        f = g["f"]
        w2 = w.reshape(-1, f)
        if self._is_pointwise(g):
            self.xp.matmul(x.reshape(-1, g["c"]), w2, out=out.reshape(-1, f))
        else:
            for b0, b1, cols in self._tiles(g, x.dtype):
                self._launch("conv", "nk_im2col", x.dtype, cols.size,
                             (x[b0:b1], cols) + self._geom_args(g, b1 - b0))
                self.xp.matmul(cols, w2, out=out[b0:b1].reshape(-1, f))
        self._bias_act(out, b, activation)
        return out

    def conv2d_backward(self, dy, x, w, y=None, activation=None, *, strides=1, padding="valid",
                        dilation=1, groups=1, need_dx=True, need_dw=True, dx=None, dw=None,
                        db=None, accumulate_dx=False, precision=None):
        self.check_precision(precision)
        if groups != 1 or not need_dw or accumulate_dx:
            # grouped convolutions, data-only gradients (Conv2DTranspose) and a
            # dx added to another consumer's (graph models): the reference ops
            # on CuPy arrays (no CUDA kernel of ours yet)
            return super().conv2d_backward(dy, x, w, y, activation, strides=strides,
                                           padding=padding, dilation=dilation, groups=groups,
                                           need_dx=need_dx, need_dw=need_dw, dx=dx, dw=dw,
                                           db=db, accumulate_dx=accumulate_dx)
        dy, x, w, y = self._c(dy, "dy"), self._c(x, "x"), self._c(w, "w"), self._c(y, "y")
        self._same_dtype((("dy", dy), ("x", x), ("w", w), ("y", y)))
        cp = self.xp
        g = conv_geometry(x.shape, w.shape, strides, padding, dilation)
        f, k = g["f"], g["kh"] * g["kw"] * g["c"]
        want = (g["n"], g["oh"], g["ow"], f)
        for nm, a in (("dy", dy), ("y", y)):
            if a is not None and a.shape != want:
                raise ValueError(f"{nm} must have the output's shape {want}, got {a.shape}")
        dw = self._out(dw, w.shape, x.dtype)
        dx = self._out(dx, x.shape, x.dtype) if need_dx else None
        if dy.size == 0:
            dw[...] = 0
            if db is not None:
                db[...] = 0
            if dx is not None:
                dx[...] = 0
            return dx, dw, db
        self._check_int32(g)
        dz = self._dz(dy, y, activation)
        if db is not None:
            self._colsum(dz.reshape(-1, f), self._out(db, (f,), x.dtype))
        w2, dw2 = w.reshape(k, f), dw.reshape(k, f)
        if self._is_pointwise(g):
            dz2 = dz.reshape(-1, f)
            cp.matmul(x.reshape(-1, g["c"]).T, dz2, out=dw2)
            if dx is not None:
                cp.matmul(dz2, w2.T, out=dx.reshape(-1, g["c"]))
            return dx, dw, db
        for b0, b1, cols in self._tiles(g, x.dtype):
            geo = self._geom_args(g, b1 - b0)
            self._launch("conv", "nk_im2col", x.dtype, cols.size, (x[b0:b1], cols) + geo)
            dzt = dz[b0:b1].reshape(-1, f)
            if b0 == 0:
                cp.matmul(cols.T, dzt, out=dw2)
            else:   # later tiles: add in tile order (deterministic)
                tmp = self._workspace("dw_tile", k * f, x.dtype).reshape(k, f)
                cp.matmul(cols.T, dzt, out=tmp)
                dw2 += tmp
            if dx is not None:
                cp.matmul(dzt, w2.T, out=cols)            # dcols, in the same buffer
                xt = dx[b0:b1]
                self._launch("conv", "nk_col2im", x.dtype, xt.size, (cols, xt) + geo)
        return dx, dw, db

    def conv2d_backward_data(self, dy, w, x_shape, *, strides=1, padding="valid", dilation=1,
                             groups=1, out=None, precision=None):
        self.check_precision(precision)
        return super().conv2d_backward_data(dy, w, x_shape, strides=strides, padding=padding,
                                            dilation=dilation, groups=groups, out=out)

    # -- pooling ------------------------------------------------------------
    @staticmethod
    def _pool_geom(x_shape, pool_size, strides, padding):
        ph, pw = _pair(pool_size, "pool_size")
        sh, sw = _pair(strides if strides is not None else (ph, pw), "strides")
        n, h, w_, c = x_shape
        oh, pt, _ = conv_padding(h, ph, sh, 1, padding)
        ow, pl, _ = conv_padding(w_, pw, sw, 1, padding)
        return (n, h, w_, c, ph, pw, sh, sw, pt, pl, oh, ow)

    def max_pool2d(self, x, pool_size=(2, 2), strides=None, padding="valid", out=None, indices=None):
        x = self._c(x, "x")
        geo = self._pool_geom(x.shape, pool_size, strides, padding)
        n, c, oh, ow = geo[0], geo[3], geo[10], geo[11]
        out = self._out(out, (n, oh, ow, c), x.dtype)
        indices = _out_cupy(self.xp, indices, (n, oh, ow, c), np.int32)
        if not indices.flags.c_contiguous:
            raise ValueError("indices must be C-contiguous")
        if x.size > _INT_MAX:
            raise ValueError(f"x has {x.size} elements: more than the GPU kernels index (2**31)")
        self._launch("pool", "nk_maxpool_fwd", x.dtype, out.size,
                     (x, out, indices) + tuple(np.int32(v) for v in geo))
        return out, indices

    def max_pool2d_backward(self, dy, indices, x_shape, out=None, y=None, **geometry):
        cp = self.xp
        x_shape = tuple(int(v) for v in x_shape)
        out = _out_cupy(cp, out, x_shape, dy.dtype)
        dy, indices = self._c(dy, "dy"), self._c(indices, "indices")
        if y is not None:  # the ReLU derivative of the pooled values
            dy = cp.where(self._c(y, "y") > 0, dy, cp.zeros((), dy.dtype))
        if indices.dtype != np.int32 or indices.shape != dy.shape:
            raise ValueError(f"indices must be int32 of dy's shape {dy.shape}, got "
                             f"{indices.dtype} {indices.shape}")
        if "pool_size" in geometry and out.flags.c_contiguous:
            geo = self._pool_geom(x_shape, geometry["pool_size"], geometry.get("strides"),
                                  geometry.get("padding", "valid"))
            if (geo[0], geo[10], geo[11], geo[3]) != tuple(dy.shape):
                raise ValueError(f"dy has shape {dy.shape}; the pooling geometry gives "
                                 f"{(geo[0], geo[10], geo[11], geo[3])}")
            self._launch("pool", "nk_maxpool_bwd", dy.dtype, out.size,
                         (dy, indices, out) + tuple(np.int32(v) for v in geo))
            return out
        # without the geometry: a scatter (atomics; deterministic only when no
        # input element is the maximum of two windows)
        n, h, w_, c = x_shape
        out[...] = 0
        ni = cp.arange(n, dtype=np.int64)[:, None, None, None]
        ci = cp.arange(c, dtype=np.int64)[None, None, None, :]
        self._cupyx.scatter_add(out.reshape(n, h * w_, c),
                                (cp.broadcast_to(ni, indices.shape), indices,
                                 cp.broadcast_to(ci, indices.shape)), dy)
        return out

    # -- dropout ------------------------------------------------------------
    def dropout(self, x, rate, seed, offset=0, out=None):
        if out is x and out is not None:
            if not getattr(x, "flags", None) or not x.flags.c_contiguous:
                raise ValueError("in-place dropout needs a C-contiguous array")
            out = x = self._c(x, "x")
        else:
            x = self._c(x, "x")
            out = self._out(out, x.shape, x.dtype)
        thr, scale, (k0, k1), (o0, o1) = dropout_params(rate, seed, offset)
        if thr == 0:
            if out is not x:
                out[...] = x
            return out
        n = x.size
        u = np.uint32
        self._launch("dropout", "nk_dropout", x.dtype, (n + 3) // 4,
                     (x, out, np.int64(n), u(thr), self._scalar(x.dtype, scale), u(k0), u(k1),
                      u(o0), u(o1)))
        return out

    def dropout_backward(self, dy, rate, seed, offset=0, out=None):
        return GPUOps.dropout(self, dy, rate, seed, offset, out)

    def dropout_keep_mask(self, shape, rate, seed, offset=0):
        """The keep mask (bool, on the device) of dropout on this shape."""
        thr, _, (k0, k1), (o0, o1) = dropout_params(rate, seed, offset)
        m = self.xp.empty(tuple(shape), dtype=np.uint8)
        u = np.uint32
        self._launch("dropout", "nk_dropout_mask", None, (m.size + 3) // 4,
                     (m, np.int64(m.size), u(thr), u(k0), u(k1), u(o0), u(o1)))
        return m.view(np.bool_)

    # -- losses -------------------------------------------------------------
    def softmax_xent(self, logits, labels, *, dlogits=None, probs=None, from_logits=True,
                     grad_scale=None):
        """As Ops.softmax_xent, but returns (loss, correct) as LazyNumbers
        (read without a full synchronisation; see the module docstring).
        Labels out of range raise ValueError when the result is read."""
        cp = self.xp
        logits = self._c(logits, "logits")
        for nm, a in (("dlogits", dlogits), ("probs", probs)):
            if a is not None:
                self._out(a, logits.shape, logits.dtype)
        n, k = logits.shape
        labels = cp.asarray(labels)
        if labels.ndim == 1:
            if labels.shape[0] != n:
                raise ValueError(f"labels have shape {labels.shape}, expected ({n},)")
            if labels.dtype not in (np.int32, np.int64):
                labels = labels.astype(np.int64)
            kind, lab, tgt = (1 if labels.dtype == np.int32 else 2), cp.ascontiguousarray(labels), None
        else:
            if labels.shape != logits.shape:
                raise ValueError(f"targets have shape {labels.shape}, expected {logits.shape}")
            kind, lab, tgt = 0, None, cp.ascontiguousarray(labels, dtype=logits.dtype)
        gs = (1.0 / n if n > 0 else 1.0) if grad_scale is None else float(grad_scale)
        res = cp.empty(3, dtype=np.float64) if n > 0 and k > 0 else cp.zeros(3, dtype=np.float64)
        if n > 0 and k > 0:
            rows = self._workspace("xent_rows", 3 * n, np.float64)
            null = np.uint64(0)
            warps_per_block = _THREADS // 32
            self._fn("train", "nk_softmax_xent", logits.dtype)(
                (blocks_for(n, warps_per_block),), (_THREADS,),
                (logits, lab if lab is not None else null, tgt if tgt is not None else null,
                 np.int32(kind), np.int32(n), np.int32(k), np.int32(bool(from_logits)),
                 np.float64(gs), dlogits if dlogits is not None else null,
                 probs if probs is not None else null, rows))
            self._fn("train", "nk_sum_rows")((1,), (_THREADS,),
                                             (rows, np.int64(n), np.int32(3), res, np.int32(0)))
        result = self._to_host_async(res, _label_check(k))
        return LazyNumber(result, 0), LazyNumber(result, 1, integral=True)

    def _to_host_async(self, dev, check=None):
        cp = self.xp
        host = self._cupyx.empty_pinned(dev.shape, dev.dtype)
        stream = cp.cuda.get_current_stream()
        rt = cp.cuda.runtime
        rt.memcpyAsync(host.ctypes.data, dev.data.ptr, dev.nbytes, rt.memcpyDeviceToHost,
                       stream.ptr)
        ev = cp.cuda.Event(disable_timing=True)
        ev.record(stream)
        return DeviceResult(host, ev, check)

    # -- batch normalisation -----------------------------------------------
    # the ReLU mask of the batch-norm backward is read from y
    bn_relu_mask_from_x = False

    def batchnorm_forward(self, x, gamma, beta, *, training, moving_mean, moving_var,
                          momentum=0.99, epsilon=1e-3, out=None, save_mean=None, save_invstd=None,
                          residual=None, activation=None):
        out = self._bn_forward(x, gamma, beta, training=training, moving_mean=moving_mean,
                               moving_var=moving_var, momentum=momentum, epsilon=epsilon, out=out,
                               save_mean=save_mean, save_invstd=save_invstd)
        if residual is not None:          # fused epilogue of the CPU kernel: extra passes here
            out += self._c(residual, "residual")
        if activation == "relu":
            self.xp.maximum(out, 0, out=out)
        return out

    def _bn_forward(self, x, gamma, beta, *, training, moving_mean, moving_var,
                    momentum=0.99, epsilon=1e-3, out=None, save_mean=None, save_invstd=None):
        x, gamma, beta = self._c(x, "x"), self._c(gamma, "gamma"), self._c(beta, "beta")
        self._same_dtype((("x", x), ("gamma", gamma), ("beta", beta)))
        c = x.shape[-1]
        self._per_channel((("gamma", gamma), ("beta", beta)), c)
        for nm, a in (("moving_mean", moving_mean), ("moving_var", moving_var),
                      ("save_mean", save_mean), ("save_invstd", save_invstd)):
            if a is not None:          # (C,) state written in place: must be usable as is
                self._out(a, (c,), x.dtype)
        if not training and (moving_mean is None or moving_var is None):
            raise ValueError("batchnorm_forward(training=False) needs moving_mean and moving_var")
        m = x.size // c if c else 0
        out = self._out(out, x.shape, x.dtype)
        if c == 0:
            return out
        null = np.uint64(0)
        opt = lambda a: a if a is not None else null   # noqa: E731
        coef = self._workspace("bn_coef", 3 * c, x.dtype)
        if training:
            if m == 0:
                raise ValueError(f"batchnorm_forward(training=True) needs at least one row, "
                                 f"got x shape {x.shape}")
            nb, bs = colsum_blocks(m)
            part = self._workspace("colsum", nb * 2 * c, np.float64)
            self._fn("conv", f"nk_colsums<{_TNAME[x.dtype]}, 1>")(
                (-(-c // 32), nb), (32, 8),
                (x, null, null, np.int64(m), np.int32(c), np.int64(bs), part))
            self._launch("train", "nk_bn_stats", x.dtype, c,
                         (part, np.int32(nb), x, np.int64(m), np.int32(c), opt(gamma), opt(beta),
                          np.float64(epsilon), np.float64(momentum), opt(moving_mean),
                          opt(moving_var), opt(save_mean), opt(save_invstd), coef))
        else:
            self._launch("train", "nk_bn_infer_coef", x.dtype, c,
                         (opt(gamma), opt(beta), moving_mean, moving_var, np.int32(c),
                          np.float64(epsilon), coef))
        self._launch("train", "nk_bn_apply", x.dtype, x.size,
                     (x, out, np.int64(x.size), np.int32(c), coef))
        return out

    def batchnorm_backward(self, dy, x, gamma, save_mean, save_invstd, *, y=None, activation=None,
                           dx=None, dgamma=None, dbeta=None, dresidual=None):
        if activation == "relu":
            dy = dy * (self._c(y, "y") > 0)
        if dresidual is not None:
            dresidual[...] = dy
        return self._bn_backward(dy, x, gamma, save_mean, save_invstd, dx=dx, dgamma=dgamma,
                                 dbeta=dbeta)

    def _bn_backward(self, dy, x, gamma, save_mean, save_invstd, *, dx=None, dgamma=None,
                     dbeta=None):
        dy, x, gamma = self._c(dy, "dy"), self._c(x, "x"), self._c(gamma, "gamma")
        save_mean, save_invstd = self._c(save_mean, "save_mean"), self._c(save_invstd, "save_invstd")
        if save_mean is None or save_invstd is None:
            raise ValueError("batchnorm_backward needs the forward's save_mean and save_invstd")
        self._same_dtype((("dy", dy), ("x", x), ("gamma", gamma), ("save_mean", save_mean),
                          ("save_invstd", save_invstd)))
        if dy.shape != x.shape:
            raise ValueError(f"dy must have x's shape {x.shape}, got {dy.shape}")
        c = x.shape[-1]
        self._per_channel((("gamma", gamma), ("save_mean", save_mean),
                           ("save_invstd", save_invstd)), c)
        for nm, a in (("dgamma", dgamma), ("dbeta", dbeta)):
            if a is not None:
                self._out(a, (c,), x.dtype)
        m = x.size // c if c else 0
        dx = self._out(dx, x.shape, x.dtype)
        if m == 0 or c == 0:
            for a in (dgamma, dbeta):
                if a is not None:
                    a[...] = 0
            return dx, dgamma, dbeta
        null = np.uint64(0)
        opt = lambda a: a if a is not None else null   # noqa: E731
        nb, bs = colsum_blocks(m)
        part = self._workspace("colsum", nb * 2 * c, np.float64)
        coef = self._workspace("bn_coef", 3 * c, x.dtype)
        self._fn("conv", f"nk_colsums<{_TNAME[x.dtype]}, 2>")(
            (-(-c // 32), nb), (32, 8),
            (dy, x, save_mean, np.int64(m), np.int32(c), np.int64(bs), part))
        self._launch("train", "nk_bn_bwd_coef", x.dtype, c,
                     (part, np.int32(nb), np.int64(m), np.int32(c), opt(gamma), save_invstd,
                      opt(dgamma), opt(dbeta), coef))
        self._launch("train", "nk_bn_dx", x.dtype, x.size,
                     (dy, x, dx, np.int64(x.size), np.int32(c), save_mean, coef))
        return dx, dgamma, dbeta

    # -- optimizer updates (in place; Keras 3 formulas) ---------------------
    def sum_squares(self, x):
        if not self._fast(x):
            return float(self.xp.vdot(x.astype(np.float64).ravel(), x.astype(np.float64).ravel()))
        nb, bs = sumsq_blocks(x.size)
        if nb == 0:
            return 0.0
        part = self._workspace("sumsq", nb, np.float64)
        res = self.xp.empty(1, dtype=np.float64)
        self._fn("train", "nk_sumsq_part", x.dtype)((nb,), (_THREADS,),
                                                     (x, np.int64(x.size), np.int64(bs), part))
        self._fn("train", "nk_sum_rows")((1,), (_THREADS,),
                                         (part, np.int64(nb), np.int32(1), res, np.int32(0)))
        return float(res.get()[0])

    def sgd_update(self, p, g, lr, momentum=0.0, nesterov=False, m=None):
        if not self._fast(p, g, m):
            return super().sgd_update(p, g, lr, momentum, nesterov, m)
        t = p.dtype.type
        self._launch("train", "nk_sgd", p.dtype, p.size,
                     (p, g, m if momentum != 0 else np.uint64(0), np.int64(p.size), t(lr),
                      t(momentum), np.int32(bool(nesterov))))

    def adam_update(self, p, g, m, v, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1):
        if not self._fast(p, g, m, v):
            return super().adam_update(p, g, m, v, lr, beta_1, beta_2, epsilon, step)
        t = p.dtype.type
        alpha = lr * math.sqrt(1.0 - beta_2 ** step) / (1.0 - beta_1 ** step)
        self._launch("train", "nk_adam", p.dtype, p.size,
                     (p, g, m, v, np.int64(p.size), t(alpha), t(1.0 - beta_1), t(1.0 - beta_2),
                      t(epsilon)))

    def rmsprop_update(self, p, g, v, lr, rho=0.9, epsilon=1e-7, momentum=0.0, m=None,
                       centered=False, mg=None):
        if not self._fast(p, g, v, m, mg):
            return super().rmsprop_update(p, g, v, lr, rho, epsilon, momentum, m, centered, mg)
        t = p.dtype.type
        null = np.uint64(0)
        self._launch("train", "nk_rmsprop", p.dtype, p.size,
                     (p, g, v, m if momentum > 0 else null, mg if centered else null,
                      np.int64(p.size), t(lr), t(rho), t(1.0 - rho), t(epsilon), t(momentum)))

    def adadelta_update(self, p, g, acc_g, acc_d, lr, rho=0.95, epsilon=1e-7):
        if not self._fast(p, g, acc_g, acc_d):
            return super().adadelta_update(p, g, acc_g, acc_d, lr, rho, epsilon)
        t = p.dtype.type
        self._launch("train", "nk_adadelta", p.dtype, p.size,
                     (p, g, acc_g, acc_d, np.int64(p.size), t(lr), t(rho), t(1.0 - rho),
                      t(epsilon)))


def _out_cupy(cp, out, shape, dtype):
    if out is None:
        return cp.empty(tuple(shape), dtype=dtype)
    if not isinstance(out, cp.ndarray):
        raise TypeError(f"out must be a cupy.ndarray on the GPU backend, got {type(out).__name__}")
    return _out(out, shape, dtype)


def _label_check(k):
    def check(vals):
        if vals[2] > 0:
            raise ValueError(f"labels must lie in [0, {k}): {int(vals[2])} row(s) out of range")
    return check


_GPU = None


def get_gpu_ops():
    """The process's GPUOps (RuntimeError naming what is missing if none)."""
    global _GPU
    if _GPU is None:
        _GPU = GPUOps()
    return _GPU
