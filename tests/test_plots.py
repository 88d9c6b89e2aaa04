"""The pictures of `pynn train` (pynn/plots.py): the confusion matrix counts
(checked against a separate count) and valid PNG files of sensible size."""
import importlib.util

import numpy as np
import pytest

from pynn import plots

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
needs_mpl = pytest.mark.skipif(not HAVE_MPL, reason="the pictures need matplotlib: "
                                                    "pip install '.[plot]'")


def check_png(path, min_side=150, max_side=4000):
    """A PNG that matplotlib decodes, of a sensible size, not one flat colour."""
    import matplotlib.image as mpimg
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(str(path))
    h, w = img.shape[:2]
    assert min_side <= h <= max_side and min_side <= w <= max_side, (h, w)
    assert img.std() > 0.01
    return img


def test_confusion_matrix_by_hand():
    m = plots.confusion_matrix([0, 1, 2, 2, 1, 0], [0, 2, 2, 2, 1, 1], 3)
    assert m.tolist() == [[1, 1, 0],
                          [0, 1, 1],
                          [0, 0, 2]]
    assert m.dtype == np.int64


def test_confusion_matrix_matches_a_plain_count():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 500)
    scores = rng.random((500, 7))
    m = plots.confusion_matrix(y, scores, 7)       # scores: the argmax is the prediction
    pred = scores.argmax(axis=1)
    want = np.zeros((7, 7), int)
    for t, p in zip(y, pred):
        want[t, p] += 1
    assert (m == want).all()
    assert m.sum() == 500 and np.trace(m) == (pred == y).sum()
    # unseen classes still get their rows and columns
    assert plots.confusion_matrix([0, 0], [0, 0], 4).shape == (4, 4)


def test_confusion_matrix_errors():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        plots.confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="labels"):
        plots.confusion_matrix([0, 1, 1], [0, 1], 3)


def test_first_conv_kernel():
    from pynn import zoo
    layer, k = plots.first_conv_kernel(zoo.cnn())
    assert k.shape == (3, 3, 1, 32) and layer.name.startswith("conv2d")
    assert plots.first_conv_kernel(zoo.mlp(8, 2)) == (None, None)
    _, k = plots.first_conv_kernel(zoo.resnet20())
    assert k.shape == (3, 3, 3, 16)


@needs_mpl
@pytest.mark.parametrize("shape", [(3, 3, 1, 32), (5, 5, 3, 16), (3, 3, 4, 7)])
def test_plot_filters(shape, tmp_path):
    k = np.random.default_rng(1).normal(size=shape)
    check_png(plots.plot_filters(k, str(tmp_path / "f.png")))


@needs_mpl
@pytest.mark.parametrize("k", [3, 10, 100])
def test_plot_confusion_matrix(k, tmp_path):
    rng = np.random.default_rng(2)
    m = plots.confusion_matrix(rng.integers(0, k, 1000), rng.integers(0, k, 1000), k)
    names = plots.CLASS_NAMES["fashion_mnist"] if k == 10 else None
    check_png(plots.plot_confusion_matrix(m, str(tmp_path / "c.png"), class_names=names))
