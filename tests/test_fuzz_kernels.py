"""Seeded fuzzing of the public nnkernels entry points.

Every call gets adversarial arguments: wrong dtypes and ndim, zero, negative
and huge sizes, mismatched shapes, non-contiguous, negative-stride,
misaligned and read-only views, NaN/inf, absurd strides / paddings /
dilations / pool sizes / thread counts, out-of-range indices, junk objects.
A call may only return or raise ValueError / TypeError (MemoryError for a
request that is honestly too big); any other exception, a crash, a write
outside an output buffer (guard elements around every out= buffer) or a
change to an input fails.

Calls run in batches, each batch in a fresh subprocess, so a crash is
counted (and its seed reported) instead of ending the test run.

  CI (default):   NNKERNELS_FUZZ_CALLS=2000 (about 40 s on 2 busy cores)
  Long run:       NNKERNELS_FUZZ_CALLS=100000 NNKERNELS_FUZZ_SEED=7 \\
                  .venv/bin/pytest -q -p no:cacheprovider tests/test_fuzz_kernels.py
  One batch by hand (prints each call):
                  .venv/bin/python tests/test_fuzz_kernels.py SEED CALLS -v
"""
import math
import os
import subprocess
import sys
import traceback

import numpy as np

ALLOWED = (ValueError, TypeError, MemoryError)
GUARD = 16  # guard elements before and after each output buffer


# --------------------------------------------------------------- values --

class Gen:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def p(self, prob):
        return self.rng.random() < prob

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def int_arg(self, good):
        """Mostly a sensible int, sometimes an absurd value or type."""
        if self.p(0.75):
            return good
        return self.pick([0, -1, -2 ** 31, 2 ** 31 - 1, 2 ** 31, 2 ** 40, 2 ** 63, 10 ** 400,
                          1.5, 2.0, float("nan"), True, None, "2", (1, 2, 3), np.int64(3),
                          np.uint64(2 ** 64 - 1), [2, 2]])

    def float_arg(self, good):
        if self.p(0.75):
            return good
        return self.pick([0.0, -1.0, 1.0, float("nan"), float("inf"), -float("inf"), 1e308,
                          10 ** 400, 5e-324, True, None, "0.1", np.float32(0.5), 2 ** 64])

    def dtype(self, good):
        if self.p(0.85):
            return np.dtype(good)
        return np.dtype(self.pick(["float16", "int32", "int64", "uint8", "complex64", "bool",
                                   ">f4", ">f8", "float32", "float64"]))

    def shape(self, good):
        """The good shape, or one perturbed: a dim off by one, zero, ndim
        changed."""
        if self.p(0.7):
            return tuple(good)
        s = list(good)
        r = self.rng.random()
        if r < 0.3 and s:
            i = int(self.rng.integers(len(s)))
            s[i] = max(0, s[i] + self.pick([-1, 1, 2]))
        elif r < 0.5 and s:
            s[int(self.rng.integers(len(s)))] = 0
        elif r < 0.7:
            s = s[:-1] if s else [3]
        else:
            s = s + [self.pick([1, 2])]
        return tuple(s)

    def values(self, shape, dt):
        n = int(np.prod(shape)) if shape else 1
        if dt.kind == "f":
            v = self.rng.standard_normal(n) * self.pick([1.0, 1.0, 1e-3, 1e30])
            if n and self.p(0.15):
                v[self.rng.integers(0, n, size=max(1, n // 5))] = self.pick(
                    [np.nan, np.inf, -np.inf, 5e-324, -0.0])
        elif dt.kind == "c":
            v = self.rng.standard_normal(n) + 0j
        elif dt.kind == "b":
            v = self.rng.random(n) < 0.5
        else:
            v = self.rng.integers(-3, 10, n)
        with np.errstate(all="ignore"):
            return v.astype(dt).reshape(shape)

    def array(self, shape, dt="float32", dtype_noise=True):
        """An array of (about) this shape in some layout."""
        dt = self.dtype(dt) if dtype_noise else np.dtype(dt)
        shape = tuple(shape)
        a = self.values(shape, dt)
        r = self.rng.random()
        if r < 0.55:
            return a
        if r < 0.65 and a.ndim:  # non-contiguous: every other element of a bigger array
            big = self.values(shape[:-1] + (2 * shape[-1],), dt)
            big[..., ::2] = a
            return big[..., ::2]
        if r < 0.72 and a.ndim:  # negative strides
            return np.ascontiguousarray(a[::-1])[::-1]
        if r < 0.82:  # misaligned (odd byte offset)
            buf = np.zeros(a.nbytes + a.itemsize + 1, np.uint8)
            m = buf[1:1 + a.nbytes].view(dt).reshape(shape)
            m[...] = a
            return m
        if r < 0.88:  # read-only
            a.flags.writeable = False
            return a
        if r < 0.92 and a.ndim:  # F order
            return np.asfortranarray(a)
        if r < 0.95:  # a Python list
            return a.tolist()
        if r < 0.97:  # zero-stride broadcast view
            return np.broadcast_to(a.ravel()[:1].reshape((1,) * a.ndim) if a.size else a, shape)
        return self.pick([None, "junk", 3, object()])

    def out(self, shape, dt="float32"):
        """(out argument, guarded buffer or None): usually None; else a view
        of a larger buffer with guard elements around it, or something bad."""
        r = self.rng.random()
        if r < 0.6:
            return None, None
        dt = self.dtype(dt)
        shape = self.shape(shape)
        n = int(np.prod(shape)) if shape else 1
        if r < 0.9:
            buf = np.full(n + 2 * GUARD, 7, dt) if dt.kind != "c" else np.full(n + 2 * GUARD, 7)
            return buf[GUARD:GUARD + n].reshape(shape), buf
        return self.array(shape, dt, dtype_noise=False), None


def snapshot(x):
    if isinstance(x, np.ndarray):
        return (x.shape, x.dtype, x.tobytes())
    return None


# ----------------------------------------------------------- the calls --

def _small_output_shape(nk, xs, ws, geo, fallback):
    """conv2d's output shape for dy, unless it is invalid or too big to
    allocate here (the fuzzer's own arrays stay small)."""
    try:
        ys = nk.conv2d_output_shape(xs, ws, **geo)
    except Exception:
        return fallback
    return ys if np.prod(ys, dtype=float) <= 1e5 else fallback


def make_call(g, nk):
    """(name, thunk, inputs, guarded buffers) for one random call."""
    pick = g.pick
    N, H, W, C = (int(g.rng.integers(0, 4)) if g.p(0.1) else int(g.rng.integers(1, 5)),
                  int(g.rng.integers(1, 9)), int(g.rng.integers(1, 9)), int(g.rng.integers(1, 6)))
    F = int(g.rng.integers(1, 6))
    dt = pick(["float32", "float64"])
    KH, KW = int(g.rng.integers(1, 4)), int(g.rng.integers(1, 4))
    guards, ins = [], []

    def A(shape, d=dt):
        a = g.array(g.shape(shape), d)
        ins.append(a)
        return a

    def O(shape, d=dt):
        o, buf = g.out(shape, d)
        if buf is not None:
            guards.append(buf)
        return o

    def geo():
        return dict(strides=g.int_arg(pick([1, 2, (1, 2), (3, 1)])),
                    padding=pick(["valid", "same", ((1, 0), (0, 2)), ((2 ** 20, 0), (0, 0)),
                                  ((0, 0), (2 ** 28, 2 ** 28)), "bogus", ((-1, 0), (0, 0)), 3])
                    if g.p(0.4) else pick(["valid", "same"]),
                    dilation=g.int_arg(pick([1, 2, (1, 3)])) if g.p(0.8) else pick([2 ** 20, 2 ** 30]))

    def prec():
        return pick([None, None, None, "bfloat16", "bf16", "float32", "float16", 3])

    kind = int(g.rng.integers(0, 25))
    if kind == 0:
        M, K, Nn = int(g.rng.integers(0, 7)), int(g.rng.integers(0, 7)), int(g.rng.integers(0, 7))
        a, b = A((M, K)), A((K, Nn))
        c = A((M, Nn)) if g.p(0.3) else None
        return "gemm", lambda: nk.gemm(a, b, trans_a=False, beta=g.float_arg(pick([0.0, 1.0])),
                                       c=c, bias=A((Nn,)) if g.p(0.3) else None,
                                       activation=pick([None, "relu", "tanh"]),
                                       out=O((M, Nn)), precision=prec()), ins, guards
    if kind == 1:
        a, b = A((N, C)), A((C, F))
        return "dense_backward", lambda: nk.dense_backward(
            A((N, F)), a, b, y=A((N, F)) if g.p(0.5) else None,
            activation=pick([None, "relu"]), need_dx=g.p(0.7), need_db=g.p(0.7),
            dx=O((N, C)), dw=O((C, F)), db=O((F,)), precision=prec()), ins, guards
    if kind == 3 and g.p(0.5):
        x, w = A((N, H, W, C)), A((KH, KW, C, F))
        ps = (N, H // 2, W // 2, F)
        return "conv2d_maxpool", lambda: nk.conv2d_maxpool(
            x, w, A((F,)) if g.p(0.3) else None, activation=pick([None, "relu"]),
            algo=pick(["auto", "direct", "im2col", "winograd", "x"]), groups=g.int_arg(1),
            out=O(ps), indices=O(ps, "int32") if g.p(0.7) else None,
            y=O((N, H, W, F)) if g.p(0.5) else None, precision=prec(), **geo()), ins, guards
    if kind in (2, 3):
        x, w = A((N, H, W, C)), A((KH, KW, C, F))
        return "conv2d", lambda: nk.conv2d(
            x, w, A((F,)) if g.p(0.3) else None, activation=pick([None, "relu"]),
            algo=pick(["auto", "direct", "im2col", "winograd", "depthwise", "x"]),
            groups=g.int_arg(1), out=O((N, H, W, F)), precision=prec(), **geo()), ins, guards
    if kind == 4:
        x, w = A((N, H, W, C)), A((KH, KW, C, F))
        gg = geo()
        ys = _small_output_shape(nk, np.shape(x), np.shape(w), gg, (N, H, W, F))
        return "conv2d_backward", lambda: nk.conv2d_backward(
            A(ys), x, w, activation=pick([None, "relu"]), y=A(ys) if g.p(0.4) else None,
            need_dx=g.p(0.7), need_dw=g.p(0.7), need_db=g.p(0.7),
            algo=pick(["auto", "direct", "im2col"]), dx=O((N, H, W, C)), precision=prec(),
            **gg), ins, guards
    if kind == 5:
        w = A((KH, KW, C, F))
        gg = geo()
        ys = _small_output_shape(nk, (N, H, W, C), np.shape(w), gg, (N, H, W, F))
        xs = pick([(N, H, W, C), (N, H, W, C), (N, H, 2.5, C), (-1, H, W, C), (N, H, W)])
        return "conv2d_backward_data", lambda: nk.conv2d_backward_data(
            A(ys), w, xs, out=O((N, H, W, C)), precision=prec(), **gg), ins, guards
    if kind == 6:
        x, w = A((N, H, W, C)), A((KH, KW, C, pick([1, 2])))
        return "depthwise_conv2d", lambda: nk.depthwise_conv2d(x, w, out=O((N, H, W, C)),
                                                              **geo()), ins, guards
    if kind == 7:
        x = A((N, H, W, C))
        return "max_pool2d", lambda: nk.max_pool2d(
            x, pool_size=g.int_arg(pick([2, (2, 3)])), strides=g.int_arg(None) if g.p(0.5) else None,
            padding=pick(["valid", "same", "x"]), out=O((N, H // 2, W // 2, C)),
            indices=O((N, H // 2, W // 2, C), "int32")), ins, guards
    if kind == 8:
        oh, ow = max(1, H // 2), max(1, W // 2)
        idx = g.rng.integers(-2, H * W + 3, (N, oh, ow, C)).astype(
            pick(["int32", "int32", "int64", "float32"]))
        if g.p(0.3):
            idx = idx[..., ::-1]
        ins.append(idx)
        xs = pick([(N, H, W, C), (N, 0, W, C), (N, H, W, C), (N, H, 2.0, C), (N, 2 ** 20, 2 ** 20, C)])
        return "max_pool2d_backward", lambda: nk.max_pool2d_backward(
            A((N, oh, ow, C)), idx, xs, out=O(xs if isinstance(xs[2], int) else (1,)),
            **(dict(pool_size=2) if g.p(0.4) else {})), ins, guards
    if kind == 9:
        x = A((N, H, W, C))
        return "avg_pool2d", lambda: nk.avg_pool2d(
            x, pool_size=g.int_arg(2), strides=g.int_arg(pick([None, 1, 2])),
            padding=pick(["valid", "same"]), out=O((N, H // 2, W // 2, C))), ins, guards
    if kind == 10:
        xs = (N, H, W, C)
        return "avg_pool2d_backward", lambda: nk.avg_pool2d_backward(
            A((N, H // 2, W // 2, C)), g.shape(xs), pool_size=g.int_arg(2),
            out=O(xs)), ins, guards
    if kind == 11:
        x = A((N, H, W, C))
        return pick(["global_avg_pool2d", "global_max_pool2d"]), (
            lambda: nk.global_avg_pool2d(x, out=O((N, C))) if g.p(0.5)
            else nk.global_max_pool2d(x, out=O((N, C)), indices=O((N, C), "int32"))), ins, guards
    if kind == 12:
        idx = g.rng.integers(-2, H * W + 3, (N, C)).astype(pick(["int32", "int64"]))
        ins.append(idx)
        return "global_max_pool2d_backward", lambda: nk.global_max_pool2d_backward(
            A((N, C)), idx, g.shape((N, H, W, C)), out=O((N, H, W, C))), ins, guards
    if kind == 13:
        x = A((N, H, W, C))
        return "upsample/pad/crop", lambda: pick([
            lambda: nk.upsample2d_nearest(x, size=g.int_arg(2), out=O((N, 2 * H, 2 * W, C))),
            lambda: nk.upsample2d_nearest_backward(x, size=g.int_arg(2)),
            lambda: nk.pad2d(x, g.int_arg(pick([1, ((1, 0), (2, 1))])), out=O((N, H + 2, W + 2, C))),
            lambda: nk.crop2d(x, g.int_arg(pick([1, ((1, 0), (0, 1))]))),
        ])(), ins, guards
    if kind == 14:
        shp = tuple(int(v) for v in g.rng.integers(0, 5, int(g.rng.integers(0, 4))))
        a = A(shp)
        return "relu/add", lambda: pick([
            lambda: nk.relu(a, out=O(shp)),
            lambda: nk.relu_backward(a, A(shp), out=O(shp)),
            lambda: nk.add(a, A(shp), out=O(shp)),
            lambda: nk.sum_squares(a),
        ])(), ins, guards
    if kind == 15:
        shp = tuple(int(v) for v in g.rng.integers(0, 5, int(g.rng.integers(0, 4))))
        a = A(shp)
        return "dropout", lambda: pick([nk.dropout, nk.dropout_backward])(
            a, g.float_arg(0.3), g.int_arg(5), offset=g.int_arg(0), out=O(shp)), ins, guards
    if kind == 16:
        return "dropout_mask", lambda: nk.dropout_mask(
            pick([(3, 4), 5, (2.5, 2), (-1,), (2 ** 62, 2 ** 62), "ab", (True,)]),
            g.float_arg(0.5), g.int_arg(1), offset=g.int_arg(0)), ins, guards
    if kind == 17:
        n = int(g.rng.integers(0, 5))
        ctr = A((n, 4), "uint32")
        return "philox4x32", lambda: nk.philox4x32(ctr, A((2,), "uint32")), ins, guards
    if kind == 18:
        K = int(g.rng.integers(0, 5))
        lg = A((N, K))
        if g.p(0.5):
            lab = g.rng.integers(-1, K + 2, g.shape((N,))).astype(pick(["int32", "int64", "uint8"]))
            ins.append(lab)
        else:
            lab = A((N, K))
        return "softmax_xent", lambda: nk.softmax_xent(
            lg, lab, from_logits=g.p(0.5), dlogits=O((N, K)), probs=O((N, K)),
            grad_scale=g.float_arg(None) if g.p(0.3) else None), ins, guards
    if kind in (19, 20):
        n = int(g.rng.integers(0, 9))
        p, m, v = (np.asarray(g.array(g.shape((n,)), dt)) if g.p(0.3) else
                   g.values((n,), np.dtype(dt)) for _ in range(3))
        gr = A((n,))
        which = pick(["sgd", "adam", "rmsprop", "adadelta"])
        return which + "_update", lambda: {
            "sgd": lambda: nk.sgd_update(p, gr, g.float_arg(0.1), g.float_arg(0.9), m=m),
            "adam": lambda: nk.adam_update(p, gr, m, v, g.float_arg(0.1),
                                           step=g.int_arg(pick([1, 5]))),
            "rmsprop": lambda: nk.rmsprop_update(p, gr, v, g.float_arg(0.1), momentum=0.5,
                                                 m=m, centered=g.p(0.3), mg=v.copy()),
            "adadelta": lambda: nk.adadelta_update(p, gr, m, v, g.float_arg(1.0)),
        }[which](), ins, guards
    if kind == 21:
        x = A((N, C))
        return "batchnorm_forward", lambda: nk.batchnorm_forward(
            x, A((C,)) if g.p(0.7) else None, A((C,)) if g.p(0.7) else None,
            training=g.p(0.5), moving_mean=g.values((C,), np.dtype(dt)),
            moving_var=np.abs(g.values((C,), np.dtype(dt))), epsilon=g.float_arg(1e-3),
            momentum=g.float_arg(0.9), residual=A((N, C)) if g.p(0.3) else None,
            activation=pick([None, "relu"]), out=O((N, C))), ins, guards
    if kind == 22:
        x = A((N, C))
        return "batchnorm_backward", lambda: nk.batchnorm_backward(
            A((N, C)), x, A((C,)), A((C,)), A((C,)), y=A((N, C)) if g.p(0.5) else None,
            activation=pick([None, "relu"]), dx=O((N, C)), dgamma=O((C,)), dbeta=O((C,))), \
            ins, guards
    if kind == 23:
        shp = tuple(int(v) for v in g.rng.integers(0, 5, int(g.rng.integers(0, 4))))
        a = A(shp)
        u = A(shp, "uint16")
        return "to/from_bf16", lambda: pick([
            lambda: nk.to_bf16(a, out=O(shp, "uint16") if g.p(0.5) else None),
            lambda: nk.from_bf16(u, out=O(shp, "float32") if g.p(0.5) else None),
        ])(), ins, guards
    # runtime controls
    return "runtime", lambda: pick([
        lambda: nk.set_bf16_native(g.p(0.5) and nk.bf16_native_supported()),
        lambda: nk.set_num_threads(g.int_arg(pick([1, 2]))),
        lambda: nk.fma_peak(pick(["auto", "generic", "x"]), threads=g.int_arg(1),
                            seconds=g.float_arg(0.001) if g.p(0.9) else 0.001),
        lambda: nk.conv2d_algo(g.shape((N, H, W, C)), g.shape((KH, KW, C, F)), **geo()),
        lambda: nk.conv2d_output_shape(g.shape((N, H, W, C)), g.shape((KH, KW, C, F)), **geo()),
        lambda: nk.max_pool2d_output_shape(g.shape((N, H, W, C)), g.int_arg(2)),
    ])(), ins, guards


def run_batch(seed, calls, verbose=False):
    """Run `calls` random calls; returns a list of failure descriptions."""
    import nnkernels as nk
    g = Gen(seed)
    failures = []
    for i in range(calls):
        name, thunk, ins, guards = make_call(g, nk)
        before = [snapshot(a) for a in ins]
        gbefore = [np.concatenate([b[:GUARD], b[-GUARD:]]).tobytes() for b in guards]
        if verbose:
            print(i, name, flush=True)
        try:
            thunk()
        except ALLOWED:
            pass
        except Exception as e:  # noqa: BLE001 - any other exception is a finding
            failures.append(f"seed {seed} call {i} {name}: {type(e).__name__}: {e}\n"
                            + traceback.format_exc(limit=3))
        for a, b in zip(ins, before):
            if b is not None and snapshot(a) != b:
                failures.append(f"seed {seed} call {i} {name}: an input was modified")
        for buf, b in zip(guards, gbefore):
            if np.concatenate([buf[:GUARD], buf[-GUARD:]]).tobytes() != b:
                failures.append(f"seed {seed} call {i} {name}: wrote outside its output buffer")
        nk.set_num_threads(1 + (i % 2))
    return failures


# -------------------------------------------------------------- pytest --

def test_fuzz_kernels():
    total = int(os.environ.get("NNKERNELS_FUZZ_CALLS", "2000"))
    seed0 = int(os.environ.get("NNKERNELS_FUZZ_SEED", "20240515"))
    batch = int(os.environ.get("NNKERNELS_FUZZ_BATCH", "500"))
    import nnkernels as nk
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(nk.__file__)))
    env.setdefault("OMP_NUM_THREADS", "2")
    problems, crashes = [], 0
    nb = (total + batch - 1) // batch
    for b in range(nb):
        n = min(batch, total - b * batch)
        res = subprocess.run([sys.executable, os.path.abspath(__file__), str(seed0 + b), str(n)],
                             env=env, capture_output=True, text=True, timeout=600)
        if res.returncode not in (0, 3):
            crashes += 1
            problems.append(f"batch seed {seed0 + b} ({n} calls) died with code "
                            f"{res.returncode}: rerun `python {__file__} {seed0 + b} {n} -v`\n"
                            + res.stderr[-2000:])
        elif res.returncode == 3:
            problems.append(res.stdout[-4000:])
    assert not problems, f"{crashes} crashed batches; findings:\n" + "\n".join(problems)


if __name__ == "__main__":
    seed, calls = int(sys.argv[1]), int(sys.argv[2])
    found = run_batch(seed, calls, verbose="-v" in sys.argv)
    if found:
        print("\n".join(found[:20]))
        print(f"{len(found)} findings in {calls} calls (seed {seed})")
        sys.exit(3)
