"""The GPU backend (pynn.backend.gpu.GPUOps, nnkernels.cuda).

Without a GPU: the CUDA sources compile with nvcc (skipped when nvcc is not
on PATH), the pure-Python glue (tiling, block splits, lazy numbers,
instantiation lists, package data), importing never imports CuPy, and
Sequential.to_device on CPU backends.

With CuPy and a CUDA device: every GPU kernel against the NumPy reference
Ops and the CPU kernels (CPUOps), dropout masks bit-identical to
nnkernels.dropout_mask, and training steps of a small CNN on GPU vs CPU.
These skip with the reason ("CuPy not installed" / "no CUDA device").
"""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import nnkernels as nk
import pynn
from nnkernels import cuda as nkcuda
from pynn import backend, layers
from pynn.backend import gpu as backend_gpu
from pynn.backend.gpu import (DeviceResult, LazyNumber, blocks_for, colsum_blocks,
                              conv_batch_tile, dropout_params, sumsq_blocks)

# ------------------------------------------------------------ GPU fixtures --

_OK, _WHY = backend_gpu.gpu_available()


def _skip_reason():
    if _OK:
        return ""
    return "CuPy not installed" if _WHY.startswith("CuPy") else f"no CUDA device ({_WHY})"


needs_gpu = pytest.mark.skipif(not _OK, reason=_skip_reason() or "GPU available")


@pytest.fixture(scope="module")
def gpu():
    if not _OK:
        pytest.skip(_skip_reason())
    return backend.get_ops("gpu")


@pytest.fixture(params=["numpy", "cpu"])
def ref(request):
    """The references a GPU result is compared with: the NumPy spec and the
    CPU kernels."""
    return backend.get_ops(request.param)


def dev(a):
    import cupy
    return None if a is None else cupy.asarray(a)


def host(a):
    import cupy
    return cupy.asnumpy(a) if isinstance(a, cupy.ndarray) else np.asarray(a)


def tol(dtype):
    return dict(rtol=2e-4, atol=2e-5) if np.dtype(dtype) == np.float32 else dict(rtol=1e-10, atol=1e-12)


DTYPES = [np.float32, np.float64]

# ------------------------------------------------ compile check (no GPU) --


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("module", sorted(nkcuda.KERNELS))
def test_nvcc_compiles(module):
    from nnkernels.cuda import check_compile
    ok, cmd, out = check_compile.check(module, arch=os.environ.get("NK_CUDA_ARCH", "sm_90"))
    assert ok, f"{' '.join(cmd)}\n{out}"


# ------------------------------------------------- pure glue (no GPU) --


def test_sources_ship_and_instantiations_match():
    """Every .cu is installed beside the loader, every templated kernel of a
    source is instantiated for float and double, every name expression
    names a kernel of its source."""
    for mod, (fname, exprs) in nkcuda.KERNELS.items():
        src = nkcuda.source(mod)
        assert '#include "nk_common.cuh"' not in src and "NK_COMMON_CUH" in src
        kernels = set(re.findall(r"__global__ void (nk_\w+)\(", src))
        named = {e.split("<")[0] for e in exprs}
        assert named == kernels, (fname, kernels ^ named)
        for e in exprs:
            if "<" in e:
                assert e.replace("float", "double") in exprs or "double" in e


def test_importing_never_imports_cupy():
    code = ("import sys, nnkernels, nnkernels.cuda, pynn, pynn.backend.gpu; "
            "pynn.backend.get_ops('cpu'); assert 'cupy' not in sys.modules, 'cupy imported'")
    # -I: the installed package, not the source tree of the current folder
    subprocess.run([sys.executable, "-I", "-c", code], check=True)


@pytest.mark.skipif(_OK, reason="a GPU is available")
def test_get_ops_gpu_says_what_is_missing():
    with pytest.raises(RuntimeError, match="CuPy|CUDA device"):
        backend.get_ops("gpu")
    with pytest.raises(RuntimeError, match="CuPy|CUDA device"):
        pynn.Sequential([layers.Dense(2, input_shape=(3,))], device="gpu")


def test_conv_batch_tile():
    # whole batch when it fits; bounded by the budget; at least one item
    assert conv_batch_tile(32, 26 * 26, 9, 4, budget=256 << 20) == 32
    t = conv_batch_tile(8192, 24 * 24, 288, 4, budget=256 << 20)
    assert 1 <= t < 8192 and t * 24 * 24 * 288 * 4 <= 256 << 20
    assert (t + 1) * 24 * 24 * 288 * 4 > 256 << 20
    assert conv_batch_tile(5, 10**6, 10**3, 8, budget=1 << 20) == 1
    # never more than 2**31 - 1 elements, whatever the budget
    t = conv_batch_tile(10**6, 10**4, 10**3, 1, budget=1 << 60)
    assert t * 10**7 <= 2**31 - 1


@pytest.mark.parametrize("m", [1, 2, 63, 64, 65, 1000, 4097, 10**6, 5_537_792])
def test_colsum_blocks_cover_rows(m):
    nb, bs = colsum_blocks(m)
    assert 1 <= nb <= 1024 and nb * bs >= m and (nb - 1) * bs < m
    assert colsum_blocks(0) == (0, 1)


@pytest.mark.parametrize("n", [1, 63, 8192, 8193, 10**6, 1_199_882, 10**9])
def test_sumsq_blocks_cover(n):
    nb, bs = sumsq_blocks(n)
    assert 1 <= nb <= 256 and bs % 64 == 0 and nb * bs >= n and (nb - 1) * bs < n


def test_blocks_for():
    assert blocks_for(0) == 1 and blocks_for(1) == 1 and blocks_for(257) == 2
    assert blocks_for(10**12) == 65535


def test_dropout_params_match_cpu():
    for rate in (0.0, 0.25, 0.5, 0.999999):
        thr, scale, key, off = dropout_params(rate, 2**40 + 7, 2**33 + 5)
        assert thr == nk.dropout_threshold(rate)
        assert scale == 1.0 / (1.0 - rate)
        assert key == (7, 2**8) and off == (5, 2)
    with pytest.raises(ValueError):
        dropout_params(1.0, 0, 0)
    with pytest.raises(ValueError):
        dropout_params(0.5, -1, 0)


class _Ready:
    def synchronize(self):
        pass


def test_lazy_numbers_behave_as_numbers():
    res = DeviceResult(np.array([2.5, 3.0, 0.0]), _Ready())
    loss, correct = LazyNumber(res, 0), LazyNumber(res, 1, integral=True)
    total, hits = 0.0, 0.0
    total += loss
    hits += correct
    assert total == 2.5 and isinstance(total, float)
    assert hits == 3.0 and int(correct) == 3 and isinstance(correct.item(), int)
    assert loss / 5 == 0.5 and 5 - loss == 2.5 and loss * 2 == 5.0 and loss < 3
    assert f"{loss:.2f}" == "2.50" and float(loss) == 2.5
    bad = DeviceResult(np.array([np.nan, 0.0, 1.0]), _Ready(), backend_gpu._label_check(10))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        float(LazyNumber(bad, 0))


def test_batch_to_device_is_identity_on_cpu():
    x = np.arange(6.0).reshape(2, 3)
    assert backend.get_ops("cpu").batch_to_device(x, "x") is x


def _small_cnn(device=None, seed=3, dtype="float32"):
    pynn.utils.set_random_seed(seed)
    m = pynn.Sequential([
        layers.Conv2D(4, (3, 3), activation="relu", padding="same", input_shape=(9, 9, 2)),
        layers.BatchNormalization(),
        layers.Conv2D(6, (2, 3), strides=(2, 1), activation="relu"),
        layers.MaxPooling2D((2, 2), padding="same"),
        layers.Dropout(0.3),
        layers.Flatten(),
        layers.Dense(5, activation="softmax"),
    ], dtype=dtype, device=device)
    m.compile(optimizer=pynn.optimizers.SGD(0.05, momentum=0.9),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def _data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 9, 9, 2)).astype(np.float32), rng.integers(0, 5, n)


def test_to_device_keeps_weights_and_optimizer_state():
    """Sequential.to_device on the CPU backends (the same code moves a model
    to the GPU): weights and optimizer state survive, training goes on as if
    the model had never moved (numpy and cpu backends agree closely)."""
    x, y = _data()
    a, b = _small_cnn(dtype="float64"), _small_cnn(dtype="float64")
    a.train_on_batch(x, y)
    b.train_on_batch(x, y)
    b.to_device("numpy")
    assert b.ops.name == "numpy"
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    la = a.train_on_batch(x, y)
    lb = b.train_on_batch(x, y)
    np.testing.assert_allclose(la, lb, rtol=1e-10)
    b.to_cpu()
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------ GPU kernels --

# (n, h, w, c, kh, kw, f, strides, padding, dilation)
CONV_CASES = [
    (2, 7, 7, 3, 3, 3, 5, 1, "valid", 1),
    (3, 8, 6, 2, 3, 3, 4, 1, "same", 1),
    (2, 7, 9, 3, 4, 2, 3, (2, 1), "same", 1),     # kh != kw, sh != sw, asymmetric 'same'
    (1, 11, 10, 1, 3, 3, 7, 3, "same", 1),
    (2, 9, 9, 4, 3, 3, 2, 1, "valid", 2),         # dilation
    (2, 8, 8, 3, 3, 2, 3, 1, "same", (2, 3)),
    (5, 6, 5, 6, 1, 1, 4, 1, "valid", 1),         # pointwise: no im2col
    (2, 5, 5, 3, 1, 1, 4, 2, "valid", 1),         # 1x1 with strides: im2col
    (1, 1, 1, 3, 1, 1, 2, 1, "same", 1),
    (3, 13, 1, 2, 3, 1, 3, 2, "same", 1),
]


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("act", [None, "relu"])
def test_conv2d(gpu, ref, case, act, dtype):
    n, h, w, c, kh, kw, f, s, p, d = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    wt = rng.standard_normal((kh, kw, c, f)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    geo = dict(strides=s, padding=p, dilation=d)
    want = ref.conv2d_forward(x, wt, b, activation=act, **geo)
    got = gpu.conv2d_forward(dev(x), dev(wt), dev(b), activation=act, **geo)
    np.testing.assert_allclose(host(got), want, **tol(dtype))
    dy = rng.standard_normal(want.shape).astype(dtype)
    y = want if act else None
    rdx, rdw, rdb = ref.conv2d_backward(dy, x, wt, y=y, activation=act, db=np.empty(f, dtype), **geo)
    gdx, gdw, gdb = gpu.conv2d_backward(dev(dy), dev(x), dev(wt), y=dev(y), activation=act,
                                        db=dev(np.empty(f, dtype)), **geo)
    for g_, r_ in ((gdx, rdx), (gdw, rdw), (gdb, rdb)):
        np.testing.assert_allclose(host(g_), r_, **tol(dtype))


@needs_gpu
def test_conv2d_batch_tiles_give_the_same_result(gpu):
    """A small workspace forces several batch tiles (dW summed tile by tile)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 10, 9, 3)).astype(np.float32)
    wt = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    dy = rng.standard_normal((7, 10, 9, 4)).astype(np.float32)
    geo = dict(strides=1, padding="same", dilation=1)
    full = [host(a) for a in (gpu.conv2d_forward(dev(x), dev(wt), **geo),)
            + gpu.conv2d_backward(dev(dy), dev(x), dev(wt), **geo)[:2]]
    old = gpu.workspace_bytes
    try:
        gpu.workspace_bytes = 2 * 10 * 9 * 27 * 4     # two items per tile: 4 tiles
        tiled = [host(a) for a in (gpu.conv2d_forward(dev(x), dev(wt), **geo),)
                 + gpu.conv2d_backward(dev(dy), dev(x), dev(wt), **geo)[:2]]
    finally:
        gpu.workspace_bytes = old
    np.testing.assert_array_equal(tiled[0], full[0])
    # dW: the tiles' products are summed in tile order (deterministic), but
    # cuBLAS sums one long product in another order than four short ones
    # (seen on an H200: 5e-5 relative), so close, not equal; dx likewise
    np.testing.assert_allclose(tiled[2], full[2], rtol=1e-5, atol=1e-5 * np.abs(full[2]).max())
    np.testing.assert_allclose(tiled[1], full[1], rtol=1e-5, atol=1e-5)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [None, "relu"])
def test_dense(gpu, ref, act, dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((13, 7)).astype(dtype)
    w = rng.standard_normal((7, 5)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    want = ref.dense_forward(x, w, b, activation=act)
    got = gpu.dense_forward(dev(x), dev(w), dev(b), activation=act)
    np.testing.assert_allclose(host(got), want, **tol(dtype))
    dy = rng.standard_normal(want.shape).astype(dtype)
    r = ref.dense_backward(dy, x, w, y=want if act else None, activation=act, db=np.empty(5, dtype))
    g = gpu.dense_backward(dev(dy), dev(x), dev(w), y=dev(want) if act else None, activation=act,
                           db=dev(np.empty(5, dtype)))
    for a, e in zip(g, r):
        np.testing.assert_allclose(host(a), e, **tol(dtype))


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(backend.ACTIVATIONS))
def test_activations(gpu, ref, name, dtype):
    """Every activation (the reference formulas run on CuPy) and its
    derivative, given x where the table says the derivative reads it."""
    from pynn.backend.activation_ref import grad_needs_input
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 9)).astype(dtype)
    y = ref.activation(name, x)
    np.testing.assert_allclose(host(gpu.activation(name, dev(x))), y, **tol(dtype))
    dy = rng.standard_normal(x.shape).astype(dtype)
    xin = x if grad_needs_input(name) else None
    np.testing.assert_allclose(
        host(gpu.activation_backward(name, dev(dy), dev(y), x=None if xin is None else dev(xin))),
        ref.activation_backward(name, dy, y, x=xin), **tol(dtype))


# (n, h, w, c, pool, strides, padding)
POOL_CASES = [
    (2, 6, 6, 3, 2, None, "valid"),
    (2, 7, 5, 2, 2, None, "same"),
    (1, 9, 8, 4, 3, 2, "valid"),      # overlapping windows
    (3, 7, 7, 1, (3, 2), (2, 1), "same"),
    (1, 5, 5, 2, 3, 3, "same"),
]


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool(gpu, ref, case, ties, dtype):
    n, h, w, c, ps, st, p = case
    rng = np.random.default_rng(4)
    x = (rng.integers(-2, 2, (n, h, w, c)) if ties else rng.standard_normal((n, h, w, c))).astype(dtype)
    y, idx = ref.max_pool2d(x, ps, st, p)
    gy, gidx = gpu.max_pool2d(dev(x), ps, st, p)
    np.testing.assert_array_equal(host(gy), y)
    np.testing.assert_array_equal(host(gidx), idx)
    dy = rng.standard_normal(y.shape).astype(dtype)
    geo = dict(pool_size=ps, strides=st, padding=p)
    want = ref.max_pool2d_backward(dy, idx, x.shape, **geo)
    np.testing.assert_allclose(host(gpu.max_pool2d_backward(dev(dy), dev(idx), x.shape, **geo)),
                               want, **tol(dtype))
    # without the geometry: the scatter fallback
    np.testing.assert_allclose(host(gpu.max_pool2d_backward(dev(dy), dev(idx), x.shape)), want,
                               **tol(dtype))


@needs_gpu
def test_max_pool_nan_wins(gpu):
    x = np.zeros((1, 2, 2, 1), np.float32)
    x[0, 1, 0, 0] = np.nan
    x[0, 0, 1, 0] = 5
    y, idx = gpu.max_pool2d(dev(x), 2)
    assert np.isnan(host(y)).all() and int(host(idx)[0, 0, 0, 0]) == 2


@needs_gpu
@pytest.mark.parametrize("shape", [(1,), (3,), (4,), (5, 7), (2, 3, 5, 7), (1000, 129)])
@pytest.mark.parametrize("rate,seed,offset", [(0.5, 0, 0), (0.25, 12345, 7),
                                              (0.9, 2**40 + 3, 2**35 + 11)])
def test_dropout_bit_identical_to_cpu(gpu, shape, rate, seed, offset):
    mask = host(gpu.dropout_keep_mask(shape, rate, seed, offset))
    np.testing.assert_array_equal(mask, nk.dropout_mask(shape, rate, seed, offset=offset))
    np.testing.assert_array_equal(mask, backend.dropout_keep_mask(shape, rate, seed, offset))
    cpu = backend.get_ops("cpu")
    for dtype in DTYPES:
        x = np.random.default_rng(5).standard_normal(shape).astype(dtype)
        np.testing.assert_array_equal(host(gpu.dropout(dev(x), rate, seed, offset)),
                                      cpu.dropout(x, rate, seed, offset))
        np.testing.assert_array_equal(host(gpu.dropout_backward(dev(x), rate, seed, offset)),
                                      cpu.dropout_backward(x, rate, seed, offset))
        d = dev(x)
        gpu.dropout(d, rate, seed, offset, out=d)       # in place
        np.testing.assert_array_equal(host(d), cpu.dropout(x, rate, seed, offset))


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("labels", ["int32", "int64", "onehot", "soft"])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("n,k", [(1, 1), (7, 10), (33, 3), (5, 100)])
def test_softmax_xent(gpu, ref, labels, from_logits, n, k, dtype):
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((n, k)).astype(dtype)
    if not from_logits:
        logits = np.abs(logits) + 0.01
    lab = rng.integers(0, k, n)
    if labels in ("int32", "int64"):
        t = lab.astype(labels)
    elif labels == "onehot":
        t = np.eye(k, dtype=dtype)[lab]
    else:
        t = rng.random((n, k)).astype(dtype)
        t /= t.sum(1, keepdims=True)
    dl, pr = np.empty_like(logits), np.empty_like(logits)
    loss, correct = ref.softmax_xent(logits, t, dlogits=dl, probs=pr, from_logits=from_logits,
                                     grad_scale=0.5)
    gdl, gpr = dev(np.empty_like(logits)), dev(np.empty_like(logits))
    gl, gc = gpu.softmax_xent(dev(logits), dev(t), dlogits=gdl, probs=gpr,
                              from_logits=from_logits, grad_scale=0.5)
    np.testing.assert_allclose(float(gl), loss, rtol=1e-5 if dtype == np.float32 else 1e-10)
    assert int(gc) == correct
    np.testing.assert_allclose(host(gdl), dl, **tol(dtype))
    np.testing.assert_allclose(host(gpr), pr, **tol(dtype))


@needs_gpu
def test_softmax_xent_bad_labels_raise_when_read(gpu):
    loss, _ = gpu.softmax_xent(dev(np.zeros((3, 4), np.float32)), dev(np.array([0, 4, 1], np.int32)))
    with pytest.raises(ValueError, match="labels must lie"):
        float(loss)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3), (37, 5), (4, 6, 7, 33), (2, 300, 64)])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm(gpu, ref, shape, affine, dtype):
    rng = np.random.default_rng(7)
    c = shape[-1]
    x = (rng.standard_normal(shape) * 3 + 10).astype(dtype)
    gamma = rng.standard_normal(c).astype(dtype) if affine else None
    beta = rng.standard_normal(c).astype(dtype) if affine else None
    mm, mv = rng.standard_normal(c).astype(dtype), (rng.random(c) + 0.5).astype(dtype)
    sm, si = np.empty(c, dtype), np.empty(c, dtype)
    gmm, gmv, gsm, gsi = dev(mm), dev(mv), dev(sm), dev(si)
    for training in (True, False):
        want = ref.batchnorm_forward(x, gamma, beta, training=training, moving_mean=mm,
                                     moving_var=mv, save_mean=sm, save_invstd=si)
        got = gpu.batchnorm_forward(dev(x), dev(gamma), dev(beta), training=training,
                                    moving_mean=gmm, moving_var=gmv, save_mean=gsm, save_invstd=gsi)
        np.testing.assert_allclose(host(got), want, **tol(dtype))
        for g_, r_ in ((gmm, mm), (gmv, mv), (gsm, sm), (gsi, si)):
            np.testing.assert_allclose(host(g_), r_, **tol(dtype))
    dy = rng.standard_normal(shape).astype(dtype)
    ref.batchnorm_forward(x, gamma, beta, training=True, moving_mean=mm, moving_var=mv,
                          save_mean=sm, save_invstd=si)
    gpu.batchnorm_forward(dev(x), dev(gamma), dev(beta), training=True, moving_mean=gmm,
                          moving_var=gmv, save_mean=gsm, save_invstd=gsi)
    r = ref.batchnorm_backward(dy, x, gamma, sm, si, dgamma=np.empty(c, dtype),
                               dbeta=np.empty(c, dtype))
    g = gpu.batchnorm_backward(dev(dy), dev(x), dev(gamma), gsm, gsi,
                               dgamma=dev(np.empty(c, dtype)), dbeta=dev(np.empty(c, dtype)))
    for a, e in zip(g, r):
        np.testing.assert_allclose(host(a), e, rtol=1e-3 if dtype == np.float32 else 1e-9,
                                   atol=1e-4 if dtype == np.float32 else 1e-10)


OPT_CASES = [
    ("sgd_update", dict(lr=0.1), ()),
    ("sgd_update", dict(lr=0.1, momentum=0.9), ("m",)),
    ("sgd_update", dict(lr=0.1, momentum=0.9, nesterov=True), ("m",)),
    ("adam_update", dict(lr=0.01, step=3), ("m", "v")),
    ("rmsprop_update", dict(lr=0.01), ("v",)),
    ("rmsprop_update", dict(lr=0.01, momentum=0.5), ("v", "m")),
    ("rmsprop_update", dict(lr=0.01, momentum=0.5, centered=True), ("v", "m", "mg")),
    ("adadelta_update", dict(lr=1.0), ("acc_g", "acc_d")),
    # the xp references of the newer optimizers (pynn/optimizers), run on CuPy
    ("amsgrad_update", dict(lr=0.01, step=3), ("m", "v", "vhat")),
    ("adagrad_update", dict(lr=0.05), ("acc",)),
    ("adamax_update", dict(lr=0.01, step=3), ("m", "u")),
    ("nadam_update", dict(lr=0.01, step=3, u_product=0.4), ("m", "v")),
    ("lion_update", dict(lr=0.003), ("m",)),
]


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,kw,slots", OPT_CASES, ids=lambda v: str(v))
def test_optimizer_updates(gpu, ref, name, kw, slots, dtype):
    rng = np.random.default_rng(8)
    n = 1001
    p = rng.standard_normal(n).astype(dtype)
    st = {s: (np.abs(rng.standard_normal(n)) * 0.1).astype(dtype) for s in slots}
    gp, gst = dev(p), {s: dev(v) for s, v in st.items()}
    for _ in range(3):
        g = rng.standard_normal(n).astype(dtype)
        getattr(ref, name)(p, g, **st, **kw) if name != "adam_update" else \
            ref.adam_update(p, g, st["m"], st["v"], **kw)
        getattr(gpu, name)(gp, dev(g), **gst, **kw) if name != "adam_update" else \
            gpu.adam_update(gp, dev(g), gst["m"], gst["v"], **kw)
    np.testing.assert_allclose(host(gp), p, **tol(dtype))
    for s in slots:
        np.testing.assert_allclose(host(gst[s]), st[s], **tol(dtype))


@needs_gpu
@pytest.mark.parametrize("n", [1, 100, 8193, 1_000_003])
def test_sum_squares(gpu, n):
    x = np.random.default_rng(9).standard_normal(n).astype(np.float32)
    want = nk.sum_squares(x)
    got = gpu.sum_squares(dev(x))
    assert isinstance(got, float)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert gpu.sum_squares(dev(x)) == got     # deterministic


# -------------------------------------------------------- models on the GPU --


@needs_gpu
def test_training_steps_gpu_match_cpu():
    x, y = _data(16)
    cpu, gpum = _small_cnn(), _small_cnn(device="gpu")
    for wa, wb in zip(cpu.get_weights(), gpum.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    for _ in range(3):
        lc, ac = cpu.train_on_batch(x, y)
        lg, ag = gpum.train_on_batch(x, y)
        np.testing.assert_allclose(lg, lc, rtol=1e-4)
        assert ag == ac
    for wa, wb in zip(cpu.get_weights(), gpum.get_weights()):
        np.testing.assert_allclose(wb, wa, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(gpum.predict(x, verbose=0), cpu.predict(x, verbose=0),
                               rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(gpum.evaluate(x, y, verbose=0), cpu.evaluate(x, y, verbose=0),
                               rtol=1e-4)


@needs_gpu
def test_fit_on_gpu_is_deterministic_and_to_gpu_moves_a_trained_model(tmp_path):
    x, y = _data(40, seed=1)
    runs = []
    for _ in range(2):
        m = _small_cnn(device="gpu")
        h = m.fit(x, y, batch_size=16, epochs=2, verbose=0)   # last batch is partial
        assert all(np.isfinite(v) for v in h.history["loss"])
        runs.append(m.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    m = _small_cnn()
    m.fit(x, y, batch_size=16, epochs=1, verbose=0)
    before = m.predict(x, verbose=0)
    m.to_gpu()
    np.testing.assert_allclose(m.predict(x, verbose=0), before, rtol=1e-4, atol=1e-5)
    m.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "m.npz")
    m.save(path)
    loaded = pynn.load_model(path) if hasattr(pynn, "load_model") else None
    if loaded is not None:
        for a, b in zip(loaded.get_weights(), m.get_weights()):
            np.testing.assert_array_equal(a, b)
