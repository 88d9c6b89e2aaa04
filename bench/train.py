"""Training throughput of the default models: pynn vs PyTorch (CPU) vs Keras on TensorFlow.

Run from the repository root, with the environment you want measured (this
script changes no environment variable of its own process)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python -m bench.train
    python -m bench.train --epoch-size 2560 --steps 20 --repeats 2     # quick check
    python -m bench.train --models resnet20 --tf-python /work/tfvenv/bin/python

Models (float32, batch 128, same init everywhere: glorot_uniform / Xavier
uniform kernels, zero biases):

* cnn (input 28x28x1, NHWC for pynn and Keras): Conv2D(32,3x3,relu) ->
  Conv2D(64,3x3,relu) -> MaxPool 2x2 -> Dropout(0.25) -> Flatten ->
  Dense(128,relu) -> Dropout(0.5) -> Dense(10) softmax, sparse categorical
  cross-entropy, SGD(lr 0.01, momentum 0.9).  71.6 MFLOP per training image.
* mlp (input 784): Dense(512,relu) -> Dense(512,relu) -> Dense(10) softmax,
  Adam(1e-3, eps 1e-7).  3.2 MFLOP per training image.
* resnet20 (not in the default --models; input 32x32x3, NHWC; synthetic
  data: random uint8 images and 10 random labels, the same in every process):
  ResNet-20 v1 exactly as resnet_v1(depth=20) of the keras.io CIFAR-10 ResNet
  example, without its L2 regularizer -- stem Conv2D(16,3,same) -> BN -> ReLU;
  3 stages of 16, 32, 64 filters x 3 basic blocks (Conv2D(f,3,strides s) ->
  BN -> ReLU -> Conv2D(f,3) -> BN, plus the input, or in the first block of
  stages 2 and 3 (s=2) a Conv2D(f,1,strides 2) projection without BN, then
  ReLU); AveragePooling2D(8) -> Flatten -> Dense(10) softmax.  he_normal
  kernels, zero biases, BatchNormalization momentum 0.99 / epsilon 1e-3
  (torch: momentum 0.01, eps 1e-3); 274,442 parameters as Keras counts them
  (asserted for Keras and torch; pynn's count_params must match).  SGD(lr
  0.01, momentum 0.9).  244 MFLOP per training image.  pynn builds it with
  pynn.zoo.resnet20(input_shape=(32, 32, 3), num_classes=10) (reported as
  unavailable if pynn has none); torch always runs it channels_last (model
  and input) unless --torch-format nchw.  Its own defaults: --steps 50,
  --warmup 5, --epoch-size 5120, --predict-size 2000.

For each thread count (default 1 and all cores) and model, the contenders run
one after the other, each in a fresh process of its own (python -m
bench.train --worker ...; --in-process runs ours and torch in this one): a
process's history changes what it measures (glibc raises its mmap threshold
after large frees, so torch's page faults per step drop from ~9000 to 0 once
an earlier measurement ran in the same process), and torch and nnkernels each
bring an OpenMP runtime.  Between contenders: a pause of --settle s and a
wait (up to --quiet-wait s) for other processes to leave the cores, so that
spinning OpenMP/OpenBLAS threads release them.  Each contender measures, in
this order (bench._tf_train.measure):

1. steady state: --warmup steps, then --repeats runs of --steps training
   steps on fixed batches; img/s of the best run; minor page faults per step
   (getrusage ru_minflt, in the contender's own process);
2. one training epoch (after a small warm-up fit): fit on the first
   --epoch-size images of Fashion-MNIST (pynn.datasets.fashion_mnist; random
   uint8 data of the same shape if it cannot be loaded, with a note), shuffled;
3. inference: predict over --predict-size test images at batch
   --predict-batch, best of --repeats.

Contenders:

* ours: the public pynn API only -- pynn.utils.set_num_threads,
  pynn.Sequential of pynn.layers.*, compile(...), fit(...) for the epoch,
  train_on_batch per step for the steady state, predict(...).  Reported as
  unavailable (with the exception) when pynn lacks any of it.
* torch: the same model in torch.nn (ReLU in place, logits + CrossEntropyLoss,
  softmax in predict), torch.set_num_threads; batches indexed from a
  per-epoch permutation (no DataLoader).  For the cnn, NCHW and channels_last
  are timed briefly at each thread count and the faster is the peer
  (--torch-format forces one).
* keras: Keras 3 on TensorFlow, in a subprocess (bench/_tf_train.py) with the
  Python of --tf-python (default: this Python if it can import tensorflow,
  else /work/tfvenv/bin/python, else skipped); intra/inter-op threads = t,
  jit_compile off; steady state through model.fit on a fixed array of
  --steps batches (--tf-steady train_on_batch to use train_on_batch).

"% limit" = img/s / (measured FMA peak at that thread count / FLOPs per
training image; the peak is measured before and after, the larger is used): the speed if every FLOP of the layers' GEMMs/convolutions ran
at the FMA peak.  Ratios are ours img/s / theirs (> 1: ours is faster).
Writes bench/results/train-<timestamp>.json (machine, versions, every figure)
and .png (if matplotlib is installed).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

if __package__ in (None, ""):  # `python bench/train.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from bench import _common as C
from bench._tf_train import (INPUT_SHAPE, MODEL_DEFAULTS, MODELS, NUM_CLASSES, OPTIMIZER,
                              RESNET20_PARAMS, SYNTHETIC, batches, measure, prepare, train_flops)

ROOT = os.path.dirname(C.HERE)
CONTENDERS = ("ours", "torch", "keras")
LABEL = {"ours": "pynn", "torch": "torch", "keras": "keras"}
FMT_SHORT = {"channels_last": "cl", "nchw": "nchw"}
IMAGE_MODELS = tuple(m for m in MODELS if len(INPUT_SHAPE[m]) == 3)  # NHWC input
DEFAULT_TF_VENV_PY = "/work/tfvenv/bin/python"


def log(s):
    print(s, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def load_raw(seed: int = 0):
    """uint8 Fashion-MNIST through pynn, else random data of the same shape."""
    try:
        import pynn.datasets.fashion_mnist as fm
        (xtr, ytr), (xte, yte) = fm.load_data()
        raw = {"x_train": np.asarray(xtr, np.uint8), "y_train": np.asarray(ytr),
               "x_test": np.asarray(xte, np.uint8), "y_test": np.asarray(yte)}
        assert raw["x_train"].shape[1:] == (28, 28), raw["x_train"].shape
        return raw, "fashion_mnist (pynn.datasets.fashion_mnist.load_data())", None
    except Exception as e:
        note = (f"Fashion-MNIST not available through pynn ({type(e).__name__}: {e}); "
                "using random uint8 images and labels of the same shape (throughput is "
                "unaffected, accuracies are meaningless)")
        r = np.random.default_rng(seed)
        raw = {"x_train": r.integers(0, 256, (60000, 28, 28), dtype=np.uint8),
               "y_train": r.integers(0, 10, 60000).astype(np.uint8),
               "x_test": r.integers(0, 256, (10000, 28, 28), dtype=np.uint8),
               "y_test": r.integers(0, 10, 10000).astype(np.uint8)}
        return raw, "random", note


# --------------------------------------------------------------------------
# ours: public pynn API only
# --------------------------------------------------------------------------
class OursImpl:
    def __init__(self, model, threads, d, a):
        import pynn
        import pynn.layers
        import pynn.optimizers
        import pynn.utils
        pynn.utils.set_random_seed(a.seed)
        pynn.utils.set_num_threads(threads)
        L = pynn.layers
        self.m = None
        if model == "resnet20":
            import pynn.zoo
            try:
                make = pynn.zoo.resnet20
            except AttributeError as e:
                raise AttributeError(f"pynn.zoo.resnet20 does not exist yet ({e})") from None
            self.m = make(input_shape=INPUT_SHAPE[model], num_classes=NUM_CLASSES)
            n = self.m.count_params()
            if n != RESNET20_PARAMS:
                raise ValueError(f"pynn.zoo.resnet20() has {n} parameters, not the "
                                 f"{RESNET20_PARAMS} of Keras's ResNet-20 v1")
            opt = pynn.optimizers.SGD(0.01, momentum=0.9)
        elif model == "cnn":
            layers = [L.Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)),
                      L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(2), L.Dropout(0.25),
                      L.Flatten(), L.Dense(128, activation="relu"), L.Dropout(0.5),
                      L.Dense(10, activation="softmax")]
            opt = pynn.optimizers.SGD(0.01, momentum=0.9)
        else:
            layers = [L.Dense(512, activation="relu", input_shape=(784,)),
                      L.Dense(512, activation="relu"), L.Dense(10, activation="softmax")]
            opt = pynn.optimizers.Adam(1e-3)
        if self.m is None:
            self.m = pynn.Sequential(layers)
        self.params = self.m.count_params()
        self.m.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        self.batch, self.predict_batch = a.batch, a.predict_batch
        self.warm_b = batches(d["steady_x"], d["steady_y"], a.batch, 0, a.warmup)
        self.st_b = batches(d["steady_x"], d["steady_y"], a.batch, a.warmup, a.steps)
        self.version = getattr(pynn, "__version__", None)

    def _steps(self, bs):
        r = None
        for xb, yb in bs:
            r = self.m.train_on_batch(xb, yb)
        return r

    def warmup_steady(self):
        return self._steps(self.warm_b)

    def run_steady(self):
        return self._steps(self.st_b)

    def fit_epoch(self, x, y):
        h = self.m.fit(x, y, batch_size=self.batch, epochs=1, verbose=0, shuffle=True)
        hist = getattr(h, "history", None) or {}
        return {k: v[-1] for k, v in hist.items()}

    def predict(self, x):
        return self.m.predict(x, batch_size=self.predict_batch, verbose=0)


# --------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------
def torch_resnet20(torch, num_classes=NUM_CLASSES):
    """ResNet-20 v1 of bench._tf_train.keras_resnet20 in torch.nn: the same
    layers and parameter count; BatchNorm2d(eps=1e-3, momentum=0.01) = Keras's
    (0.99, 1e-3); kernels initialised as Keras's he_normal (truncated normal
    at 2 sigma, stddev sqrt(2 / fan_in) / 0.8796...), zero biases; logits out
    (the softmax is in the loss).  Padding: 1 on both sides of every 3x3
    convolution, the usual torch way; Keras's "same" with stride 2 pads only
    the bottom/right (the sampled positions shift by one pixel, the work is
    the same)."""
    nn = torch.nn

    def bn(c):
        return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)

    class Block(nn.Module):
        def __init__(self, cin, f, s):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(cin, f, 3, s, 1), bn(f)
            self.conv2, self.bn2 = nn.Conv2d(f, f, 3, 1, 1), bn(f)
            # projection shortcut of the first block of stages 2 and 3: no batch norm
            self.shortcut = nn.Conv2d(cin, f, 1, s) if s != 1 else None
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            y += x if self.shortcut is None else self.shortcut(x)
            return self.relu(y)

    blocks, cin = [], 16
    for stage, f in enumerate((16, 32, 64)):
        for block in range(3):
            blocks.append(Block(cin, f, 2 if stage > 0 and block == 0 else 1))
            cin = f
    net = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), bn(16), nn.ReLU(inplace=True), *blocks,
                        nn.AvgPool2d(8), nn.Flatten(), nn.Linear(64, num_classes))
    for mod in net.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            fan_in = mod.weight[0].numel()
            std = (2.0 / fan_in) ** 0.5 / 0.87962566103423978
            nn.init.trunc_normal_(mod.weight, 0.0, std, -2 * std, 2 * std)
            nn.init.zeros_(mod.bias)
    return net


def torch_count_params(net) -> int:
    """Parameters as Keras counts them: trainable + batch-norm moving statistics."""
    return (sum(p.numel() for p in net.parameters())
            + sum(b.numel() for n, b in net.named_buffers()
                  if not n.endswith("num_batches_tracked")))


class TorchImpl:
    def __init__(self, torch, model, d, a, fmt="nchw", steady=True):
        self.torch = torch
        nn = torch.nn
        torch.manual_seed(a.seed)
        self.cl = model in IMAGE_MODELS and fmt == "channels_last"
        if model == "resnet20":
            net = torch_resnet20(torch)
            n = torch_count_params(net)
            if n != RESNET20_PARAMS:
                raise ValueError(f"torch ResNet-20 has {n} parameters, not {RESNET20_PARAMS}")
        elif model == "cnn":
            cl = self.cl

            class Flatten(nn.Module):
                # channels_last: flatten in (h, w, c) order, a view (as Keras);
                # NCHW: (c, h, w) order, also a view
                def forward(self, x):
                    return (x.permute(0, 2, 3, 1) if cl else x).flatten(1)

            net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(inplace=True),
                                nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True),
                                nn.MaxPool2d(2), nn.Dropout(0.25), Flatten(),
                                nn.Linear(9216, 128), nn.ReLU(inplace=True), nn.Dropout(0.5),
                                nn.Linear(128, 10))
        else:
            net = nn.Sequential(nn.Linear(784, 512), nn.ReLU(inplace=True),
                                nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Linear(512, 10))
        if model != "resnet20":
            for mod in net.modules():
                if isinstance(mod, (nn.Conv2d, nn.Linear)):
                    nn.init.xavier_uniform_(mod.weight)
                    nn.init.zeros_(mod.bias)
        self.params = torch_count_params(net)
        if self.cl:
            net = net.to(memory_format=torch.channels_last)
        self.net = net.train()
        if model in ("cnn", "resnet20"):
            self.opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        else:
            self.opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
        self.loss = nn.CrossEntropyLoss()
        self.batch, self.predict_batch = a.batch, a.predict_batch
        self.gen = torch.Generator().manual_seed(a.seed)
        self.tx = self._t(d["steady_x"])
        self.ty = torch.from_numpy(d["steady_y"])
        self.warm_b = batches(self.tx, self.ty, a.batch, 0, a.warmup)
        self.st_b = batches(self.tx, self.ty, a.batch, a.warmup, a.steps)

    def _t(self, x):
        """NumPy NHWC (or flat) float32 -> torch tensor (no copy: C == 1)."""
        t = self.torch.from_numpy(x)
        if t.ndim == 4:
            t = t.permute(0, 3, 1, 2)
            t = t.contiguous(memory_format=self.torch.channels_last if self.cl
                             else self.torch.contiguous_format)
        return t

    def step(self, xb, yb):
        self.opt.zero_grad(set_to_none=True)
        out = self.net(xb)
        loss = self.loss(out, yb)
        loss.backward()
        self.opt.step()
        return loss.detach(), (out.detach().argmax(1) == yb).sum()

    def _steps(self, bs):
        r = None
        for xb, yb in bs:
            r = self.step(xb, yb)
        return {"loss": float(r[0]), "accuracy": float(r[1]) / len(bs[-1][1])}

    def warmup_steady(self):
        return self._steps(self.warm_b)

    def run_steady(self):
        return self._steps(self.st_b)

    def fit_epoch(self, x, y):
        torch = self.torch
        tx, ty = self._t(x), torch.from_numpy(y)
        n = len(ty)
        perm = torch.randperm(n, generator=self.gen)
        tot_loss = torch.zeros(())
        correct = torch.zeros((), dtype=torch.int64)
        for i in range(0, n, self.batch):
            idx = perm[i:i + self.batch]
            xb = tx.index_select(0, idx)
            if self.cl:
                xb = xb.contiguous(memory_format=torch.channels_last)
            l, c = self.step(xb, ty.index_select(0, idx))
            tot_loss += l * len(idx)
            correct += c
        return {"loss": float(tot_loss) / n, "accuracy": float(correct) / n}

    def predict(self, x):
        torch = self.torch
        tx = self._t(x)
        out = torch.empty((len(x), NUM_CLASSES))
        self.net.eval()
        try:
            with torch.inference_mode():
                for i in range(0, len(x), self.predict_batch):
                    out[i:i + self.predict_batch] = torch.softmax(
                        self.net(tx[i:i + self.predict_batch]), 1)
        finally:
            self.net.train()
        return out.numpy()


def pick_torch_format(torch, d, a):
    """Time NCHW and channels_last training steps of the cnn briefly
    (interleaved, best of 3 runs of --format-steps steps); the faster wins."""
    n = min(a.format_steps, a.warmup + a.steps)  # the steady batches there are
    impls = {f: TorchImpl(torch, "cnn", d, a, f) for f in ("nchw", "channels_last")}
    bs = {f: batches(impl.tx, impl.ty, a.batch, 0, n) for f, impl in impls.items()}
    for f, impl in impls.items():
        impl._steps(bs[f][:3])
    best = {f: float("inf") for f in impls}
    for _ in range(3):
        for f, impl in impls.items():
            time.sleep(a.settle / 4)
            t0 = time.perf_counter()
            impl._steps(bs[f])
            best[f] = min(best[f], time.perf_counter() - t0)
    ips = {f: n * a.batch / t for f, t in best.items()}
    return max(ips, key=ips.get), ips


# --------------------------------------------------------------------------
# keras / tensorflow (subprocess)
# --------------------------------------------------------------------------
def resolve_tf_python(arg):
    """(python path or None, note)."""
    if arg:
        return arg, f"--tf-python {arg}"
    import importlib.util
    if importlib.util.find_spec("tensorflow") is not None:
        return sys.executable, "this Python imports tensorflow"
    if os.path.exists(DEFAULT_TF_VENV_PY):
        return DEFAULT_TF_VENV_PY, f"tensorflow not importable here; using {DEFAULT_TF_VENV_PY}"
    return None, ("TensorFlow skipped: not importable by this Python and "
                  f"{DEFAULT_TF_VENV_PY} does not exist (pass --tf-python)")


def common_args(model, threads, data_path, a):
    return ["--json", "--model", model, "--threads", str(threads), "--data", data_path,
            "--epoch-size", str(a.epoch_size), "--steps", str(a.steps),
            "--warmup", str(a.warmup), "--repeats", str(a.repeats), "--batch", str(a.batch),
            "--predict-size", str(a.predict_size), "--predict-batch", str(a.predict_batch),
            "--seed", str(a.seed)]


def run_subprocess(cmd, timeout, tf=False):
    """Run a worker, return its JSON result (the last stdout line that is one)."""
    env = dict(os.environ)
    if tf:
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            res = json.loads(line)
            if "error" in res:
                raise RuntimeError(res["error"])
            res["subprocess"] = {"cmd": cmd, "wall_s": time.perf_counter() - t0,
                                 "returncode": p.returncode}
            return res
    raise RuntimeError(f"subprocess failed (rc {p.returncode}): "
                       f"{(p.stderr or p.stdout)[-1500:]}")


def run_keras(tf_py, data_path, model, threads, a):
    return run_subprocess([tf_py, "-m", "bench._tf_train"]
                          + common_args(model, threads, data_path, a)
                          + ["--steady-mode", a.tf_steady], a.timeout, tf=True)


def run_worker(contender, data_path, model, threads, fmt, a):
    """ours / torch in a fresh process of this Python (python -m bench.train --worker)."""
    return run_subprocess([sys.executable, "-m", "bench.train", "--worker", contender]
                          + common_args(model, threads, data_path, a)
                          + ["--torch-format", fmt or "nchw"], a.timeout)


def measure_in_process(c, m, t, d, a, torch, tc, fmt, log_prefix):
    """Build contender c (ours / torch) here, limit all libraries to t threads,
    measure.  fmt: torch's memory format for the cnn."""
    with tc.limit(t) as eff:
        lg = (lambda s: log(f"{log_prefix} {s}"))
        if c == "ours":
            impl = OursImpl(m, t, d, a)
            r = measure(impl, d, a.batch, a.steps, a.repeats, lg)
            r["info"] = {"pynn_version": impl.version, "params": impl.params}
        else:
            impl = TorchImpl(torch, m, d, a, fmt)
            r = measure(impl, d, a.batch, a.steps, a.repeats, lg)
            r["info"] = {"torch": torch.__version__,
                         "format": fmt if m in IMAGE_MODELS else None,
                         "num_threads": torch.get_num_threads(), "params": impl.params}
        r["info"]["effective_threads"] = eff
        r["info"]["pid"] = os.getpid()
    return r


def model_args(a, model):
    """a copy of the arguments with the per-model defaults (MODEL_DEFAULTS) of
    --steps, --warmup, --epoch-size and --predict-size filled in where not given."""
    ma = argparse.Namespace(**vars(a))
    for k, v in MODEL_DEFAULTS[model].items():
        if getattr(ma, k) is None:
            setattr(ma, k, v)
    return ma


def worker_main(a):
    """--worker ours|torch: one contender, one model, one thread count; prints JSON."""
    a = model_args(a, a.model)
    try:
        torch = None
        if a.worker == "torch":
            torch, note = C.optional_torch()
            if torch is None:
                raise RuntimeError(note)
        tc = C.ThreadControl(torch)
        with np.load(a.data) as z:
            raw = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        d = prepare(raw, a.model, a.batch, a.epoch_size, a.steps, a.warmup, a.predict_size,
                    a.seed)
        del raw
        r = measure_in_process(a.worker, a.model, a.threads, d, a, torch, tc, a.torch_format,
                               f"[{LABEL[a.worker]} {a.model} t={a.threads}]")
    except Exception as e:
        r = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    print(json.dumps(r, default=str), flush=True)


# --------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------
def _get(res, *keys):
    for k in keys:
        if not isinstance(res, dict) or k not in res:
            return None
        res = res[k]
    return res


def max_load(r) -> float:
    """Most CPU (cores) other processes used during any of r's timed runs."""
    v = (r["steady"]["other_load_cores"] + r["predict"]["other_load_cores"]
         + [r["epoch"]["other_load_cores"]])
    v = [x for x in v if x == x]
    return max(v) if v else float("nan")


def table(results, limits, torch_fmt) -> str:
    lines = []
    for t, per_model in results.items():
        lines.append(f"threads={t}  FMA limit (= FMA peak / training FLOPs per image): " + ", ".join(
            f"{m} {limits[t][m]:.0f} img/s" for m in per_model))
        hdr = (f"{'model':5s} {'contender':18s} {'epoch img/s':>11s} {'steady img/s':>12s} "
               f"{'ms/step':>8s} {'%limit':>6s} {'predict img/s':>13s} {'minflt/step':>11s} "
               f"{'load':>4s}")
        lines += [hdr, "-" * len(hdr)]
        for m, per_c in per_model.items():
            for c, r in per_c.items():
                fmt = torch_fmt[t].get(m) if c == "torch" else None
                name = LABEL[c] + (f" ({FMT_SHORT.get(fmt, fmt)})" if fmt else "")
                if "error" in r:
                    lines.append(f"{m:5s} {name:18s} unavailable: {r['error'][:150]}")
                    continue
                lines.append(
                    f"{m:5s} {name:18s} {r['epoch']['img_per_s']:11.0f} "
                    f"{r['steady']['img_per_s']:12.0f} {r['steady']['ms_per_step']:8.2f} "
                    f"{100 * r['steady']['img_per_s'] / limits[t][m]:5.1f}% "
                    f"{r['predict']['img_per_s']:13.0f} {r['steady']['minflt_per_step']:11.1f} "
                    f"{max_load(r):4.1f}")
            for other in ("torch", "keras"):
                rat = _get(per_c, "ours", "ratios", other)
                if rat:
                    lines.append(f"{m:5s} {'ours/' + LABEL[other]:18s} {rat['epoch']:10.2f}x "
                                 f"{rat['steady']:11.2f}x {'':8s} {'':6s} {rat['predict']:12.2f}x")
        lines.append("")
    lines.append("ratios: ours img/s / theirs (> 1: ours faster); %limit: steady img/s / FMA limit; "
                 "minflt/step: steady state; load: most cores other processes used during a "
                 "timed run (> 0.2: the figures are disturbed)")
    return "\n".join(lines)


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    models = sorted({m for pm in results.values() for m in pm}, key=MODELS.index)
    metrics = (("epoch", "training epoch"), ("steady", "steady-state training"),
               ("predict", "inference (predict)"))
    threads = list(results)
    fig, axes = plt.subplots(len(models), 3, figsize=(12, 3.4 * len(models)), squeeze=False)
    w = 0.8 / len(CONTENDERS)
    for i, m in enumerate(models):
        for j, (key, title) in enumerate(metrics):
            ax = axes[i][j]
            for k, c in enumerate(CONTENDERS):
                vals = [_get(results[t], m, c, key, "img_per_s") or 0 for t in threads]
                ax.bar(np.arange(len(threads)) + (k - 1) * w, vals, w, label=LABEL[c])
            ax.set_xticks(np.arange(len(threads)))
            ax.set_xticklabels([f"{t} thr" for t in threads])
            ax.set_title(f"{m}: {title}", fontsize=9)
            ax.set_ylabel("images/s")
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default=None, help="e.g. 1,2 (default: 1 and all cores)")
    ap.add_argument("--models", default="cnn,mlp",
                    help=f"comma-separated, of {', '.join(MODELS)} (default cnn,mlp)")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--epoch-size", type=int, default=None,
                    help="images in the timed epoch (0: the whole training set; default 0, "
                         "resnet20: 5120)")
    ap.add_argument("--steps", type=int, default=None,
                    help="steady-state steps per run (default 200, resnet20: 50)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="steady-state warm-up steps (default 10, resnet20: 5)")
    ap.add_argument("--repeats", type=int, default=3, help="steady-state and predict runs (best)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--predict-size", type=int, default=None,
                    help="test images predicted (default 10000, resnet20: 2000)")
    ap.add_argument("--predict-batch", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torch-format", choices=("auto", "nchw", "channels_last"), default="auto")
    ap.add_argument("--format-steps", type=int, default=10,
                    help="steps per run when picking torch's memory format")
    ap.add_argument("--tf-python", default=None)
    ap.add_argument("--tf-steady", choices=("fit", "train_on_batch"), default="fit")
    ap.add_argument("--timeout", type=float, default=3600,
                    help="seconds allowed to one contender's subprocess")
    ap.add_argument("--in-process", action="store_true",
                    help="run ours and torch in this process instead of a fresh one each")
    # worker mode (internal): one contender in a fresh process
    ap.add_argument("--worker", choices=("ours", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds of pause before each contender")
    ap.add_argument("--quiet-wait", type=float, default=10.0,
                    help="wait up to this long for other processes to use < 0.25 core")
    ap.add_argument("--out", default=C.default_out_dir())
    ap.add_argument("--no-plot", action="store_true")
    a = ap.parse_args(argv)
    if a.worker:
        a.threads = int(a.threads)
        return worker_main(a)
    threads_list = C.parse_threads(a.threads)
    models = [m for m in a.models.split(",") if m]
    contenders = [c for c in a.contenders.split(",") if c]
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m!r}")
    for c in contenders:
        if c not in CONTENDERS:
            ap.error(f"unknown contender {c!r}")

    torch, torch_note = C.optional_torch()
    tc = C.ThreadControl(torch)
    notes = [n for n in (torch_note, tc.note) if n]
    raw, data_source, note = load_raw(a.seed)
    if note:
        notes.append(note)
    tf_py, tf_note = (resolve_tf_python(a.tf_python) if "keras" in contenders
                      else (None, "keras not requested"))
    notes.append(tf_note)
    for n in notes:
        log("note: " + n)

    log("measuring the FMA peak ...")
    C.wait_quiet(max_wait=a.quiet_wait)
    peaks = {"start": C.measure_peaks(threads_list)}
    flops = {m: train_flops(m) for m in models}

    tmpdir = tempfile.mkdtemp(prefix="bench-train-")
    data_path = os.path.join(tmpdir, "data.npz")
    if tf_py or not a.in_process:
        np.savez(data_path, **raw)

    results, torch_fmt, fmt_timing = {}, {}, {}
    try:
        for t in threads_list:
            results[t], torch_fmt[t], fmt_timing[t] = {}, {}, {}
            for m in models:
                ma = model_args(a, m)  # with the per-model defaults
                d = prepare(raw, m, ma.batch, ma.epoch_size, ma.steps, ma.warmup, ma.predict_size,
                            ma.seed)
                per = results[t][m] = {}
                for c in contenders:
                    time.sleep(ma.settle)
                    waited, load = C.wait_quiet(max_wait=ma.quiet_wait)
                    tag = f"[{LABEL[c]} {m} t={t}]"
                    log(f"{tag} start (waited {waited:.1f}s for a quiet machine; "
                        f"other load {load:.2f} cores)")
                    try:
                        if c == "keras":
                            if tf_py is None:
                                raise RuntimeError(tf_note)
                            r = run_keras(tf_py, data_path, m, t, ma)
                        else:
                            fmt = None
                            if c == "torch":
                                if torch is None:
                                    raise RuntimeError(torch_note)
                                fmt = ma.torch_format if m in IMAGE_MODELS else None
                                if m == "resnet20" and fmt == "auto":
                                    fmt = "channels_last"
                                if fmt == "auto":
                                    with tc.limit(t):
                                        fmt, fmt_timing[t][m] = pick_torch_format(torch, d, ma)
                                    log(f"{tag} format: " + ", ".join(
                                        f"{f} {v:.0f} img/s" for f, v in fmt_timing[t][m].items())
                                        + f" -> {fmt}")
                                    time.sleep(ma.settle)
                                torch_fmt[t][m] = fmt
                            if ma.in_process:
                                r = measure_in_process(c, m, t, d, ma, torch, tc, fmt, tag)
                            else:
                                r = run_worker(c, data_path, m, t, fmt, ma)
                        log(f"{tag} steady {r['steady']['img_per_s']:.0f} img/s, epoch "
                            f"{r['epoch']['img_per_s']:.0f} img/s, predict "
                            f"{r['predict']['img_per_s']:.0f} img/s")
                    except Exception as e:  # a contender that cannot run is reported, not fatal
                        r = {"error": f"{type(e).__name__}: {e}",
                             "traceback": traceback.format_exc()[-3000:]}
                        log(f"{tag} unavailable: {r['error'][:300]}")
                    per[c] = r
                if "ours" in per and "error" not in per["ours"]:
                    ratios = {}
                    for other in ("torch", "keras"):
                        if other in per and "error" not in per[other]:
                            ratios[other] = {k: per["ours"][k]["img_per_s"] / per[other][k]["img_per_s"]
                                             for k in ("epoch", "steady", "predict")}
                    per["ours"]["ratios"] = ratios
                del d
    finally:
        if os.path.exists(data_path):
            os.remove(data_path)
        os.rmdir(tmpdir)
    # the machine is shared: the peak measured while a neighbour ran is too
    # low; the larger of the measurements before and after is the reference
    log("measuring the FMA peak again ...")
    C.wait_quiet(max_wait=a.quiet_wait)
    peaks["end"] = C.measure_peaks(threads_list)
    peaks["used_gflops"] = {str(t): max(peaks[w]["best"][str(t)]["gflops"] for w in ("start", "end"))
                            for t in threads_list}
    limits = {t: {m: peaks["used_gflops"][str(t)] * 1e9 / flops[m]["train"] for m in models}
              for t in threads_list}
    for t, per_model in results.items():
        for m, per in per_model.items():
            for r in per.values():
                if "error" not in r:
                    r["pct_fma_limit"] = {k: 100 * r[k]["img_per_s"] / limits[t][m]
                                          for k in ("epoch", "steady")}

    txt = table(results, limits, torch_fmt)
    print()
    print(txt)
    for n in notes:
        print("note: " + n)

    stamp = C.timestamp()
    doc = {
        "benchmark": "train", "argv": sys.argv, "args": vars(a),
        "machine": C.machine_info(torch, torch_note),
        "fma_peak": peaks, "flops_per_image": flops,
        "fma_limit_img_per_s": {str(t): v for t, v in limits.items()},
        "models": {m: {"optimizer": OPTIMIZER[m], "batch": a.batch,
                       "args": {k: getattr(model_args(a, m), k) for k in MODEL_DEFAULTS[m]}}
                   for m in models},
        "data": {"source": data_source, "train_images": len(raw["x_train"]),
                 "test_images": len(raw["x_test"]),
                 "synthetic": {m: f"random uint8 {INPUT_SHAPE[m]} images, {NUM_CLASSES} "
                                  "random labels (bench._tf_train.synthetic_raw)"
                               for m in models if m in SYNTHETIC}},
        "notes": notes, "tf_python": tf_py,
        "torch_format": {str(t): v for t, v in torch_fmt.items()},
        "torch_format_timing_img_per_s": {str(t): v for t, v in fmt_timing.items()},
        "in_process": a.in_process,
        "results": {str(t): v for t, v in results.items()},
        "table": txt,
    }
    path = C.write_json(doc, a.out, f"train-{stamp}.json")
    print(f"wrote {path}")
    if not a.no_plot:
        png = plot(results, os.path.join(a.out, f"train-{stamp}.png"))
        if png:
            print(f"wrote {png}")


if __name__ == "__main__":
    main()
