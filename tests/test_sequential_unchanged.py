"""Sequential training is bitwise what it was before graph models: the
default CNN and MLP trained with a fixed seed end with the same weights as
the Sequential engine of b093b3d (sha256 of the weights recorded then, per
ISA path, with 1 and 2 threads alike).  The graph engine, the layer
packages and the new kernels must not change a single bit of them.

One deliberate change since: the CNN's second convolution (3x3, 32 -> 64)
takes its float32 weight gradient from Winograd F(2x2, 3x3) instead of the
im2col GEMM (nk_conv_wino_wgrad.h; 12.4 -> 7.2 ms at batch 128, 1 thread),
which changes its rounding, so the CNN's sums were re-recorded then.  With
that one product forced back to im2col the three old CNN sums
(21d5ff92be4cb901, f9c85266b0abf9e8, 3800c1f15a54c06d) came out again,
bit for bit: nothing else had moved.

A second one: Winograd F(4x4, 3x3) (nk_conv_wino4.h, nk_conv_wino4_wgrad.h)
runs the CNN's second convolution's forward pass (with its pooling), data
gradient and weight gradient, a different rounding again.  The sums above are those of F(2x2, 3x3) everywhere (the
testing switch nnkernels._core._set_winograd4(False)), which must still come
out bit for bit; RECORDED_F4 holds the CNN's sums of the default, recorded
when F(4x4, 3x3) came (the MLP has no convolution)."""
import hashlib

import numpy as np
import pytest

import nnkernels as nk
import pynn
from pynn import utils, zoo

from reference import isa as use_isa
from reference import wino4

RECORDED = {   # (ISA path, model) -> first 16 hex digits of sha256(weights)
    ("avx512", "cnn"): "3ee2983247e8aa79", ("avx512", "mlp"): "8e12d315ba3eba06",
    ("avx2", "cnn"): "5d9a3411f6984734", ("avx2", "mlp"): "f18a2e61b136d25b",
    ("generic", "cnn"): "97a15a6091dcea7b", ("generic", "mlp"): "8e938353da677544",
}
RECORDED_F4 = {
    "avx512": "1f4cdd47313ce0c5", "avx2": "6acfd9aa3c47260c", "generic": "0b5a94e2ee857aa9",
}


def fingerprint(model_name):
    rng = np.random.default_rng(123)
    if model_name == "cnn":
        x = rng.random((192, 28, 28, 1), dtype=np.float32)
        m = zoo.cnn()
    else:
        x = rng.random((192, 784), dtype=np.float32)
        m = zoo.mlp()
    y = rng.integers(0, 10, 192)
    utils.set_random_seed(7)
    m.compile(optimizer=zoo.make_optimizer(*zoo.DEFAULT_OPTIMIZER[model_name]),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(x, y, batch_size=64, epochs=2, verbose=0)
    h = hashlib.sha256()
    for w in m.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("model_name", ["cnn", "mlp"])
@pytest.mark.parametrize("isa_name", ["avx512", "avx2", "generic"])
def test_sequential_weights_bitwise_unchanged(isa_name, model_name):
    if not nk.isa_supported(isa_name):
        pytest.skip(f"this CPU cannot run the {isa_name} path")
    with use_isa(isa_name), wino4(False):
        assert fingerprint(model_name) == RECORDED[(isa_name, model_name)]


@pytest.mark.parametrize("isa_name", ["avx512", "avx2", "generic"])
def test_cnn_weights_with_winograd4_unchanged(isa_name):
    if not nk.isa_supported(isa_name):
        pytest.skip(f"this CPU cannot run the {isa_name} path")
    with use_isa(isa_name):
        assert fingerprint("cnn") == RECORDED_F4[isa_name]
