"""Mixed precision (issue 14, pynn side): the Keras dtype-policy API, the
reference bfloat16 rounding against ml_dtypes (an independent
implementation, used in the tests only), the reference ops with
precision="bfloat16" against float32 ops on pre-rounded operands, training
under mixed_bfloat16, LossScaleOptimizer as a pass-through, files and the
command line.  Tests of the compiled bfloat16 kernels skip until nnkernels
has them."""
import io
import json
import warnings
import zipfile

import numpy as np
import pytest

import nnkernels as nk
import pynn
from pynn import backend, cli, layers as L, mixed_precision, optimizers
from pynn.backend.bf16 import round_bf16
from pynn.backend.gpu import GPUOps

ml_dtypes = pytest.importorskip("ml_dtypes")

REF = backend.Ops()
F32 = np.float32
U32 = np.uint32
EPS_BF16 = 2.0 ** -9          # relative rounding error of one bfloat16 operand (8-bit mantissa)
needs_bf16_kernels = pytest.mark.skipif(not hasattr(nk, "to_bf16"),
                                        reason="nnkernels without bf16 kernels")


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts and ends with the default global policy."""
    mixed_precision.set_global_policy(None)
    yield
    mixed_precision.set_global_policy(None)


def bits(a):
    return np.asarray(a, F32).view(U32)


def from_bits(*b):
    return np.array(b, U32).view(F32)


def ml_round(a):
    with np.errstate(invalid="ignore"):
        return a.astype(ml_dtypes.bfloat16).astype(F32)


# ------------------------------------------------------------------ policies --
def test_policy_names():
    for name, compute, var in (("float32", "float32", "float32"),
                               ("float64", "float64", "float64"),
                               ("mixed_bfloat16", "bfloat16", "float32")):
        p = mixed_precision.Policy(name)
        assert (p.name, p.compute_dtype, p.variable_dtype) == (name, compute, var)
        assert p == mixed_precision.DTypePolicy(name) == pynn.DTypePolicy(name)
        assert repr(p) == f'<DTypePolicy "{name}">'
        assert pynn.dtype_policies.get(p.get_config()["name"]) == p
    assert mixed_precision.Policy("float32") != mixed_precision.Policy("mixed_bfloat16")
    assert pynn.dtype_policies.get(np.float64).name == "float64"


@pytest.mark.parametrize("name, error, words", [
    ("mixed_float16", NotImplementedError, ("CPUs", "mixed_bfloat16")),
    ("bfloat16", NotImplementedError, ("float32", "mixed_bfloat16")),
    ("float16", NotImplementedError, ("mixed_bfloat16",)),
    ("int8", NotImplementedError, ("quantized",)),
    ("int32", NotImplementedError, ("float32 or float64",)),
    ("no_such_policy", ValueError, ("Valid policies",)),
])
def test_policy_refused(name, error, words):
    for make in (mixed_precision.Policy, mixed_precision.set_global_policy,
                 lambda n: L.Dense(2, dtype=n)):
        with pytest.raises(error) as e:
            make(name)
        for w in words:
            assert w in str(e.value)
    assert mixed_precision.global_policy().name == "float32"


def test_policy_argument_types():
    with pytest.raises(TypeError, match="must be a string"):
        mixed_precision.Policy(32)
    with pytest.raises(ValueError, match="Invalid `policy`"):
        mixed_precision.set_global_policy(32)
    with pytest.raises(NotImplementedError, match="mixed_bfloat16"):
        pynn.config.set_floatx("bfloat16")


def test_global_policy_is_the_default_of_new_layers():
    assert mixed_precision.global_policy() == mixed_precision.Policy("float32")
    before = L.Dense(2)
    mixed_precision.set_global_policy("mixed_bfloat16")
    assert pynn.config.dtype_policy().name == "mixed_bfloat16"
    assert mixed_precision.DTypePolicy().name == "mixed_bfloat16"   # no name: the global one
    after, own = L.Dense(2), L.Dense(2, dtype="float32")
    conv = L.Conv2D(2, 3, dtype=mixed_precision.Policy("mixed_bfloat16"))
    assert before.dtype_policy.name == "float32"          # constructed before: unchanged
    assert after.dtype_policy.name == "mixed_bfloat16"
    assert (after.dtype, after.variable_dtype, after.compute_dtype) == \
        ("float32", "float32", "bfloat16")
    assert own.compute_dtype == "float32" and conv.compute_dtype == "bfloat16"
    pynn.config.set_dtype_policy(mixed_precision.Policy("float32"))   # Keras 3's spelling
    assert L.Dense(2).compute_dtype == "float32"
    mixed_precision.set_global_policy("mixed_bfloat16")
    pynn.utils.clear_session()                                         # resets it, as Keras 3
    assert mixed_precision.global_policy().name == "float32"


def test_global_policy_follows_floatx_until_set():
    try:
        pynn.config.set_floatx("float64")
        assert mixed_precision.global_policy().name == "float64"
        assert pynn.Sequential([L.Dense(2, input_shape=(3,))]).get_weights()[0].dtype == np.float64
        mixed_precision.set_global_policy("float32")
        assert pynn.Sequential([L.Dense(2, input_shape=(3,))]).get_weights()[0].dtype == np.float32
    finally:
        pynn.config.set_floatx("float32")


def test_keras2_experimental_spellings_warn():
    exp = mixed_precision.experimental
    with pytest.warns(DeprecationWarning, match="set_global_policy"):
        exp.set_policy("mixed_bfloat16")
    assert mixed_precision.global_policy().name == "mixed_bfloat16"
    with pytest.warns(DeprecationWarning):
        assert exp.global_policy().name == "mixed_bfloat16"
    with pytest.warns(DeprecationWarning):
        p = exp.Policy("mixed_bfloat16", loss_scale="dynamic")
    assert p == mixed_precision.Policy("mixed_bfloat16") and p.compute_dtype == "bfloat16"
    with pytest.warns(DeprecationWarning):
        opt = exp.LossScaleOptimizer(optimizers.SGD(0.1), loss_scale=128)
    assert isinstance(opt, mixed_precision.LossScaleOptimizer) and opt.initial_scale == 128
    with pytest.warns(DeprecationWarning):
        assert exp.get_layer_policy(L.Dense(2)).name == "mixed_bfloat16"
    import pynn.mixed_precision.experimental as again    # the import path of Keras 2 scripts
    assert again is exp


def test_layer_policy_in_models():
    mixed_precision.set_global_policy("mixed_bfloat16")
    d = L.Dense(3)
    m = pynn.Sequential([pynn.Input((4,)), d, L.Dense(2, activation="softmax", dtype="float32")],
                        device="numpy")
    assert d.compute_dtype == "bfloat16" and m.layers[1].compute_dtype == "float32"
    assert [w.dtype for w in m.get_weights()] == [np.float32] * 4
    assert m.dtype == "float32"
    # a float64 model computes every layer in float64 ...
    m64 = pynn.Sequential([pynn.Input((4,)), L.Dense(3, dtype="float32")], dtype="float64")
    assert m64.get_weights()[0].dtype == np.float64
    assert m64.layers[0].dtype == m64.layers[0].compute_dtype == "float64"
    # ... and cannot hold a mixed_bfloat16 layer: refused when the model is built
    with pytest.raises(NotImplementedError, match="float32 models only"):
        pynn.Sequential([pynn.Input((4,)), L.Dense(3)], dtype="float64").get_weights()
    # a float64 policy in a float32 model runs (and reports) float32, as before
    d64 = L.Dense(3, dtype="float64")
    pynn.Sequential([pynn.Input((4,)), d64]).get_weights()
    assert d64.dtype == "float32" and d64.get_config()["dtype"]["config"]["name"] == "float32"
    # the policy can be set on a layer (Keras 3)
    d.dtype_policy = "float32"
    assert d.compute_dtype == "float32" and d._product_kw == {}
    d.dtype_policy = mixed_precision.Policy("mixed_bfloat16")
    assert d._product_kw == {"precision": "bfloat16"}


def test_gpu_backend_refuses_mixed_bfloat16_when_placed(monkeypatch):
    gpu = GPUOps.__new__(GPUOps)        # no CuPy needed: the check is plain Python
    msg = ("mixed_bfloat16 on the GPU backend is not supported yet; use float32 on the GPU or "
           "mixed_bfloat16 on the CPU")
    with pytest.raises(NotImplementedError) as e:
        gpu.check_precision("bfloat16")
    assert str(e.value) == msg
    assert gpu.check_precision(None) is False and gpu.check_precision("float32") is False
    L.Dense(2).bind(gpu, np.float32)                     # float32 layers bind
    with pytest.raises(NotImplementedError, match="GPU backend"):
        L.Dense(2, dtype="mixed_bfloat16").bind(gpu, np.float32)
    with pytest.raises(NotImplementedError, match="GPU backend"):
        gpu.dense_forward(np.ones((1, 1), F32), np.ones((1, 1), F32), precision="bfloat16")
    # moving a mixed_bfloat16 model to the GPU is refused before anything moves
    m = mixed_model()
    get_ops = backend.get_ops
    monkeypatch.setattr(backend, "get_ops", lambda d=None: gpu if d == "gpu" else get_ops(d))
    ops = m.ops
    with pytest.raises(NotImplementedError, match="GPU backend"):
        m.to_device("gpu")
    assert m.ops is ops and m.layers[1].ops is ops


# ------------------------------------------------------------- configs, files --
KERAS_POLICY = {"module": "keras", "class_name": "DTypePolicy",
                "config": {"name": "mixed_bfloat16"}, "registered_name": None}


def test_layer_config_round_trip():
    d = L.Dense(3, dtype="mixed_bfloat16")
    cfg = d.get_config()
    assert cfg["dtype"] == KERAS_POLICY                 # what Keras 3 writes
    assert L.from_config("Dense", json.loads(json.dumps(cfg))).dtype_policy.name == \
        "mixed_bfloat16"
    for dt in ("mixed_bfloat16", {"class_name": "Policy", "config": {"name": "mixed_bfloat16"}}):
        assert L.from_config("Dense", dict(cfg, dtype=dt)).compute_dtype == "bfloat16"
    assert L.Dense(3).get_config()["dtype"]["config"]["name"] == "float32"
    mixed_precision.set_global_policy("mixed_bfloat16")
    assert L.from_config("Dense", dict(cfg, dtype="float32")).compute_dtype == "float32"


def mixed_model(device="numpy"):
    mixed_precision.set_global_policy("mixed_bfloat16")
    pynn.utils.set_random_seed(3)
    inp = pynn.Input((6, 6, 2))
    x = L.Conv2D(4, 3, activation="relu")(inp)
    x = L.Flatten()(x)
    out = L.Dense(3, activation="softmax", dtype="float32")(x)
    m = pynn.Model(inp, out, device=device)
    mixed_precision.set_global_policy(None)
    return m


@pytest.mark.parametrize("ext", [".keras", ".npz", ".h5"])
def test_model_files_keep_policies_and_float32_weights(tmp_path, ext):
    pytest.importorskip("h5py")
    m = mixed_model()
    m.compile(optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 6, 6, 2), dtype=F32), rng.integers(0, 3, 8)
    m.fit(x, y, batch_size=4, epochs=1, verbose=0)
    path = tmp_path / f"m{ext}"
    m.save(path)
    m2 = pynn.load_model(path).to_device("numpy")
    assert [l.dtype_policy.name for l in m2.layers] == \
        [l.dtype_policy.name for l in m.layers] == \
        ["float32", "mixed_bfloat16", "mixed_bfloat16", "float32"]
    for a, b in zip(m.get_weights(), m2.get_weights()):
        assert b.dtype == np.float32 and np.array_equal(a, b)
    np.testing.assert_array_equal(m2.predict(x, verbose=0), m.predict(x, verbose=0))
    if ext == ".keras":
        import h5py
        with zipfile.ZipFile(path) as z:
            cfg = json.loads(z.read("config.json"))
            h5 = h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")
        policies = [l["config"].get("dtype") for l in cfg["config"]["layers"]]
        assert policies[1] == KERAS_POLICY and policies[3]["config"]["name"] == "float32"
        dts = []
        h5.visititems(lambda n, o: dts.append(o.dtype) if isinstance(o, h5py.Dataset) else None)
        assert dts and all(d in (np.float32, np.int64) for d in dts)   # weights float32


def test_keras_loss_scale_optimizer_file_resumes(tmp_path):
    """A .keras file whose optimizer is Keras 3's LossScaleOptimizer (its
    iteration, learning_rate, step_counter and dynamic_scale, then the inner
    optimizer's variables, as Keras 3.15.1 writes them): the model is compiled
    with the inner optimizer and its state is loaded."""
    h5py = pytest.importorskip("h5py")
    m = mixed_model()
    m.compile(optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(1)
    m.fit(rng.random((8, 6, 6, 2), dtype=F32), rng.integers(0, 3, 8), batch_size=4, verbose=0)
    m.save(tmp_path / "pynn.keras")
    with zipfile.ZipFile(tmp_path / "pynn.keras") as z:
        entries = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(entries["config.json"])
    inner = cfg["compile_config"]["optimizer"]
    cfg["compile_config"]["optimizer"] = {
        "module": "keras.optimizers", "class_name": "LossScaleOptimizer", "registered_name": None,
        "config": {"name": "loss_scale_optimizer", "inner_optimizer": inner,
                   "initial_scale": 32768.0, "dynamic_growth_steps": 2000}}
    buf = io.BytesIO()
    with h5py.File(io.BytesIO(entries["model.weights.h5"]), "r") as src, \
            h5py.File(buf, "w") as dst:
        for k in src:
            if k != "optimizer":
                src.copy(src[k], dst, k)
        old = src["optimizer/vars"]
        new = dst.create_group("optimizer/vars")
        for i, v in enumerate([np.int64(0), np.float32(0.0), np.int64(2), np.float32(32768.0)]):
            new.create_dataset(str(i), data=v)
        for i in range(len(old)):
            new.create_dataset(str(i + 4), data=old[str(i)][()])
    entries["config.json"] = json.dumps(cfg).encode()
    entries["model.weights.h5"] = buf.getvalue()
    with zipfile.ZipFile(tmp_path / "lso.keras", "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    m2 = pynn.load_model(tmp_path / "lso.keras")
    assert type(m2.optimizer) is optimizers.Adam and m2.optimizer.iterations == 2
    for k in ("m", "v"):
        np.testing.assert_array_equal(m2.optimizer.state[k], m.optimizer.state[k])


def test_files_with_mixed_float16_are_refused(tmp_path):
    from pynn.models import keras_config
    entry = {"class_name": "Dense", "config": {"name": "d", "units": 2, "dtype": {
        "module": "keras", "class_name": "DTypePolicy", "config": {"name": "mixed_float16"},
        "registered_name": None}}}
    with pytest.raises(keras_config.UnsupportedLayer, match="mixed_bfloat16"):
        keras_config._layer_config("Dense", keras_config._strip(entry["config"]), "f.keras")


# ------------------------------------------------------------- round_bf16 --
def test_round_bf16_matches_ml_dtypes_on_random_bits():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2 ** 32, 1_000_000, dtype=np.uint64).astype(U32).view(F32)
    assert np.array_equal(bits(round_bf16(a)), bits(ml_round(a)))   # NaNs included
    b = rng.standard_normal((300, 7)).astype(F32)[::3, 1::2]         # strided views too
    assert np.array_equal(bits(round_bf16(b)), bits(ml_round(b)))


def test_round_bf16_ties_to_even():
    #                   1+2^-8 (tie)  1+3*2^-8 (tie) just above the tie  -(1+2^-8)
    a = from_bits(0x3F808000, 0x3F818000, 0x3F808001, 0xBF808000, 0x3F807FFF)
    want = from_bits(0x3F800000, 0x3F820000, 0x3F810000, 0xBF800000, 0x3F800000)
    assert np.array_equal(bits(round_bf16(a)), bits(want))
    assert np.array_equal(bits(ml_round(a)), bits(want))


def test_round_bf16_nan_inf_and_overflow():
    a = from_bits(0x7F800000, 0xFF800000,        # +-inf
                  0x7F800001, 0xFF800001,        # signalling NaNs with payload in the low bits
                  0x7FC00001, 0xFFFFFFFF,        # quiet NaNs
                  0x7F7FFFFF, 0xFF7FFFFF,        # float32's max: beyond bfloat16's -> inf
                  0x7F7F8000,                    # tie above bfloat16's max (odd) -> inf
                  0x7F7F7FFF, 0x7F7F0000)        # below the tie; bfloat16's max itself
    want = from_bits(0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7FC00000, 0xFFC00000,
                     0x7F800000, 0xFF800000, 0x7F800000, 0x7F7F0000, 0x7F7F0000)
    assert np.array_equal(bits(round_bf16(a)), bits(want))
    assert np.array_equal(bits(ml_round(a)), bits(want))


def test_round_bf16_keeps_subnormals():
    a = from_bits(0x00000001, 0x00008000, 0x00018000, 0x00010000, 0x007FFFFF, 0x80018000,
                  0x80000001)
    want = from_bits(0x00000000, 0x00000000, 0x00020000, 0x00010000, 0x00800000, 0x80020000,
                     0x80000000)
    assert np.array_equal(bits(round_bf16(a)), bits(want))
    assert np.array_equal(bits(ml_round(a)), bits(want))
    assert round_bf16(from_bits(0x00010000))[0] != 0          # not flushed to zero


def test_round_bf16_argument_checks():
    with pytest.raises(TypeError, match="float32"):
        round_bf16(np.ones(3))
    with pytest.raises(ValueError, match="precision"):
        REF.dense_forward(np.ones((1, 1), F32), np.ones((1, 1), F32), precision="bf16")
    with pytest.raises(TypeError, match="float32"):
        REF.dense_forward(np.ones((1, 1)), np.ones((1, 1)), precision="bfloat16")


# ------------------------------------------------------------- reference ops --
def r(a):
    return round_bf16(np.ascontiguousarray(a, F32))


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(F32)


def test_dense_bf16_is_float32_on_rounded_operands():
    rng = np.random.default_rng(1)
    x, w, b = rand(rng, 17, 33), rand(rng, 33, 11), rand(rng, 11)
    y = REF.dense_forward(x, w, b, activation="relu", precision="bfloat16")
    assert y.dtype == F32
    np.testing.assert_array_equal(y, REF.dense_forward(r(x), r(w), b, activation="relu"))
    # loosely against float64 products of the unrounded operands: each operand is off by
    # at most 2^-9 relative, the float32 sums by k * 2^-24
    z = REF.dense_forward(x, w, b, precision="bfloat16")
    z64 = x.astype(np.float64) @ w + b
    mag = np.abs(x).astype(np.float64) @ np.abs(w)
    bound = (2 * EPS_BF16 + EPS_BF16 ** 2 + x.shape[1] * 2.0 ** -24) * mag + \
        2.0 ** -23 * (np.abs(z64) + np.abs(b))
    assert np.all(np.abs(z - z64) <= bound)
    assert not np.array_equal(z, REF.dense_forward(x, w, b))      # it did round
    for p in (None, "float32"):
        np.testing.assert_array_equal(REF.dense_forward(x, w, b, precision=p),
                                      REF.dense_forward(x, w, b))


def test_dense_backward_bf16():
    rng = np.random.default_rng(2)
    x, w, dy = rand(rng, 9, 20), rand(rng, 20, 7), rand(rng, 9, 7)
    y = REF.dense_forward(x, w, None, activation="relu")
    db = np.empty(7, F32)
    dx, dw, db = REF.dense_backward(dy, x, w, y=y, activation="relu", dx=np.empty_like(x),
                                    dw=np.empty_like(w), db=db, precision="bfloat16")
    dz = dy * (y > 0)
    dx2, dw2, _ = REF.dense_backward(r(dz), r(x), r(w))
    np.testing.assert_array_equal(dx, dx2)
    np.testing.assert_array_equal(dw, dw2)
    np.testing.assert_array_equal(db, dz.sum(axis=0))                # db: unrounded dz
    _, _, db32 = REF.dense_backward(dy, x, w, y=y, activation="relu", db=np.empty(7, F32))
    np.testing.assert_array_equal(db, db32)


CONV_CASES = [dict(strides=1, padding="valid", dilation=1, groups=1),
              dict(strides=2, padding="same", dilation=1, groups=1),
              dict(strides=1, padding="same", dilation=2, groups=2)]


@pytest.mark.parametrize("geo", CONV_CASES)
def test_conv_bf16_is_float32_on_rounded_operands(geo):
    rng = np.random.default_rng(3)
    g = geo["groups"]
    x, w, b = rand(rng, 2, 7, 6, 4), rand(rng, 3, 2, 4 // g, 6), rand(rng, 6)
    y = REF.conv2d_forward(x, w, b, activation="relu", precision="bfloat16", **geo)
    np.testing.assert_array_equal(y, REF.conv2d_forward(r(x), r(w), b, activation="relu", **geo))
    dy = rand(rng, *y.shape)
    dx, dw, db = REF.conv2d_backward(dy, x, w, y, "relu", dx=np.empty_like(x),
                                     dw=np.empty_like(w), db=np.empty(6, F32),
                                     precision="bfloat16", **geo)
    dz = dy * (y > 0)
    dx2, dw2, _ = REF.conv2d_backward(r(dz), r(x), r(w), **geo)
    np.testing.assert_array_equal(dx, dx2)
    np.testing.assert_array_equal(dw, dw2)
    np.testing.assert_array_equal(db, dz.sum(axis=(0, 1, 2)))
    acc = rand(rng, *x.shape)
    dxa, _, _ = REF.conv2d_backward(dy, x, w, y, "relu", dx=acc.copy(), accumulate_dx=True,
                                    precision="bfloat16", **geo)
    np.testing.assert_array_equal(dxa, acc + dx)
    dd = REF.conv2d_backward_data(dy, w, x.shape, precision="bfloat16", **geo)
    np.testing.assert_array_equal(dd, REF.conv2d_backward_data(r(dy), r(w), x.shape, **geo))
    y32 = REF.conv2d_forward(x, w, b, **geo)
    np.testing.assert_array_equal(REF.conv2d_forward(x, w, b, precision="float32", **geo), y32)


# ------------------------------------------------------------- training --
def learnable(n=96, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, (n, 6, 6, 2)).astype(F32)
    for i, c in enumerate(y):
        x[i, 2 * c:2 * c + 2, :, c % 2] += 1.5
    return x, y


def small_cnn(policy, device="numpy", optimizer=None):
    mixed_precision.set_global_policy(policy)
    pynn.utils.set_random_seed(5)
    m = pynn.Sequential([pynn.Input((6, 6, 2)), L.Conv2D(6, 3, activation="relu"),
                         L.Conv2DTranspose(3, 2, strides=2), L.Flatten(),
                         L.Dense(16, activation="tanh"), L.Dense(3, activation="softmax")],
                        device=device)
    mixed_precision.set_global_policy(None)
    m.compile(optimizer or optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy",
              metrics=["accuracy"])
    return m


def test_training_under_mixed_bfloat16_follows_float32():
    x, y = learnable()
    runs = {}
    for policy in ("float32", "mixed_bfloat16"):
        m = small_cnn(policy)
        h = m.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0)
        runs[policy] = (m, np.array(h.history["loss"]))
    (m32, l32), (mbf, lbf) = runs["float32"], runs["mixed_bfloat16"]
    assert [l.compute_dtype for l in mbf.layers] == ["bfloat16"] * 5   # Flatten's too, as Keras
    assert [l._product_kw for l in m32.layers] == [{}] * 5
    assert l32[-1] < 0.7 * l32[0] and lbf[-1] < 0.7 * lbf[0]           # both learn
    np.testing.assert_allclose(lbf, l32, rtol=0.05)                     # and alike
    w32, wbf = m32.get_weights(), mbf.get_weights()
    assert all(w.dtype == np.float32 for w in wbf)
    assert any(not np.array_equal(a, b) for a, b in zip(w32, wbf))      # bf16 did round
    p = mbf.predict(x[:5], verbose=0)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p, m32.predict(x[:5], verbose=0), atol=0.05)


@pytest.mark.parametrize("policy, device", [("float32", "cpu"), ("mixed_bfloat16", "numpy")])
def test_loss_scale_optimizer_is_a_pass_through(policy, device):
    x, y = learnable(48)
    inner = optimizers.Adam(3e-3)
    a = small_cnn(policy, device, optimizers.Adam(3e-3))
    lso = mixed_precision.LossScaleOptimizer(inner, dynamic=True, initial_scale=2 ** 15,
                                             dynamic_growth_steps=2000)
    b = small_cnn(policy, device, lso)
    assert b.optimizer is inner
    for m in (a, b):
        m.fit(x, y, batch_size=16, epochs=2, verbose=0)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert lso.iterations == inner.iterations == 6
    lso.learning_rate = 1e-4
    assert inner.learning_rate == pytest.approx(1e-4)
    assert lso.scale_loss(2.5) == 2.5 and lso.loss_scale == 1.0


def test_loss_scale_optimizer_api():
    assert optimizers.LossScaleOptimizer is mixed_precision.LossScaleOptimizer
    opt = optimizers.LossScaleOptimizer(optimizers.SGD(0.1, momentum=0.5), initial_scale=1024.0,
                                        dynamic_growth_steps=100)
    cfg = opt.get_config()
    assert cfg["initial_scale"] == 1024.0 and cfg["dynamic_growth_steps"] == 100
    assert cfg["inner_optimizer"]["class_name"] == "SGD"
    again = optimizers.get({"class_name": "LossScaleOptimizer",
                            "config": json.loads(json.dumps(cfg))})
    assert isinstance(again, optimizers.LossScaleOptimizer)
    assert again.inner_optimizer.get_config() == opt.inner_optimizer.get_config()
    assert again.get_config() == cfg
    assert opt.momentum == 0.5                        # the inner optimizer's attributes
    with pytest.raises(ValueError, match="inner_optimizer"):
        optimizers.LossScaleOptimizer("adam")
    with pytest.raises(TypeError, match="inner optimizer"):
        optimizers.LossScaleOptimizer(optimizers.SGD(), clipnorm=1.0)
    with pytest.warns(DeprecationWarning, match="dynamic=False"):
        optimizers.LossScaleOptimizer(optimizers.SGD(), dynamic=False, initial_scale=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizers.LossScaleOptimizer(optimizers.SGD(), weight_decay=None)   # Keras' defaults


# ------------------------------------------------------------- command line --
@pytest.mark.parametrize("precision, policy", [("bf16", "mixed_bfloat16"),
                                               ("float32", "float32")])
def test_cli_precision(tmp_path, monkeypatch, capsys, precision, policy):
    pytest.importorskip("test_data")
    from test_pynn_cli import write_fake_dataset
    data = write_fake_dataset(tmp_path / "data", n_train=64, n_test=32)
    monkeypatch.setattr(backend, "_DEFAULT", backend.Ops())   # the reference ops on "cpu"
    out = tmp_path / "out"
    rc = cli.main(["train", "--model", "mlp", "--data", str(data), "--epochs", "1",
                   "--batch-size", "32", "--out", str(out), "--precision", precision,
                   "--verbose", "0"])
    assert rc == 0, capsys.readouterr()
    assert mixed_precision.global_policy().name == "float32"        # restored
    hist = json.loads((out / "history.json").read_text())
    assert hist["precision"] == policy and hist["args"]["precision"] == precision
    assert f"; {policy};" in capsys.readouterr().out
    m = pynn.load_model(out / "model.npz")
    assert [l.dtype_policy.name for l in m.layers if l.specs] == [policy] * 3
    assert all(w.dtype == np.float32 for w in m.get_weights())


# ------------------------------------------------------------- the C kernels --
@needs_bf16_kernels
@pytest.mark.parametrize("geo", CONV_CASES[:2])
def test_cpu_kernels_bf16_match_the_reference(geo):
    cpu = backend.get_ops("cpu")
    rng = np.random.default_rng(4)
    x, w, b = rand(rng, 3, 9, 8, 5), rand(rng, 3, 3, 5, 7), rand(rng, 7)
    mag = REF.conv2d_forward(np.abs(x), np.abs(w), None, **geo)
    # bfloat16's accuracy, not float32's: with 5 input channels the kernels
    # compute this layer in float32 (faster there; see pynn/backend/bf16.py),
    # which is within it of the rounded-operand reference
    tol = 2.0 ** -7 * mag + 1e-6
    y = cpu.conv2d_forward(x, w, b, activation="relu", precision="bfloat16", **geo)
    yr = REF.conv2d_forward(x, w, b, activation="relu", precision="bfloat16", **geo)
    assert y.dtype == F32 and np.all(np.abs(y - yr) <= tol)
    xd, wd = rand(rng, 13, 40), rand(rng, 40, 9)
    zd = cpu.dense_forward(xd, wd, None, precision="bfloat16")
    zr = REF.dense_forward(xd, wd, None, precision="bfloat16")
    assert np.all(np.abs(zd - zr) <= 2.0 ** -20 * 40 * (np.abs(xd) @ np.abs(wd)) + 1e-6)


@needs_bf16_kernels
def test_training_on_the_cpu_kernels_under_mixed_bfloat16():
    x, y = learnable()
    losses = {}
    for device in ("cpu", "numpy"):
        m = small_cnn("mixed_bfloat16", device)
        losses[device] = m.fit(x, y, batch_size=16, epochs=3, shuffle=False,
                               verbose=0).history["loss"]
    np.testing.assert_allclose(losses["cpu"], losses["numpy"], rtol=0.02)


@needs_bf16_kernels
def test_conv_output_read_by_batch_norm_is_stored_as_bf16(monkeypatch):
    """Under mixed_bfloat16 on the CPU backend a Conv2D (no activation)
    whose output only a batch norm reads stores that output as bfloat16
    (pynn/models/fusion.py, ConvBF16Out): training gives bitwise the weights
    of the same model whose convolution outputs are rounded to bfloat16 by
    hand (kept float32), as Keras' bf16 layer outputs are; a convolution
    whose output has another reader, or under float32, keeps float32.  1 and
    2 threads give the same bits."""
    from pynn.backend.cpu import CPUOps
    from pynn.layers.conv import Conv2D
    from reference import ftz_bits, threads, widen

    rng = np.random.default_rng(7)
    xb = rng.standard_normal((16, 10, 10, 3)).astype(F32)
    yb = rng.integers(0, 4, 16)
    forward = Conv2D.forward

    def rounding_forward(self, x, training=False, bf16_out=False):
        y = forward(self, x, training, bf16_out)
        if y.dtype == F32 and self.compute_dtype == "bfloat16" and self.name != "side":
            y[...] = widen(ftz_bits(y)).reshape(y.shape)
        return y

    def train(policy, storage):
        monkeypatch.setattr(CPUOps, "bf16_storage", storage)
        monkeypatch.setattr(Conv2D, "forward", forward if storage else rounding_forward)
        mixed_precision.set_global_policy(policy)
        pynn.utils.set_random_seed(5)
        inp = pynn.Input((10, 10, 3))
        h = L.Conv2D(16, 3, padding="same")(inp)
        h = L.ReLU()(L.BatchNormalization()(h))
        c2 = L.Conv2D(16, 3, padding="same")(h)
        h = L.ReLU()(L.Add()([L.BatchNormalization()(c2), h]))
        side = L.Conv2D(8, 1, name="side")(h)            # read by BN and by the pooling
        h = L.Concatenate()([L.BatchNormalization()(side), side])
        out = L.Dense(4, dtype="float32")(L.GlobalAveragePooling2D()(h))
        m = pynn.Model(inp, out)
        m.compile(optimizer=optimizers.SGD(0.1, momentum=0.9),
                  loss=pynn.losses.SparseCategoricalCrossentropy(from_logits=True))
        for _ in range(3):
            m.train_on_batch(xb, yb)
        kinds = {lay.name: lay.ctx.z.dtype for lay in m.layers if isinstance(lay, Conv2D)}
        return m.get_weights(), kinds

    with threads(2):
        w_st2, _ = train("mixed_bfloat16", True)
    with threads(1):
        w_st, kinds = train("mixed_bfloat16", True)
    assert [str(k) for k in kinds.values()] == ["uint16", "uint16", "float32"], kinds
    for a, b in zip(w_st, w_st2):
        np.testing.assert_array_equal(bits(a), bits(b))
    w_hand, kinds_hand = train("mixed_bfloat16", False)
    assert all(k == F32 for k in kinds_hand.values())
    for a, b in zip(w_st, w_hand):
        np.testing.assert_array_equal(bits(a), bits(b))
    _, kinds32 = train(None, True)
    assert all(k == F32 for k in kinds32.values())


@needs_bf16_kernels
def test_frozen_batch_norm_after_a_bf16_conv_output():
    """A frozen BatchNormalization (trainable=False: constant statistics, as
    in fine-tuning) reading a convolution whose output is stored as bfloat16
    (ConvBF16Out) trains -- its backward widens that x (it raised ValueError
    on the bit patterns) -- and its gradients are those of the unfused
    model, whose convolution output stays float32, within bfloat16's
    rounding of that output."""
    import pynn.models.fusion as fusion

    rng = np.random.default_rng(11)
    xb = rng.standard_normal((16, 8, 8, 5)).astype(F32)
    yb = rng.integers(0, 4, 16)

    def step(fused):
        fusion.ENABLED = fused
        try:
            mixed_precision.set_global_policy("mixed_bfloat16")
            pynn.utils.set_random_seed(3)
            inp = pynn.Input((8, 8, 5))
            bn = L.BatchNormalization()
            h = L.ReLU()(bn(L.Conv2D(16, 3, padding="same")(inp)))
            out = L.Dense(4, dtype="float32")(L.Flatten()(h))
            m = pynn.Model(inp, out)
            bn.trainable = False
            m.compile(optimizer=optimizers.SGD(0.1),
                      loss=pynn.losses.SparseCategoricalCrossentropy(from_logits=True))
            w0 = m.get_weights()[0].copy()
            m.train_on_batch(xb, yb)
            kind = m.layers[1].ctx.z.dtype
            return m.get_weights()[0] - w0, kind
        finally:
            fusion.ENABLED = True

    d_fused, kind = step(True)
    d_plain, kind_plain = step(False)
    assert kind == np.uint16 and kind_plain == F32
    assert np.abs(d_plain).max() > 0
    rel = np.linalg.norm(d_fused - d_plain) / np.linalg.norm(d_plain)
    assert rel < 0.01, rel
