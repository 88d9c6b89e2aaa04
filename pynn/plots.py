"""The pictures of `pynn train` (matplotlib, the [plot] extra): the first
convolution layer's filters as a grid, and the confusion matrix on the
test set.  :func:`confusion_matrix` is plain NumPy (no matplotlib)."""
import math

import numpy as np

CLASS_NAMES = {
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
}


def confusion_matrix(y_true, y_pred, num_classes=None):
    """(num_classes, num_classes) int64 counts: entry [i, j] is the number of
    samples of true class i predicted as class j.  ``y_pred`` may be labels
    or per-class scores (the argmax of the last axis is taken)."""
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred)
    if y_pred.ndim > 1 and y_pred.shape[-1] > 1:
        y_pred = y_pred.argmax(axis=-1)
    y_pred = y_pred.reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.size} labels and {y_pred.size} predictions")
    if num_classes is None:
        num_classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
    for what, a in (("labels", y_true), ("predictions", y_pred)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{what} must lie in [0, {num_classes}), got [{a.min()}, {a.max()}]")
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return m


def first_conv_kernel(model):
    """(layer, kernel (KH, KW, C, F)) of the model's first convolution (nested
    models included), or (None, None)."""
    model._ensure_graph()
    model._ensure_allocated()
    for layer in model._leaves():
        for name in ("kernel", "depthwise_kernel"):
            spec = next((s for s in layer.specs if s.name == name), None)
            if spec is not None and len(spec.shape) == 4:
                return layer, np.asarray(layer.ops.to_numpy(layer.w[name]))
    return None, None


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    from . import io
    io.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def plot_filters(kernel, path, title=None):
    """A grid of the F filters of ``kernel`` (KH, KW, C, F): RGB when C is 3,
    else grey (the mean over the input channels); each filter scaled to its
    own min..max."""
    plt = _pyplot()
    kh, kw, c, f = kernel.shape
    cols = math.ceil(math.sqrt(f))
    rows = math.ceil(f / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols + 0.4, 1.2 * rows + 0.6),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= f:
            continue
        k = kernel[:, :, :, i].astype(np.float64)
        k = k if c == 3 else k.mean(axis=2)
        lo, hi = k.min(), k.max()
        k = (k - lo) / (hi - lo) if hi > lo else np.zeros_like(k)
        ax.imshow(k, cmap=None if c == 3 else "gray", interpolation="nearest", vmin=0, vmax=1)
        ax.set_title(str(i), fontsize=7)
    fig.suptitle(title or f"first convolution: {f} filters {kh}x{kw}x{c}", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_confusion_matrix(matrix, path, class_names=None, title="confusion matrix (test set)"):
    """The matrix as a heat map (rows: true class, columns: predicted), with
    the counts written in the cells when there are at most 20 classes."""
    plt = _pyplot()
    m = np.asarray(matrix)
    k = m.shape[0]
    names = list(class_names) if class_names is not None and len(class_names) == k else \
        [str(i) for i in range(k)]
    size = min(max(4.0, 0.55 * k + 2.0), 20.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(m, cmap="Blues", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if k <= 20:
        ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
        half = m.max() / 2 if m.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > half else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(m) / m.sum() if m.sum() else 0.0
    ax.set_title(f"{title}: accuracy {acc:.4f}")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path
