"""Runtime controls: ISA selection, thread count, info(), fma_peak, and the
environment variables read at import (checked in fresh subprocesses)."""
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nnkernels as nk
from reference import assert_close, gemm_ref
from strategies import make_array

ALL_ISAS = ["avx512", "avx2", "generic"]


# ------------------------------------------------------------------ info --

def test_info_keys_and_values():
    info = nk.info()
    for key in ("version", "isa", "isas_available", "openmp", "num_threads",
                "compiler", "cflags"):
        assert key in info, f"info() lacks {key!r}: {sorted(info)}"
    assert info["version"] == nk.__version__
    assert isinstance(info["version"], str) and info["version"]
    assert info["isa"] == nk.get_isa()
    assert info["isas_available"] == nk.available_isas()
    assert isinstance(info["openmp"], bool)
    assert info["num_threads"] == nk.get_num_threads()
    assert isinstance(info["compiler"], str) and info["compiler"]
    assert isinstance(info["cflags"], str)


def test_info_follows_settings():
    nk.set_num_threads(1)
    nk.set_isa("generic")
    info = nk.info()
    assert info["isa"] == "generic"
    assert info["num_threads"] == 1


# ------------------------------------------------------------------- isa --

def test_available_isas():
    isas = nk.available_isas()
    assert isas, "generic must always be available"
    assert isas[-1] == "generic"
    assert set(isas) <= set(ALL_ISAS)
    assert isas == [i for i in ALL_ISAS if i in isas], "must be best first"
    for name in ALL_ISAS:
        assert nk.isa_supported(name) == (name in isas)
    if "avx512" in isas:
        assert "avx2" in isas


def test_default_isa_is_best_available(tmp_path):
    """A fresh import picks the best path this CPU has."""
    out = _run_python("import nnkernels as nk; print(nk.get_isa(), nk.available_isas()[0])",
                      tmp_path, NNKERNELS_ISA=None)
    assert out.returncode == 0, out.stderr
    got, best = out.stdout.split()
    assert got == best


@pytest.mark.parametrize("name", ALL_ISAS)
def test_set_isa_roundtrip(name):
    if not nk.isa_supported(name):
        with pytest.raises(RuntimeError):
            nk.set_isa(name)
        return
    nk.set_isa(name)
    assert nk.get_isa() == name


def test_unknown_isa_name():
    for bad in ("bogus", "AVX512", "sse2", "", "auto"):
        with pytest.raises(ValueError):
            nk.set_isa(bad)
        with pytest.raises(ValueError):
            nk.isa_supported(bad)
    assert nk.get_isa() in nk.available_isas()


def test_isa_switch_changes_kernels_not_results():
    """Every path gives the right answer for the same call (and the switch
    really happens: get_isa reports it)."""
    a = make_array((50, 70), "float32", seed=1)
    b = make_array((70, 90), "float32", seed=2)
    ref, scale = gemm_ref(a, b)
    for name in nk.available_isas():
        nk.set_isa(name)
        assert nk.get_isa() == name
        assert_close(nk.gemm(a, b), ref, scale, "float32", 70, what=name)


# --------------------------------------------------------------- threads --

def test_set_num_threads_validation():
    for bad in (0, -1, -100):
        with pytest.raises(ValueError):
            nk.set_num_threads(bad)
    for n in (1, 2, 3, 7):
        nk.set_num_threads(n)
        assert nk.get_num_threads() == n
    nk.set_num_threads(None)
    assert nk.get_num_threads() == nk.default_num_threads()
    nk.set_num_threads(1)
    nk.set_num_threads()
    assert nk.get_num_threads() == nk.default_num_threads()


def test_failed_set_num_threads_keeps_previous_value():
    nk.set_num_threads(2)
    with pytest.raises(ValueError):
        nk.set_num_threads(0)
    assert nk.get_num_threads() == 2


def _usable_cpus():
    """The affinity mask, fewer under a cgroup CPU quota (see cgroup_cpu_limit)."""
    n = len(os.sched_getaffinity(0))
    quota = nk.cgroup_cpu_limit()
    return min(n, quota) if quota is not None else n


def test_default_num_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert nk.default_num_threads() == _usable_cpus()
    for n in (1, 3, 16):
        monkeypatch.setenv("OMP_NUM_THREADS", str(n))
        assert nk.default_num_threads() == n


def test_more_threads_than_cores_still_right():
    a = make_array((300, 200), "float64", seed=3)
    b = make_array((200, 260), "float64", seed=4)
    ref, scale = gemm_ref(a, b)
    for n in (1, 3, 8):
        nk.set_num_threads(n)
        assert_close(nk.gemm(a, b), ref, scale, "float64", 200, what=f"{n} threads")


# ----------------------------------------------------------- subprocesses --

# The folder holding the nnkernels package under test (site-packages for an
# installed package; the checkout for an editable install).
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(nk.__file__)))


def _run_python(code, cwd, **env_changes):
    """Run `code` in a fresh interpreter (this venv's) from `cwd` (a temporary
    directory, so that no source tree in the current directory shadows the
    package), importing the very nnkernels these tests import, with env
    changes (None deletes a variable)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = _PKG_PARENT
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=str(cwd),
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ALL_ISAS)
def test_env_isa_forces_path(name, tmp_path):
    code = """
        import numpy as np, nnkernels as nk
        a = np.arange(12.0).reshape(3, 4); b = np.arange(8.0).reshape(4, 2)
        assert np.array_equal(nk.gemm(a, b), a @ b)
        print(nk.get_isa())
    """
    res = _run_python(code, cwd=tmp_path, NNKERNELS_ISA=name)
    if not nk.isa_supported(name):
        assert res.returncode != 0
        assert "ImportError" in res.stderr and name in res.stderr, res.stderr
        return
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-1] == name


def test_env_isa_auto_is_best(tmp_path):
    res = _run_python("import nnkernels as nk; print(nk.get_isa())", cwd=tmp_path,
                      NNKERNELS_ISA="auto")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == nk.available_isas()[0]


@pytest.mark.parametrize("bad", ["bogus", "avx1024", "sse"])
def test_env_isa_unknown_fails_import(bad, tmp_path):
    res = _run_python("import nnkernels", cwd=tmp_path, NNKERNELS_ISA=bad)
    assert res.returncode != 0, "import must fail for an unknown NNKERNELS_ISA"
    assert "ImportError" in res.stderr, res.stderr
    assert bad in res.stderr and "NNKERNELS_ISA" in res.stderr, res.stderr


def test_subprocess_imports_the_package_under_test(tmp_path):
    res = _run_python("import nnkernels, os; print(os.path.dirname(nnkernels.__file__))",
                      cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert os.path.samefile(res.stdout.strip(), os.path.dirname(nk.__file__))


@pytest.mark.parametrize("n", [1, 3])
def test_omp_num_threads_sets_default(n, tmp_path):
    res = _run_python(
        "import nnkernels as nk; print(nk.get_num_threads(), nk.default_num_threads(), "
        "nk.info()['num_threads'])",
        cwd=tmp_path, OMP_NUM_THREADS=str(n))
    assert res.returncode == 0, res.stderr
    if not nk.openmp_enabled():
        assert res.stdout.split()[0] == "1"
        return
    assert res.stdout.split() == [str(n)] * 3


def test_no_omp_num_threads_uses_affinity(tmp_path):
    res = _run_python("import nnkernels as nk; print(nk.get_num_threads())", cwd=tmp_path,
                      OMP_NUM_THREADS=None)
    assert res.returncode == 0, res.stderr
    expected = _usable_cpus() if nk.openmp_enabled() else 1
    assert int(res.stdout) == expected


# -------------------------------------------------------------- fma_peak --

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ALL_ISAS)
def test_fma_peak_positive(name, dtype):
    if not nk.isa_supported(name):
        with pytest.raises(RuntimeError):
            nk.fma_peak(name, dtype, threads=1, seconds=0.02)
        return
    g = nk.fma_peak(name, dtype, threads=1, seconds=0.02)
    assert isinstance(g, float)
    assert g > 0 and math.isfinite(g)


def test_fma_peak_auto_and_threads():
    g = nk.fma_peak("auto", np.float32, threads=2, seconds=0.02)
    assert isinstance(g, float) and g > 0 and math.isfinite(g)
    g = nk.fma_peak(seconds=0.02)
    assert g > 0 and math.isfinite(g)


def test_fma_peak_errors():
    with pytest.raises(ValueError):
        nk.fma_peak("bogus", seconds=0.01)
    with pytest.raises(ValueError):
        nk.fma_peak("generic", threads=0, seconds=0.01)
    with pytest.raises(TypeError):
        nk.fma_peak("generic", "int32", seconds=0.01)
