"""GPU benchmark: pynn on CuPy vs PyTorch (cuDNN) on the same GPU.

    python bench/gpu.py [--batches 32,128,1024,8192] [--steps 30] [--out DIR]

For the default CNN of `pynn train` (Keras MNIST CNN, 28x28x1, SGD momentum
0.9): a training step (host batch -> device, forward, loss, backward,
update, the loss read back once per step as fit does) and inference
(forward only, data already on the device), both as ms and images/s, best
of 3 rounds of --steps steps after warm-up; the same for a PyTorch model of
the same layers (channels_last, cuDNN, TF32 as PyTorch defaults it for
convolutions) when torch with CUDA is installed.  Then per-kernel times of
GPUOps (conv fwd/bwd by im2col + cuBLAS on the second conv layer, max pool,
dropout, the SGD update of all 1.2 M parameters) timed with CUDA events.

Writes a JSON file (device, versions, every figure) to --out and prints a
table.  Exits with status 2 and a message when no GPU is usable.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np


def _best(fn, steps, sync, rounds=3):
    fn()
    fn()
    sync()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def _events(cp, fn, reps=20):
    """Best per-call time of fn in ms, from CUDA events."""
    fn()
    cp.cuda.get_current_stream().synchronize()
    best = float("inf")
    for _ in range(3):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
        best = min(best, cp.cuda.get_elapsed_time(a, b) / reps)
    return best


def bench_pynn(batch, steps, cp):
    import pynn
    from pynn import zoo
    pynn.utils.set_random_seed(0)
    m = zoo.cnn().to_gpu()
    m.compile(optimizer=zoo.make_optimizer("sgd"), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.random((batch, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    m.build((None, 28, 28, 1))
    m._require_ready(x)
    sync = cp.cuda.get_current_stream().synchronize
    total = [0.0]

    def step():
        # the public step: host batch to the device, forward, backward, update;
        # the loss read back once (as fit does)
        total[0] += m.train_on_batch(x, y)[0]

    train = _best(step, steps, sync)
    xd = cp.asarray(x)
    infer = _best(lambda: m._forward([xd], False), steps, sync)
    return {"train_ms": train * 1e3, "train_img_s": batch / train, "infer_ms": infer * 1e3,
            "infer_img_s": batch / infer, "checksum": float(total[0])}


def bench_torch(batch, steps):
    import torch
    import torch.nn as tnn
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = tnn.Sequential(
        tnn.Conv2d(1, 32, 3), tnn.ReLU(), tnn.Conv2d(32, 64, 3), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Dropout(0.25), tnn.Flatten(), tnn.Linear(9216, 128), tnn.ReLU(), tnn.Dropout(0.5),
        tnn.Linear(128, 10)).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    lossf = tnn.CrossEntropyLoss()
    xh = torch.rand(batch, 1, 28, 28).pin_memory()
    yh = torch.randint(0, 10, (batch,)).pin_memory()
    total = [0.0]

    def step():
        x = xh.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = yh.to(dev, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = lossf(model(x), y)
        loss.backward()
        opt.step()
        total[0] += loss.item()

    model.train()
    train = _best(step, steps, torch.cuda.synchronize)
    xd = xh.to(dev).contiguous(memory_format=torch.channels_last)
    model.eval()

    def infer_step():
        with torch.no_grad():
            model(xd)
    infer = _best(infer_step, steps, torch.cuda.synchronize)
    return {"train_ms": train * 1e3, "train_img_s": batch / train, "infer_ms": infer * 1e3,
            "infer_img_s": batch / infer, "checksum": total[0], "version": torch.__version__}


def bench_kernels(batch, cp):
    from pynn import backend
    ops = backend.get_ops("gpu")
    rng = np.random.default_rng(0)
    f32 = np.float32
    x = cp.asarray(rng.random((batch, 26, 26, 32), dtype=f32))
    w = cp.asarray(rng.random((3, 3, 32, 64), dtype=f32))
    b = cp.zeros(64, f32)
    y = cp.empty((batch, 24, 24, 64), f32)
    dx, dw, db = cp.empty_like(x), cp.empty_like(w), cp.empty_like(b)
    pooled = cp.empty((batch, 12, 12, 64), f32)
    idx = cp.empty((batch, 12, 12, 64), np.int32)
    dpool = cp.empty_like(y)
    drop = cp.empty_like(pooled)
    n = 1_199_882
    p, g, m = (cp.asarray(rng.random(n, dtype=f32)) for _ in range(3))
    flops = 2.0 * batch * 24 * 24 * 64 * 3 * 3 * 32
    res = {
        "conv2_fwd_ms": _events(cp, lambda: ops.conv2d_forward(x, w, b, activation="relu", out=y)),
        "conv2_bwd_ms": _events(cp, lambda: ops.conv2d_backward(
            y, x, w, y=y, activation="relu", dx=dx, dw=dw, db=db)),
        "maxpool_fwd_ms": _events(cp, lambda: ops.max_pool2d(y, 2, out=pooled, indices=idx)),
        "maxpool_bwd_ms": _events(cp, lambda: ops.max_pool2d_backward(
            pooled, idx, y.shape, out=dpool, pool_size=2, strides=2, padding="valid")),
        "dropout_ms": _events(cp, lambda: ops.dropout(pooled, 0.25, 1, 2, out=drop)),
        "sgd_update_ms": _events(cp, lambda: ops.sgd_update(p, g, 0.01, 0.9, m=m)),
    }
    res["conv2_fwd_tflops"] = flops / res["conv2_fwd_ms"] / 1e9
    res["conv2_bwd_tflops"] = 2 * flops / res["conv2_bwd_ms"] / 1e9
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="32,128,1024,8192")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results"))
    args = ap.parse_args(argv)
    from pynn.backend.gpu import gpu_available
    ok, why = gpu_available()
    if not ok:
        print(f"bench/gpu.py: no usable GPU: {why}", file=sys.stderr)
        return 2
    import cupy as cp
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    info = {"device": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
            "cupy": cp.__version__, "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
            "python": platform.python_version(), "host": platform.node()}
    torch_ok = False
    if not args.no_torch:
        try:
            import torch
            torch_ok = torch.cuda.is_available()
        except ImportError:
            pass
    results = {"info": info, "batches": {}}
    print(f"{info['device']}  cupy {info['cupy']}  torch: {'yes' if torch_ok else 'no'}")
    print(f"{'batch':>6} {'pynn train ms':>14} {'img/s':>10} {'torch ms':>9} {'img/s':>10} "
          f"{'ratio':>6} | {'pynn inf ms':>11} {'torch inf ms':>12}")
    for bs in (int(v) for v in args.batches.split(",")):
        r = {"pynn": bench_pynn(bs, args.steps, cp)}
        if torch_ok:
            r["torch"] = bench_torch(bs, args.steps)
        r["kernels"] = bench_kernels(bs, cp)
        results["batches"][bs] = r
        pt, tt = r["pynn"], r.get("torch")
        print(f"{bs:6d} {pt['train_ms']:14.3f} {pt['train_img_s']:10.0f} "
              + (f"{tt['train_ms']:9.3f} {tt['train_img_s']:10.0f} {pt['train_ms'] / tt['train_ms']:6.2f}"
                 if tt else f"{'-':>9} {'-':>10} {'-':>6}")
              + f" | {pt['infer_ms']:11.3f} " + (f"{tt['infer_ms']:12.3f}" if tt else f"{'-':>12}"))
        print("       kernels (ms): " + ", ".join(f"{k[:-3]} {v:.3f}" for k, v in r["kernels"].items()
                                                 if k.endswith("_ms")))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"gpu-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
