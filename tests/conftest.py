"""Shared pytest configuration for the nnkernels test suite.

Hypothesis profiles (select with HYPOTHESIS_PROFILE, default "ci"):
  ci   few examples per property, no deadline: the whole suite in a couple of
       minutes on a 2-core machine.
  dev  many more examples, for hunting bugs locally.

Fixtures:
  isa          parametrised over every kernel path (avx512, avx2, generic);
               forces it with set_isa and restores the previous path.
  num_threads  parametrised over 1 and 2 kernel threads; restores afterwards.
  winograd2    Winograd F(2x2, 3x3) everywhere (F(4x4, 3x3) off) for the test.

The tests import the *installed* package (run them with the `pytest` script,
not `python -m pytest` from the repository root) and the helper modules of
this folder (`strategies`, `reference`), which pytest's default "prepend"
import mode puts on sys.path because this folder has no __init__.py.
"""
import os

import pytest
from hypothesis import HealthCheck, settings

import nnkernels as nk

ALL_ISAS = ("avx512", "avx2", "generic")
THREAD_COUNTS = (1, 2)

# Fixtures such as `isa` are function scoped and shared by all examples of a
# property.  That is what we want (they set global kernel state that stays
# fixed for the whole test), so the health check that warns about it is off.
_COMMON = dict(
    deadline=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
settings.register_profile("ci", max_examples=60, **_COMMON)
settings.register_profile("dev", max_examples=300, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header(config):
    info = nk.info()
    return [
        "nnkernels {version} from {path}".format(version=info["version"], path=nk.__file__),
        "nnkernels isa={isa} available={isas_available} openmp={openmp} "
        "threads={num_threads} compiler={compiler!r} cflags={cflags!r}".format(**info),
        "hypothesis profile: " + os.environ.get("HYPOTHESIS_PROFILE", "ci"),
    ]


@pytest.fixture(autouse=True)
def _restore_kernel_state():
    """Whatever a test does, the next one starts with the same ISA and
    thread count (a failing test must not leave a forced path behind)."""
    isa, threads = nk.get_isa(), nk.get_num_threads()
    yield
    if nk.get_isa() != isa:
        nk.set_isa(isa)
    if nk.get_num_threads() != threads:
        nk.set_num_threads(threads)


@pytest.fixture(params=ALL_ISAS)
def isa(request):
    """Run the test on one kernel path (skipped only if this CPU lacks it)."""
    name = request.param
    if not nk.isa_supported(name):
        pytest.skip(f"this CPU cannot run the {name} kernels "
                    f"(available: {nk.available_isas()})")
    previous = nk.get_isa()
    nk.set_isa(name)
    assert nk.get_isa() == name
    try:
        yield name
    finally:
        nk.set_isa(previous)


@pytest.fixture(params=THREAD_COUNTS, ids=lambda n: f"threads{n}")
def num_threads(request):
    """Run the test with 1 or 2 kernel threads (restored afterwards)."""
    previous = nk.get_num_threads()
    nk.set_num_threads(request.param)
    assert nk.get_num_threads() == request.param
    try:
        yield request.param
    finally:
        nk.set_num_threads(previous)


@pytest.fixture
def winograd2():
    """Winograd F(2x2, 3x3) everywhere for the test (F(4x4, 3x3) off), for
    tests of paths it would otherwise replace (e.g. the bf16 products of
    the fused F(2x2, 3x3) at 16 channels)."""
    from reference import wino4
    with wino4(False):
        yield
