"""Compile every CUDA module of nnkernels with nvcc, without a GPU.

    python -m nnkernels.cuda.check_compile [--arch sm_90] [--nvcc nvcc]

For each module: the same source text NVRTC gets (header pasted in), plus a
host array taking the address of every kernel of KERNELS, which forces the
same template instantiations as cupy.RawModule(name_expressions=...); then
``nvcc -std=c++17 -arch=<arch> -c -o /dev/null``.  Warnings are errors.
Exit status 0 when every module compiles.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from nnkernels import cuda


def instantiation_source(module):
    lines = [cuda.source(module), "", "/* instantiations (check_compile.py) */",
             "void *nk_check_instances[] = {"]
    lines += [f"    (void *)&{expr}," for expr in cuda.name_expressions(module)]
    lines += ["};", ""]
    return "\n".join(lines)


def nvcc_command(nvcc, arch, path):
    return [nvcc, "-std=c++17", f"-arch={arch}", "-Werror", "all-warnings", "-c", "-o",
            os.devnull, path]


def check(module, nvcc="nvcc", arch="sm_90"):
    """(ok, command, compiler output) for one module."""
    tmp = tempfile.mkdtemp(prefix="nk_cuda_")
    try:
        path = os.path.join(tmp, f"{module}.cu")
        with open(path, "w", encoding="utf-8") as f:
            f.write(instantiation_source(module))
        cmd = nvcc_command(nvcc, arch, path)
        r = subprocess.run(cmd, capture_output=True, text=True)
        return r.returncode == 0, cmd, (r.stdout + r.stderr).strip()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="sm_90", help="GPU architecture (default sm_90: H100)")
    p.add_argument("--nvcc", default=os.environ.get("NVCC", "nvcc"))
    args = p.parse_args(argv)
    if shutil.which(args.nvcc) is None:
        print(f"{args.nvcc} not found on PATH", file=sys.stderr)
        return 2
    bad = 0
    for m in cuda.KERNELS:
        ok, cmd, out = check(m, args.nvcc, args.arch)
        n = len(cuda.name_expressions(m))
        print(f"{m:8s} {cuda.KERNELS[m][0]:14s} {n:2d} kernels: {'ok' if ok else 'FAILED'}")
        if out:
            print(out)
        bad += not ok
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
