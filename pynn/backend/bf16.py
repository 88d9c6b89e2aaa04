"""bfloat16 rounding: the reference of the ``precision="bfloat16"`` products.

A product op called with ``precision="bfloat16"`` (dense_forward,
dense_backward, conv2d_forward, conv2d_backward, conv2d_backward_data)
rounds the operands of every matrix product -- x, w and dz = dy * act' --
to bfloat16 with ``round_bf16`` and accumulates the products in float32
(the product of two bfloat16 values is exact in float32); the bias, the
activation epilogue and db = sum(dz) use the unrounded float32 values, and
every output is a float32 array.  ``precision=None`` or ``"float32"`` is the
plain float32 op.

That is the reference, and what the compiled kernels do for dense layers
and most convolutions (nnkernels.gemm's precision="bfloat16": VDPBF16PS or
its exact emulation; operands' subnormals flush to zero there).  Where
float32 is faster the kernels keep it, which is only more accurate: a
convolution product takes bf16 operands only where nnkernels would run it
as an im2col GEMM (or a direct forward pass with 16 or more input
channels and a window of 32 or more values, or a direct_wgrad weight
gradient with 16 or more input channels); Winograd's forward pass, data
and weight gradients round their transformed operands instead (a
different rounding, of the same size);
direct_wgrad with fewer input channels, the other direct cases (first
layers) and depthwise convolutions stay float32 (see nnkernels.conv2d).
Compare them with this reference at bfloat16's accuracy (about 2**-8 of
the magnitudes summed).

``round_bf16`` works on the bits of the float32 array (as uint32), with the
array module ``xp`` (NumPy or CuPy):

- finite values and infinities: round to nearest, ties to even, on the top
  16 bits: ``(bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000``.  Values
  beyond bfloat16's largest finite value (3.3895e38) by half an ulp or more
  become +-inf; subnormals are rounded the same way, not flushed to zero.
- NaN: the quiet NaN of the same sign, ``sign | 0x7FC00000`` (the payload
  is dropped, as Eigen and ml_dtypes do).
"""
import numpy as np

PRECISIONS = (None, "float32", "bfloat16")


def is_bf16(precision):
    """True for "bfloat16", False for None / "float32", ValueError otherwise."""
    if precision is None or precision == "float32":
        return False
    if precision == "bfloat16":
        return True
    raise ValueError(f"precision must be None, 'float32' or 'bfloat16', got {precision!r}")


def round_bf16(a, xp=np):
    """A new float32 array: the float32 array ``a`` rounded to the nearest
    bfloat16 values (kept as float32)."""
    if a.dtype != np.float32:
        raise TypeError(f"bfloat16 rounding takes float32 arrays, got {a.dtype} (precision="
                        "'bfloat16' runs in float32 models only)")
    u = a.view(xp.uint32)
    r = (u + xp.uint32(0x7FFF) + ((u >> xp.uint32(16)) & xp.uint32(1))) & xp.uint32(0xFFFF0000)
    nan = (u & xp.uint32(0x7FFFFFFF)) > xp.uint32(0x7F800000)
    if bool(nan.any()):
        r = xp.where(nan, (u & xp.uint32(0x80000000)) | xp.uint32(0x7FC00000), r)
    return r.view(xp.float32)


def round_operands(xp, *arrays):
    """round_bf16 of each array (None stays None)."""
    return tuple(None if a is None else round_bf16(a, xp) for a in arrays)
