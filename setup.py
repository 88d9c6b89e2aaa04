"""Build the compiled kernels of nnkernels.

One extension, ``nnkernels._core``: the Cython wrapper plus the C sources in
``nnkernels/src``.  Compiled with -O3 and OpenMP when the compiler supports it
(otherwise single-threaded, with a warning).  SIMD code is compiled per ISA
inside its own source file (``#pragma GCC target``), never with -march, so a
single build runs on any x86-64 CPU and picks AVX-512 / AVX2 / generic at run
time from CPUID.  Other architectures build the portable kernels.
"""
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SRC = os.path.join("nnkernels", "src")
C_SOURCES = sorted(
    os.path.join(SRC, f) for f in os.listdir(SRC) if f.endswith(".c")
)
# -Werror=vla: no variable-length (geometry-sized) array on the stack, anywhere
BASE_CFLAGS = ["-O3", "-std=gnu11", "-fno-strict-aliasing", "-fno-math-errno", "-Werror=vla"]


def _compiler_accepts(compiler, flags, code):
    """True if `compiler` compiles and links `code` with `flags` (and the
    environment's CFLAGS / LDFLAGS, which the extension gets too: a
    sanitizer build's objects only link with the sanitizer's flags)."""
    tmp = tempfile.mkdtemp()
    env_c = shlex.split(os.environ.get("CFLAGS", ""))
    env_ld = shlex.split(os.environ.get("LDFLAGS", ""))
    try:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write(code)
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags + env_c)
        compiler.link_executable(objs, "t", output_dir=tmp, extra_postargs=flags + env_ld)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    def build_extensions(self):
        omp_code = "#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n"
        omp = os.environ.get("NNKERNELS_NO_OPENMP") != "1" and _compiler_accepts(
            self.compiler, ["-fopenmp"], omp_code
        )
        if not omp:
            warnings.warn(
                "nnkernels: the C compiler does not support OpenMP (-fopenmp); "
                "building single-threaded kernels"
            )
        cflags = BASE_CFLAGS + (["-fopenmp"] if omp else [])
        ldflags = ["-fopenmp"] if omp else []
        flags_str = " ".join(cflags).replace('"', "")
        for ext in self.extensions:
            ext.extra_compile_args = cflags
            ext.extra_link_args = ldflags
            ext.define_macros.append(("NK_BUILD_CFLAGS", '"%s"' % flags_str))
        super().build_extensions()


ext = Extension(
    "nnkernels._core",
    sources=[os.path.join("nnkernels", "_core.pyx")] + C_SOURCES,
    include_dirs=[np.get_include(), SRC],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(
    ext_modules=cythonize(
        [ext],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
    cmdclass={"build_ext": BuildExt},
)
