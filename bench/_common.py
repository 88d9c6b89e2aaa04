"""Helpers shared by the nnkernels benchmarks (gemm, conv, training, ...).

* :func:`bench_interleaved` -- best-of-N timing, libraries interleaved per round.
* :func:`measure_peaks` -- measured FMA peak per ISA and thread count.
* :class:`OtherLoad`, :func:`wait_quiet` -- CPU used by other processes
  (the machine is shared): record it, and wait for a quiet machine.
* :class:`ThreadControl` / :meth:`ThreadControl.limit` -- one thread count for
  nnkernels, NumPy's BLAS (via threadpoolctl) and torch at the same time.
* :func:`machine_info`, :func:`env_info` -- what the numbers were measured on.
* :func:`checksum`, :func:`flat_check_indices` -- prove the timed work was done.
* :func:`write_json`, :func:`timestamp`, :func:`default_out_dir`.

Nothing here changes environment variables: run the benchmarks with the
environment you want measured (e.g. ``env -u OPENBLAS_CORETYPE ...``).
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import glob
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np

import nnkernels as nk

try:  # optional: controls OpenBLAS/MKL threads of NumPy
    import threadpoolctl
except ImportError:  # pragma: no cover - depends on the environment
    threadpoolctl = None

THREADPOOLCTL_NOTE = (
    "threadpoolctl is not installed: NumPy's BLAS thread count is NOT "
    "controlled (pip install threadpoolctl)"
)

# Environment variables recorded in every result file (prefix match).
ENV_PREFIXES = (
    "OPENBLAS_", "GOTO", "OMP_", "GOMP_", "KMP_", "MKL_", "DNNL_", "ONEDNN_",
    "TORCH_", "ATEN_", "NNKERNELS", "NK_", "BLIS_", "VECLIB_",
)
# Variables that are known to slow NumPy's OpenBLAS down on this machine.
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

HERE = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------
def timestamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def default_out_dir() -> str:
    return os.path.join(HERE, "results")


def parse_threads(spec: str | None) -> list[int]:
    """'1,2' -> [1, 2]; None -> [1, all cores] (deduplicated)."""
    if spec:
        out = [int(x) for x in spec.replace(" ", "").split(",") if x]
        if not out or min(out) < 1:
            raise ValueError(f"bad --threads {spec!r}")
        return out
    return sorted({1, all_cores()})


def all_cores() -> int:
    """Cores this process may run on (its CPU affinity); recorded next to
    nk.default_num_threads() in machine_info()."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, n)


def optional_torch():
    """(torch module or None, reason string or None)."""
    try:
        import torch  # noqa: PLC0415
        return torch, None
    except Exception as e:  # pragma: no cover - depends on the environment
        return None, f"torch not importable: {type(e).__name__}: {e}"


def gflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e9 if seconds > 0 else float("nan")


# --------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------
class ThreadControl:
    """Sets one thread count for nnkernels, NumPy's BLAS and torch together."""

    def __init__(self, torch=None):
        self.torch = torch
        self.controller = None
        self.note = None
        if threadpoolctl is None:
            self.note = THREADPOOLCTL_NOTE
        else:
            self.controller = threadpoolctl.ThreadpoolController()
            if not self.controller.select(user_api="blas").lib_controllers:
                self.note = "threadpoolctl found no BLAS library loaded by NumPy"

    @property
    def blas_controlled(self) -> bool:
        return self.note is None

    @contextlib.contextmanager
    def limit(self, threads: int):
        """Context: all libraries use `threads` threads; restored on exit."""
        old_nk = nk.get_num_threads()
        old_torch = self.torch.get_num_threads() if self.torch is not None else None
        limiter = None
        try:
            nk.set_num_threads(threads)
            if self.torch is not None:
                self.torch.set_num_threads(threads)
            if self.blas_controlled:
                limiter = threadpoolctl.threadpool_limits(limits=threads, user_api="blas")
            yield self.effective()
        finally:
            if limiter is not None:
                limiter.restore_original_limits()
            if self.torch is not None:
                self.torch.set_num_threads(old_torch)
            nk.set_num_threads(old_nk)

    def effective(self) -> dict:
        """Thread counts each library reports right now."""
        eff = {"nnkernels": nk.get_num_threads()}
        if self.controller is not None:
            info = threadpoolctl.threadpool_info()
            eff["numpy_blas"] = [
                {"lib": i.get("internal_api"), "num_threads": i.get("num_threads")}
                for i in info if i.get("user_api") == "blas"
            ]
        else:
            eff["numpy_blas"] = None
        if self.torch is not None:
            eff["torch"] = self.torch.get_num_threads()
        return eff


# --------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------
@dataclass
class Timing:
    """Seconds per call of one benchmarked function."""
    inner: int                       # calls per repeat
    times: list = field(default_factory=list)  # seconds/call, one per repeat

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def as_dict(self, flops: float | None = None) -> dict:
        d = {"calls_per_repeat": self.inner, "best_s": self.best,
             "median_s": self.median, "times_s": list(self.times)}
        if flops is not None:
            d["gflops_best"] = gflops(flops, self.best)
            d["gflops_median"] = gflops(flops, self.median)
        return d


def _run(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - t0


def autorange(fn, min_time: float) -> int:
    """Calls per repeat so that one repeat takes >= min_time seconds."""
    n = 1
    while True:
        dt = _run(fn, n)
        if dt >= min_time:
            return n
        want = math.ceil(n * min_time * 1.1 / dt) if dt > 0 else n * 100
        n = max(n + 1, min(want, n * 100))


def bench_interleaved(fns: dict, repeats: int = 10, min_time: float = 0.05,
                      warmup: int = 2, settle: float = 0.03) -> dict:
    """Time several functions, interleaved.

    Each function is warmed up (`warmup` calls plus a calibration run), then
    for `repeats` rounds every function runs one repeat of ``inner`` calls
    (enough for >= `min_time` seconds); the order rotates each round so that
    noise on the shared machine hits all of them alike.  The garbage
    collector is off while timing.  Before each timed repeat the machine
    settles for `settle` seconds and the function makes one untimed call:
    OpenBLAS's worker threads keep spinning for a while after a NumPy call and
    would otherwise steal a core from whichever contender runs next.
    Returns ``{name: Timing}`` (seconds per call; use ``.best`` for the
    best-of-N figure).
    """
    names = list(fns)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for name in names:
            for _ in range(warmup):
                fns[name]()
        res = {name: Timing(inner=autorange(fns[name], min_time)) for name in names}
        for r in range(repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                if settle > 0:
                    time.sleep(settle)
                fns[name]()
                res[name].times.append(_run(fns[name], res[name].inner) / res[name].inner)
    finally:
        if gc_was:
            gc.enable()
    return res


# --------------------------------------------------------------------------
# contention from other processes (the machine is shared)
# --------------------------------------------------------------------------
class OtherLoad:
    """CPU used by *other* processes, in cores, since :meth:`start`.

    Busy time of all CPUs from /proc/stat minus this process's own CPU time
    (os.times, all threads).  Resolution is one clock tick (usually 10 ms),
    so it is meaningful over intervals of ~0.2 s and more.  Returns NaN where
    /proc/stat is unavailable.
    """

    def __init__(self):
        try:
            self.hz = os.sysconf("SC_CLK_TCK")
        except (AttributeError, ValueError, OSError):  # pragma: no cover
            self.hz = 100
        self.start()

    def _read(self):
        t = os.times()
        try:
            with open("/proc/stat") as f:
                vals = [int(v) for v in f.readline().split()[1:9]]
            busy = (sum(vals) - vals[3] - vals[4]) / self.hz  # minus idle, iowait
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        return time.perf_counter(), busy, t.user + t.system

    def start(self):
        self._t0 = self._read()
        return self

    def cores(self) -> float:
        (w0, b0, s0), (w1, b1, s1) = self._t0, self._read()
        if w1 - w0 <= 0:
            return float("nan")
        return max(0.0, ((b1 - b0) - (s1 - s0)) / (w1 - w0))


def wait_quiet(threshold: float = 0.25, max_wait: float = 30.0,
               sample: float = 0.25) -> tuple[float, float]:
    """Sleep until other processes use < `threshold` cores (sampled over
    `sample` s), at most `max_wait` s.  Returns (seconds waited, last load).
    With max_wait <= 0 it only samples once."""
    t0 = time.perf_counter()
    while True:
        mon = OtherLoad()
        time.sleep(sample)
        load = mon.cores()
        waited = time.perf_counter() - t0
        if not load >= threshold or waited + sample > max_wait:
            return waited, load


# --------------------------------------------------------------------------
# peak
# --------------------------------------------------------------------------
def measure_peaks(threads_list, dtype: str = "float32", seconds: float = 0.2,
                  tries: int = 3, isas=None) -> dict:
    """Measured FMA peak (GFLOP/s, best of `tries`) per ISA and thread count.

    Returns ``{"dtype", "seconds", "tries", "per_isa": {t: {isa: gflops}},
    "best": {t: {"isa": ..., "gflops": ...}}, "other_load_cores": {t: cores}}``
    with thread counts as strings (JSON keys).
    """
    isas = list(isas or nk.available_isas())
    per, best, load = {}, {}, {}
    for t in threads_list:
        row = {}
        mon = OtherLoad()
        for isa in isas:
            row[isa] = max(float(nk.fma_peak(isa=isa, dtype=dtype, threads=t,
                                             seconds=seconds))
                           for _ in range(tries))
        per[str(t)] = row
        load[str(t)] = mon.cores()
        top = max(row, key=row.get)
        best[str(t)] = {"isa": top, "gflops": row[top]}
    return {"dtype": dtype, "seconds": seconds, "tries": tries,
            "per_isa": per, "best": best, "other_load_cores": load}


# --------------------------------------------------------------------------
# correctness checks of timed outputs
# --------------------------------------------------------------------------
def flat_check_indices(size: int, k: int = 16, seed: int = 0) -> np.ndarray:
    """A few flat indices (first, middle, last and `k` random) into an output."""
    rng = np.random.default_rng(seed)
    idx = np.concatenate([[0, size // 2, size - 1], rng.integers(0, size, k)])
    return np.unique(idx)


def checksum(out, idx) -> float:
    """Sum (float64) of out.flat[idx]; `out` is a NumPy array or torch tensor."""
    if not isinstance(out, np.ndarray):
        out = out.detach().numpy()
    return float(np.asarray(out).reshape(-1)[idx].astype(np.float64).sum())


# --------------------------------------------------------------------------
# machine / environment info
# --------------------------------------------------------------------------
def env_info() -> dict:
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)}
    overrides = {k: os.environ.get(k) for k in OPENBLAS_OVERRIDES}
    return {
        "vars": env,
        "openblas_overrides": overrides,
        "openblas_overrides_set": any(v is not None for v in overrides.values()),
    }


def _cpuinfo() -> dict:
    out = {"model": platform.processor() or None, "flags": None}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "model name" and out.get("model_name") is None:
            out["model"] = out["model_name"] = val.strip()
        elif key == "flags" and out["flags"] is None:
            flags = set(val.split())
            out["flags"] = sorted(f for f in flags if f.startswith(
                ("avx", "fma", "sse4", "f16c", "amx")))
    return out


def _caches() -> list:
    caches = []
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        item = {}
        for k in ("level", "type", "size", "shared_cpu_list"):
            try:
                with open(os.path.join(d, k)) as f:
                    item[k] = f.read().strip()
            except OSError:
                pass
        caches.append(item)
    return caches


def machine_info(torch=None, torch_note=None) -> dict:
    """CPU, cores, library versions and configuration, environment."""
    cpu = _cpuinfo()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        affinity = None
    info = {
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": cpu.get("model"),
        "cpu_flags": cpu.get("flags"),
        "caches_cpu0": _caches(),
        "cpu_count": os.cpu_count(),
        "affinity_cores": affinity,
        "all_cores_used": all_cores(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "nnkernels": {
            "info": nk.info(),
            "available_isas": list(nk.available_isas()),
            "isa": nk.get_isa(),
            "default_num_threads": nk.default_num_threads(),
        },
        "numpy": {"version": np.__version__},
        "threadpoolctl": None,
        "torch": None,
        "env": env_info(),
    }
    try:
        info["numpy"]["config"] = np.show_config(mode="dicts")
    except Exception:
        pass
    if threadpoolctl is not None:
        info["threadpoolctl"] = {"version": threadpoolctl.__version__,
                                 "threadpool_info": threadpoolctl.threadpool_info()}
        info["numpy"]["blas"] = [i for i in threadpoolctl.threadpool_info()
                                 if i.get("user_api") == "blas"]
    else:
        info["numpy"]["blas"] = THREADPOOLCTL_NOTE
    if torch is not None:
        t = {"version": torch.__version__, "num_threads": torch.get_num_threads()}
        try:
            t["parallel_info"] = torch.__config__.parallel_info()
            t["config"] = torch.__config__.show()
        except Exception:
            pass
        info["torch"] = t
    elif torch_note:
        info["torch"] = {"note": torch_note}
    return info


# --------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------
def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def write_json(data: dict, out_dir: str, name: str) -> str:
    """Write `data` to out_dir/name (directories created); returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=_json_default, allow_nan=True)
        f.write("\n")
    return path
