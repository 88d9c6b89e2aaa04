"""Benchmarks for nnkernels (run from the repository root, e.g. ``python -m bench.gemm``).

Shared helpers (timing, FMA peak, thread limiting, machine info, JSON output)
live in :mod:`bench._common`.
"""
import os as _os
import sys as _sys

# Run from the repository root, `import nnkernels` would find the source
# folder (which holds no compiled _core unless built in place) before the
# installed package: drop the root from sys.path in that case.  The bench
# package itself is already imported, so its modules still load.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
_src = _os.path.join(_root, "nnkernels")
if _os.path.isdir(_src) and not any(f.startswith("_core.") and f.endswith((".so", ".pyd"))
                                    for f in _os.listdir(_src)):
    _sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _root]
