"""Benchmarks for nnkernels (run from the repository root, e.g. ``python -m bench.gemm``).

Shared helpers (timing, FMA peak, thread limiting, machine info, JSON output)
live in :mod:`bench._common`.
"""
