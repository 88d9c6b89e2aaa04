"""bfloat16 storage of activations in nnkernels: a convolution's output
written as bfloat16 (conv2d with a uint16 out) and batch norm reading a
bfloat16 input (batchnorm_forward / batchnorm_backward with a uint16 x).

Both are defined by the float32 kernels, so the tests compare bits: the
stored output is the float32 output rounded as VCVTNEPS2BF16 rounds
(reference.ftz_bits: nearest even, subnormals to signed zero, NaN quieted;
NaNs compared as NaNs, see assert_rounded),
on every path that computes the convolution (the fused Winograd paths round
in their output transform, the others in a pass after); batch norm of a
bfloat16 x gives bitwise what the float32 kernels give for x widened (every
output: y, the statistics, the moving averages, dx, dgamma, dbeta, the
residual's gradient), training and inference, on every ISA path and for 1
and 2 threads.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnkernels as nk
from reference import assert_bitwise_equal, ftz_bits, ref_pads, threads, widen, wino4
from reference import isa as use_isa
from strategies import conv_paddings, dims

F32 = np.float32
ISAS = nk.available_isas()
NATIVE = [True, False] if nk.bf16_native_supported() else [False]


def _native(on):
    if nk.bf16_native_supported():
        nk.set_bf16_native(on)


def _restore_native():
    if nk.bf16_native_supported():
        nk.set_bf16_native(True)


def _with_specials(a, rng):
    """a with a few special values planted: NaN, infinities, subnormals,
    values that round to bfloat16's largest finite value or overflow."""
    flat = a.reshape(-1)
    specials = np.array([np.nan, np.inf, -np.inf, 1e-40, -1e-40, 3.3895e38, 3.39e38, -0.0],
                        F32)
    k = min(flat.size, len(specials))
    flat[rng.choice(flat.size, k, replace=False)] = specials[:k]
    return a


# -------------------------------------------- conv2d with a bfloat16 out --

def assert_rounded(out, y, what="out"):
    """out (uint16) holds ftz_bits of the float32 output y: bit for bit,
    except that a NaN's sign and payload are not compared -- which NaN
    propagates where two meet is the compiler's choice of operand order, and
    the kernel storing bf16 is compiled apart from the float32 one (the
    kernels promise the same of their float32 paths)."""
    want = ftz_bits(y).reshape(y.shape)
    nan = np.isnan(y)
    assert np.array_equal((out & 0x7FFF) > 0x7F80, nan), f"{what}: NaN positions differ"
    bad = (out != want) & ~nan
    assert not bad.any(), f"{what}: {int(bad.sum())} of {out.size} values differ"


@st.composite
def conv_cases(draw):
    k = draw(st.sampled_from([1, 3, 5]))
    s = draw(st.sampled_from([1, 1, 2]))
    groups = draw(st.sampled_from([1, 1, 1, 2]))
    C = draw(dims(1, 40)) * groups
    F = draw(dims(1, 40)) * groups
    H = draw(st.integers(k, 14))
    W = draw(st.integers(k, 14))
    return dict(N=draw(st.integers(1, 3)), H=H, W=W, C=C, F=F, k=k, s=s, groups=groups,
                padding=draw(conv_paddings()), act=draw(st.sampled_from([None, "relu"])),
                bias=draw(st.booleans()), prec=draw(st.sampled_from([None, "bfloat16"])),
                seed=draw(st.integers(0, 2 ** 16)))


def _conv_inputs(c):
    rng = np.random.default_rng(c["seed"])
    x = rng.standard_normal((c["N"], c["H"], c["W"], c["C"])).astype(F32)
    w = rng.standard_normal((c["k"], c["k"], c["C"] // c["groups"], c["F"])).astype(F32)
    b = rng.standard_normal(c["F"]).astype(F32) if c["bias"] else None
    return x, w, b


def _conv_kw(c):
    return dict(strides=c["s"], padding=c["padding"], groups=c["groups"], activation=c["act"],
                precision=c["prec"])


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=40, deadline=None)
@given(c=conv_cases())
def test_conv2d_bf16_out_is_the_float32_output_rounded(isa, c):
    """Any geometry, groups, padding, activation, bias, product precision:
    the uint16 out holds ftz_bits of the float32 output, with VCVTNEPS2BF16
    and without (where the CPU has it), 1 and 2 threads."""
    x, w, b = _conv_inputs(c)
    kw = _conv_kw(c)
    pads = ref_pads(c["H"], c["W"], c["k"], c["k"], (c["s"], c["s"]), c["padding"], (1, 1))
    if c["H"] + sum(pads[0]) < c["k"] or c["W"] + sum(pads[1]) < c["k"]:
        return   # no output pixel
    with use_isa(isa):
        y = nk.conv2d(x, w, b, **kw)
        try:
            for native in NATIVE if isa == "avx512" else [False]:
                _native(native)
                for t in (1, 2):
                    with threads(t):
                        out = np.full(y.shape, 0xABCD, np.uint16)
                        got = nk.conv2d(x, w, b, out=out, **kw)
                        assert got is out
                        assert_rounded(out, y, f"native {native}, {t} threads")
        finally:
            _restore_native()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("C, F", [(16, 16), (13, 16), (32, 32), (64, 64), (16, 64)])
def test_conv2d_bf16_out_fused_winograd_tiles(isa, C, F):
    """The fused Winograd paths (F(4x4) and F(2x2), float32 and bf16
    products) round in their output transform: the same bits as the float32
    output rounded, partial tiles and partial vectors included, with special
    values in x (NaN, infinities, subnormals, near bfloat16's overflow)."""
    rng = np.random.default_rng(C * 7 + F)
    x = _with_specials(rng.standard_normal((2, 11, 9, C)).astype(F32), rng)
    w = rng.standard_normal((3, 3, C, F)).astype(F32)
    b = rng.standard_normal(F).astype(F32)
    with use_isa(isa):
        try:
            for native in NATIVE if isa == "avx512" else [False]:
                _native(native)
                for prec in (None, "bfloat16"):
                    for on in (True, False):
                        with wino4(on):
                            y = nk.conv2d(x, w, b, padding="same", activation="relu",
                                          precision=prec)
                            out = np.empty(y.shape, np.uint16)
                            nk.conv2d(x, w, b, padding="same", activation="relu",
                                      precision=prec, out=out)
                            assert_rounded(out, y, f"precision {prec}, F(4x4) {on}")
        finally:
            _restore_native()


@pytest.mark.parametrize("isa", ISAS)
def test_depthwise_conv2d_bf16_out(isa):
    """depthwise_conv2d takes a uint16 out as conv2d does (its direct loops
    write float32 to a workspace, rounded after): the float32 output
    rounded, 1 and 2 threads."""
    rng = np.random.default_rng(11)
    x = _with_specials(rng.standard_normal((2, 9, 8, 6)).astype(F32), rng)
    w = rng.standard_normal((3, 3, 6, 2)).astype(F32)
    b = rng.standard_normal(12).astype(F32)
    with use_isa(isa):
        for t in (1, 2):
            with threads(t):
                y = nk.depthwise_conv2d(x, w, b, strides=2, padding="same", activation="relu")
                out = np.empty(y.shape, np.uint16)
                nk.depthwise_conv2d(x, w, b, strides=2, padding="same", activation="relu",
                                    out=out)
                assert_rounded(out, y, f"{t} threads")


def test_conv2d_bf16_out_pitch_and_errors():
    """A uint16 out must be C-contiguous and of the output's shape; it needs
    float32 operands; conv2d_maxpool and float64 keep their dtype rules."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 6, 6, 4)).astype(F32)
    w = rng.standard_normal((3, 3, 4, 5)).astype(F32)
    with pytest.raises(ValueError, match="shape"):
        nk.conv2d(x, w, out=np.empty((1, 6, 6, 5), np.uint16))
    with pytest.raises(ValueError, match="C-contiguous"):
        nk.conv2d(x, w, out=np.empty((1, 4, 4, 10), np.uint16)[..., ::2])
    with pytest.raises(TypeError, match="float32"):
        nk.conv2d(x.astype(np.float64), w.astype(np.float64),
                  out=np.empty((1, 4, 4, 5), np.uint16))
    with pytest.raises(TypeError, match="dtype"):
        nk.conv2d_maxpool(x, w, out=np.empty((1, 2, 2, 5), np.uint16))


# ------------------------------------------- batch norm with a bf16 x --

@st.composite
def bn_cases(draw):
    shape = draw(st.sampled_from([
        (draw(dims(1, 300)), draw(dims(1, 70))),
        (draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9)),
         draw(dims(1, 70)))]))
    return dict(shape=shape, fuse=draw(st.sampled_from(["none", "relu", "relu_x", "res_relu",
                                                        "res"])),
                affine=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 16)))


def _bn_run(x, c, rng_seed, specials):
    """Every output of a training forward, an inference forward and a
    backward of batch norm on x (uint16 or float32), fused as c says."""
    rng = np.random.default_rng(rng_seed)
    shape, C = c["shape"], c["shape"][-1]
    g = (rng.random(C) + 0.5).astype(F32) if c["affine"] else None
    b = rng.standard_normal(C).astype(F32) if c["affine"] else None
    res = rng.standard_normal(shape).astype(F32) if c["fuse"].startswith("res") else None
    act = "relu" if "relu" in c["fuse"] else None
    mm, mv = rng.standard_normal(C).astype(F32), (rng.random(C) + 0.5).astype(F32)
    sm, si, ss = (np.empty(C, F32) for _ in range(3))
    extra = {"save_scale": ss} if c["fuse"] == "relu_x" else {}
    y = nk.batchnorm_forward(x, g, b, training=True, moving_mean=mm, moving_var=mv,
                             save_mean=sm, save_invstd=si, residual=res, activation=act, **extra)
    yi = nk.batchnorm_forward(x, g, b, training=False, moving_mean=mm, moving_var=mv,
                              residual=res, activation=act)
    dy = rng.standard_normal(shape).astype(F32)
    if specials:
        dy = _with_specials(dy, rng)
    mask = ({"activation": "relu", "save_scale": ss, "beta": b} if c["fuse"] == "relu_x" else
            {"activation": "relu", "y": y} if act else {})
    dres = np.empty(shape, F32) if res is not None else None
    dx, dg, db = nk.batchnorm_backward(dy, x, g, sm, si, dresidual=dres, **mask)
    return [y, yi, sm, si, mm, mv, dx, dg, db] + ([dres] if dres is not None else [])


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=40, deadline=None)
@given(c=bn_cases())
def test_batchnorm_bf16_x_equals_float32_of_x_widened(isa, c):
    """Every output, bit for bit, as float32 batch norm of x widened:
    training and inference forward, plain / ReLU (mask from y or from x) /
    residual + ReLU / residual, 1 and 2 threads."""
    rng = np.random.default_rng(c["seed"])
    x32 = (rng.standard_normal(c["shape"]) * 3 + 1).astype(F32)
    xb = nk.to_bf16(x32)
    with use_isa(isa):
        for t in (1, 2):
            with threads(t):
                got = _bn_run(xb, c, c["seed"] + 1, specials=False)
                want = _bn_run(widen(xb).reshape(xb.shape), c, c["seed"] + 1, specials=False)
                for i, (a, e) in enumerate(zip(got, want)):
                    assert_bitwise_equal(a, e, f"output {i} at {t} threads")


def test_batchnorm_bf16_x_specials_and_the_resnet_shape():
    """ResNet-20's first stage (128 x 32 x 32 x 16) with NaN, infinities and
    subnormals in x and dy: the same bits as float32 of x widened."""
    rng = np.random.default_rng(3)
    x32 = _with_specials(rng.standard_normal((128, 32, 32, 16)).astype(F32), rng)
    xb = nk.to_bf16(x32)
    c = dict(shape=xb.shape, fuse="res_relu", affine=True)
    got = _bn_run(xb, c, 4, specials=True)
    want = _bn_run(widen(xb).reshape(xb.shape), c, 4, specials=True)
    for i, (a, e) in enumerate(zip(got, want)):
        assert_bitwise_equal(a, e, f"output {i}")


def test_batchnorm_bf16_x_errors():
    """With a bfloat16 x the other arrays are float32: a float64 dy, a
    float64 residual or out, or a shape mismatch is refused clearly."""
    x = nk.to_bf16(np.ones((4, 3), F32))
    g = np.ones(3, F32)
    sm, si = np.zeros(3, F32), np.ones(3, F32)
    with pytest.raises(TypeError, match="float32"):
        nk.batchnorm_backward(np.ones((4, 3)), x, g, sm, si)
    with pytest.raises(TypeError, match="residual"):
        nk.batchnorm_forward(x, g, None, training=True, residual=np.ones((4, 3)))
    with pytest.raises(TypeError, match="out"):
        nk.batchnorm_forward(x, g, None, training=True, out=np.empty((4, 3), np.float64))
    with pytest.raises(ValueError, match="shape"):
        nk.batchnorm_backward(np.ones((4, 2), F32), x, None, sm[:2], si[:2])
