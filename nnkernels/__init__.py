"""nnkernels: compiled CPU kernels for neural networks.

Packed SIMD GEMM (AVX-512 / AVX2+FMA / portable, chosen at run time) with
fused epilogues, dense-layer forward/backward, 2-D convolution (NHWC,
implicit-im2col GEMM, direct or Winograd; grouped and depthwise), NHWC max pooling with int32 argmax indices,
average and global (average / max) pooling, nearest upsampling, zero padding
and cropping,
ReLU, elementwise add, dropout from a Philox4x32-10 counter-based stream, fused softmax
cross-entropy, optimizer updates (SGD, Adam, RMSprop, Adadelta) and batch
normalisation; bfloat16 products with float32 accumulation (precision=
"bfloat16" on gemm, dense and conv2d; to_bf16 / from_bf16); OpenMP threads.

Environment:
  NNKERNELS_ISA=avx512|avx2|generic   force a kernel path (error if the CPU
                                      cannot run it)
  NNKERNELS_BF16=native|emulate|auto  bfloat16 products by VDPBF16PS (CPUs
                                      with AVX512_BF16, avx512 path) or
                                      emulated with float32 FMAs (same bits)
  OMP_NUM_THREADS                     default thread count (at most
                                      MAX_THREADS; a cgroup CPU quota applies
                                      only without it)
"""
import math as _math
import os as _os
import warnings as _warnings

from . import _core
from ._core import (
    MAX_THREADS,
    add,
    available_isas,
    avg_pool2d,
    avg_pool2d_backward,
    conv2d,
    conv2d_algo,
    conv2d_backward,
    conv2d_backward_data,
    conv2d_maxpool,
    conv2d_maxpool_backward,
    conv2d_output_shape,
    depthwise_conv2d,
    depthwise_conv2d_backward,
    crop2d,
    dense_backward,
    dense_forward,
    fma_peak,
    dropout,
    dropout_backward,
    dropout_mask,
    dropout_threshold,
    gemm,
    get_isa,
    get_num_threads,
    global_avg_pool2d,
    global_avg_pool2d_backward,
    global_max_pool2d,
    global_max_pool2d_backward,
    isa_supported,
    max_pool2d,
    max_pool2d_backward,
    max_pool2d_output_shape,
    openmp_enabled,
    pad2d,
    philox4x32,
    release_workspace,
    workspace_bytes,
    relu,
    relu_backward,
    set_isa,
    upsample2d_nearest,
    upsample2d_nearest_backward,
)
from ._core import (
    bf16_native_supported,
    bf16_path,
    from_bf16,
    set_bf16_native,
    to_bf16,
)
from ._core import (
    adadelta_update,
    adam_update,
    batchnorm_backward,
    batchnorm_forward,
    rmsprop_update,
    sgd_update,
    softmax_xent,
    sum_squares,
)

__version__ = "0.1.0"

__all__ = [
    "gemm", "dense_forward", "dense_backward", "conv2d", "conv2d_backward",
    "conv2d_backward_data", "conv2d_maxpool", "conv2d_maxpool_backward",
    "depthwise_conv2d", "depthwise_conv2d_backward",
    "conv2d_output_shape", "conv2d_algo", "info", "set_num_threads",
    "get_num_threads", "MAX_THREADS", "cgroup_cpu_limit", "get_isa", "set_isa", "available_isas", "isa_supported",
    "fma_peak", "openmp_enabled", "release_workspace", "workspace_bytes", "default_num_threads",
    "env_num_threads",
    "max_pool2d", "max_pool2d_backward", "max_pool2d_output_shape", "avg_pool2d",
    "avg_pool2d_backward", "global_avg_pool2d", "global_avg_pool2d_backward",
    "global_max_pool2d", "global_max_pool2d_backward", "upsample2d_nearest",
    "upsample2d_nearest_backward", "pad2d", "crop2d", "relu", "relu_backward", "add",
    "dropout", "dropout_backward", "dropout_mask", "dropout_threshold", "philox4x32",
    "softmax_xent", "sgd_update", "adam_update", "rmsprop_update", "adadelta_update",
    "sum_squares", "batchnorm_forward", "batchnorm_backward",
    "to_bf16", "from_bf16", "bf16_path", "bf16_native_supported", "set_bf16_native",
]


def env_num_threads():
    """OMP_NUM_THREADS (its first entry) if it is a positive integer, else None."""
    env = _os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(env) if env.isdigit() and int(env) > 0 else None


def cgroup_cpu_limit(root="/sys/fs/cgroup"):
    """The CPUs a cgroup CPU quota grants this process, rounded up, or None
    without a quota: cgroup v2 `cpu.max` ("QUOTA PERIOD", or "max ...") under
    `root`, else cgroup v1 `cpu/cpu.cfs_quota_us` / `cpu/cpu.cfs_period_us`
    (as joblib/loky's cpu_count, which scikit-learn's default OpenMP thread
    count uses).  A container limited to 2 CPUs on a 64-CPU host sees 64 in
    its affinity mask but gets 2 CPUs of time: 64 threads would mostly wait."""
    def read(*parts):
        try:
            with open(_os.path.join(root, *parts)) as f:
                return f.read().split()
        except (OSError, ValueError):
            return None

    v2 = read("cpu.max")
    if v2 is not None:
        quota, period = (v2 + ["100000"])[:2] if v2 else ("max", "100000")
    else:
        q, p = read("cpu", "cpu.cfs_quota_us"), read("cpu", "cpu.cfs_period_us")
        if not q or not p:
            return None
        quota, period = q[0], p[0]
    try:
        quota, period = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    if quota <= 0 or period <= 0:  # v1 writes -1 for no quota
        return None
    return max(1, _math.ceil(quota / period))


def default_num_threads():
    """The thread count used when none is set: OMP_NUM_THREADS if it is a
    positive integer, else the CPUs this process may run on (its affinity
    mask), fewer where a cgroup CPU quota grants fewer (cgroup_cpu_limit);
    never more than MAX_THREADS (a larger OMP_NUM_THREADS is clamped, with a
    warning)."""
    env = env_num_threads()
    if env is not None:
        if env > MAX_THREADS:
            _warnings.warn(f"OMP_NUM_THREADS={env} is above nnkernels.MAX_THREADS = "
                           f"{MAX_THREADS}; using {MAX_THREADS}", RuntimeWarning, stacklevel=2)
            return MAX_THREADS
        return env
    try:
        n = max(1, len(_os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        n = max(1, _os.cpu_count() or 1)
    quota = cgroup_cpu_limit()
    if quota is not None:
        n = min(n, quota)
    return min(n, MAX_THREADS)


def set_num_threads(n=None):
    """Set the kernels' thread count: an int in [1, MAX_THREADS] (ValueError
    outside, TypeError for a non-integer), or None for default_num_threads()."""
    if n is None:
        n = default_num_threads()
    _core._set_num_threads(n)


def info():
    """What this build is and what it runs on."""
    d = {
        "version": __version__,
        "isa": get_isa(),
        "isas_available": available_isas(),
        "bf16_path": bf16_path(),
        "openmp": openmp_enabled(),
        "num_threads": get_num_threads(),
        "default_num_threads": default_num_threads(),
    }
    d.update(_core.build_info())
    return d


def _init():
    set_num_threads(None)
    isa = _os.environ.get("NNKERNELS_ISA", "").strip().lower()
    if isa and isa != "auto":
        if isa not in ("avx512", "avx2", "generic"):
            raise ImportError(f"NNKERNELS_ISA={isa!r}: expected avx512, avx2, generic or auto")
        if not isa_supported(isa):
            raise ImportError(
                f"NNKERNELS_ISA={isa!r} is not supported by this CPU (available: {available_isas()})")
        set_isa(isa)
    bf16 = _os.environ.get("NNKERNELS_BF16", "").strip().lower()
    if bf16 and bf16 != "auto":
        if bf16 not in ("native", "emulate"):
            raise ImportError(f"NNKERNELS_BF16={bf16!r}: expected native, emulate or auto")
        if bf16 == "native" and not bf16_native_supported():
            raise ImportError("NNKERNELS_BF16=native: this CPU has no AVX512_BF16")
        set_bf16_native(bf16 == "native")


_init()
