"""Convolution benchmark: nnkernels vs torch.nn.functional.conv2d vs NumPy im2col.

    python -m bench.conv [--threads 1 2] [--batches 32 128] [--repeat 7] [--no-pool]
    python -m bench.conv --layers resnet20 --batches 128 --no-pool   # ResNet-20's 7 conv shapes

Per layer: forward, and forward+backward (dx, dW, db), ours with
preallocated outputs, PyTorch (NCHW and channels_last; the faster is the
peer; backward by autograd with requires_grad on input, weight and bias) and
a NumPy im2col baseline (sliding_window_view copy + matmul, col2im by tap
slices; for the depthwise layers, MobileNet's 3x3 DepthwiseConv2D, one
broadcast multiply-add per tap, and torch's conv2d with groups=C), same
thread count for all (torch.set_num_threads, threadpoolctl).
Best of --repeat after warm-up; GFLOP/s and % of the FMA peak measured here
(nnkernels.fma_peak).  Peak extra memory of our forward+backward at the
largest batch is measured in a fresh subprocess (VmHWM - VmRSS before the
first call, inputs and outputs already allocated).  Writes
bench/results/conv.json and conv.png and prints a table.

Then (unless --no-pool) the default CNN's MaxPool 2x2 and Dropout layers and
ResNet-20's batch norms through bench/pool.py, in the same run and with the
same threads.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

import nnkernels as nk

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# name: (H, W, C_in, C_out, K, padding, batches or None for the CLI batches)
LAYERS = {
    "conv1_1to32_3x3_28": dict(kind="conv", H=28, W=28, C=1, F=32, K=3, padding="valid", batches=None),
    "conv2_32to64_3x3_26": dict(kind="conv", H=26, W=26, C=32, F=64, K=3, padding="valid", batches=None),
    "vgg_64to64_3x3_56": dict(kind="conv", H=56, W=56, C=64, F=64, K=3, padding="same", batches=[8]),
    "pw_256to64_1x1_28": dict(kind="conv", H=28, W=28, C=256, F=64, K=1, padding="valid", batches=None),
    # MobileNet depthwise 3x3 layers (depth multiplier M = 1): CIFAR-sized and ImageNet-sized
    "dw_128_3x3_16": dict(kind="depthwise", H=16, W=16, C=128, M=1, K=3, padding="same", batches=None),
    "dw_512_3x3_4": dict(kind="depthwise", H=4, W=4, C=512, M=1, K=3, padding="same", batches=None),
    "dw_128_3x3_56": dict(kind="depthwise", H=56, W=56, C=128, M=1, K=3, padding="same", batches=[8]),
}
DEFAULT_LAYERS = list(LAYERS)
# ResNet-20's convolutions (pynn.zoo.resnet20; all "same"; stride-2 3x3 and 1x1 projections at
# each stage change), not in the default run: --layers resnet20 (or their names)
RESNET20_LAYERS = {
    "r20_16to16_3x3_32": dict(H=32, C=16, F=16, K=3, stride=1),
    "r20_16to32_3x3s2_32": dict(H=32, C=16, F=32, K=3, stride=2),
    "r20_16to32_1x1s2_32": dict(H=32, C=16, F=32, K=1, stride=2),
    "r20_32to32_3x3_16": dict(H=16, C=32, F=32, K=3, stride=1),
    "r20_32to64_3x3s2_16": dict(H=16, C=32, F=64, K=3, stride=2),
    "r20_32to64_1x1s2_16": dict(H=16, C=32, F=64, K=1, stride=2),
    "r20_64to64_3x3_8": dict(H=8, C=64, F=64, K=3, stride=1),
}
for _n, _v in RESNET20_LAYERS.items():
    LAYERS[_n] = dict(kind="conv", W=_v["H"], padding="same", batches=None, **_v)


def _expand_layers(names):
    out = []
    for n in names:
        if n == "resnet20":
            out.extend(RESNET20_LAYERS)
        elif n in LAYERS:
            out.append(n)
        else:
            raise SystemExit(f"unknown layer {n!r}: expected one of {sorted(LAYERS)} or resnet20")
    return out


def _pads(H, K, s, pad):
    """(top, bottom) zero padding of TensorFlow/Keras for one axis."""
    if pad != "same":
        return 0, 0
    OH = -(-H // s)
    total = max((OH - 1) * s + K - H, 0)
    return total // 2, total - total // 2


def best_of(fn, repeat, warmup=2):
    for _ in range(warmup):
        fn()
    t = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t


SETTLE_S = 0.05


def best_of_interleaved(fns, repeat, warmup=2, settle=SETTLE_S):
    """{name: best seconds}: one run of each contender per round, so a
    neighbour's load hits all of them alike (the machine is shared).  Before
    each timed run, sleep `settle` seconds and then make one untimed call:
    the previous contender's worker threads (OpenBLAS, OpenMP) keep spinning
    for a while after a call and would otherwise steal the next contender's
    cores (measured here: our 2-thread conv2 forward 37 ms right after a
    NumPy matmul, 14-22 ms after a pause), and the untimed call wakes the
    contender's own pool, so each run is timed back to back as in a
    training loop rather than including a thread wake-up (several ms when a
    neighbour holds the other core)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            if settle:
                time.sleep(settle)
                fn()
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def wait_quiet(threads, peak_ref, frac=0.85, timeout=20.0):
    """Wait (up to timeout s) until the FMA loop runs at >= frac of the
    reference peak: the machine is shared, and a busy neighbour halves every
    figure.  Returns the last measured peak."""
    t0 = time.time()
    p = 0.0
    while time.time() - t0 < timeout:
        p = nk.fma_peak(threads=threads, seconds=0.05)
        if p >= frac * peak_ref:
            break
        time.sleep(0.3)
    return p


# ------------------------------------------------------------------ peers

def numpy_conv_fns(x, w, b, dy, pad, stride=1):
    """im2col baseline written with NumPy: explicit column matrix."""
    from numpy.lib.stride_tricks import sliding_window_view
    N, H, W, C = x.shape
    K, _, _, F = w.shape
    (pt, pb), (pl, pr) = _pads(H, K, stride, pad), _pads(W, K, stride, pad)
    w2 = w.reshape(K * K * C, F)

    def cols_of(x):
        xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))) if pt + pb + pl + pr else x
        v = sliding_window_view(xp, (K, K), axis=(1, 2))[:, ::stride, ::stride]  # N,OH,OW,C,K,K
        return np.ascontiguousarray(v.transpose(0, 1, 2, 4, 5, 3)).reshape(-1, K * K * C), xp.shape

    def fwd():
        cols, _ = cols_of(x)
        y = cols @ w2 + b
        return y

    OH, OW = dy.shape[1:3]

    def fwd_bwd():
        cols, xps = cols_of(x)
        y = cols @ w2 + b
        d2 = dy.reshape(-1, F)
        dw = cols.T @ d2
        db = d2.sum(0)
        dcols = (d2 @ w2.T).reshape(N, OH, OW, K, K, C)
        dxp = np.zeros(xps, x.dtype)
        for kh in range(K):
            for kw in range(K):
                dxp[:, kh:kh + (OH - 1) * stride + 1:stride,
                    kw:kw + (OW - 1) * stride + 1:stride] += dcols[:, :, :, kh, kw]
        dx = dxp[:, pt:pt + H, pl:pl + W]
        return y, dx, dw, db

    return fwd, fwd_bwd


def torch_conv_fns(x, w, b, dy, pad, channels_last, stride=1):
    """torch's conv2d; "same" as symmetric padding (K - 1) // 2: TensorFlow's
    padding of a stride-2 3x3 on an even size is (0, 1), the same output
    size and work."""
    import torch
    import torch.nn.functional as Fn
    p = (w.shape[0] - 1) // 2 if pad == "same" else 0
    mf = torch.channels_last if channels_last else torch.contiguous_format
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=mf).requires_grad_(True)
    wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=mf).requires_grad_(True)
    bt = torch.from_numpy(b).clone().requires_grad_(True)
    dyt = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous(memory_format=mf)

    def fwd():
        with torch.no_grad():
            return Fn.conv2d(xt, wt, bt, padding=p, stride=stride)

    def fwd_bwd():
        xt.grad = wt.grad = bt.grad = None
        y = Fn.conv2d(xt, wt, bt, padding=p, stride=stride)
        y.backward(dyt)
        return y

    return fwd, fwd_bwd


# ------------------------------------------------------------------ conv

def conv_flops(spec, batch):
    H, W, K, st = spec["H"], spec["W"], spec["K"], spec.get("stride", 1)
    if spec["padding"] == "same":
        OH, OW = -(-H // st), -(-W // st)
    else:
        OH, OW = (H - K) // st + 1, (W - K) // st + 1
    fwd = 2.0 * batch * OH * OW * K * K * spec["C"] * spec["F"]
    return fwd, 3.0 * fwd


def conv_row(name, spec, batch, threads, repeat, peak, have_torch):
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(0)
    H, W, C, F, K, pad = spec["H"], spec["W"], spec["C"], spec["F"], spec["K"], spec["padding"]
    st = spec.get("stride", 1)
    x = rng.standard_normal((batch, H, W, C), dtype=np.float32)
    w = (rng.standard_normal((K, K, C, F), dtype=np.float32) / np.sqrt(K * K * C)).astype(np.float32)
    b = rng.standard_normal(F, dtype=np.float32)
    y = nk.conv2d(x, w, b, padding=pad, strides=st)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(b)
    f_fwd, f_all = conv_flops(spec, batch)

    def ours_fwd():
        nk.conv2d(x, w, b, padding=pad, strides=st, out=y)

    def ours_all():
        nk.conv2d(x, w, b, padding=pad, strides=st, out=y)
        nk.conv2d_backward(dy, x, w, padding=pad, strides=st, dx=dx, dw=dw, db=db)

    nk.set_num_threads(threads)
    row = dict(layer=name, batch=batch, threads=threads, gflop_fwd=f_fwd / 1e9,
               gflop_fwd_bwd=f_all / 1e9, peak_gflops=peak,
               algo={p: nk.conv2d_algo(x.shape, w.shape, strides=st, padding=pad, product=p)
                     for p in ("forward", "backward_data", "backward_filter")})
    row["machine_peak_now"] = wait_quiet(threads, peak)
    fns = {"ours_fwd": ours_fwd, "ours_fwd_bwd": ours_all}
    torch_fmts = []
    if have_torch:
        import torch
        torch.set_num_threads(threads)
        for fmt, cl in (("nchw", False), ("channels_last", True)):
            tf, ta = torch_conv_fns(x, w, b, dy, pad, cl, st)
            fns[f"torch_{fmt}_fwd"], fns[f"torch_{fmt}_fwd_bwd"] = tf, ta
            torch_fmts.append(fmt)
    with threadpool_limits(limits=threads):
        nf, na = numpy_conv_fns(x, w, b, dy, pad, st)
        fns["numpy_fwd"], fns["numpy_fwd_bwd"] = nf, na
        res = best_of_interleaved(fns, repeat)
    for k, v in res.items():
        row[k + "_ms"] = v * 1e3
    ours_fwd()
    ours_all()
    # checksum: the work was done
    row["checksum"] = float(np.sum(y, dtype=np.float64) + np.sum(dw, dtype=np.float64))
    if torch_fmts:
        for ph in ("fwd", "fwd_bwd"):
            a, c = row[f"torch_nchw_{ph}_ms"], row[f"torch_channels_last_{ph}_ms"]
            row[f"torch_{ph}_ms"] = min(a, c)
            row[f"torch_{ph}_fmt"] = "nchw" if a <= c else "channels_last"
    for who in ("ours", "numpy", "torch"):
        for ph, fl in (("fwd", f_fwd), ("fwd_bwd", f_all)):
            k = f"{who}_{ph}_ms"
            if k in row:
                row[f"{who}_{ph}_gflops"] = fl / (row[k] * 1e-3) / 1e9
                row[f"{who}_{ph}_pct_peak"] = 100.0 * row[f"{who}_{ph}_gflops"] / peak
    if "torch_fwd_bwd_ms" in row:
        row["ours_vs_torch_fwd_bwd"] = row["ours_fwd_bwd_ms"] / row["torch_fwd_bwd_ms"]
        row["ours_vs_torch_fwd"] = row["ours_fwd_ms"] / row["torch_fwd_ms"]
    return row


# ------------------------------------------------------------- depthwise

def numpy_dw_fns(x, w, b, dy, pad):
    """Depthwise baseline in NumPy: one broadcast multiply-add per tap
    (M = 1, stride 1)."""
    K = w.shape[0]
    p = (K - 1) // 2 if pad == "same" else 0
    N, H, W, C = x.shape
    OH, OW = H + 2 * p - K + 1, W + 2 * p - K + 1
    wk = w[:, :, :, 0]

    def fwd():
        xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        y = np.broadcast_to(b, (N, OH, OW, C)).copy()
        for kh in range(K):
            for kw in range(K):
                y += xp[:, kh:kh + OH, kw:kw + OW] * wk[kh, kw]
        return y

    def fwd_bwd():
        fwd()
        xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        dxp = np.zeros_like(xp)
        dw = np.empty_like(wk)
        for kh in range(K):
            for kw in range(K):
                dxp[:, kh:kh + OH, kw:kw + OW] += dy * wk[kh, kw]
                dw[kh, kw] = np.einsum("nhwc,nhwc->c", xp[:, kh:kh + OH, kw:kw + OW], dy)
        return dxp[:, p:p + H, p:p + W], dw, dy.sum(axis=(0, 1, 2))

    return fwd, fwd_bwd


def torch_dw_fns(x, w, b, dy, pad, channels_last):
    import torch
    import torch.nn.functional as Fn
    K, C = w.shape[0], x.shape[3]
    p = (K - 1) // 2 if pad == "same" else 0
    mf = torch.channels_last if channels_last else torch.contiguous_format
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=mf).requires_grad_(True)
    wt = torch.from_numpy(w.reshape(K, K, 1, -1)).permute(3, 2, 0, 1).contiguous(
        memory_format=mf).requires_grad_(True)
    bt = torch.from_numpy(b).clone().requires_grad_(True)
    dyt = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous(memory_format=mf)

    def fwd():
        with torch.no_grad():
            return Fn.conv2d(xt, wt, bt, padding=p, groups=C)

    def fwd_bwd():
        xt.grad = wt.grad = bt.grad = None
        y = Fn.conv2d(xt, wt, bt, padding=p, groups=C)
        y.backward(dyt)
        return y

    return fwd, fwd_bwd


def dw_row(name, spec, batch, threads, repeat, peak, have_torch):
    """One depthwise layer (nnkernels.depthwise_conv2d / _backward) against
    torch (groups=C, NCHW and channels_last) and NumPy."""
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(0)
    H, W, C, M, K, pad = spec["H"], spec["W"], spec["C"], spec["M"], spec["K"], spec["padding"]
    x = rng.standard_normal((batch, H, W, C), dtype=np.float32)
    w = (rng.standard_normal((K, K, C, M), dtype=np.float32) / K).astype(np.float32)
    b = rng.standard_normal(C * M, dtype=np.float32)
    y = nk.depthwise_conv2d(x, w, b, padding=pad)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(b)
    f_fwd = 2.0 * y.size * K * K
    f_all = 3.0 * f_fwd

    def ours_fwd():
        nk.depthwise_conv2d(x, w, b, padding=pad, out=y)

    def ours_all():
        nk.depthwise_conv2d(x, w, b, padding=pad, out=y)
        nk.depthwise_conv2d_backward(dy, x, w, padding=pad, dx=dx, dw=dw, db=db)

    nk.set_num_threads(threads)
    row = dict(layer=name, batch=batch, threads=threads, gflop_fwd=f_fwd / 1e9,
               gflop_fwd_bwd=f_all / 1e9, peak_gflops=peak, algo="depthwise")
    row["machine_peak_now"] = wait_quiet(threads, peak)
    fns = {"ours_fwd": ours_fwd, "ours_fwd_bwd": ours_all}
    torch_fmts = []
    if have_torch and M == 1:
        import torch
        torch.set_num_threads(threads)
        for fmt, cl in (("nchw", False), ("channels_last", True)):
            tf, ta = torch_dw_fns(x, w, b, dy, pad, cl)
            fns[f"torch_{fmt}_fwd"], fns[f"torch_{fmt}_fwd_bwd"] = tf, ta
            torch_fmts.append(fmt)
    with threadpool_limits(limits=threads):
        nf, na = numpy_dw_fns(x, w, b, dy, pad)
        fns["numpy_fwd"], fns["numpy_fwd_bwd"] = nf, na
        res = best_of_interleaved(fns, repeat)
    for k, v in res.items():
        row[k + "_ms"] = v * 1e3
    ours_all()
    row["checksum"] = float(np.sum(y, dtype=np.float64) + np.sum(dw, dtype=np.float64))
    if torch_fmts:
        for ph in ("fwd", "fwd_bwd"):
            a, c = row[f"torch_nchw_{ph}_ms"], row[f"torch_channels_last_{ph}_ms"]
            row[f"torch_{ph}_ms"] = min(a, c)
            row[f"torch_{ph}_fmt"] = "nchw" if a <= c else "channels_last"
    for who in ("ours", "numpy", "torch"):
        for ph, fl in (("fwd", f_fwd), ("fwd_bwd", f_all)):
            k = f"{who}_{ph}_ms"
            if k in row:
                row[f"{who}_{ph}_gflops"] = fl / (row[k] * 1e-3) / 1e9
                row[f"{who}_{ph}_pct_peak"] = 100.0 * row[f"{who}_{ph}_gflops"] / peak
    if "torch_fwd_bwd_ms" in row:
        row["ours_vs_torch_fwd_bwd"] = row["ours_fwd_bwd_ms"] / row["torch_fwd_bwd_ms"]
        row["ours_vs_torch_fwd"] = row["ours_fwd_ms"] / row["torch_fwd_ms"]
    return row


def _status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def mem_probe(name, batch, threads):
    """Run in a fresh process: peak extra memory of our forward+backward."""
    spec = LAYERS[name]
    rng = np.random.default_rng(0)
    H, W, C, K, pad = spec["H"], spec["W"], spec["C"], spec["K"], spec["padding"]
    dwise = spec["kind"] == "depthwise"
    F = C * spec["M"] if dwise else spec["F"]
    nk.set_num_threads(threads)
    x = rng.standard_normal((batch, H, W, C), dtype=np.float32)
    w = rng.standard_normal((K, K, C, spec["M"] if dwise else F), dtype=np.float32)
    b = rng.standard_normal(F, dtype=np.float32)
    st = spec.get("stride", 1)
    shp = nk.conv2d_output_shape(x.shape, w.reshape(K, K, 1, F).shape if dwise else w.shape,
                                 padding=pad, strides=st, groups=C if dwise else 1)
    y = np.ones(shp, np.float32)
    dy = np.ones(shp, np.float32)
    dx, dw, db = np.ones_like(x), np.ones_like(w), np.ones_like(b)
    fwd = nk.depthwise_conv2d if dwise else nk.conv2d
    bwd = nk.depthwise_conv2d_backward if dwise else nk.conv2d_backward
    base = _status_kb("VmRSS")
    for _ in range(3):
        fwd(x, w, b, padding=pad, strides=st, out=y)
        bwd(dy, x, w, padding=pad, strides=st, dx=dx, dw=dw, db=db)
    hwm = _status_kb("VmHWM")
    print(json.dumps(dict(extra_mib=(hwm - base) / 1024.0,
                          arena_mib=nk.workspace_bytes() / 2**20,
                          inputs_outputs_mib=sum(a.nbytes for a in (x, w, b, y, dy, dx, dw, db)) / 2**20)))


KINDS = {"conv": conv_row, "depthwise": dw_row}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--layers", nargs="+", default=DEFAULT_LAYERS,
                    help="layer names, or resnet20 for ResNet-20's convolutions "
                         f"(default: {' '.join(DEFAULT_LAYERS)})")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-pool", action="store_true",
                    help="skip the pooling, dropout and batch-norm layers (bench/pool.py)")
    ap.add_argument("--mem-probe", nargs=3, metavar=("LAYER", "BATCH", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.layers = _expand_layers(args.layers)
    if args.mem_probe:
        mem_probe(args.mem_probe[0], int(args.mem_probe[1]), int(args.mem_probe[2]))
        return
    try:
        import torch
        have_torch = True
        torch_version = torch.__version__
    except ImportError:
        have_torch, torch_version = False, None
    peaks = {t: max(nk.fma_peak(threads=t, seconds=0.2) for _ in range(3)) for t in args.threads}
    rows = []
    for name in args.layers:
        spec = LAYERS[name]
        for batch in spec["batches"] or args.batches:
            for t in args.threads:
                r = KINDS[spec["kind"]](name, spec, batch, t, args.repeat, peaks[t], have_torch)
                rows.append(r)
                print(fmt_row(r), flush=True)
    mem = {}
    for name in args.layers:
        batch = max(LAYERS[name]["batches"] or args.batches)
        out = subprocess.run([sys.executable, "-m", "bench.conv", "--mem-probe", name, str(batch),
                              str(max(args.threads))], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        try:
            mem[f"{name}@{batch}"] = json.loads(out.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            mem[f"{name}@{batch}"] = {"error": out.stderr[-500:]}
    print()
    print(table(rows))
    print()
    print("peak extra memory of our forward+backward (fresh process, VmHWM - VmRSS):")
    for k, v in mem.items():
        if "error" in v:
            print(f"  {k}: error {v['error']}")
        else:
            print(f"  {k}: +{v['extra_mib']:.1f} MiB (workspace arenas {v['arena_mib']:.1f} MiB; "
                  f"inputs+outputs {v['inputs_outputs_mib']:.1f} MiB, allocated before)")
    os.makedirs(RESULTS, exist_ok=True)
    meta = dict(machine=platform.machine(), processor=platform.processor(), python=sys.version,
                numpy=np.__version__, torch=torch_version, nnkernels=nk.info(), peaks_gflops=peaks,
                argv=sys.argv, time=time.strftime("%Y-%m-%d %H:%M:%S"))
    with open(os.path.join(RESULTS, "conv.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows, memory=mem), f, indent=1)
    plot(rows, os.path.join(RESULTS, "conv.png"))
    if not args.no_pool:
        # the default CNN's other layers: MaxPool 2x2 on 24x24x64, Dropout
        from bench import pool
        print()
        pool.main(["--threads", ",".join(str(t) for t in args.threads)])


def fmt_row(r):
    s = (f"{r['layer']:22s} N={r['batch']:<4d} t={r['threads']} ours {r['ours_fwd_ms']:8.2f}/"
         f"{r['ours_fwd_bwd_ms']:8.2f} ms")
    if "torch_fwd_bwd_ms" in r:
        s += f"  torch {r['torch_fwd_ms']:8.2f}/{r['torch_fwd_bwd_ms']:8.2f}"
    s += f"  numpy {r['numpy_fwd_ms']:8.2f}/{r['numpy_fwd_bwd_ms']:8.2f}"
    return s


def table(rows):
    hdr = ("layer                  batch thr | ours fwd ms GF/s %pk | ours f+b ms GF/s %pk | "
           "torch f+b ms (fmt) | numpy f+b ms | ours/torch f+b  fwd")
    lines = [hdr, "-" * len(hdr)]
    for r in rows:
        t = (f"{r['torch_fwd_bwd_ms']:8.2f} ({'cl' if r['torch_fwd_bwd_fmt'] == 'channels_last' else 'nchw'})"
             if "torch_fwd_bwd_ms" in r else "      n/a     ")
        ratio = (f"{r['ours_vs_torch_fwd_bwd']:6.2f}x  {r['ours_vs_torch_fwd']:5.2f}x"
                 if "ours_vs_torch_fwd_bwd" in r else "")
        lines.append(
            f"{r['layer']:22s} {r['batch']:5d} {r['threads']:3d} | {r['ours_fwd_ms']:8.2f} "
            f"{r['ours_fwd_gflops']:6.1f} {r['ours_fwd_pct_peak']:3.0f} | {r['ours_fwd_bwd_ms']:8.2f} "
            f"{r['ours_fwd_bwd_gflops']:6.1f} {r['ours_fwd_bwd_pct_peak']:3.0f} | {t:>18s} | "
            f"{r['numpy_fwd_bwd_ms']:12.2f} | {ratio}")
    return "\n".join(lines)


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    labels = [f"{r['layer'].split('_')[0]}\nN={r['batch']} t={r['threads']}" for r in rows]
    xs = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.9), 4.5))
    wdt = 0.27
    for i, (who, key) in enumerate((("nnkernels", "ours_fwd_bwd_gflops"), ("torch", "torch_fwd_bwd_gflops"),
                                    ("numpy im2col", "numpy_fwd_bwd_gflops"))):
        ax.bar(xs + (i - 1) * wdt, [r.get(key, 0) for r in rows], wdt, label=who)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("GFLOP/s (forward + backward)")
    ax.set_title("Conv2D forward+backward, float32")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
