"""Regression tests for the kernel-side findings of issue 15 (a red-team run):

1. geometry-sized arrays on the stack of the direct convolution kernels
   (SIGSEGV on valid convolutions with a huge kernel height or dilation);
2. workspaces of the direct / depthwise kernels sized by the padded width or
   the dilated kernel instead of the work (GBs for a 3-value convolution);
3. thread counts that kill the process (libgomp exits when it cannot create
   the threads), fma_peak(seconds=inf) that never returns, cgroup CPU quotas;
4. misaligned inputs reaching C (np.ascontiguousarray does not align) and
   misaligned output buffers accepted;
5. silent acceptance and wrong results: out-of-range indices with H*W = 0,
   float dimensions truncated by int(), unused arguments never checked,
   a misaligned 0-d input returned as shape (1,), subnormal probabilities in
   softmax_xent(from_logits=False), OverflowError for huge ints.

Cases that used to crash run in a subprocess, so that a crash fails the test
instead of ending the test run.
"""
import math
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import nnkernels as nk
from conftest import ALL_ISAS
from reference import (ref_conv, ref_conv_backward, ref_depthwise, ref_depthwise_backward)

_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(nk.__file__)))


def run_python(code, tmp_path, timeout=300, **env_changes):
    """Run `code` in a fresh interpreter importing the nnkernels under test."""
    env = dict(os.environ)
    env["PYTHONPATH"] = _PKG_PARENT
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=str(tmp_path),
                          env=env, capture_output=True, text=True, timeout=timeout)


def misaligned(a):
    """A C-contiguous copy of `a` at an odd byte offset (not aligned for its
    dtype, unless the itemsize is 1): what a view into a uint8 buffer gives."""
    a = np.asarray(a)
    buf = np.zeros(a.nbytes + a.itemsize + 1, dtype=np.uint8)
    m = buf[1:1 + a.nbytes].view(a.dtype).reshape(a.shape)
    m[...] = a
    assert m.flags.c_contiguous and (a.itemsize == 1 or not m.flags.aligned)
    return m


# ======================================= 1. no geometry-sized stack arrays ==

HUGE_GEOMETRY_SCRIPT = """
    import numpy as np, nnkernels as nk
    nk.set_isa({isa!r})
    nk.set_num_threads(2)
    rng = np.random.default_rng(0)
    K = 2 ** 20
    # KH = 2**20 (one output value): padding top K-1
    x = rng.standard_normal((1, 1, 1, 1)).astype(np.float32)
    w = rng.standard_normal((K, 1, 1, 1)).astype(np.float32)
    pad = ((K - 1, 0), (0, 0))
    for algo in ("auto", "direct", "im2col"):
        y = nk.conv2d(x, w, padding=pad, algo=algo)
        assert y.shape == (1, 1, 1, 1) and np.allclose(y.ravel(), x.ravel() * w[-1].ravel()), algo
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx, dw, db = nk.conv2d_backward(dy, x, w, padding=pad, algo=algo)
        assert np.allclose(dx.ravel(), dy.ravel() * w[-1].ravel()), algo
        assert np.allclose(dw[-1].ravel(), dy.ravel() * x.ravel()) and not dw[:-1].any(), algo
        assert np.allclose(db, dy.ravel())
    # dilation 2**20, KH = KW = 2: the window's last tap sits on the one pixel
    x = rng.standard_normal((1, 1, 1, 2)).astype(np.float32)
    w = rng.standard_normal((2, 2, 2, 3)).astype(np.float32)
    pad = ((K, 0), (K, 0))
    for algo in ("auto", "direct", "im2col"):
        y = nk.conv2d(x, w, padding=pad, dilation=K, algo=algo)
        assert y.shape == (1, 1, 1, 3)
        assert np.allclose(y.ravel(), x.ravel() @ w[1, 1], rtol=1e-5), algo
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx, dw, db = nk.conv2d_backward(dy, x, w, padding=pad, dilation=K, algo=algo)
        assert np.allclose(dx.ravel(), w[1, 1] @ dy.ravel(), rtol=1e-5), algo
        assert np.allclose(dw[1, 1], np.outer(x.ravel(), dy.ravel()), rtol=1e-5), algo
        assert not dw[0].any() and not dw[1, 0].any()
    # depthwise, dilation 2**20
    xd = rng.standard_normal((1, 1, 1, 3)).astype(np.float32)
    wd = rng.standard_normal((2, 2, 3, 2)).astype(np.float32)
    yd = nk.depthwise_conv2d(xd, wd, padding=pad, dilation=K)
    assert np.allclose(yd.ravel(), (xd.ravel()[:, None] * wd[1, 1]).ravel(), rtol=1e-5)
    dxd, dwd, dbd = nk.depthwise_conv2d_backward(np.ones_like(yd), xd, wd, padding=pad,
                                                 dilation=K)
    assert np.allclose(dxd.ravel(), wd[1, 1].sum(axis=1), rtol=1e-5)
    print("ok", nk.workspace_bytes())
"""


@pytest.mark.parametrize("name", ALL_ISAS)
def test_huge_kernel_height_and_dilation_do_not_crash(name, tmp_path):
    """KH = 2**20 and dilation 2**20 (valid convolutions with one output
    pixel) on every ISA path, algo auto, direct and im2col, forward and
    backward: right values, no crash, workspace within the 64 MiB budget."""
    if not nk.isa_supported(name):
        pytest.skip(f"this CPU cannot run {name}")
    res = run_python(HUGE_GEOMETRY_SCRIPT.format(isa=name), tmp_path)
    assert res.returncode == 0, (res.returncode, res.stderr[-3000:])
    ws = int(res.stdout.split()[-1])
    assert ws <= 3 * (64 << 20), ws


LARGE_KH_DIRECT_SCRIPT = """
    import numpy as np, nnkernels as nk
    nk.set_isa({isa!r})
    nk.set_num_threads(2)
    KH, F = 2 ** 17, 32
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, KH, 1, 1)).astype(np.float32)
    w = rng.standard_normal((KH, 1, 1, F)).astype(np.float32)
    for prod in ("forward", "backward_data", "backward_filter"):
        assert nk.conv2d_algo(x.shape, w.shape, product=prod) == "direct", prod
    y = nk.conv2d(x, w, algo="direct")
    ref = (x.reshape(1, KH).astype(np.float64) @ w.reshape(KH, F)).ravel()
    assert np.allclose(y.ravel(), ref, rtol=1e-4, atol=1e-3)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = nk.conv2d_backward(dy, x, w, algo="direct")
    assert np.allclose(dx.ravel(), w.reshape(KH, F) @ dy.ravel(), rtol=1e-4, atol=1e-4)
    assert np.allclose(dw.reshape(KH, F), np.outer(x.ravel(), dy.ravel()), rtol=1e-5, atol=1e-6)
    print("ok")
"""


@pytest.mark.parametrize("name", ALL_ISAS)
def test_direct_path_with_a_large_kernel_height_on_small_thread_stacks(name, tmp_path):
    """KH = 2**17 fits the direct path (conv2d_algo says so); its row
    pointers (1 MiB) and ring tags are in the arena, not on the stack: it
    runs with 2 threads whose stacks are 512 KiB (OMP_STACKSIZE), where the
    old `const T *xr[kh]` / `zr[KH]` overflowed."""
    if not nk.isa_supported(name):
        pytest.skip(f"this CPU cannot run {name}")
    res = run_python(LARGE_KH_DIRECT_SCRIPT.format(isa=name), tmp_path, OMP_STACKSIZE="512K")
    assert res.returncode == 0, (res.returncode, res.stderr[-3000:])
    assert res.stdout.split()[-1] == "ok"


def test_no_variable_length_arrays_in_the_build():
    """The build refuses variable-length arrays (-Werror=vla): no array sized
    by the geometry can come back on the stack unnoticed."""
    assert "-Werror=vla" in nk.info()["cflags"].split()


# ====================================== 2. workspaces bounded by the work ==

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_wide_padding_large_stride_uses_bounded_workspace(dtype):
    """The red team's 3-value convolution: padding 2**28 either side, stride
    2**28.  The direct path's scratch row would span the padded width (2**29
    pixels); it declines, im2col runs, and the workspace stays small."""
    x = np.full((1, 1, 1, 1), 2.0, dtype)
    w = np.full((1, 1, 1, 1), 3.0, dtype)
    geo = dict(padding=((0, 0), (2 ** 28, 2 ** 28)), strides=2 ** 28)
    for prod in ("forward", "backward_data", "backward_filter"):
        assert nk.conv2d_algo(x.shape, w.shape, dtype=dtype, product=prod, **geo) == "im2col"
    nk.release_workspace()
    for algo in ("auto", "direct"):  # an explicit "direct" falls back as well
        y = nk.conv2d(x, w, algo=algo, **geo)
        np.testing.assert_array_equal(y.ravel(), [0.0, 6.0, 0.0])
        dx, dw, db = nk.conv2d_backward(np.ones_like(y), x, w, algo=algo, **geo)
        np.testing.assert_array_equal(dx.ravel(), [3.0])
        np.testing.assert_array_equal(dw.ravel(), [2.0])
        np.testing.assert_array_equal(db, [3.0])
        dxd = nk.conv2d_backward_data(np.ones_like(y), w, x.shape, algo=algo, **geo)
        np.testing.assert_array_equal(dxd.ravel(), [3.0])
    assert nk.workspace_bytes() <= 16 << 20, nk.workspace_bytes()


def test_depthwise_with_huge_dilation_falls_back_with_bounded_workspace():
    """Depthwise rows sized by the dilated kernel (2**21 + 2 pixels of 8
    channels, 2 ring rows: 256 MiB): the groups run as one-channel
    convolutions instead (im2col), with a small workspace.  Dilation 2**21
    in width with padding 2**21 on the left: only the kw = 1 taps reach the
    image, so the result is the valid convolution with w[:, 1:2]."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 2, 4))
    w = rng.standard_normal((2, 2, 4, 2))
    geo = dict(padding=((0, 0), (2 ** 21, 0)), dilation=(1, 2 ** 21))
    for prod in ("forward", "backward_data", "backward_filter"):
        assert nk.conv2d_algo(x.shape, (2, 2, 1, 8), groups=4, product=prod,
                              **geo) == "im2col", prod
    nk.release_workspace()
    y = nk.depthwise_conv2d(x, w, **geo)
    w1 = w[:, 1:2]
    yr = ref_depthwise(x, w1, None, (1, 1), "valid", (1, 1))
    np.testing.assert_allclose(y, yr, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = nk.depthwise_conv2d_backward(dy, x, w, **geo)
    rdx, rdw, rdb = ref_depthwise_backward(dy, x, w1, (1, 1), "valid", (1, 1))
    np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw[:, 1:2], rdw, rtol=1e-12, atol=1e-12)
    assert not dw[:, 0].any()
    np.testing.assert_allclose(db, rdb, rtol=1e-12, atol=1e-12)
    assert nk.workspace_bytes() <= 16 << 20, nk.workspace_bytes()


@pytest.mark.parametrize("algo", ["direct", "depthwise"])
def test_rings_clamped_to_the_rows_that_exist(algo):
    """A dilation far above the image (dz ring: (KH-1)*dh/sh + 1 slots; x
    ring: (KH-1)*dh + 1 rows) with room to stay on the direct / depthwise
    path: the rings have at most OH / H slots and the results are right."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 7, 9, 3))
    # only the kh = 2 taps reach the image (ih = 2*oh); the other three sit
    # in the padding.  dz ring: (KH-1)*dh/sh + 1 = 901 slots for OH = 4 rows
    geo = dict(strides=(2, 1), padding=((1200, 600), (1, 1)), dilation=(600, 2))
    if algo == "depthwise":
        w = rng.standard_normal((4, 3, 3, 2))
        assert nk.conv2d_algo(x.shape, (4, 3, 1, 6), groups=3, **geo) == "depthwise"
        for prod in ("backward_data", "backward_filter"):
            assert nk.conv2d_algo(x.shape, (4, 3, 1, 6), groups=3, product=prod,
                                  **geo) == "depthwise"
        y = nk.depthwise_conv2d(x, w, **geo)
        yr = ref_depthwise(x, w, None, geo["strides"], geo["padding"], geo["dilation"])
        dy = rng.standard_normal(y.shape)
        got = nk.depthwise_conv2d_backward(dy, x, w, **geo)
        ref = ref_depthwise_backward(dy, x, w, geo["strides"], geo["padding"], geo["dilation"])
    else:
        w = rng.standard_normal((4, 3, 3, 5))
        for prod in ("forward", "backward_data", "backward_filter"):   # x is float64: direct
            assert nk.conv2d_algo(x.shape, w.shape, product=prod, dtype=str(x.dtype),
                                  **geo) == "direct"
        y = nk.conv2d(x, w, **geo)
        yr = ref_conv(x, w, None, geo["strides"], geo["padding"], geo["dilation"])
        dy = rng.standard_normal(y.shape)
        got = nk.conv2d_backward(dy, x, w, **geo)
        ref = ref_conv_backward(dy, x, w, geo["strides"], geo["padding"], geo["dilation"])
    np.testing.assert_allclose(y, yr, rtol=1e-12, atol=1e-12)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)


def test_ordinary_small_channel_convolutions_stay_direct():
    """The bound does not move ordinary first layers off the direct path
    (float32 weight gradients with C_in >= 2 take direct_wgrad, also direct loops)."""
    for xs, ws, geo in [((128, 32, 32, 3), (3, 3, 3, 16), dict(padding="same")),
                        ((8, 224, 224, 3), (7, 7, 3, 64), dict(strides=2, padding="same")),
                        ((1, 5, 5, 1), (3, 3, 1, 1), {}),
                        ((1, 28, 28, 1), (5, 5, 1, 6), dict(dilation=2))]:
        for prod in ("forward", "backward_data", "backward_filter"):
            want = "direct_wgrad" if prod == "backward_filter" and ws[2] >= 2 else "direct"
            assert nk.conv2d_algo(xs, ws, product=prod, **geo) == want, (xs, ws, prod)


# ================================================== 3. thread counts ==

def test_set_num_threads_bounds():
    before = nk.get_num_threads()
    assert nk.MAX_THREADS == 1024
    for bad in (nk.MAX_THREADS + 1, 40000, 100000, 2 ** 31 - 1, 2 ** 31, 2 ** 70, 0, -1):
        with pytest.raises(ValueError, match="MAX_THREADS"):
            nk.set_num_threads(bad)
        assert nk.get_num_threads() == before
    for bad in (2.0, "4", True, 3.5):
        with pytest.raises(TypeError):
            nk.set_num_threads(bad)
    nk.set_num_threads(np.int64(3))
    assert nk.get_num_threads() == 3
    nk.set_num_threads(nk.MAX_THREADS)
    assert nk.get_num_threads() == nk.MAX_THREADS
    nk.set_num_threads(before)


def test_fma_peak_validates_threads_and_seconds():
    for bad in (2 ** 31 - 1, nk.MAX_THREADS + 1, 0, 2 ** 80):
        with pytest.raises(ValueError):
            nk.fma_peak("generic", threads=bad, seconds=0.01)
    with pytest.raises(TypeError):
        nk.fma_peak("generic", threads=1.0, seconds=0.01)
    for bad in (math.inf, -math.inf, math.nan, 0.0, -1.0, 61.0, 10 ** 400):
        with pytest.raises(ValueError):
            nk.fma_peak("generic", threads=1, seconds=bad)
    with pytest.raises(TypeError):
        nk.fma_peak("generic", threads=1, seconds="1")
    assert nk.fma_peak("generic", threads=1, seconds=0.01) > 0


def test_thread_counts_that_killed_the_process(tmp_path):
    """max_pool2d after set_num_threads(100000) segfaulted, 40000 threads and
    fma_peak(threads=2**31-1) made libgomp exit(1): now ValueError, and the
    process carries on."""
    code = """
        import numpy as np, nnkernels as nk
        for n in (100000, 40000):
            try:
                nk.set_num_threads(n)
            except ValueError:
                pass
            else:
                raise SystemExit("accepted %d threads" % n)
        try:
            nk.fma_peak(threads=2 ** 31 - 1)
        except ValueError:
            pass
        else:
            raise SystemExit("fma_peak accepted 2**31-1 threads")
        x = np.random.default_rng(0).standard_normal((4, 64, 64, 8)).astype(np.float32)
        y, _ = nk.max_pool2d(x)
        assert np.array_equal(y, x.reshape(4, 32, 2, 32, 2, 8).max(axis=(2, 4)))
        print("ok")
    """
    res = run_python(code, tmp_path, timeout=120)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    assert res.stdout.split()[-1] == "ok"


def test_huge_omp_num_threads_is_clamped_with_a_warning(tmp_path):
    code = """
        import warnings
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            import numpy as np, nnkernels as nk
        assert nk.get_num_threads() == nk.MAX_THREADS, nk.get_num_threads()
        assert any("MAX_THREADS" in str(r.message) for r in rec), [str(r.message) for r in rec]
        nk.set_num_threads(2)
        print(nk.relu(np.arange(-3.0, 3.0)).sum())
    """
    res = run_python(code, tmp_path, timeout=120, OMP_NUM_THREADS="40000")
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    assert float(res.stdout.split()[-1]) == 3.0


def _cgroup(tmp_path, files):
    root = tmp_path / "cg"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(root)


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "200000 100000\n"}, 2),
    ({"cpu.max": "150000 100000\n"}, 2),        # 1.5 CPUs: rounded up
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "max\n"}, None),
    ({"cpu.max": "garbage\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_cpu_limit(tmp_path, files, expected):
    assert nk.cgroup_cpu_limit(root=_cgroup(tmp_path, files)) == expected


def test_default_num_threads_honours_a_cgroup_quota(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setattr(nk, "cgroup_cpu_limit", lambda: 1)
    assert nk.default_num_threads() == 1
    monkeypatch.setattr(nk, "cgroup_cpu_limit", lambda: affinity + 5)
    assert nk.default_num_threads() == min(affinity, nk.MAX_THREADS)
    monkeypatch.setattr(nk, "cgroup_cpu_limit", lambda: None)
    assert nk.default_num_threads() == min(affinity, nk.MAX_THREADS)
    monkeypatch.setattr(nk, "cgroup_cpu_limit", lambda: 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # an explicit setting wins, as in scikit-learn
    assert nk.default_num_threads() == 3


# ========================================================= 4. alignment ==

def _ops(rng, dt):
    """(name, function of a transform t applied to every array input)."""
    f = lambda *s: rng.standard_normal(s).astype(dt)  # noqa: E731
    x4, w4, b4 = f(2, 6, 5, 3), f(3, 3, 3, 4), f(4)
    dy4 = f(2, 4, 3, 4)
    xp = f(2, 6, 6, 3)
    _, idx = nk.max_pool2d(xp)
    dyp = f(2, 3, 3, 3)
    xg = f(2, 4, 4, 3)
    _, gidx = nk.global_max_pool2d(xg)
    a2, b2, c2, bias2 = f(5, 7), f(7, 3), f(5, 3), f(3)
    dyd, yd = f(5, 3), np.abs(f(5, 3))
    logits, labels = f(6, 5), rng.integers(0, 5, 6).astype(np.int32)
    bn_x, gam, bet = f(8, 3), f(3), f(3)
    p = f(10)
    ctr = rng.integers(0, 2 ** 32, (3, 4), dtype=np.uint64).astype(np.uint32)
    key = np.array([1, 2], np.uint32)
    return [
        ("gemm", lambda t: nk.gemm(t(a2), t(b2), beta=1.0, c=t(c2), bias=t(bias2))),
        ("dense_forward", lambda t: nk.dense_forward(t(a2), t(b2), t(bias2), "relu")),
        ("dense_backward", lambda t: nk.dense_backward(t(dyd), t(a2), t(b2), t(yd), "relu")),
        ("conv2d", lambda t: nk.conv2d(t(x4), t(w4), t(b4), padding="same")),
        ("conv2d_backward", lambda t: nk.conv2d_backward(t(dy4), t(x4), t(w4))),
        ("conv2d_backward_data", lambda t: nk.conv2d_backward_data(t(dy4), t(w4), x4.shape)),
        ("depthwise_conv2d", lambda t: nk.depthwise_conv2d(t(x4), t(w4[:, :, :, :2]))),
        ("max_pool2d", lambda t: nk.max_pool2d(t(xp))),
        ("max_pool2d_backward", lambda t: nk.max_pool2d_backward(t(dyp), t(idx), xp.shape)),
        ("avg_pool2d", lambda t: nk.avg_pool2d(t(xp))),
        ("avg_pool2d_backward", lambda t: nk.avg_pool2d_backward(t(dyp), xp.shape)),
        ("global_avg_pool2d", lambda t: nk.global_avg_pool2d(t(xg))),
        ("global_max_pool2d_backward",
         lambda t: nk.global_max_pool2d_backward(t(xg[:, 0, 0, :]), t(gidx), xg.shape)),
        ("upsample2d_nearest", lambda t: nk.upsample2d_nearest(t(xg))),
        ("pad2d", lambda t: nk.pad2d(t(xg), 1)),
        ("crop2d", lambda t: nk.crop2d(t(xg), 1)),
        ("relu", lambda t: nk.relu(t(x4))),
        ("relu_backward", lambda t: nk.relu_backward(t(x4), t(x4[::-1].copy()))),
        ("add", lambda t: nk.add(t(x4), t(x4))),
        ("dropout", lambda t: nk.dropout(t(x4), 0.3, 7)),
        ("philox4x32", lambda t: nk.philox4x32(t(ctr), t(key))),
        ("softmax_xent", lambda t: nk.softmax_xent(t(logits), t(labels))),
        ("softmax_xent_i64", lambda t: nk.softmax_xent(t(logits), t(labels.astype(np.int64)))),
        ("sum_squares", lambda t: nk.sum_squares(t(x4))),
        ("sgd_update", lambda t: nk.sgd_update(p.copy(), t(p * 0.5), 0.1)),
        ("adam_update", lambda t: nk.adam_update(p.copy(), t(p * 0.5), np.zeros_like(p),
                                                 np.zeros_like(p), 0.1)),
        ("batchnorm_forward", lambda t: nk.batchnorm_forward(
            t(bn_x), t(gam), t(bet), training=False, moving_mean=t(bet), moving_var=t(gam * gam),
            residual=t(bn_x))),
        ("batchnorm_backward", lambda t: nk.batchnorm_backward(
            t(bn_x), t(bn_x * 2), t(gam), t(bet), t(gam * gam))),
    ]


def _flat(r):
    if isinstance(r, tuple):
        return [v for x in r for v in _flat(x)]
    return [r]


@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_misaligned_inputs_are_copied_to_aligned_arrays(dt):
    """Every entry point given C-contiguous but misaligned inputs computes
    what it computes on aligned copies (the inputs are left unchanged)."""
    rng = np.random.default_rng(5)
    for name, op in _ops(rng, dt):
        ref = _flat(op(lambda a: a))
        seen = []

        def mis(a):
            m = misaligned(a)
            seen.append((m, m.copy()))
            return m
        got = _flat(op(mis))
        assert len(got) == len(ref), name
        for g, r in zip(got, ref):
            if r is None:
                assert g is None, name
            elif isinstance(r, np.ndarray):
                assert g.shape == r.shape and g.dtype == r.dtype, name
                np.testing.assert_array_equal(g, r, err_msg=name)
            else:
                assert g == r or (g != g and r != r), name
        for m, before in seen:
            np.testing.assert_array_equal(m, before, err_msg=f"{name} changed an input")


def test_misaligned_output_buffers_are_refused():
    x = np.ones((4, 6), np.float32)
    w = np.ones((6, 3), np.float32)
    dy = np.ones((4, 3), np.float32)
    checks = [
        lambda: nk.gemm(x, w, out=misaligned(np.empty((4, 3), np.float32))),
        lambda: nk.dense_backward(dy, x, w, db=misaligned(np.empty(3, np.float32))),
        lambda: nk.dense_backward(dy, x, w, dw=misaligned(np.empty((6, 3), np.float32))),
        lambda: nk.relu(x, out=misaligned(np.empty_like(x))),
        lambda: nk.add(x, x, out=misaligned(np.empty_like(x))),
        lambda: nk.conv2d(np.ones((1, 3, 3, 1)), np.ones((1, 1, 1, 1)),
                          out=misaligned(np.empty((1, 3, 3, 1)))),
        lambda: nk.max_pool2d(np.ones((1, 2, 2, 1)),
                              indices=misaligned(np.empty((1, 1, 1, 1), np.int32))),
        lambda: nk.sgd_update(misaligned(np.ones(4)), np.ones(4), 0.1),
        lambda: nk.adam_update(np.ones(4), np.ones(4), misaligned(np.zeros(4)), np.zeros(4), 0.1),
        lambda: nk.softmax_xent(np.ones((2, 3)), np.array([0, 1]),
                                dlogits=misaligned(np.empty((2, 3)))),
        lambda: nk.batchnorm_forward(np.ones((4, 2)), None, None, training=True,
                                     moving_mean=misaligned(np.zeros(2))),
    ]
    for i, check in enumerate(checks):
        with pytest.raises(ValueError, match="aligned"):
            check()


@pytest.mark.parametrize("fn", [nk.relu, nk.sum_squares, lambda z: nk.add(z, z),
                                lambda z: nk.dropout(z, 0.0, 1)])
def test_misaligned_0d_input_keeps_its_shape(fn):
    z = misaligned(np.array(-2.5))
    assert z.ndim == 0
    r = fn(z)
    if isinstance(r, np.ndarray):
        assert r.shape == (), r.shape
    ref = fn(np.array(-2.5))
    np.testing.assert_array_equal(r, ref)


# ============================================ 5. silent acceptance ==

def test_max_pool2d_backward_with_empty_plane_rejects_indices():
    dy = np.ones((1, 1, 1, 1), np.float32)
    for xs in [(1, 0, 5, 1), (1, 5, 0, 1), (1, 0, 0, 1)]:
        with pytest.raises(ValueError, match="outside"):
            nk.max_pool2d_backward(dy, np.full((1, 1, 1, 1), 7, np.int32), xs)
        with pytest.raises(ValueError, match="outside"):
            nk.max_pool2d_backward(dy, np.zeros((1, 1, 1, 1), np.int32), xs)
    # nothing to scatter: fine
    dx = nk.max_pool2d_backward(np.ones((1, 0, 0, 1), np.float32),
                                np.zeros((1, 0, 0, 1), np.int32), (1, 0, 0, 1))
    assert dx.shape == (1, 0, 0, 1)


@pytest.mark.parametrize("call", [
    lambda: nk.dropout_mask((2.7, 3), 0.5, 1),
    lambda: nk.dropout_mask(3.0, 0.5, 1),
    lambda: nk.dropout_mask((True, 3), 0.5, 1),
    lambda: nk.dropout_mask("ab", 0.5, 1),
    lambda: nk.conv2d_output_shape((1, 5.5, 5, 1), (3, 3, 1, 1)),
    lambda: nk.conv2d_output_shape((1, 5, 5, 1), (3.0, 3, 1, 1)),
    lambda: nk.conv2d_algo((1, 5, 5, 1), (3, 3, 1, np.float64(2))),
    lambda: nk.max_pool2d_output_shape((1, 4.5, 4, 1)),
    lambda: nk.max_pool2d_backward(np.ones((1, 1, 1, 1)), np.zeros((1, 1, 1, 1), np.int32),
                                   (1, 2.0, 2, 1)),
    lambda: nk.avg_pool2d_backward(np.ones((1, 1, 1, 1)), (1, 2, 2.5, 1)),
    lambda: nk.conv2d_backward_data(np.ones((1, 1, 1, 1)), np.ones((2, 2, 1, 1)),
                                    (1, 2, 2.0, 1)),
])
def test_float_dimensions_raise_type_error(call):
    with pytest.raises(TypeError):
        call()


def test_integer_dimensions_still_accepted():
    assert nk.dropout_mask((np.int64(2), 3), 0.5, 1).shape == (2, 3)
    assert nk.dropout_mask(4, 0.5, 1).shape == (4,)
    assert nk.conv2d_output_shape([1, np.int32(5), 5, 1], (3, 3, 1, 2)) == (1, 3, 3, 2)
    assert nk.max_pool2d_output_shape((1, 4, 4, 1)) == (1, 2, 2, 1)


def test_unused_output_buffers_are_refused():
    x, w, dy = np.ones((4, 6)), np.ones((6, 3)), np.ones((4, 3))
    with pytest.raises(ValueError, match="need_dx=False"):
        nk.dense_backward(dy, x, w, need_dx=False, dx=np.empty((4, 6)))
    with pytest.raises(ValueError, match="need_db=False"):
        nk.dense_backward(dy, x, w, need_db=False, db=np.empty(3))
    xc, wc, dyc = np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 2)), np.ones((1, 2, 2, 2))
    for flag, buf in [("dx", np.empty(xc.shape)), ("dw", np.empty(wc.shape)), ("db", np.empty(2))]:
        with pytest.raises(ValueError, match=f"need_{flag}=False"):
            nk.conv2d_backward(dyc, xc, wc, **{f"need_{flag}": False, flag: buf})
        with pytest.raises(ValueError, match=f"need_{flag}=False"):
            nk.conv2d_backward(dyc, xc, wc, **{f"need_{flag}": False, flag: "garbage"})
    dx, dw, db = nk.conv2d_backward(dyc, xc, wc, need_dx=False, need_db=False)
    assert dx is None and db is None and dw.shape == wc.shape


def test_unused_inputs_are_still_checked():
    x, w, dy = np.ones((4, 6)), np.ones((6, 3)), np.ones((4, 3))
    with pytest.raises(TypeError):
        nk.dense_backward(dy, x, w, y="garbage")
    with pytest.raises(ValueError):
        nk.dense_backward(dy, x, w, y=np.ones((4, 4)))
    with pytest.raises(TypeError):
        nk.dense_backward(dy, x, w, y=np.ones((4, 3), np.float32))
    nk.dense_backward(dy, x, w, y=np.ones((4, 3)))  # right shape and dtype: fine, not read
    with pytest.raises((TypeError, ValueError)):
        nk.gemm(x, w, c="garbage", beta=0.0)
    with pytest.raises(ValueError):
        nk.gemm(x, w, c=np.ones((3, 3)), beta=0.0)
    with pytest.raises(TypeError):
        nk.gemm(x, w, c=np.ones((4, 3), np.float32), beta=0.0)
    np.testing.assert_array_equal(nk.gemm(x, w, c=np.full((4, 3), np.nan), beta=0.0), x @ w)
    xc, wc, dyc = np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 2)), np.ones((1, 2, 2, 2))
    with pytest.raises(TypeError):
        nk.conv2d_backward(dyc, xc, wc, y="garbage")
    with pytest.raises(ValueError):
        nk.conv2d_backward(dyc, xc, wc, y=np.ones((1, 3, 3, 2)))
    with pytest.raises(ValueError):
        nk.conv2d_backward_data(dyc, wc, xc.shape, y=np.ones((1, 3, 3, 2)))


def xent_probs_ref(p, labels):
    """Keras 3 categorical cross-entropy on probabilities (numpy backend):
    q = p / sum(p) (a division), clipped to [1e-7, 1 - 1e-7], -log q[label]."""
    q = p / p.sum(axis=1, keepdims=True)
    q = np.clip(q, 1e-7, 1 - 1e-7)
    return float(-np.sum(np.log(q[np.arange(len(labels)), labels])))


@pytest.mark.parametrize("value", [5e-324, 1e-320, 2.5e-310])
def test_softmax_xent_subnormal_probabilities(value):
    """Six equal subnormal probabilities are q = 1/6 each after the
    normalisation: loss log(6) = 1.79 (Keras divides by the sum; the kernel
    multiplied by 1/sum, which is inf for a subnormal sum, and returned
    -log(1 - 1e-7) = 1e-7)."""
    p = np.full((1, 6), value)
    labels = np.array([2])
    ref = xent_probs_ref(p, labels)
    assert abs(ref - math.log(6)) < 0.1
    loss, _ = nk.softmax_xent(p, labels, from_logits=False)
    assert loss == pytest.approx(ref, rel=1e-12)
    probs = np.empty_like(p)
    nk.softmax_xent(p, labels, from_logits=False, probs=probs)
    np.testing.assert_allclose(probs, p / p.sum(axis=1, keepdims=True), rtol=1e-15)


def test_huge_ints_raise_value_error_not_overflow_error():
    p, g = np.ones(3), np.ones(3)
    with pytest.raises(ValueError):
        nk.adam_update(p, g, np.zeros(3), np.zeros(3), 0.1, step=10 ** 400)
    with pytest.raises(ValueError):
        nk.adam_update(p, g, np.zeros(3), np.zeros(3), 0.1, step=2 ** 63)
    for kw in (dict(lr=10 ** 400), dict(beta_1=-10 ** 400)):
        args = dict(lr=0.1)
        args.update(kw)
        with pytest.raises(ValueError):
            nk.adam_update(p, g, np.zeros(3), np.zeros(3), **args)
    with pytest.raises(ValueError):
        nk.sgd_update(p, g, 10 ** 400)
    with pytest.raises(ValueError):
        nk.softmax_xent(np.ones((2, 3)), np.array([0, 1]), grad_scale=10 ** 400)
    with pytest.raises(ValueError):
        nk.batchnorm_forward(np.ones((4, 2)), None, None, training=True, epsilon=10 ** 400)
    with pytest.raises(ValueError):
        nk.conv2d(np.ones((1, 3, 3, 1)), np.ones((1, 1, 1, 1)), strides=10 ** 400)
    with pytest.raises(ValueError):
        nk.max_pool2d(np.ones((1, 2, 2, 1)), pool_size=10 ** 400)
    with pytest.raises(ValueError):
        nk.dropout(np.ones(3), 0.5, 10 ** 400)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nk.adam_update(p, g, np.zeros(3), np.zeros(3), 0.1, step=2 ** 62) is p


def test_argument_checks_make_no_page_faults():
    """The in-place checks of the wrappers (out is exactly the input) read
    the data pointers directly: numpy's __array_interface__ built a dict per
    call whose keys CPython interns and drops, which used up the interned
    string table until it was resized -- a ~1 MB allocation and ~235 page
    faults in one training step of the default CNN every few hundred steps
    (403 faults over these 100,000 calls before the fix).  Run in a fresh
    interpreter on the installed package."""
    if "asan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("AddressSanitizer's allocator (quarantine, redzones) touches fresh pages "
                    "by design: page-fault counts mean nothing under make test-sanitize")
    code = textwrap.dedent("""
        import resource, numpy as np, nnkernels as nk
        x = np.ones((64, 64), np.float32)
        a = np.ones(100, np.float32)
        for i in range(100):
            nk.dropout(x, 0.5, 1, offset=i, out=x)
            nk.add(a, a, out=a)
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for i in range(100000):
            nk.dropout(x, 0.5, 1, offset=i, out=x)
            nk.add(a, a, out=a)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    """)
    res = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert int(res.stdout.split()[-1]) <= 16, res.stdout
