"""CUDA C kernels of nnkernels, compiled at run time with CuPy (NVRTC).

The sources (``*.cu`` beside this file, shipped as package data) hold
templated float/double kernels; each module is compiled the first time one
of its kernels is asked for (``function(module, expr)``), with the template
instantiations listed in ``KERNELS`` as ``name_expressions``, and cached
(in this process, and on disk by CuPy's kernel cache).

Importing this package (or nnkernels) never imports CuPy: only
``module()`` / ``function()`` do.  ``source()`` and ``KERNELS`` are plain
Python, used by ``check_compile.py`` to compile the same instantiations with
nvcc on a machine without a GPU.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = "nk_common.cuh"
_INCLUDE = f'#include "{HEADER}"'
# NVRTC options (nvcc takes the same -std)
NVRTC_OPTIONS = ("-std=c++17",)

_FLOATS = ("float", "double")


def _t(template):
    """The float and double instantiations of 'name<{T}>'."""
    return [template.format(T=t) for t in _FLOATS]


# module -> (source file, kernel name expressions)
KERNELS = {
    "conv": ("nk_conv.cu",
             _t("nk_im2col<{T}>") + _t("nk_col2im<{T}>") + _t("nk_bias_act<{T}>")
             + _t("nk_relu<{T}>") + _t("nk_relu_backward<{T}>")
             + [f"nk_colsums<{t}, {mode}>" for t in _FLOATS for mode in (0, 1, 2)]
             + _t("nk_colsum_finish<{T}>")),
    "pool": ("nk_pool.cu", _t("nk_maxpool_fwd<{T}>") + _t("nk_maxpool_bwd<{T}>")),
    "dropout": ("nk_dropout.cu", _t("nk_dropout<{T}>") + ["nk_dropout_mask"]),
    "train": ("nk_train.cu",
              _t("nk_softmax_xent<{T}>") + ["nk_sum_rows"] + _t("nk_sumsq_part<{T}>")
              + _t("nk_sgd<{T}>") + _t("nk_adam<{T}>") + _t("nk_rmsprop<{T}>")
              + _t("nk_adadelta<{T}>") + _t("nk_bn_stats<{T}>") + _t("nk_bn_infer_coef<{T}>")
              + _t("nk_bn_apply<{T}>") + _t("nk_bn_bwd_coef<{T}>") + _t("nk_bn_dx<{T}>")),
}

_modules = {}


def _read(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


def source(module):
    """The complete source of a module: its .cu file with nk_common.cuh
    pasted in place of the #include (so CuPy's cache key, which hashes the
    source text, changes whenever the header does)."""
    fname, _ = KERNELS[module]
    text = _read(fname)
    if _INCLUDE not in text:
        raise RuntimeError(f"{fname} does not include {HEADER}")
    return text.replace(_INCLUDE, _read(HEADER), 1)


def name_expressions(module):
    return list(KERNELS[module][1])


def module(name):
    """The compiled cupy.RawModule of a module (compiled once per process)."""
    mod = _modules.get(name)
    if mod is None:
        import cupy
        mod = cupy.RawModule(code=source(name), options=NVRTC_OPTIONS,
                             name_expressions=name_expressions(name))
        _modules[name] = mod
    return mod


def function(name, expr):
    """The kernel ``expr`` (e.g. 'nk_im2col<float>') of module ``name``."""
    if expr not in KERNELS[name][1]:
        raise KeyError(f"{expr!r} is not instantiated in module {name!r}; see KERNELS")
    return module(name).get_function(expr)
