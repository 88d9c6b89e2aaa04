"""Max pooling, dropout and batch norm: nnkernels vs PyTorch (CPU) vs NumPy.

    python -m bench.pool [--threads 1,2] [--repeats 15] [--only maxpool,128x] [--out bench/results]

Workloads (float32, NHWC for ours, both NCHW and channels_last for torch):
  * MaxPool 2x2 / stride 2, forward + backward, x = (N, 24, 24, 64), N = 32, 128
  * Dropout(0.25) forward + backward, x = (128, 12, 12, 64)
  * BatchNormalization (training) -> ReLU and -> Add(shortcut) -> ReLU,
    forward + backward, ResNet-20's three shapes (128, 32, 32, 16), (128, 16,
    16, 32), (128, 8, 8, 64): ours as the model runs it (the fused kernels;
    without a shortcut the backward recomputes the ReLU mask from x where
    this nnkernels has save_scale, else reads y), torch channels_last through
    autograd and through ATen's native_batch_norm(_backward) with the
    ReLU / add as separate ops (no NumPy baseline)
Ours runs on preallocated outputs (out=, indices=): a training step reuses its
buffers.  "nnkernels" passes pool_size to the backward (gather kernel);
"nnkernels (bwd, indices only)" calls max_pool2d_backward(dy, indices,
x_shape, out=dx) without it.  PyTorch runs as a training step would (autograd), plus ATen calls
with out= where they exist; the fastest PyTorch variant is the peer.  NumPy
(single-threaded, vectorised) is the plain baseline.  Every implementation is
timed call by call, best-of-N (and median) with rounds interleaved across
implementations (the machine is shared: interleaving spreads other load
evenly), after warm-up, with the same thread count for nnkernels and torch.
"vs torch" = best time / the fastest torch variant's best time.  GB/s counts the bytes each pass
must move at least (fwd: read x, write y (+ int32 indices); bwd: read dy
(+ indices), write dx; batch norm: fwd read x (+ shortcut), write y, bwd read
dy and x, write dx (+ the shortcut's gradient)).  Minor page faults per call are counted too.
Writes JSON (+ PNG if matplotlib is installed) to bench/results/.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import sys
import time

import numpy as np

import nnkernels as nk

try:
    import torch
    import torch.nn.functional as F
except Exception as e:  # pragma: no cover - optional peer
    torch = None
    TORCH_NOTE = f"torch not importable: {e}"
else:
    TORCH_NOTE = None

HERE = os.path.dirname(os.path.abspath(__file__))


def minflt():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def bench_interleaved(fns, repeats, min_time=0.02):
    """{name: fn} -> {name: (best s/call, median s/call, faults/call)}.

    Each round runs every implementation for about min_time seconds, timing
    each call on its own; best = fastest single call over all rounds.  (The
    machine is shared: a call that lost its core to another process says
    nothing about the kernel, so the median is reported next to the best.)
    Before each contender's round the machine settles for 30 ms and the
    contender makes one untimed call."""
    inner = {}
    for name, fn in fns.items():  # warm-up and calls per round
        fn(); fn()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        inner[name] = max(1, int(min_time / max(dt, 1e-6)))
    times = {k: [] for k in fns}
    faults = {k: 0 for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            # let the previous contender's spinning worker threads (OpenMP,
            # OpenBLAS) go to sleep, as bench._common does
            time.sleep(0.03)
            fn()
            f0 = minflt()
            ts = times[name]
            for _ in range(inner[name]):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            faults[name] += minflt() - f0
    return {k: (min(times[k]), float(np.median(times[k])), faults[k] / len(times[k])) for k in fns}


# ------------------------------------------------------------- max pool --

def maxpool_impls(N, H=24, W=24, C=64):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, H, W, C), dtype=np.float32)
    OH, OW = H // 2, W // 2
    dy = rng.standard_normal((N, OH, OW, C), dtype=np.float32)
    y = np.empty((N, OH, OW, C), np.float32)
    idx = np.empty((N, OH, OW, C), np.int32)
    dx = np.empty_like(x)
    impls, checks = {}, {}

    def ours_gather():
        nk.max_pool2d(x, (2, 2), out=y, indices=idx)
        nk.max_pool2d_backward(dy, idx, x.shape, out=dx, pool_size=(2, 2))
    impls["nnkernels"] = ours_gather
    checks["nnkernels"] = lambda: float(dx.sum(dtype=np.float64))

    def ours_scatter():
        nk.max_pool2d(x, (2, 2), out=y, indices=idx)
        nk.max_pool2d_backward(dy, idx, x.shape, out=dx)
    impls["nnkernels (bwd, indices only)"] = ours_scatter
    checks["nnkernels (bwd, indices only)"] = checks["nnkernels"]

    def numpy_impl():
        xw = x.reshape(N, OH, 2, OW, 2, C).transpose(0, 1, 3, 5, 2, 4).reshape(N, OH, OW, C, 4)
        a = xw.argmax(-1)
        yy = np.take_along_axis(xw, a[..., None], -1)[..., 0]
        dxw = np.zeros_like(xw)
        np.put_along_axis(dxw, a[..., None], dy[..., None], -1)
        numpy_impl.dx = dxw.reshape(N, OH, OW, C, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(x.shape)
        return yy
    impls["numpy"] = numpy_impl
    checks["numpy"] = lambda: float(numpy_impl.dx.sum(dtype=np.float64))

    if torch is not None:
        xt = torch.from_numpy(x).permute(0, 3, 1, 2)  # NCHW view of our NHWC data
        dyt = torch.from_numpy(dy).permute(0, 3, 1, 2)
        for fmt, mf in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
            xf = xt.contiguous(memory_format=mf).requires_grad_(True)
            dyf = dyt.contiguous(memory_format=mf)
            res = {}

            def autograd_step(xf=xf, dyf=dyf, res=res):
                yt = F.max_pool2d(xf, 2)
                (res["g"],) = torch.autograd.grad(yt, xf, dyf)
            name = f"torch autograd {fmt}"
            impls[name] = autograd_step
            checks[name] = (lambda res=res: float(res["g"].double().sum()))

            xd = xf.detach()
            yo = torch.empty_like(dyf)
            io = torch.empty(dyf.shape, dtype=torch.int64).contiguous(memory_format=mf)
            go = torch.empty_like(xd)

            def aten_out(xd=xd, dyf=dyf, yo=yo, io=io, go=go):
                with torch.no_grad():
                    torch.ops.aten.max_pool2d_with_indices.out(
                        xd, [2, 2], [2, 2], [0, 0], [1, 1], False, out=yo, indices=io)
                    torch.ops.aten.max_pool2d_with_indices_backward.grad_input(
                        dyf, xd, [2, 2], [2, 2], [0, 0], [1, 1], False, io, grad_input=go)
            name = f"torch aten out= {fmt}"
            impls[name] = aten_out
            checks[name] = (lambda go=go: float(go.double().sum()))
    ref = float(dy.sum(dtype=np.float64))  # every dy lands once in dx
    nbytes = 2 * x.nbytes + 2 * y.nbytes + 2 * idx.nbytes
    return impls, checks, ref, nbytes


# -------------------------------------------------------------- dropout --

def dropout_impls(shape=(128, 12, 12, 64), rate=0.25):
    rng = np.random.default_rng(1)
    x = rng.uniform(1, 2, shape).astype(np.float32)
    dy = np.ones(shape, np.float32)
    y = np.empty_like(x)
    dx = np.empty_like(x)
    impls, checks = {}, {}
    step = [0]

    def ours():
        step[0] += 1
        nk.dropout(x, rate, 1234, offset=step[0], out=y)
        nk.dropout_backward(dy, rate, 1234, offset=step[0], out=dx)
    impls["nnkernels"] = ours
    checks["nnkernels"] = lambda: float(np.count_nonzero(dx)) / dx.size

    np_rng = np.random.default_rng(2)
    m = np.empty(shape, np.float32)
    u = np.empty(shape, np.float32)
    scale = np.float32(1 / (1 - rate))

    def numpy_impl():
        np_rng.random(dtype=np.float32, out=u)
        np.greater_equal(u, rate, out=m, casting="unsafe")
        np.multiply(m, scale, out=m)
        np.multiply(x, m, out=y)
        np.multiply(dy, m, out=dx)
    impls["numpy"] = numpy_impl
    checks["numpy"] = checks["nnkernels"]

    if torch is not None:
        xt = torch.from_numpy(x).clone().requires_grad_(True)
        dyt = torch.from_numpy(dy)
        res = {}

        def autograd_step():
            yt = F.dropout(xt, rate, training=True)
            (res["g"],) = torch.autograd.grad(yt, xt, dyt)
        impls["torch autograd"] = autograd_step
        checks["torch autograd"] = lambda: float(torch.count_nonzero(res["g"])) / res["g"].numel()

        xd = xt.detach()

        def native():
            with torch.no_grad():
                yt, mask = torch.ops.aten.native_dropout(xd, rate, True)
                res["g2"] = torch.ops.aten.native_dropout_backward(dyt, mask, 1 / (1 - rate))
        impls["torch aten native_dropout"] = native
        checks["torch aten native_dropout"] = (
            lambda: float(torch.count_nonzero(res["g2"])) / res["g2"].numel())
    nbytes = 4 * x.nbytes
    return impls, checks, 1 - rate, nbytes


# ----------------------------------------------------------- batch norm --

def batchnorm_impls(shape, residual, eps=1e-3):
    """Training-mode BN -> [+ shortcut] -> ReLU, forward and backward (the
    gradients of x, gamma, beta and the shortcut).  checksum: sum |dx|, its
    float64 NumPy value expected."""
    rng = np.random.default_rng(3)
    c = shape[-1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    res = rng.standard_normal(shape).astype(np.float32) if residual else None
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)
    dres = np.empty_like(x) if residual else None
    mm, mv = np.zeros(c, np.float32), np.ones(c, np.float32)
    sm, si, ss = (np.empty(c, np.float32) for _ in range(3))
    dg, db = np.empty(c, np.float32), np.empty(c, np.float32)
    # the ReLU mask from x: an nnkernels that has save_scale, no shortcut
    try:
        nk.batchnorm_forward(x, gamma, beta, training=True, moving_mean=mm, moving_var=mv,
                             save_mean=sm, save_invstd=si, save_scale=ss, activation="relu")
        from_x = not residual
    except TypeError:
        from_x = False
    fwd_kw = dict(save_scale=ss) if from_x else {}
    bwd_kw = dict(save_scale=ss, beta=beta) if from_x else dict(y=y)
    impls, checks = {}, {}

    def ours():
        nk.batchnorm_forward(x, gamma, beta, training=True, moving_mean=mm, moving_var=mv,
                             save_mean=sm, save_invstd=si, residual=res, activation="relu",
                             out=y, **fwd_kw)
        nk.batchnorm_backward(dy, x, gamma, sm, si, activation="relu", dx=dx, dgamma=dg,
                              dbeta=db, dresidual=dres, **bwd_kw)
    name = "nnkernels" + (" (mask from x)" if from_x else "")
    impls[name] = ours
    checks[name] = lambda: float(np.abs(dx).sum(dtype=np.float64))

    # float64 reference of sum |dx|
    x2, d2 = x.reshape(-1, c).astype(np.float64), dy.reshape(-1, c).astype(np.float64)
    mean, var = x2.mean(0), x2.var(0)
    xh = (x2 - mean) / np.sqrt(var + eps)
    z = xh * gamma + beta + (res.reshape(-1, c) if residual else 0)
    g = d2 * (z > 0)
    dx_r = gamma / np.sqrt(var + eps) * (g - g.mean(0) - xh * (g * xh).mean(0))
    ref = float(np.abs(dx_r).sum())

    if torch is not None:
        def nchw(a):  # a channels_last NCHW tensor over our NHWC data
            return torch.from_numpy(a).permute(0, 3, 1, 2)
        xt = nchw(x).clone(memory_format=torch.channels_last).requires_grad_(True)
        rt = (nchw(res).clone(memory_format=torch.channels_last).requires_grad_(True)
              if residual else None)
        dyt = nchw(dy).clone(memory_format=torch.channels_last)
        wt = torch.from_numpy(gamma.copy()).requires_grad_(True)
        bt = torch.from_numpy(beta.copy()).requires_grad_(True)
        rmean, rvar = torch.zeros(c), torch.ones(c)
        out = {}

        def autograd_step():
            t = F.batch_norm(xt, rmean, rvar, wt, bt, training=True, momentum=0.01, eps=eps)
            if residual:
                t = t + rt
            t = F.relu(t)
            ins = (xt, wt, bt) + ((rt,) if residual else ())
            out["a"] = torch.autograd.grad(t, ins, dyt)
        impls["torch autograd channels_last"] = autograd_step
        checks["torch autograd channels_last"] = lambda: float(out["a"][0].double().abs().sum())

        xd, wd, bd = xt.detach(), wt.detach(), bt.detach()
        rd = rt.detach() if residual else None

        def aten():
            with torch.no_grad():
                t, smean, sinv = torch.ops.aten.native_batch_norm(xd, wd, bd, rmean, rvar, True,
                                                                  0.01, eps)
                if residual:
                    t = t + rd
                t = torch.relu(t)
                gz = torch.ops.aten.threshold_backward(dyt, t, 0.0)
                out["n"] = torch.ops.aten.native_batch_norm_backward(
                    gz, xd, wd, rmean, rvar, smean, sinv, True, eps, [True, True, True])
        impls["torch aten native_batch_norm"] = aten
        checks["torch aten native_batch_norm"] = lambda: float(out["n"][0].double().abs().sum())
    # at least: forward reads x (and the shortcut) and writes y; backward
    # reads dy and x and writes dx (and the shortcut's gradient)
    nbytes = (5 + 2 * residual) * x.nbytes
    return impls, checks, ref, nbytes


# ----------------------------------------------------------------- main --

def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu, "cores_affinity": len(os.sched_getaffinity(0)),
        "platform": platform.platform(), "python": sys.version.split()[0],
        "numpy": np.__version__, "torch": torch.__version__ if torch else None,
        "torch_note": TORCH_NOTE, "nnkernels": nk.info(), "loadavg_start": os.getloadavg(),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--only", default=None,
                    help="comma-separated substrings of the cases to run (e.g. 'maxpool,128x')")
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    cases = [("maxpool2x2 fwd+bwd", f"{n}x24x24x64", lambda n=n: maxpool_impls(n)) for n in (32, 128)]
    cases.append(("dropout0.25 fwd+bwd", "128x12x12x64", dropout_impls))
    for shp in ((128, 32, 32, 16), (128, 16, 16, 32), (128, 8, 8, 64)):
        for r in (False, True):
            cases.append((f"batchnorm{'+add' if r else ''}+relu fwd+bwd",
                          "x".join(map(str, shp)), lambda shp=shp, r=r: batchnorm_impls(shp, r)))
    if args.only:
        keys = [k for k in args.only.split(",") if k]
        cases = [c for c in cases if all(k in f"{c[0]} {c[1]}" for k in keys)]
    rows = []
    for op, shape, make in cases:
        impls, checks, ref, nbytes = make()
        for nt in threads:
            nk.set_num_threads(nt)
            if torch is not None:
                torch.set_num_threads(nt)
            res = bench_interleaved(impls, args.repeats)
            torch_best = min((v[0] for k, v in res.items() if k.startswith("torch")), default=None)
            for name, (t, tmed, flt) in res.items():
                chk = checks[name]()
                rows.append({
                    "op": op, "shape": shape, "threads": nt, "impl": name, "ms": t * 1e3,
                    "ms_median": tmed * 1e3,
                    "gbps": nbytes / t / 1e9, "vs_torch": t / torch_best if torch_best else None,
                    "faults_per_call": flt, "checksum": chk, "checksum_expected": ref,
                })
    nk.set_num_threads(None)
    print(f"{'op':22s} {'shape':14s} {'thr':>3s}  {'impl':30s} {'best ms':>8s} {'med ms':>8s} "
          f"{'GB/s':>7s} {'vs torch':>8s} {'faults':>7s}  checksum")
    for r in rows:
        vt = f"{r['vs_torch']:.3f}" if r["vs_torch"] is not None else "-"
        print(f"{r['op']:22s} {r['shape']:14s} {r['threads']:3d}  {r['impl']:30s} {r['ms']:8.3f} "
              f"{r['ms_median']:8.3f} {r['gbps']:7.2f} {vt:>8s} {r['faults_per_call']:7.1f}  "
              f"{r['checksum']:.6g} (expect {r['checksum_expected']:.6g})")
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    info = machine()
    info["loadavg_end"] = os.getloadavg()
    path = os.path.join(args.out, f"pool-{stamp}.json")
    with open(path, "w") as f:
        json.dump({"machine": info, "repeats": args.repeats, "results": rows}, f, indent=1)
    print(f"wrote {path}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG")
        return rows
    groups = sorted({(r["op"], r["shape"], r["threads"]) for r in rows},
                    key=lambda g: (g[0], g[1], g[2]))
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 4.5), squeeze=False)
    for ax, g in zip(axes[0], groups):
        sel = [r for r in rows if (r["op"], r["shape"], r["threads"]) == g]
        ax.barh([r["impl"] for r in sel], [r["ms"] for r in sel],
                color=["C0" if r["impl"].startswith("nnk") else "C1" if r["impl"].startswith("torch")
                       else "C2" for r in sel])
        ax.set_title(f"{g[0]}\n{g[1]}, {g[2]} thr", fontsize=9)
        ax.set_xlabel("ms (best of N)")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    png = path[:-5] + ".png"
    fig.savefig(png, dpi=100)
    print(f"wrote {png}")
    return rows


if __name__ == "__main__":
    main()
