"""The ops of the normalisation, noise and preprocessing layers on the GPU
backend (GPUOps inherits them from the Ops reference, run on CuPy arrays)
against the NumPy Ops.  Skips without CuPy and a CUDA device (as
tests/test_gpu.py); not run on a machine without a GPU."""
import numpy as np
import pytest

from pynn import backend
from pynn.backend import gpu as backend_gpu

_OK, _WHY = backend_gpu.gpu_available()
pytestmark = pytest.mark.skipif(not _OK, reason="CuPy not installed" if _WHY.startswith("CuPy")
                                else f"no CUDA device ({_WHY})")
REF = backend.Ops()


@pytest.fixture(scope="module")
def gpu():
    return backend.get_ops("gpu")


def _dev(a):
    import cupy
    return None if a is None else cupy.asarray(a)


def _host(a):
    import cupy
    return cupy.asnumpy(a)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_ops(gpu, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 2, 6)).astype(dtype)
    gam = rng.uniform(0.5, 1.5, (1, 1, 2, 6)).astype(dtype)
    bet = rng.standard_normal((1, 1, 2, 6)).astype(dtype)
    axes = (1, 3)
    stat = (3, 1, 2, 1)
    outs = {}
    for name, ops, cv in (("ref", REF, np.asarray), ("gpu", gpu, _dev)):
        m, s = cv(np.empty(stat, dtype)), cv(np.empty(stat, dtype))
        y = ops.norm_forward(cv(x), axes, cv(gam), cv(bet), 1e-3, save_mean=m, save_invstd=s)
        dg, db = cv(np.empty(gam.shape, dtype)), cv(np.empty(gam.shape, dtype))
        dx, _, _ = ops.norm_backward(cv(y), cv(x), axes, cv(gam), m, s, dgamma=dg, dbeta=db)
        outs[name] = [np.asarray(a) if name == "ref" else _host(a) for a in (y, dx, dg, db)]
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    for a, b in zip(outs["ref"], outs["gpu"]):
        np.testing.assert_allclose(b, a, **tol)


@pytest.mark.parametrize("kw", [dict(interpolation="bilinear"), dict(interpolation="nearest"),
                                dict(interpolation="bilinear", crop_to_aspect_ratio=True),
                                dict(interpolation="bilinear", pad_to_aspect_ratio=True)])
def test_resize_rescale_normalize(gpu, kw):
    x = np.random.default_rng(1).standard_normal((2, 7, 5, 3))
    y = REF.resize2d(x, (4, 6), **kw)
    np.testing.assert_allclose(_host(gpu.resize2d(_dev(x), (4, 6), **kw)), y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_host(gpu.resize2d_backward(_dev(y), x.shape, **kw)),
                               REF.resize2d_backward(y, x.shape, **kw), rtol=1e-12, atol=1e-12)
    sc, var = np.array([0.5, 2.0, -1.0]), np.array([4.0, 0.0, 0.25])
    np.testing.assert_allclose(_host(gpu.rescale(_dev(x), _dev(sc), 1.0)), REF.rescale(x, sc, 1.0))
    np.testing.assert_allclose(_host(gpu.normalize(_dev(x), _dev(sc), _dev(var))),
                               REF.normalize(x, sc, var))


def test_noise_ops_identical_to_reference(gpu):
    x = np.random.default_rng(2).standard_normal((4, 3, 3, 8)).astype(np.float32)
    np.testing.assert_array_equal(_host(gpu.spatial_dropout(_dev(x), 0.4, 7, 3)),
                                  REF.spatial_dropout(x, 0.4, 7, 3))
    np.testing.assert_array_equal(_host(gpu.gaussian_noise(_dev(x), 0.3, 7, 3)),
                                  REF.gaussian_noise(x, 0.3, 7, 3))
    np.testing.assert_array_equal(_host(gpu.gaussian_dropout(_dev(x), 0.3, 7, 3)),
                                  REF.gaussian_dropout(x, 0.3, 7, 3))
