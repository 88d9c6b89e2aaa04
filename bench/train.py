"""Training throughput of the default models: pynn vs PyTorch (CPU) vs Keras on TensorFlow.

Run from the repository root, with the environment you want measured (this
script changes no environment variable of its own process)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python -m bench.train
    python -m bench.train --epoch-size 2560 --steps 20 --repeats 2     # quick check
    python -m bench.train --models resnet20 --tf-python /work/tfvenv/bin/python

Mixed bfloat16 (issue 14), float32 and bf16 side by side, every model, 1 and
2 threads, then the bf16 accuracy check (bench/bf16_accuracy.py)::

    python -m bench.train --precision float32,bf16 --models cnn,mlp,resnet20 \
        --threads 1,2 --tf-python /work/tfvenv/bin/python
    python -m bench.bf16_accuracy

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

--rounds N gives every contender N such turns, in the order of --contenders,
then reversed, and so on; each figure is the best turn's, and every turn's
figures are recorded (results[...]["rounds"]; the page-fault criterion takes
the most of any turn).  This host's slow phases (memory-bound work 20-35 %
slower) last minutes: with one turn each, a ratio can compare one contender's
fast phase with the other's slow one.

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

--precision float32 (default) | bf16 | float32,bf16 (both, each model's
precisions back to back, then a table of steady-state img/s side by side).
bf16 is mixed bfloat16: float32 variables (the optimizer updates float32
master weights), bfloat16 compute, and the same float32 part in every
contender -- the final softmax, hence the cross-entropy: the classifier ends
in Dense(10) (bfloat16) then Activation("softmax", dtype="float32"), as the
Keras mixed precision guide recommends (bench._tf_train.classifier_head;
under float32 the models are unchanged, Dense(10, activation="softmax")).

* ours: pynn.mixed_precision.set_global_policy("mixed_bfloat16") before the
  layers are made (and "float32" under --precision float32 where pynn has
  the API), then the same public API as above.  cnn/mlp: the same layers
  with the bf16 head; resnet20: pynn.zoo.resnet20 takes no dtype, so ours is
  built by bench._tf_train.keras_resnet20 -- the builder Keras uses, through
  pynn's public API (pynn.Input, pynn.layers.*, pynn.Model) -- with the bf16
  head; its parameter count is checked as for the zoo model.  Each layer's
  compute_dtype (Keras API) is recorded; a layer not computing in bfloat16
  (the float32 softmax apart), or layers without compute_dtype, is printed
  as a note under ours's row.  Without pynn.mixed_precision ours is reported
  as "unavailable (pynn has no mixed_precision)".
* torch: the standard autocast recipe -- forward and loss under
  torch.autocast(device_type="cpu", dtype=torch.bfloat16), backward and
  optimizer step outside it; float32 parameters and the same SGD/Adam; the
  Conv2d/Linear layers (the last Linear too) run in bfloat16, and
  CrossEntropyLoss is autocast to float32 (= the float32 softmax of the
  others); predict under autocast too.  Memory format as under float32
  (picked again under bf16 for the cnn; resnet20 channels_last).
* keras: keras.mixed_precision.set_global_policy("mixed_bfloat16") before
  the model is built (no loss scaling: Keras applies it to mixed_float16
  only); every layer's compute_dtype is checked (bfloat16, the final
  softmax float32; a mismatch is an error) and recorded with TensorFlow's
  oneDNN state: TF_ENABLE_ONEDNN_OPTS (unset = on, the default on Linux
  x86) and whether TF enabled oneDNN.  With TF 2.21 (oneDNN 3.7) on an
  AVX512_BF16 CPU the bf16 convolutions run brg_conv:avx512_core_bf16 and the
  Dense layers brg_matmul:avx512_core_bf16 (ONEDNN_VERBOSE=1 shows them).

Under bf16 the table adds, measured and printed but not asserted, the
acceptance of issue 14 (steady-state img/s): cnn ours >= 1.3x Keras
mixed_bfloat16 and >= 1.8x torch bf16 autocast at 1 and 2 threads; resnet20
ours >= 1.3x torch bf16 at 1 and 2 threads; 0 page faults per step for ours
(steady-state mean < 0.5) -- one line per criterion: met, not met, or not
measured (and why).

"% limit" = img/s / (measured FMA peak at that thread count / FLOPs per
training image; the peak is measured before and after, the larger is used):
the speed if every FLOP of the layers' GEMMs/convolutions ran at the FMA
peak.  The float32 FMA peak is the reference under bf16 too (bf16 dot
products do twice the FLOPs per instruction: bf16 may exceed 100%).  Ratios
are ours img/s / theirs (> 1: ours is faster).  Writes
bench/results/train-<timestamp>.json (machine, versions, every figure;
results[precision][threads][model][contender], the acceptance checks) and
.png (if matplotlib is installed; one row per model and precision).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
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
from bench._tf_train import (INPUT_SHAPE, MODEL_DEFAULTS, MODELS, NUM_CLASSES, OPTIMIZER, POLICY,
                              PRECISIONS, RESNET20_PARAMS, SYNTHETIC, batches, check_precision,
                              classifier_head, keras_resnet20, layer_dtypes, measure, prepare,
                              train_flops)

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
NO_MIXED_PRECISION = "pynn has no mixed_precision"


def pynn_mixed_precision(required=True):
    """pynn.mixed_precision (Keras 3's keras.mixed_precision API:
    set_global_policy(name), global_policy()).  Missing: RuntimeError
    "pynn has no mixed_precision (...)" if `required`, else None."""
    import pynn
    mp = getattr(pynn, "mixed_precision", None)
    why = None
    if mp is None:
        try:
            mp = importlib.import_module("pynn.mixed_precision")
        except ImportError as e:
            why = f"{type(e).__name__}: {e}"
    if mp is not None:
        missing = [f for f in ("set_global_policy", "global_policy") if not hasattr(mp, f)]
        if missing:
            mp, why = None, "it lacks " + ", ".join(missing)
    if mp is None and required:
        raise RuntimeError(f"{NO_MIXED_PRECISION} ({why})")
    return mp


def policy_name(policy) -> str:
    return str(getattr(policy, "name", policy))


class OursImpl:
    def __init__(self, model, threads, d, a):
        import pynn
        import pynn.layers
        import pynn.optimizers
        import pynn.utils
        precision = getattr(a, "precision", "float32")
        # the global dtype policy, set before the layers are made (float32 too,
        # where pynn has the API: an earlier in-process bf16 run set it)
        mp = pynn_mixed_precision(required=precision != "float32")
        if mp is not None:
            mp.set_global_policy(POLICY[precision])
        self.policy = policy_name(mp.global_policy()) if mp is not None else None
        pynn.utils.set_random_seed(a.seed)
        pynn.utils.set_num_threads(threads)
        L = pynn.layers
        self.m = None
        if model == "resnet20" and precision != "float32":
            # pynn.zoo.resnet20 takes no dtype: the same architecture, built
            # through pynn's public API by the builder Keras uses, with the
            # float32 softmax head of classifier_head
            self.m = keras_resnet20(pynn, INPUT_SHAPE[model], NUM_CLASSES, precision)
            built_by = "bench._tf_train.keras_resnet20"
        elif model == "resnet20":
            import pynn.zoo
            try:
                make = pynn.zoo.resnet20
            except AttributeError as e:
                raise AttributeError(f"pynn.zoo.resnet20 does not exist yet ({e})") from None
            self.m = make(input_shape=INPUT_SHAPE[model], num_classes=NUM_CLASSES)
            built_by = "pynn.zoo.resnet20()"
        if model == "resnet20":
            n = self.m.count_params()
            if n != RESNET20_PARAMS:
                raise ValueError(f"pynn ResNet-20 ({built_by}) has {n} parameters, not the "
                                 f"{RESNET20_PARAMS} of Keras's ResNet-20 v1")
            opt = pynn.optimizers.SGD(0.01, momentum=0.9)
        elif model == "cnn":
            layers = [L.Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)),
                      L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(2), L.Dropout(0.25),
                      L.Flatten(), L.Dense(128, activation="relu"), L.Dropout(0.5),
                      *classifier_head(L, precision)]
            opt = pynn.optimizers.SGD(0.01, momentum=0.9)
        else:
            layers = [L.Dense(512, activation="relu", input_shape=(784,)),
                      L.Dense(512, activation="relu"), *classifier_head(L, precision)]
            opt = pynn.optimizers.Adam(1e-3)
        if self.m is None:
            self.m = pynn.Sequential(layers)
        self.params = self.m.count_params()
        # what pynn says each layer computes in (Keras API: compute_dtype);
        # a mismatch is reported with the figures, not fatal
        self.layer_dtypes = layer_dtypes(self.m)
        self.precision_problems = check_precision(self.layer_dtypes, precision, "pynn")
        if precision != "float32" and all(dt is None for _, _, dt in self.layer_dtypes):
            self.precision_problems.append("pynn layers have no compute_dtype: not verified")
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
        # bf16: the standard autocast recipe -- forward and loss under
        # torch.autocast("cpu", bfloat16), backward outside it, float32
        # parameters (the optimizer's master weights); the Linear/Conv2d run
        # in bfloat16, CrossEntropyLoss is autocast to float32
        self.precision = getattr(a, "precision", "float32")
        if self.precision == "bf16":
            self.autocast = lambda: torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        else:
            self.autocast = contextlib.nullcontext
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
        with self.autocast():
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
            with torch.inference_mode(), self.autocast():
                for i in range(0, len(x), self.predict_batch):
                    out[i:i + self.predict_batch] = torch.softmax(
                        self.net(tx[i:i + self.predict_batch]).float(), 1)
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
            "--seed", str(a.seed), "--precision", a.precision]


class WorkerError(RuntimeError):
    """A contender's subprocess reported an error (its message is already
    "Type: message")."""


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
                raise WorkerError(res["error"])
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
            r["info"] = {"pynn_version": impl.version, "params": impl.params,
                         "precision": a.precision, "policy": impl.policy,
                         "layer_dtypes": impl.layer_dtypes,
                         "precision_problems": impl.precision_problems}
        else:
            impl = TorchImpl(torch, m, d, a, fmt)
            r = measure(impl, d, a.batch, a.steps, a.repeats, lg)
            r["info"] = {"torch": torch.__version__,
                         "format": fmt if m in IMAGE_MODELS else None,
                         "num_threads": torch.get_num_threads(), "params": impl.params,
                         "precision": a.precision,
                         "autocast": "cpu bfloat16 (forward + loss)" if a.precision == "bf16"
                         else None}
        r["info"]["effective_threads"] = eff
        r["info"]["pid"] = os.getpid()
    return r


def model_args(a, model, precision=None):
    """a copy of the arguments with the per-model defaults (MODEL_DEFAULTS) of
    --steps, --warmup, --epoch-size and --predict-size filled in where not
    given, and .precision the one precision of this run (if given)."""
    ma = argparse.Namespace(**vars(a))
    for k, v in MODEL_DEFAULTS[model].items():
        if getattr(ma, k) is None:
            setattr(ma, k, v)
    if precision is not None:
        ma.precision = precision
    return ma


def parse_precisions(spec: str) -> list:
    """'float32,bf16' -> ['float32', 'bf16'] (order kept, deduplicated)."""
    out = []
    for p in (x.strip() for x in spec.split(",")):
        if p and p not in out:
            if p not in PRECISIONS:
                raise ValueError(f"unknown precision {p!r}; expected {', '.join(PRECISIONS)} "
                                 "or a comma-separated list of them")
            out.append(p)
    if not out:
        raise ValueError(f"empty --precision {spec!r}")
    return out


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
                               f"[{LABEL[a.worker]} {a.model} {a.precision} t={a.threads}]")
    except Exception as e:
        r = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    print(json.dumps(r, default=str), flush=True)


def run_contender(c, m, p, t, d, ma, torch, torch_note, tc, tf_py, tf_note, data_path,
                  fmts, fmt_timing):
    """One contender, one model, one precision, one thread count: its result
    dict, or {"error", "traceback"} when it cannot run (reported, not fatal).
    fmts / fmt_timing: torch's memory format (and the timing that picked it)
    per model, filled in here."""
    time.sleep(ma.settle)
    waited, load = C.wait_quiet(max_wait=ma.quiet_wait)
    tag = f"[{LABEL[c]} {m} {p} t={t}]"
    log(f"{tag} start (waited {waited:.1f}s for a quiet machine; other load {load:.2f} cores)")
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
                if fmt == "auto" and m in fmts:  # picked in an earlier round
                    fmt = fmts[m]
                if fmt == "auto":
                    with tc.limit(t):
                        fmt, fmt_timing[m] = pick_torch_format(torch, d, ma)
                    log(f"{tag} format: " + ", ".join(
                        f"{f} {v:.0f} img/s" for f, v in fmt_timing[m].items()) + f" -> {fmt}")
                    time.sleep(ma.settle)
                fmts[m] = fmt
            if ma.in_process:
                r = measure_in_process(c, m, t, d, ma, torch, tc, fmt, tag)
            else:
                r = run_worker(c, data_path, m, t, fmt, ma)
        log(f"{tag} steady {r['steady']['img_per_s']:.0f} img/s, epoch "
            f"{r['epoch']['img_per_s']:.0f} img/s, predict {r['predict']['img_per_s']:.0f} img/s")
    except Exception as e:  # a contender that cannot run is reported, not fatal
        r = {"error": str(e) if isinstance(e, WorkerError) else f"{type(e).__name__}: {e}",
             "traceback": traceback.format_exc()[-3000:]}
        log(f"{tag} unavailable: {r['error'][:300]}")
    return r


METRICS = ("epoch", "steady", "predict")


def merge_round(prev, r):
    """A contender's result over --rounds: per metric (epoch, steady, predict)
    the round with the most img/s, as --repeats does within a round; every
    round's figures (and steady-state page faults per step) listed in
    "rounds", errors of failed rounds in "round_errors".  prev: the merge of
    the earlier rounds (None before the first)."""
    if "error" in r:
        if prev is None or "error" in prev:
            return r
        prev.setdefault("round_errors", []).append(r["error"])
        return prev
    fig = {k: r[k]["img_per_s"] for k in METRICS}
    fig["minflt_per_step"] = r["steady"]["minflt_per_step"]
    if prev is None or "error" in prev:
        if prev is not None:
            r["round_errors"] = prev.get("round_errors", []) + [prev["error"]]
        r["rounds"] = [fig]
        return r
    prev["rounds"].append(fig)
    for k in METRICS:
        if r[k]["img_per_s"] > prev[k]["img_per_s"]:
            prev[k] = r[k]
    return prev


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


PRECISION_DESC = {
    "float32": "float32",
    "bf16": "mixed bfloat16: pynn and Keras policy mixed_bfloat16, torch autocast bfloat16",
}


def contender_name(c, fmt=None) -> str:
    return LABEL[c] + (f" ({FMT_SHORT.get(fmt, fmt)})" if fmt else "")


def model_width(results) -> int:
    """Width of the model column: the longest model name measured (>= 5)."""
    return max([5] + [len(m) for pt in results.values() for pm in pt.values() for m in pm])


def table(results, limits, torch_fmt) -> str:
    """results[precision][threads][model][contender]; torch_fmt[precision][threads][model]."""
    lines = []
    mw = model_width(results)
    for p, per_t in results.items():
        for t, per_model in per_t.items():
            lines.append(f"precision={p} ({PRECISION_DESC[p]})  threads={t}")
            lines.append("FMA limit (= float32 FMA peak / training FLOPs per image): " + ", ".join(
                f"{m} {limits[t][m]:.0f} img/s" for m in per_model))
            hdr = (f"{'model':{mw}s} {'contender':18s} {'epoch img/s':>11s} {'steady img/s':>12s} "
                   f"{'ms/step':>8s} {'%limit':>6s} {'predict img/s':>13s} {'minflt/step':>11s} "
                   f"{'load':>4s}")
            lines += [hdr, "-" * len(hdr)]
            for m, per_c in per_model.items():
                for c, r in per_c.items():
                    fmt = torch_fmt[p][t].get(m) if c == "torch" else None
                    name = contender_name(c, fmt)
                    if "error" in r and NO_MIXED_PRECISION in r["error"]:
                        lines.append(f"{m:{mw}s} {name:18s} unavailable ({NO_MIXED_PRECISION})")
                        continue
                    if "error" in r:
                        lines.append(f"{m:{mw}s} {name:18s} unavailable: {r['error'][:150]}")
                        continue
                    lines.append(
                        f"{m:{mw}s} {name:18s} {r['epoch']['img_per_s']:11.0f} "
                        f"{r['steady']['img_per_s']:12.0f} {r['steady']['ms_per_step']:8.2f} "
                        f"{100 * r['steady']['img_per_s'] / limits[t][m]:5.1f}% "
                        f"{r['predict']['img_per_s']:13.0f} "
                        f"{r['steady']['minflt_per_step']:11.1f} {max_load(r):4.1f}")
                    if len(r.get("rounds", ())) > 1:
                        lines.append(f"{m:{mw}s} {'':18s} steady img/s by round: " + ", ".join(
                            f"{x['steady']:.0f}" for x in r["rounds"]))
                    for prob in _get(r, "info", "precision_problems") or ():
                        lines.append(f"{m:{mw}s} {'':18s} note: {prob[:200]}")
                for other in ("torch", "keras"):
                    rat = _get(per_c, "ours", "ratios", other)
                    if rat:
                        lines.append(f"{m:{mw}s} {'ours/' + LABEL[other]:18s} "
                                     f"{rat['epoch']:10.2f}x {rat['steady']:11.2f}x {'':8s} "
                                     f"{'':6s} {rat['predict']:12.2f}x")
            lines.append("")
    if len(results) > 1:
        lines += side_by_side(results, torch_fmt)
    lines.append("ratios: ours img/s / theirs (> 1: ours faster); %limit: steady img/s / FMA limit "
                 "(the float32 FMA peak under bf16 too: bf16 dot products do twice the FLOPs per "
                 "instruction, so bf16 can exceed 100%); minflt/step: minor page faults per "
                 "steady-state step; load: most cores other processes used during a timed run "
                 "(> 0.2: the figures are disturbed)")
    return "\n".join(lines)


def side_by_side(results, torch_fmt) -> list:
    """Steady-state img/s of each contender in every precision, and the
    ratios ours/torch, ours/keras per precision."""
    precs = list(results)
    threads = [t for t in results[precs[0]]]
    lines = []
    mw = model_width(results)
    for t in threads:
        models = [m for m in MODELS if any(m in results[p].get(t, {}) for p in precs)]
        lines.append(f"steady-state img/s by precision, threads={t}")
        hdr = f"{'model':{mw}s} {'contender':18s} " + " ".join(f"{p:>10s}" for p in precs)
        if "float32" in precs:
            hdr += "".join(f" {p + '/f32':>10s}" for p in precs if p != "float32")
        lines += [hdr, "-" * len(hdr)]
        for m in models:
            cs = [c for c in CONTENDERS if any(c in (_get(results, p, t, m) or {}) for p in precs)]
            for c in cs:
                fmts = []
                for p in precs:
                    f = torch_fmt[p][t].get(m) if c == "torch" else None
                    if f and FMT_SHORT.get(f, f) not in fmts:
                        fmts.append(FMT_SHORT.get(f, f))
                name = LABEL[c] + (f" ({'/'.join(fmts)})" if fmts else "")
                v = {p: _get(results, p, t, m, c, "steady", "img_per_s") for p in precs}
                row = f"{m:{mw}s} {name:18s} " + " ".join(
                    f"{v[p]:10.0f}" if v[p] else f"{'-':>10s}" for p in precs)
                if "float32" in precs:
                    for p in precs:
                        if p != "float32":
                            row += (f" {v[p] / v['float32']:9.2f}x" if v[p] and v["float32"]
                                    else f" {'-':>10s}")
                lines.append(row)
            for other in ("torch", "keras"):
                rat = {p: _get(results, p, t, m, "ours", "ratios", other, "steady") for p in precs}
                if any(rat.values()):
                    lines.append(f"{m:{mw}s} {'ours/' + LABEL[other]:18s} " + " ".join(
                        f"{rat[p]:9.2f}x" if rat[p] else f"{'-':>10s}" for p in precs))
        lines.append("")
    return lines


# the acceptance of issue 14 (bf16), measured on the steady state, not asserted
ACCEPT_RATIOS = (  # (model, other contender, at least ours/other)
    ("cnn", "keras", 1.3),
    ("cnn", "torch", 1.8),
    ("resnet20", "torch", 1.3),
)
ACCEPT_THREADS = (1, 2)
ACCEPT_MINFLT = 0.5  # "0 page faults per step": the steady-state mean rounds to 0


def short_error(r) -> str:
    e = r["error"]
    return NO_MIXED_PRECISION if NO_MIXED_PRECISION in e else e[:100]


def acceptance(results) -> list:
    """The issue's bf16 criteria as dicts (criterion, status: met / not met /
    not measured, figures, detail)."""
    R = results.get("bf16")
    out = []
    if R is None:
        return [{"criterion": "bf16 criteria", "status": "not measured",
                 "detail": "run with --precision bf16 (or float32,bf16)"}]
    peer = {"keras": "Keras mixed_bfloat16", "torch": "torch bf16 autocast"}
    for m, other, need in ACCEPT_RATIOS:
        for t in ACCEPT_THREADS:
            crit = f"{m} bf16, {t} thread{'s' if t > 1 else ''}: ours >= {need}x {peer[other]}"
            ours = _get(R, t, m, "ours")
            them = _get(R, t, m, other)
            item = {"criterion": crit, "model": m, "threads": t, "other": other, "need": need}
            if t not in R or m not in R[t] or ours is None or them is None:
                miss = ("--threads lacks %d" % t if t not in R else
                        f"--models lacks {m}" if m not in R[t] else
                        "--contenders lacks " + ("ours" if ours is None else other))
                item.update(status="not measured", detail=miss)
            elif "error" in ours or "error" in them:
                bad = ours if "error" in ours else them
                who = "ours" if "error" in ours else other
                item.update(status="not measured",
                            detail=f"{who} unavailable: {short_error(bad)}")
            else:
                a, b = ours["steady"]["img_per_s"], them["steady"]["img_per_s"]
                item.update(status="met" if a / b >= need else "not met", ratio=a / b,
                            ours_img_per_s=a, other_img_per_s=b,
                            detail=f"ours {a:.0f} / {other} {b:.0f} img/s = {a / b:.2f}x")
            out.append(item)
    figs, vals, missing = [], [], []
    for t, per_model in R.items():
        for m, per_c in per_model.items():
            r = per_c.get("ours")
            if r is None:
                continue
            if "error" in r:
                missing.append(f"{m} t={t}: {short_error(r)}")
                continue
            v = r["steady"]["minflt_per_step"]
            fig = (f"{m} t={t} {v:.1f} ({'+'.join(str(f) for f in r['steady']['minflt_runs'])}"
                   " faults)")
            if len(r.get("rounds", ())) > 1:  # every round counts, not only the fastest
                v = max(x["minflt_per_step"] for x in r["rounds"])
                fig += f", most of {len(r['rounds'])} rounds {v:.1f}"
            vals.append(v)
            figs.append(fig)
    item = {"criterion": f"ours bf16: 0 page faults per steady step (mean < {ACCEPT_MINFLT})",
            "minflt_per_step": dict(zip(figs, vals))}
    if not vals:
        item.update(status="not measured",
                    detail=(f"ours unavailable ({'; '.join(missing)})" if missing
                            else "--contenders lacks ours"))
    else:
        item.update(status="met" if max(vals) < ACCEPT_MINFLT else "not met",
                    detail=", ".join(figs) + (f"; not measured: {'; '.join(missing)}"
                                              if missing else ""))
    out.append(item)
    return out


def acceptance_text(checks) -> str:
    lines = ["acceptance (issue 14, bf16; steady-state img/s; measured, not asserted):"]
    for c in checks:
        lines.append(f"  {c['criterion']}: {c['status']} ({c['detail']})")
    return "\n".join(lines)


def plot(results, path):
    """One row per model and precision; bars per thread count and contender."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [(m, p) for m in MODELS for p in results
            if any(m in pm for pm in results[p].values())]
    metrics = (("epoch", "training epoch"), ("steady", "steady-state training"),
               ("predict", "inference (predict)"))
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 3.4 * len(rows)), squeeze=False)
    w = 0.8 / len(CONTENDERS)
    for i, (m, p) in enumerate(rows):
        threads = list(results[p])
        for j, (key, title) in enumerate(metrics):
            ax = axes[i][j]
            for k, c in enumerate(CONTENDERS):
                vals = [_get(results[p][t], m, c, key, "img_per_s") or 0 for t in threads]
                ax.bar(np.arange(len(threads)) + (k - 1) * w, vals, w, label=LABEL[c])
            ax.set_xticks(np.arange(len(threads)))
            ax.set_xticklabels([f"{t} thr" for t in threads])
            ax.set_title(f"{m} {p}: {title}", fontsize=9)
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
    ap.add_argument("--precision", default="float32",
                    help="float32 (default), bf16 (mixed bfloat16: float32 weights, bfloat16 "
                         "compute, float32 softmax) or float32,bf16 to run both and print them "
                         "side by side")
    ap.add_argument("--epoch-size", type=int, default=None,
                    help="images in the timed epoch (0: the whole training set; default 0, "
                         "resnet20: 5120)")
    ap.add_argument("--steps", type=int, default=None,
                    help="steady-state steps per run (default 200, resnet20: 50)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="steady-state warm-up steps (default 10, resnet20: 5)")
    ap.add_argument("--repeats", type=int, default=3, help="steady-state and predict runs (best)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="turns of every contender per model, precision and thread count, "
                         "the order reversed every other round; each figure is the best round's "
                         "(all recorded): the host's slow phases last minutes, so one turn each "
                         "can put one contender in a slow phase and the other in a fast one")
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
    try:
        precisions = parse_precisions(a.precision)
    except ValueError as e:
        ap.error(str(e))
    if a.worker:
        if len(precisions) != 1:
            ap.error("--worker runs one precision")
        a.threads = int(a.threads)
        return worker_main(a)
    if a.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {a.rounds}")
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

    results = {p: {t: {} for t in threads_list} for p in precisions}
    torch_fmt = {p: {t: {} for t in threads_list} for p in precisions}
    fmt_timing = {p: {t: {} for t in threads_list} for p in precisions}
    try:
        for t in threads_list:
            for m in models:
                ma = model_args(a, m)  # with the per-model defaults
                d = prepare(raw, m, ma.batch, ma.epoch_size, ma.steps, ma.warmup, ma.predict_size,
                            ma.seed)
                for p in precisions:  # the precisions of one model back to back
                    ma = model_args(a, m, p)
                    per = results[p][t][m] = {}
                    for rnd in range(a.rounds):  # odd rounds in reverse order
                        for c in (contenders if rnd % 2 == 0 else contenders[::-1]):
                            r = run_contender(c, m, p, t, d, ma, torch, torch_note, tc, tf_py,
                                              tf_note, data_path, torch_fmt[p][t],
                                              fmt_timing[p][t])
                            per[c] = merge_round(per.get(c), r)
                    if "ours" in per and "error" not in per["ours"]:
                        ratios = {}
                        for other in ("torch", "keras"):
                            if other in per and "error" not in per[other]:
                                ratios[other] = {
                                    k: per["ours"][k]["img_per_s"] / per[other][k]["img_per_s"]
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
    for per_t in results.values():
        for t, per_model in per_t.items():
            for m, per in per_model.items():
                for r in per.values():
                    if "error" not in r:
                        r["pct_fma_limit"] = {k: 100 * r[k]["img_per_s"] / limits[t][m]
                                              for k in ("epoch", "steady")}

    txt = table(results, limits, torch_fmt)
    checks = acceptance(results) if "bf16" in precisions else []
    if checks:
        txt += "\n\n" + acceptance_text(checks)
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
        # results, torch_format...: [precision][threads][model](...)
        "precisions": precisions,
        "policy": {p: POLICY[p] for p in precisions},
        "torch_format": {p: {str(t): v for t, v in pt.items()} for p, pt in torch_fmt.items()},
        "torch_format_timing_img_per_s": {p: {str(t): v for t, v in pt.items()}
                                          for p, pt in fmt_timing.items()},
        "in_process": a.in_process,
        "results": {p: {str(t): v for t, v in pt.items()} for p, pt in results.items()},
        "acceptance": checks,
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
