"""Accuracy under mixed bfloat16 (issue 14): one epoch of the default CNN on
Fashion-MNIST with pynn, in float32 and under the "mixed_bfloat16" policy.

Run from the repository root::

    python -m bench.bf16_accuracy                    # the check (two full epochs)
    python -m bench.bf16_accuracy --train-size 6400  # quick look (not the check)

Both runs: the same seed (keras.utils.set_random_seed before the model is
built: the same initial weights and the same shuffling), batch 128, one epoch
over the 60,000 training images, SGD(0.01, momentum 0.9), sparse categorical
cross-entropy; then model.evaluate on the 10,000 test images.  The model is
bench.train's cnn: Conv2D(32,3,relu) -> Conv2D(64,3,relu) -> MaxPool 2x2 ->
Dropout(0.25) -> Flatten -> Dense(128,relu) -> Dropout(0.5) -> the classifier
of bench._tf_train.classifier_head: float32 Dense(10, activation="softmax");
mixed_bfloat16 Dense(10) then Activation("softmax", dtype="float32") (the
softmax and the loss in float32, as Keras recommends and as bench.train runs
every contender).  The policy is set with
keras.mixed_precision.set_global_policy before each model is built (float32
for the first, mixed_bfloat16 for the second, float32 again at the end).

pynn's public API only (``import pynn as keras``): keras.mixed_precision,
keras.datasets.fashion_mnist, keras.utils (set_random_seed,
set_num_threads), keras.Sequential, keras.layers, keras.optimizers.SGD,
compile / fit / evaluate.

Prints the test accuracy of each run, the difference (mixed_bfloat16 minus
float32) in percentage points, the loss after the epoch (the epoch's mean
training loss, as fit reports it) and the test loss of each; acceptance:
the accuracies within 0.5 points.  Writes
bench/results/bf16-accuracy-<timestamp>.json (--out: another folder).

Exit status: 0 met, 1 not met, 2 not run (pynn has no mixed_precision, or
Fashion-MNIST cannot be loaded).  --train-size below 60,000 runs a shorter
epoch for a quick look: the result is then marked as not the check.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

if __package__ in (None, ""):  # `python bench/bf16_accuracy.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

import pynn as keras
from bench import _common as C
from bench._tf_train import POLICY, check_precision, classifier_head, layer_dtypes

TOLERANCE_POINTS = 0.5
BATCH = 128


def mixed_precision():
    """pynn.mixed_precision, or None (with the reason) where pynn has none."""
    mp = getattr(keras, "mixed_precision", None)
    if mp is None:
        try:
            mp = importlib.import_module("pynn.mixed_precision")
        except ImportError as e:
            return None, f"{type(e).__name__}: {e}"
    missing = [f for f in ("set_global_policy", "global_policy") if not hasattr(mp, f)]
    if missing:
        return None, "it lacks " + ", ".join(missing)
    return mp, None


def build_cnn(precision):
    L = keras.layers
    return keras.Sequential([
        L.Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)),
        L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(2), L.Dropout(0.25), L.Flatten(),
        L.Dense(128, activation="relu"), L.Dropout(0.5), *classifier_head(L, precision)])


def run(mp, precision, data, seed):
    """One epoch under `precision`; test accuracy and losses."""
    (x, y), (xt, yt) = data
    mp.set_global_policy(POLICY[precision])
    try:
        keras.utils.set_random_seed(seed)
        model = build_cnn(precision)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        policy = str(getattr(mp.global_policy(), "name", mp.global_policy()))
        dtypes = layer_dtypes(model)
        t0 = time.perf_counter()
        hist = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=True, verbose=0)
        fit_s = time.perf_counter() - t0
        ev = model.evaluate(xt, yt, batch_size=1000, verbose=0)
    finally:
        mp.set_global_policy("float32")
    test_loss, test_acc = (float(v) for v in ev[:2])
    h = hist.history
    problems = check_precision(dtypes, precision, "pynn")
    if precision != "float32" and all(d is None for _, _, d in dtypes):
        problems.append("pynn layers have no compute_dtype: the compute dtype is not verified")
    return {"precision": precision, "policy": policy, "test_accuracy": test_acc,
            "test_loss": test_loss, "train_loss": float(h["loss"][-1]),
            "train_accuracy": float(h["accuracy"][-1]) if "accuracy" in h else None,
            "fit_s": fit_s, "img_per_s": len(x) / fit_s, "layer_dtypes": dtypes,
            "precision_problems": problems}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="keras.utils.set_num_threads (default: pynn's default)")
    ap.add_argument("--train-size", type=int, default=0,
                    help="training images (0: all 60,000, the check; fewer: a quick look)")
    ap.add_argument("--out", default=C.default_out_dir())
    a = ap.parse_args(argv)

    mp, why = mixed_precision()
    if mp is None:
        print(f"bf16 accuracy: not run: pynn has no mixed_precision ({why})")
        return 2
    try:
        (x, y), (xt, yt) = keras.datasets.fashion_mnist.load_data()
    except Exception as e:
        print(f"bf16 accuracy: not run: Fashion-MNIST cannot be loaded "
              f"({type(e).__name__}: {e})")
        return 2
    n = len(x) if not a.train_size else min(a.train_size, len(x))
    full = n == len(x)
    x = (x[:n].reshape(-1, 28, 28, 1) / np.float32(255)).astype(np.float32)
    xt = (xt.reshape(-1, 28, 28, 1) / np.float32(255)).astype(np.float32)
    y, yt = np.asarray(y[:n], np.int64), np.asarray(yt, np.int64)
    if a.threads:
        keras.utils.set_num_threads(a.threads)

    res = {}
    for p in ("float32", "bf16"):
        print(f"[{POLICY[p]}] one epoch of the cnn on {n} images ...", file=sys.stderr,
              flush=True)
        res[p] = run(mp, p, ((x, y), (xt, yt)), a.seed)
    f32, b16 = res["float32"], res["bf16"]
    diff = 100 * (b16["test_accuracy"] - f32["test_accuracy"])
    met = abs(diff) <= TOLERANCE_POINTS
    lines = [f"bf16 accuracy (issue 14): cnn, Fashion-MNIST, 1 epoch of {n} images, batch "
             f"{BATCH}, seed {a.seed}" + ("" if full else "  [quick look: not the full epoch]"),
             f"{'policy':15s} {'test acc':>9s} {'train loss':>10s} {'test loss':>9s} "
             f"{'fit img/s':>9s}"]
    for r in (f32, b16):
        lines.append(f"{r['policy']:15s} {100 * r['test_accuracy']:8.2f}% "
                     f"{r['train_loss']:10.4f} {r['test_loss']:9.4f} {r['img_per_s']:9.0f}")
        lines += [f"  note: {prob}" for prob in r["precision_problems"]]
    status = "met" if met else "not met"
    lines.append(f"difference (mixed_bfloat16 - float32): {diff:+.2f} points; acceptance "
                 f"|difference| <= {TOLERANCE_POINTS} points: {status}"
                 + ("" if full else " (on a short epoch: not the check)"))
    txt = "\n".join(lines)
    print(txt)
    doc = {"benchmark": "bf16_accuracy", "argv": sys.argv, "args": vars(a),
           "machine": C.machine_info(),
           "pynn_version": getattr(keras, "__version__", None),
           "model": "cnn (bench.train's; classifier of bench._tf_train.classifier_head)",
           "optimizer": "SGD(lr=0.01, momentum=0.9)", "batch": BATCH, "train_images": n,
           "test_images": len(xt), "full_epoch": full, "results": res,
           "difference_points": diff, "tolerance_points": TOLERANCE_POINTS,
           "acceptance": status, "table": txt}
    path = C.write_json(doc, a.out, f"bf16-accuracy-{C.timestamp()}.json")
    print(f"wrote {path}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
