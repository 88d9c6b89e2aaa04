"""Keras-on-TensorFlow contender of bench/train.py, and what all contenders share.

Run by bench/train.py in a subprocess, with the Python of an environment that
has TensorFlow (TensorFlow lives in its own venv: it must not share a process
with torch and nnkernels)::

    <tf-python> -m bench._tf_train --json --model cnn --threads 2 --data DATA.npz ...

It builds the same model as the other contenders (Keras defaults:
glorot_uniform kernels, zero biases; resnet20: the keras.io example's
he_normal), sets TensorFlow's intra- and inter-op thread pools to --threads
before the runtime starts, runs the measurements of :func:`measure` and
prints one JSON line.  XLA is off (``jit_compile=False``, which is also
Keras's "auto" on a CPU-only machine).  The steady state is measured with
``model.fit`` on a fixed array of --steps batches (one compiled
``tf.function`` per step, no per-call Python conversion; ``shuffle=False``) by
default, or ``model.train_on_batch`` per step with ``--steady-mode
train_on_batch``.

``--precision bf16``: ``keras.mixed_precision.set_global_policy(
"mixed_bfloat16")`` before the model is built (float32 variables, bfloat16
compute, no loss scaling), the final softmax a float32 ``Activation`` after a
bfloat16 ``Dense(10)`` as the Keras mixed precision guide does it
(:func:`classifier_head`, shared with ours).  Every layer's compute_dtype is
checked (:func:`check_precision`) and recorded, with TensorFlow's oneDNN
state (:func:`onednn_info`; TF_ENABLE_ONEDNN_OPTS is on by default on Linux
x86: with TF 2.21 / oneDNN 3.7 on an AVX512_BF16 CPU, ONEDNN_VERBOSE=1 shows
brg_conv_fwd/bwd:avx512_core_bf16 convolutions, brg_matmul:avx512_core_bf16
for the bf16 Dense layers and jit:avx512_core_bf16 pooling).

This module imports neither nnkernels nor torch (the TF venv has neither):
the model description, FLOP counts, data preparation and the measurement loop
that bench/train.py uses for every contender live here.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time

import numpy as np

# --------------------------------------------------------------------------
# the models
# --------------------------------------------------------------------------
MODELS = ("cnn", "mlp", "resnet20")
INPUT_SHAPE = {"cnn": (28, 28, 1), "mlp": (784,), "resnet20": (32, 32, 3)}
NUM_CLASSES = 10
# cnn: Conv2D(32,3,relu) Conv2D(64,3,relu) MaxPool2 Dropout(.25) Flatten
#      Dense(128,relu) Dropout(.5) Dense(10,softmax); SGD(0.01, momentum 0.9)
# mlp: Dense(512,relu) Dense(512,relu) Dense(10,softmax); Adam(1e-3, eps 1e-7)
# resnet20: ResNet-20 v1 of the keras.io CIFAR-10 example (resnet_v1, depth
#      20; see keras_resnet20), synthetic 32x32x3 data; SGD(0.01, momentum 0.9)
OPTIMIZER = {"cnn": "SGD(lr=0.01, momentum=0.9)", "mlp": "Adam(lr=1e-3, eps=1e-7)",
             "resnet20": "SGD(lr=0.01, momentum=0.9)"}
# --precision of bench.train: "float32", or "bf16" = mixed bfloat16 (float32
# variables and master weights, bfloat16 compute), the Keras policy name of each
PRECISIONS = ("float32", "bf16")
POLICY = {"float32": "float32", "bf16": "mixed_bfloat16"}
# parameters as Keras counts them (batch-norm moving statistics included)
RESNET20_PARAMS = 274442
# data: Fashion-MNIST (bench.train.load_raw) for cnn/mlp; random uint8
# images and labels made by prepare() for resnet20 (throughput only)
SYNTHETIC = {"resnet20": {"train": 50000, "test": 10000}}  # CIFAR-10's sizes
# per-model defaults of --steps, --warmup, --epoch-size (0: the whole training
# set) and --predict-size of bench.train: ResNet-20 trains ~6x slower than the cnn
MODEL_DEFAULTS = {
    "cnn": {"steps": 200, "warmup": 10, "epoch_size": 0, "predict_size": 10000},
    "mlp": {"steps": 200, "warmup": 10, "epoch_size": 0, "predict_size": 10000},
    "resnet20": {"steps": 50, "warmup": 5, "epoch_size": 5120, "predict_size": 2000},
}


def resnet20_convs():
    """(output h*w, cin, cout, k) of every convolution of ResNet-20 v1 on
    32x32x3, in the order Keras creates them (per block: conv1, conv2, then
    the 1x1 projection shortcut of the first block of stages 2 and 3)."""
    convs = [(32 * 32, 3, 16, 3)]
    cin, hw = 16, 32
    for stage, f in enumerate((16, 32, 64)):
        for block in range(3):
            s = 2 if stage > 0 and block == 0 else 1
            hw //= s
            convs += [(hw * hw, cin, f, 3), (hw * hw, f, f, 3)]
            if s != 1:
                convs.append((hw * hw, cin, f, 1))
            cin = f
    return convs


def classifier_head(L, precision="float32", num_classes=NUM_CLASSES, **dense_kw):
    """The final layers of every model, for a Keras-like ``layers`` module L
    (keras.layers or pynn.layers).

    float32: ``Dense(num_classes, activation="softmax")``, as always.
    bf16: ``Dense(num_classes)`` (bfloat16 under the mixed policy) then
    ``Activation("softmax", dtype="float32")``: the softmax (and so the
    cross-entropy) in float32, as the Keras mixed precision guide recommends.
    torch's autocast recipe computes the same thing (bf16 Linear, the
    cross-entropy autocast to float32)."""
    if precision == "float32":
        return [L.Dense(num_classes, activation="softmax", **dense_kw)]
    if precision == "bf16":
        return [L.Dense(num_classes, **dense_kw), L.Activation("softmax", dtype="float32")]
    raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")


def keras_resnet20(keras, input_shape=(32, 32, 3), num_classes=NUM_CLASSES,
                   precision="float32"):
    """ResNet-20 v1 exactly as resnet_v1(depth=20) of the keras.io CIFAR-10
    ResNet example (without its L2(1e-4) kernel regularizer): he_normal
    kernels, zero biases, BatchNormalization with Keras defaults (momentum
    0.99, epsilon 1e-3).  274,442 parameters.  `keras` is any module with
    Keras's API (keras, or pynn for ours under bf16); the head is
    classifier_head(precision); the layers take the global dtype policy that
    is set when this is called."""
    L = keras.layers

    def conv(x, f, k=3, s=1):
        return L.Conv2D(f, k, strides=s, padding="same", kernel_initializer="he_normal")(x)

    inputs = keras.Input(input_shape)
    x = L.Activation("relu")(L.BatchNormalization()(conv(inputs, 16)))
    for stage, f in enumerate((16, 32, 64)):
        for block in range(3):
            s = 2 if stage > 0 and block == 0 else 1
            y = L.Activation("relu")(L.BatchNormalization()(conv(x, f, 3, s)))
            y = L.BatchNormalization()(conv(y, f))
            if s != 1:
                x = conv(x, f, 1, s)          # projection shortcut, no batch norm
            x = L.Activation("relu")(L.Add()([x, y]))
    x = L.Flatten()(L.AveragePooling2D(pool_size=8)(x))
    for layer in classifier_head(L, precision, num_classes, kernel_initializer="he_normal"):
        x = layer(x)
    return keras.Model(inputs, x)


def train_flops(model: str) -> dict:
    """FLOPs per image (multiply-add = 2) of the layers' GEMM/convolution
    work: forward, and backward = dW for every layer + dX for every layer
    but the first (its input gradient is not needed).  Elementwise work
    (bias, ReLU, pooling, dropout, softmax, optimizer) is not counted."""
    if model == "cnn":
        # (forward flops, first layer?)
        layers = [(2 * 26 * 26 * 32 * 3 * 3 * 1, True),
                  (2 * 24 * 24 * 64 * 3 * 3 * 32, False),
                  (2 * 9216 * 128, False),
                  (2 * 128 * 10, False)]
    elif model == "mlp":
        layers = [(2 * 784 * 512, True), (2 * 512 * 512, False), (2 * 512 * 10, False)]
    elif model == "resnet20":
        layers = [(2 * hw * cin * cout * k * k, i == 0)
                  for i, (hw, cin, cout, k) in enumerate(resnet20_convs())]
        layers.append((2 * 64 * NUM_CLASSES, False))
    else:
        raise ValueError(model)
    fwd = sum(f for f, _ in layers)
    bwd = sum(f if first else 2 * f for f, first in layers)
    return {"forward": float(fwd), "train": float(fwd + bwd)}


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def synthetic_raw(model: str, seed: int = 0, n_train: int = None) -> dict:
    """Random uint8 images of the model's input shape and random labels of
    NUM_CLASSES classes (the same in every process for the same arguments)."""
    shape = INPUT_SHAPE[model]
    sizes = SYNTHETIC[model]
    r = np.random.default_rng([seed, 32323])
    n_train = n_train or sizes["train"]
    raw = {"x_train": r.integers(0, 256, (n_train,) + shape, dtype=np.uint8),
           "y_train": r.integers(0, NUM_CLASSES, n_train).astype(np.uint8),
           "x_test": r.integers(0, 256, (sizes["test"],) + shape, dtype=np.uint8),
           "y_test": r.integers(0, NUM_CLASSES, sizes["test"]).astype(np.uint8)}
    return raw


def prepare(raw: dict, model: str, batch: int, epoch_size: int, steps: int,
            warmup: int, predict_size: int, seed: int = 0) -> dict:
    """Float inputs (x/255, NHWC or flat) and int64 labels for each measurement.

    raw: uint8 x_train (N,28,28), y_train (N,), x_test, y_test; ignored for a
    model in SYNTHETIC (resnet20), whose data synthetic_raw(model, seed) makes
    (only as many training images as the measurements use).
    epoch: the first epoch_size training images (fit shuffles them);
    epoch_warm: 2 batches + the epoch's last partial batch (so a warm-up fit
    meets both batch shapes); steady: warmup + steps distinct batches, from
    the start of the training set (cycled if too short); predict: the first
    predict_size test images (cycled if too short)."""
    shape = INPUT_SHAPE[model]
    if model in SYNTHETIC:
        n = min(epoch_size, SYNTHETIC[model]["train"]) if epoch_size else SYNTHETIC[model]["train"]
        raw = synthetic_raw(model, seed, max(n, (warmup + steps) * batch))

    def f(x):
        return (x.reshape((x.shape[0],) + shape).astype(np.float32) / np.float32(255.0))

    def take(x, y, n):
        if n <= len(x):
            return x[:n], y[:n]
        return np.resize(x, (n,) + x.shape[1:]), np.resize(y, n)

    xtr, ytr = raw["x_train"], raw["y_train"].astype(np.int64)
    xte, yte = raw["x_test"], raw["y_test"].astype(np.int64)
    ne = min(epoch_size, len(xtr)) if epoch_size else len(xtr)
    nw = 2 * batch + ne % batch
    ns = (warmup + steps) * batch
    d = {}
    d["epoch_x"], d["epoch_y"] = f(xtr[:ne]), ytr[:ne].copy()
    d["epoch_warm_x"], d["epoch_warm_y"] = (a.copy() for a in take(d["epoch_x"], d["epoch_y"], nw))
    sx, sy = take(xtr, ytr, ns)
    d["steady_x"], d["steady_y"] = f(sx), sy.copy()
    px, py = take(xte, yte, predict_size)
    d["predict_x"], d["predict_y"] = f(px), py.copy()
    return d


def batches(x, y, batch, start, count):
    """`count` contiguous (views) batches starting at batch index `start`."""
    return [(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch])
            for i in range(start, start + count)]


# --------------------------------------------------------------------------
# measurement (used for every contender)
# --------------------------------------------------------------------------
def minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class OtherLoad:
    """CPU used by other processes (cores) since creation: busy time of all
    CPUs (/proc/stat) minus this process's CPU time (a copy of
    bench._common.OtherLoad, which imports nnkernels)."""

    def __init__(self):
        try:
            self.hz = os.sysconf("SC_CLK_TCK")
        except (AttributeError, ValueError, OSError):
            self.hz = 100
        self.t0 = self._read()

    def _read(self):
        t = os.times()
        try:
            with open("/proc/stat") as fh:
                v = [int(a) for a in fh.readline().split()[1:9]]
            busy = (sum(v) - v[3] - v[4]) / self.hz
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        return time.perf_counter(), busy, t.user + t.system

    def cores(self) -> float:
        (w0, b0, s0), (w1, b1, s1) = self.t0, self._read()
        return max(0.0, ((b1 - b0) - (s1 - s0)) / (w1 - w0)) if w1 > w0 else float("nan")


def _floats(v):
    """History / train_on_batch results -> JSON-able floats."""
    if isinstance(v, dict):
        return {k: _floats(a) for k, a in v.items()}
    if isinstance(v, (list, tuple)):
        return [_floats(a) for a in v]
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def measure(impl, d: dict, batch: int, steps: int, repeats: int, log=None) -> dict:
    """The three measurements of one contender, in this order.

    `impl` has: ``warmup_steady()``, ``run_steady()`` (the --steps steps
    once; returns the last step's result), ``fit_epoch(x, y)`` (one epoch,
    shuffled; returns a history dict) and ``predict(x)`` (probabilities).

    * steady: after the warm-up steps, `repeats` runs of `steps` training
      steps on fixed batches; img/s from the best run; garbage collector off
      while timing; minor page faults per step over all runs.
    * epoch: a warm-up fit on a few batches (first-call costs such as graph
      tracing; its time is reported as ``warm_fit_s``), then one timed fit of
      one epoch (garbage collector on, as a user's fit runs).
    * predict: one warm-up batch, then the best of `repeats` predicts.
    """
    log = log or (lambda *a: None)
    out = {}
    t0 = time.perf_counter()
    impl.warmup_steady()
    out["steady_warmup_s"] = time.perf_counter() - t0
    times, faults, loads, last = [], [], [], None
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            mon, f0 = OtherLoad(), minflt()
            t0 = time.perf_counter()
            last = impl.run_steady()
            dt = time.perf_counter() - t0
            faults.append(minflt() - f0)
            loads.append(mon.cores())
        finally:
            gc.enable()
        times.append(dt)
    best = min(times)
    out["steady"] = {
        "steps": steps, "batch": batch, "repeats": repeats, "times_s": times,
        "best_s": best, "img_per_s": steps * batch / best,
        "img_per_s_median": steps * batch / float(np.median(times)),
        "ms_per_step": 1e3 * best / steps,
        "minflt_per_step": sum(faults) / (steps * repeats), "minflt_runs": faults,
        "other_load_cores": loads, "last_result": _floats(last),
    }
    log(f"steady {out['steady']['img_per_s']:.0f} img/s")

    t0 = time.perf_counter()
    impl.fit_epoch(d["epoch_warm_x"], d["epoch_warm_y"])
    warm = time.perf_counter() - t0
    n = len(d["epoch_x"])
    gc.collect()
    mon, f0 = OtherLoad(), minflt()
    t0 = time.perf_counter()
    hist = impl.fit_epoch(d["epoch_x"], d["epoch_y"])
    dt = time.perf_counter() - t0
    out["epoch"] = {"images": n, "batch": batch, "warm_fit_images": len(d["epoch_warm_x"]),
                    "warm_fit_s": warm, "time_s": dt, "img_per_s": n / dt,
                    "minflt_per_step": (minflt() - f0) / -(-n // batch),
                    "other_load_cores": mon.cores(), "history": _floats(hist)}
    log(f"epoch {out['epoch']['img_per_s']:.0f} img/s")

    xp, yp = d["predict_x"], d["predict_y"]
    impl.predict(xp[:impl.predict_batch])
    times, loads, p = [], [], None
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            mon = OtherLoad()
            t0 = time.perf_counter()
            p = impl.predict(xp)
            times.append(time.perf_counter() - t0)
            loads.append(mon.cores())
        finally:
            gc.enable()
    p = np.asarray(p)
    out["predict"] = {"images": len(xp), "batch": impl.predict_batch, "times_s": times,
                      "best_s": min(times), "img_per_s": len(xp) / min(times),
                      "other_load_cores": loads,
                      # proof of work: probabilities sum to 1 per row; accuracy
                      "prob_sum_mean": float(p.sum(axis=1).mean()),
                      "accuracy": float((p.argmax(axis=1) == yp).mean())}
    log(f"predict {out['predict']['img_per_s']:.0f} img/s")
    return out


# --------------------------------------------------------------------------
# Keras on TensorFlow
# --------------------------------------------------------------------------
def layer_dtypes(model) -> list:
    """[(layer name, class, compute dtype)] of a built model's layers (Keras
    API: layer.compute_dtype; None where a layer has no such attribute)."""
    out = []
    for layer in model.layers:
        cd = getattr(layer, "compute_dtype", None)
        out.append((layer.name, type(layer).__name__, None if cd is None else str(cd)))
    return out


def check_precision(dtypes: list, precision: str, who: str) -> list:
    """What contradicts `precision` in layer_dtypes(model) (empty: nothing):
    bf16 -- every layer but the input layer and the final float32 softmax
    computes in bfloat16, and that softmax in float32; float32 -- every
    layer in float32.  Layers without a compute_dtype attribute are not
    checked (none in Keras)."""
    body = [(n, c, d) for n, c, d in dtypes[:-1] if c != "InputLayer" and d is not None]
    last = dtypes[-1]
    want = "bfloat16" if precision == "bf16" else "float32"
    bad = [f"{n} ({c}): {d}" for n, c, d in body if d != want]
    if last[2] is not None and last[2] != "float32":
        bad.append(f"final {last[0]} ({last[1]}): {last[2]}, not float32")
    if bad:
        return [f"{who}: under --precision {precision} these layers do not compute in {want}: "
                + "; ".join(bad)]
    return []


def set_keras_precision(keras, precision: str) -> None:
    """keras.mixed_precision.set_global_policy(POLICY[precision]): the layers
    built afterwards take it ("mixed_bfloat16": float32 variables, bfloat16
    compute; no loss scaling, which Keras applies to mixed_float16 only)."""
    keras.mixed_precision.set_global_policy(POLICY[precision])


def onednn_info(tf) -> dict:
    """How TensorFlow runs on oneDNN here.  TF_ENABLE_ONEDNN_OPTS unset means
    on (the default of Linux x86 builds); IsMklEnabled() is what TF decided.
    ONEDNN_VERBOSE=1 in the environment prints each primitive (e.g.
    brg_conv_fwd:avx512_core_bf16 under mixed_bfloat16)."""
    info = {"TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "env": {k: v for k, v in sorted(os.environ.items())
                    if k.startswith(("ONEDNN_", "DNNL_", "TF_ONEDNN", "OMP_", "KMP_"))}}
    try:
        from tensorflow.python.util import _pywrap_util_port as port
        info["onednn_enabled"] = bool(port.IsMklEnabled())
    except Exception as e:  # private module: may move
        info["onednn_enabled"] = f"unknown ({type(e).__name__}: {e})"
    return info


class KerasImpl:
    def __init__(self, model: str, threads: int, d: dict, batch: int, steps: int, warmup: int,
                 predict_batch: int, seed: int, steady_mode: str = "fit",
                 precision: str = "float32"):
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        import keras
        from keras import layers as L
        keras.utils.set_random_seed(seed)
        set_keras_precision(keras, precision)  # before the layers are made
        self.tf, self.keras = tf, keras
        if model == "cnn":
            ls = [keras.Input(INPUT_SHAPE[model]),
                  L.Conv2D(32, 3, activation="relu"), L.Conv2D(64, 3, activation="relu"),
                  L.MaxPooling2D(2), L.Dropout(0.25), L.Flatten(),
                  L.Dense(128, activation="relu"), L.Dropout(0.5),
                  *classifier_head(L, precision)]
            opt = keras.optimizers.SGD(0.01, momentum=0.9)
        elif model == "mlp":
            ls = [keras.Input(INPUT_SHAPE[model]),
                  L.Dense(512, activation="relu"), L.Dense(512, activation="relu"),
                  *classifier_head(L, precision)]
            opt = keras.optimizers.Adam(1e-3, epsilon=1e-7)
        if model == "resnet20":
            self.m = keras_resnet20(keras, INPUT_SHAPE[model], NUM_CLASSES, precision)
            n = self.m.count_params()
            assert n == RESNET20_PARAMS, f"Keras ResNet-20 has {n} parameters, not {RESNET20_PARAMS}"
            opt = keras.optimizers.SGD(0.01, momentum=0.9)
        else:
            self.m = keras.Sequential(ls)
        self.params = self.m.count_params()
        self.policy = str(keras.mixed_precision.global_policy().name)
        self.layer_dtypes = layer_dtypes(self.m)
        bad = check_precision(self.layer_dtypes, precision, "Keras")
        if bad:
            raise RuntimeError(bad[0])
        self.m.compile(optimizer=opt, loss="sparse_categorical_crossentropy",
                       metrics=["accuracy"], jit_compile=False)
        self.batch, self.predict_batch, self.mode = batch, predict_batch, steady_mode
        n0 = warmup * batch
        self.warm_x, self.warm_y = d["steady_x"][:n0], d["steady_y"][:n0]
        self.st_x, self.st_y = d["steady_x"][n0:], d["steady_y"][n0:]
        self.warm_b = batches(d["steady_x"], d["steady_y"], batch, 0, warmup)
        self.st_b = batches(d["steady_x"], d["steady_y"], batch, warmup, steps)

    def _fit(self, x, y, shuffle):
        h = self.m.fit(x, y, batch_size=self.batch, epochs=1, verbose=0, shuffle=shuffle)
        return {k: v[-1] for k, v in h.history.items()}

    def warmup_steady(self):
        if self.mode == "fit":
            return self._fit(self.warm_x, self.warm_y, False)
        for xb, yb in self.warm_b:
            r = self.m.train_on_batch(xb, yb)
        return r

    def run_steady(self):
        if self.mode == "fit":
            return self._fit(self.st_x, self.st_y, False)
        for xb, yb in self.st_b:
            r = self.m.train_on_batch(xb, yb)
        return r

    def fit_epoch(self, x, y):
        return self._fit(x, y, True)

    def predict(self, x):
        return self.m.predict(x, batch_size=self.predict_batch, verbose=0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    ap.add_argument("--model", choices=MODELS, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--data", required=True, help=".npz with uint8 x_train, y_train, x_test, y_test")
    ap.add_argument("--epoch-size", type=int, default=0)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--predict-size", type=int, default=10000)
    ap.add_argument("--predict-batch", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steady-mode", choices=("fit", "train_on_batch"), default="fit")
    ap.add_argument("--precision", choices=PRECISIONS, default="float32",
                    help="bf16: Keras global policy mixed_bfloat16")
    a = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    log = (lambda s: print(f"[tf {a.model} {a.precision} t={a.threads}] {s}", file=sys.stderr,
                           flush=True))
    t0 = time.perf_counter()
    import tensorflow as tf
    import keras
    import_s = time.perf_counter() - t0
    with np.load(a.data) as z:
        raw = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    d = prepare(raw, a.model, a.batch, a.epoch_size, a.steps, a.warmup, a.predict_size, a.seed)
    del raw
    impl = KerasImpl(a.model, a.threads, d, a.batch, a.steps, a.warmup, a.predict_batch,
                     a.seed, a.steady_mode, a.precision)
    res = measure(impl, d, a.batch, a.steps, a.repeats, log)
    res["info"] = {
        "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__,
        "python": sys.version.split()[0], "executable": sys.executable,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "jit_compile": False, "steady_mode": a.steady_mode, "import_s": import_s,
        "params": impl.params,
        "precision": a.precision, "policy": impl.policy, "layer_dtypes": impl.layer_dtypes,
        "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"), "onednn": onednn_info(tf),
        "devices": [x.device_type for x in tf.config.list_physical_devices()],
    }
    if a.json:
        print(json.dumps(res), flush=True)
    else:
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
