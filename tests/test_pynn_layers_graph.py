"""The layers residual and mobile CNNs need: CPUOps against the NumPy Ops
(forward and backward) and float64 finite-difference gradient checks, using
the helpers of test_pynn_layers; Keras' shape rules and arguments."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from pynn import layers as L
from pynn.backend import get_ops

from test_pynn_layers import build, compare_ops, few, grad_check, fwd, CPU_OPS, NUMPY_OPS

F64 = np.float64
dims = st.sampled_from([1, 2, 3, 5, 7])
chans = st.sampled_from([1, 2, 3, 5, 17])

FACTORIES = {
    "avgpool_valid": (lambda: L.AveragePooling2D(2), 2),
    "avgpool_same_s1": (lambda: L.AveragePooling2D(3, strides=1, padding="same"), 1),
    "avgpool_same_s2": (lambda: L.AveragePooling2D((3, 2), strides=(2, 1), padding="same"), 1),
    "gap": (lambda: L.GlobalAveragePooling2D(), 1),
    "gap_keepdims": (lambda: L.GlobalAveragePooling2D(keepdims=True), 1),
    "gmp": (lambda: L.GlobalMaxPooling2D(), 1),
    "zeropad": (lambda: L.ZeroPadding2D(((1, 2), (0, 3))), 1),
    "crop": (lambda: L.Cropping2D(((1, 0), (0, 1))), 2),
    "upsample": (lambda: L.UpSampling2D((2, 3)), 1),
    "conv_groups": (lambda: L.Conv2D(6, 3, padding="same", groups=3, activation="relu"), 3),
    "conv_groups_strided": (lambda: L.Conv2D(4, (3, 2), strides=2, groups=2), 2),
    "depthwise": (lambda: L.DepthwiseConv2D(3, padding="same", depth_multiplier=2), 3),
    "depthwise_strided_relu": (lambda: L.DepthwiseConv2D((2, 3), strides=(2, 1), activation="relu"),
                               3),
    "separable": (lambda: L.SeparableConv2D(4, 3, padding="same", activation="relu"), 3),
    "transpose_same": (lambda: L.Conv2DTranspose(3, 3, strides=2, padding="same"), 3),
    "transpose_valid": (lambda: L.Conv2DTranspose(2, (2, 3), strides=(2, 1), activation="relu"), 3),
    "transpose_outpad": (lambda: L.Conv2DTranspose(2, 3, strides=2, padding="same",
                                                   output_padding=1), 3),
}


def _min_hw(name):
    return 3 if name in ("crop", "depthwise_strided_relu", "conv_groups_strided",
                         "transpose_valid") else 2


@pytest.mark.parametrize("name", sorted(FACTORIES))
@given(n=st.sampled_from([1, 2, 3]), h=dims, w=dims, cmul=st.sampled_from([1, 2, 5]),
       seed=st.integers(0, 2**16))
def test_cpu_ops_equal_numpy_ops(name, n, h, w, cmul, seed):
    factory, cdiv = FACTORIES[name]
    h, w = max(h, _min_hw(name)), max(w, _min_hw(name))
    c = cdiv * cmul
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c))
    try:
        factory().compute_output_shape((h, w, c))
    except ValueError:
        return
    compare_ops(factory, (h, w, c), x, seed=seed, rtol=1e-9)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_gradients_float64(name):
    factory, cdiv = FACTORIES[name]
    for seed, (n, h, w, cm) in enumerate([(2, 5, 4, 1), (1, 6, 7, 2)]):
        c = cdiv * cm
        x = np.random.default_rng(seed).standard_normal((n, h, w, c))
        if name == "gmp":   # no near-ties
            x = x + np.arange(h * w).reshape(1, h, w, 1) * 0.1
        for ops in (CPU_OPS, NUMPY_OPS):
            grad_check(build(factory, (h, w, c), ops, seed), x)


def test_average_pooling_same_excludes_padding():
    x = np.arange(1, 10, dtype=F64).reshape(1, 3, 3, 1)
    layer = build(lambda: L.AveragePooling2D(2, strides=1, padding="same"), (3, 3, 1), CPU_OPS)
    y = fwd(layer, x, False)[0, :, :, 0]
    # the bottom-right window holds only x[2,2]: its mean is 9, not 9/4
    assert y[2, 2] == 9 and y[0, 0] == (1 + 2 + 4 + 5) / 4 and y[2, 0] == (7 + 8) / 2


def test_shapes_and_arguments():
    assert L.ZeroPadding2D(2).compute_output_shape((4, 5, 3)) == (8, 9, 3)
    assert L.ZeroPadding2D((1, 2)).compute_output_shape((4, 5, 3)) == (6, 9, 3)
    assert L.Cropping2D(((1, 1), (2, 0))).compute_output_shape((4, 5, 3)) == (2, 3, 3)
    with pytest.raises(ValueError, match="leaves nothing"):
        L.Cropping2D(3).compute_output_shape((4, 5, 3))
    assert L.UpSampling2D(2).compute_output_shape((4, 5, 3)) == (8, 10, 3)
    with pytest.raises(NotImplementedError, match="bilinear"):
        L.UpSampling2D(interpolation="bilinear")
    # Keras' transposed-convolution sizes
    assert L.Conv2DTranspose(2, 3, strides=2, padding="same").compute_output_shape((4, 5, 1)) \
        == (8, 10, 2)
    assert L.Conv2DTranspose(2, 3, strides=2).compute_output_shape((4, 5, 1)) == (9, 11, 2)
    assert L.Conv2DTranspose(2, 1, strides=3).compute_output_shape((4, 5, 1)) == (12, 15, 2)
    assert L.Conv2DTranspose(2, 3, strides=2, padding="same", output_padding=1) \
        .compute_output_shape((4, 5, 1)) == (8, 10, 2)
    with pytest.raises(ValueError, match="output_padding"):
        L.Conv2DTranspose(2, 3, strides=2, output_padding=2)
    with pytest.raises(ValueError, match="divisible"):
        L.Conv2D(5, 3, groups=2)
    d = L.DepthwiseConv2D(3, depth_multiplier=2)
    d._build_shape((6, 6, 4))
    assert [s.shape for s in d.specs] == [(3, 3, 4, 2), (8,)]
    sc = L.SeparableConv2D(7, 3)
    sc._build_shape((6, 6, 4))
    assert [(s.name, s.shape) for s in sc.specs] == [
        ("depthwise_kernel", (3, 3, 4, 1)), ("pointwise_kernel", (1, 1, 4, 7)), ("bias", (7,))]
    t = L.Conv2DTranspose(5, 3)
    t._build_shape((6, 6, 4))
    assert t.specs[0].shape == (3, 3, 5, 4)
    g = L.Conv2D(6, 3, groups=2)
    g._build_shape((6, 6, 4))
    assert g.specs[0].shape == (3, 3, 2, 6)
    with pytest.raises(ValueError, match="divisible by groups"):
        L.Conv2D(6, 3, groups=2)._build_shape((6, 6, 3))
    assert L.GlobalMaxPooling2D(keepdims=True).compute_output_shape((4, 4, 3)) == (1, 1, 3)
    with pytest.raises(NotImplementedError, match="channels_last"):
        L.AveragePooling2D(data_format="channels_first")


def test_transpose_is_the_adjoint_of_convolution():
    """<conv_T(x), y> == <x, conv(y)> with the same kernel: the defining property."""
    rng = np.random.default_rng(0)
    t = build(lambda: L.Conv2DTranspose(3, 3, strides=2, padding="same", use_bias=False),
              (4, 5, 2), CPU_OPS)
    x = rng.standard_normal((2, 4, 5, 2))
    y = rng.standard_normal((2, 8, 10, 3))
    ty = fwd(t, x, False)
    cy = NUMPY_OPS.conv2d_forward(y, t.w["kernel"], None, strides=2, padding="same")
    assert np.sum(ty * y) == pytest.approx(np.sum(x * cy), rel=1e-12)
