"""Optimizers against NumPy references of Keras 3's update formulas (written
here from the formulas, per weight, in float64), over several steps, in
float64 and float32, on the NumPy reference Ops and the CPU Ops; weight
decay, clipping, learning-rate schedules/callables, Keras 2 spellings."""
import math
import warnings

import numpy as np
import pytest

import pynn
from pynn import optimizers
from pynn.backend import Ops, get_ops
from pynn.optimizers import schedules

SIZES = (7, 12, 5)          # three weights in the flat buffer


# ---------------------------------------------------------------- references --
class Ref:
    """Keras 3's BaseOptimizer.apply for a list of weights (float64)."""

    def __init__(self, update, lr=0.01, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, decay=0.0):
        self.update, self.lr, self.wd = update, lr, weight_decay
        self.clipnorm, self.clipvalue, self.gclip, self.decay = clipnorm, clipvalue, global_clipnorm, decay
        self.it = 0
        self.slots = None

    def lr_at(self):
        lr = self.lr(self.it) if callable(self.lr) else self.lr
        return lr / (1 + self.decay * self.it)

    def step(self, ws, gs):
        gs = [g.astype(np.float64).copy() for g in gs]
        if self.clipnorm:
            gs = [g * self.clipnorm / max(np.sqrt((g * g).sum()), self.clipnorm) for g in gs]
        elif self.gclip:
            n = np.sqrt(sum((g * g).sum() for g in gs))
            gs = [g * self.gclip * min(1 / n, 1 / self.gclip) for g in gs]
        elif self.clipvalue:
            gs = [np.clip(g, -self.clipvalue, self.clipvalue) for g in gs]
        lr = self.lr_at()
        if self.wd is not None:
            ws = [w - w * self.wd * lr for w in ws]
        if self.slots is None:
            self.slots = [{} for _ in ws]
        out = [self.update(w, g, lr, self.it + 1, s) for w, g, s in zip(ws, gs, self.slots)]
        self.it += 1
        return out


def ref_sgd(momentum=0.0, nesterov=False):
    def f(w, g, lr, t, s):
        if momentum == 0:
            return w - lr * g
        m = s.setdefault("m", np.zeros_like(w))
        m[...] = m * momentum - g * lr
        return w + (m * momentum - g * lr if nesterov else m)
    return f


def ref_adam(b1=0.9, b2=0.999, eps=1e-7, amsgrad=False):
    def f(w, g, lr, t, s):
        m = s.setdefault("m", np.zeros_like(w))
        v = s.setdefault("v", np.zeros_like(w))
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        m += (g - m) * (1 - b1)
        v += (g * g - v) * (1 - b2)
        if amsgrad:
            vh = s.setdefault("vh", np.zeros_like(w))
            vh[...] = np.maximum(vh, v)
            return w - m * alpha / (np.sqrt(vh) + eps)
        return w - m * alpha / (np.sqrt(v) + eps)
    return f


def ref_rmsprop(rho=0.9, momentum=0.0, eps=1e-7, centered=False):
    def f(w, g, lr, t, s):
        v = s.setdefault("v", np.zeros_like(w))
        v[...] = rho * v + (1 - rho) * g * g
        den = v
        if centered:
            mg = s.setdefault("mg", np.zeros_like(w))
            mg[...] = rho * mg + (1 - rho) * g
            den = v - mg * mg
        inc = lr * g / np.sqrt(den + eps)
        if momentum > 0:
            m = s.setdefault("m", np.zeros_like(w))
            m[...] = momentum * m + inc
            return w - m
        return w - inc
    return f


def ref_adadelta(rho=0.95, eps=1e-7):
    def f(w, g, lr, t, s):
        ag = s.setdefault("ag", np.zeros_like(w))
        ad = s.setdefault("ad", np.zeros_like(w))
        ag[...] = rho * ag + (1 - rho) * g * g
        delta = -np.sqrt(ad + eps) / np.sqrt(ag + eps) * g
        ad[...] = rho * ad + (1 - rho) * delta * delta
        return w + lr * delta
    return f


def ref_adagrad(init=0.1, eps=1e-7):
    def f(w, g, lr, t, s):
        a = s.setdefault("a", np.full_like(w, init))
        a += g * g
        return w - lr * g / np.sqrt(a + eps)
    return f


def ref_adamax(b1=0.9, b2=0.999, eps=1e-7):
    def f(w, g, lr, t, s):
        m = s.setdefault("m", np.zeros_like(w))
        u = s.setdefault("u", np.zeros_like(w))
        m += (g - m) * (1 - b1)
        u[...] = np.maximum(b2 * u, np.abs(g))
        return w - lr * m / ((1 - b1 ** t) * (u + eps))
    return f


def ref_nadam(b1=0.9, b2=0.999, eps=1e-7):
    def f(w, g, lr, t, s):
        m = s.setdefault("m", np.zeros_like(w))
        v = s.setdefault("v", np.zeros_like(w))
        up = 1.0
        for k in range(1, t + 1):
            up *= b1 * (1 - 0.5 * 0.96 ** k)
        u_t = b1 * (1 - 0.5 * 0.96 ** t)
        u_t1 = b1 * (1 - 0.5 * 0.96 ** (t + 1))
        m += (g - m) * (1 - b1)
        v += (g * g - v) * (1 - b2)
        m_hat = u_t1 * m / (1 - up * u_t1) + (1 - u_t) * g / (1 - up)
        v_hat = v / (1 - b2 ** t)
        return w - m_hat * lr / (np.sqrt(v_hat) + eps)
    return f


def ref_lion(b1=0.9, b2=0.99):
    def f(w, g, lr, t, s):
        m = s.setdefault("m", np.zeros_like(w))
        w = w - lr * np.sign(m * b1 + g * (1 - b1))
        m[...] = m * b2 + g * (1 - b2)
        return w
    return f


CASES = [
    ("sgd", lambda **k: optimizers.SGD(0.05, **k), ref_sgd(), 0.05),
    ("sgd-mom", lambda **k: optimizers.SGD(0.05, momentum=0.9, **k), ref_sgd(0.9), 0.05),
    ("sgd-nest", lambda **k: optimizers.SGD(0.05, momentum=0.8, nesterov=True, **k),
     ref_sgd(0.8, True), 0.05),
    ("adam", lambda **k: optimizers.Adam(0.01, **k), ref_adam(), 0.01),
    ("adam-ams", lambda **k: optimizers.Adam(0.01, amsgrad=True, **k), ref_adam(amsgrad=True), 0.01),
    ("adamw", lambda **k: optimizers.AdamW(0.01, **k), ref_adam(), 0.01),
    ("rmsprop", lambda **k: optimizers.RMSprop(0.01, momentum=0.5, centered=True, **k),
     ref_rmsprop(momentum=0.5, centered=True), 0.01),
    ("adadelta", lambda **k: optimizers.Adadelta(1.0, **k), ref_adadelta(), 1.0),
    ("adagrad", lambda **k: optimizers.Adagrad(0.05, **k), ref_adagrad(), 0.05),
    ("adamax", lambda **k: optimizers.Adamax(0.01, **k), ref_adamax(), 0.01),
    ("nadam", lambda **k: optimizers.Nadam(0.01, **k), ref_nadam(), 0.01),
    ("lion", lambda **k: optimizers.Lion(0.003, beta_1=0.8, **k), ref_lion(0.8), 0.003),
]


def _run(make_opt, ref, lr, dtype, ops, steps=6, seed=0, ref_kw=None, **opt_kw):
    rng = np.random.default_rng(seed)
    n = sum(SIZES)
    offs = np.cumsum((0,) + SIZES)
    segments = [(int(o), s) for o, s in zip(offs[:-1], SIZES)]
    w0 = rng.standard_normal(n)
    opt = make_opt(**opt_kw)
    p = ops.asarray(w0.astype(dtype))
    opt.build(ops, n, dtype)
    r = Ref(ref, lr, **(ref_kw or {}))
    ws = [w0[o:o + s].copy() for o, s in segments]
    for _ in range(steps):
        g = rng.standard_normal(n) * 0.5
        gbuf = ops.asarray(g.astype(dtype))
        opt.apply(ops, p, gbuf, segments)
        ws = r.step(ws, [g[o:o + s] for o, s in segments])
    return np.asarray(p), np.concatenate(ws), opt


def _tol(dtype):
    return dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ops", [Ops(), get_ops()], ids=["numpy", "cpu"])
@pytest.mark.parametrize("name,make,ref,lr", CASES, ids=[c[0] for c in CASES])
def test_update_matches_keras_formula(name, make, ref, lr, ops, dtype):
    kw = {"weight_decay": 0.004} if name == "adamw" else {}
    got, want, opt = _run(make, ref, lr, dtype, ops, ref_kw=kw)
    if name == "lion" and dtype == np.float32:
        # sign() of a float32 sum near 0 may differ from float64: compare the bulk
        assert np.mean(np.isclose(got, want, **_tol(dtype))) > 0.97
    else:
        np.testing.assert_allclose(got, want, **_tol(dtype))
    assert opt.iterations == 6


@pytest.mark.parametrize("name,make,ref,lr", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("clip", [{"weight_decay": 0.05}, {"clipnorm": 0.8}, {"clipvalue": 0.3},
                                  {"global_clipnorm": 1.0}],
                         ids=["wd", "clipnorm", "clipvalue", "global_clipnorm"])
def test_weight_decay_and_clipping(name, make, ref, lr, clip):
    kw = dict(clip)
    if name == "adamw":
        kw.setdefault("weight_decay", 0.004)
    got, want, _ = _run(make, ref, lr, np.float64, Ops(), ref_kw=kw, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_clipping_changes_the_result():
    """The clipping tests above would pass vacuously if clipping were a no-op."""
    make, ref, lr = CASES[3][1:]
    a, _, _ = _run(make, ref, lr, np.float64, Ops(), clipvalue=0.05)
    b, _, _ = _run(make, ref, lr, np.float64, Ops())
    assert not np.allclose(a, b)


def test_only_one_clipping_option():
    with pytest.raises(ValueError, match="Only one of"):
        optimizers.SGD(clipnorm=1.0, clipvalue=0.5)


def test_keras3_defaults():
    assert optimizers.SGD().learning_rate == 0.01
    for c in (optimizers.Adam, optimizers.AdamW, optimizers.RMSprop, optimizers.Adadelta,
              optimizers.Adagrad, optimizers.Adamax, optimizers.Nadam, optimizers.Lion):
        assert c().learning_rate == pytest.approx(0.001), c
    assert optimizers.AdamW().weight_decay == 0.004
    assert optimizers.Adagrad().initial_accumulator_value == 0.1
    assert optimizers.Adadelta().rho == 0.95
    assert optimizers.Lion().beta_2 == 0.99
    assert optimizers.Adam().epsilon == 1e-7
    with pytest.raises(ValueError):
        optimizers.AdamW(weight_decay=None)
    with pytest.raises(ValueError):
        optimizers.Lion(beta_1=0.0)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adadelta", "adagrad",
                                  "adamax", "nadam", "lion", "Nadam", "AdamW"])
def test_string_names(name):
    opt = optimizers.get(name)
    assert type(opt).__name__.lower() == name.lower()
    m = pynn.Sequential([pynn.layers.Dense(3, input_shape=(4,))])
    m.compile(optimizer=name, loss="mse")
    m.fit(np.ones((8, 4), np.float32), np.zeros((8, 3), np.float32), verbose=0, epochs=1)
    assert m.optimizer.iterations == 1


# ---------------------------------------------------------------- schedules --
def exp_ref(s, lr0, ds, rate, stair):
    p = s / ds
    return lr0 * rate ** (math.floor(p) if stair else p)


SCHED = [
    (schedules.ExponentialDecay(0.1, 10, 0.5), lambda s: exp_ref(s, 0.1, 10, 0.5, False)),
    (schedules.ExponentialDecay(0.1, 10, 0.5, staircase=True),
     lambda s: exp_ref(s, 0.1, 10, 0.5, True)),
    (schedules.InverseTimeDecay(0.1, 4, 0.5), lambda s: 0.1 / (1 + 0.5 * s / 4)),
    (schedules.InverseTimeDecay(0.1, 4, 0.5, staircase=True),
     lambda s: 0.1 / (1 + 0.5 * math.floor(s / 4))),
    (schedules.PiecewiseConstantDecay([3, 7], [1.0, 0.5, 0.1]),
     lambda s: 1.0 if s <= 3 else (0.5 if s <= 7 else 0.1)),
    (schedules.PolynomialDecay(0.1, 10, 0.01, power=2.0),
     lambda s: (0.1 - 0.01) * (1 - min(s, 10) / 10) ** 2 + 0.01),
    (schedules.PolynomialDecay(0.1, 4, 0.01, cycle=True),
     lambda s: (0.1 - 0.01) * (1 - s / (4 * (1 if s == 0 else math.ceil(s / 4)))) + 0.01),
    (schedules.CosineDecay(0.1, 10, alpha=0.1),
     lambda s: 0.1 * ((1 - 0.1) * 0.5 * (1 + math.cos(math.pi * min(s, 10) / 10)) + 0.1)),
    (schedules.CosineDecay(0.0, 10, alpha=0.2, warmup_target=0.1, warmup_steps=5),
     lambda s: (0.1 * s / 5) if s < 5 else
     0.1 * ((1 - 0.2) * 0.5 * (1 + math.cos(math.pi * (min(s, 15) - 5) / 10)) + 0.2)),
    (schedules.CosineDecayRestarts(0.1, 4, t_mul=1.0, m_mul=0.5),
     lambda s: 0.1 * 0.5 ** (s // 4) * 0.5 * (1 + math.cos(math.pi * (s % 4) / 4))),
]


def _sgdr_ref(s, lr0=0.1, first=4, t_mul=2.0, m_mul=0.8, alpha=0.1):
    # walk the periods: lengths first, first*t_mul, ...
    start, length, i = 0.0, float(first), 0
    while s >= start + length:
        start += length
        length *= t_mul
        i += 1
    frac = (s - start) / length
    return lr0 * ((1 - alpha) * 0.5 * m_mul ** i * (1 + math.cos(math.pi * frac)) + alpha)


SCHED.append((schedules.CosineDecayRestarts(0.1, 4, t_mul=2.0, m_mul=0.8, alpha=0.1), _sgdr_ref))


@pytest.mark.parametrize("sched,ref", SCHED, ids=[f"{type(s).__name__}{i}"
                                                  for i, (s, _) in enumerate(SCHED)])
def test_schedule_formula(sched, ref):
    for s in [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 13, 15, 20, 27, 40]:
        assert sched(s) == pytest.approx(ref(s), rel=1e-9, abs=1e-12), s
    cfg = schedules.serialize(sched)
    again = schedules.deserialize(cfg)
    assert type(again) is type(sched) and again.get_config() == sched.get_config()
    assert [again(s) for s in range(30)] == [sched(s) for s in range(30)]


def test_schedule_bad_arguments():
    with pytest.raises(ValueError):
        schedules.ExponentialDecay(0.1, 0, 0.5)
    with pytest.raises(ValueError):
        schedules.PiecewiseConstantDecay([1, 2], [1.0])
    with pytest.raises(ValueError):
        schedules.deserialize({"class_name": "Nope", "config": {}})


def test_optimizer_follows_schedule():
    sched = schedules.ExponentialDecay(0.05, 2, 0.5)
    got, want, opt = _run(lambda: optimizers.SGD(sched), ref_sgd(), sched, np.float64, Ops())
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert opt.learning_rate == pytest.approx(sched(6))
    with pytest.raises(TypeError, match="not settable"):
        opt.learning_rate = 0.1


def test_callable_learning_rate():
    """A callable of the step (pynn) and Keras 3's zero-argument callable."""
    got, want, _ = _run(lambda: optimizers.Adam(lambda step: 0.01 / (1 + step)), ref_adam(),
                        lambda s: 0.01 / (1 + s), np.float64, Ops())
    np.testing.assert_allclose(got, want, rtol=1e-12)
    opt = optimizers.Adam(lambda: 0.02)
    assert opt.learning_rate == 0.02


# ------------------------------------------------------- learning-rate access --
def test_learning_rate_read_and_assign():
    opt = optimizers.Adam(0.01)
    assert isinstance(opt.learning_rate, float) and opt.learning_rate == 0.01
    opt.learning_rate = 1e-4
    assert opt.learning_rate == 1e-4
    opt.learning_rate.assign(3e-3)          # Keras' variable API (keras.backend.set_value)
    assert opt.learning_rate == 3e-3
    assert float(opt.learning_rate.numpy()) == pytest.approx(3e-3)
    with pytest.raises(TypeError):
        opt.learning_rate = "fast"
    with pytest.raises(ValueError):
        opt.learning_rate = float("nan")


def test_learning_rate_assignment_mid_training():
    """Changing model.optimizer.learning_rate between steps: the next steps
    use the new rate (reference: two runs with the rates switched at step 3)."""
    make = lambda **k: optimizers.SGD(0.05, momentum=0.9, **k)   # noqa: E731
    rng = np.random.default_rng(1)
    n = sum(SIZES)
    p = rng.standard_normal(n)
    ops = Ops()
    opt = make()
    opt.build(ops, n, np.float64)
    r = Ref(ref_sgd(0.9), lambda s: 0.05 if s < 3 else 0.002)
    w = [p.copy()]
    for step in range(6):
        if step == 3:
            opt.learning_rate = 0.002
        g = rng.standard_normal(n)
        opt.apply(ops, p, g.copy(), [(0, n)])
        w = r.step(w, [g])
    np.testing.assert_allclose(p, w[0], rtol=1e-12)


# ------------------------------------------------------------ Keras 2 spellings --
def test_keras2_lr_keyword():
    with pytest.warns(DeprecationWarning, match="learning_rate"):
        opt = optimizers.SGD(lr=0.2, momentum=0.5)
    assert opt.learning_rate == 0.2
    a, _, _ = _run(lambda: opt, ref_sgd(0.5), 0.2, np.float64, Ops())
    b, _, _ = _run(lambda: optimizers.SGD(learning_rate=0.2, momentum=0.5), ref_sgd(0.5), 0.2,
                   np.float64, Ops())
    np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError):
        optimizers.SGD(learning_rate=0.1, lr=0.2)
    with pytest.warns(DeprecationWarning):
        assert opt.lr == 0.2


@pytest.mark.parametrize("make,ref", [(optimizers.SGD, ref_sgd()), (optimizers.Adam, ref_adam())])
def test_keras2_time_based_decay(make, ref):
    with pytest.warns(DeprecationWarning, match="InverseTimeDecay"):
        opt = make(lr=0.05, decay=0.1)
    got, want, _ = _run(lambda: opt, ref, 0.05, np.float64, Ops(), ref_kw={"decay": 0.1})
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # the same as Keras 3's InverseTimeDecay(lr, 1, decay)
    same, _, _ = _run(lambda: make(schedules.InverseTimeDecay(0.05, 1, 0.1)), ref, 0.05,
                      np.float64, Ops())
    np.testing.assert_allclose(got, same, rtol=1e-12)
    assert opt.learning_rate == 0.05            # the base rate, as Keras 2's optimizer.lr
    c = optimizers.serialize(opt)
    assert c["config"]["decay"] == 0.1
    assert optimizers.get(c).decay == 0.1


@pytest.mark.parametrize("alias,cls", [("sgd", "SGD"), ("adam", "Adam"), ("rmsprop", "RMSprop"),
                                       ("adagrad", "Adagrad"), ("adadelta", "Adadelta"),
                                       ("adamax", "Adamax"), ("nadam", "Nadam")])
def test_keras2_lowercase_classes(alias, cls):
    with pytest.warns(DeprecationWarning, match=cls):
        opt = getattr(optimizers, alias)(lr=0.1)
    assert type(opt).__name__ == cls and opt.learning_rate == 0.1


def test_no_warning_for_keras3_spelling():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizers.SGD(learning_rate=0.1, momentum=0.9)
        optimizers.get("adamw")


# ---------------------------------------------------------------- configs --
@pytest.mark.parametrize("opt", [
    optimizers.AdamW(0.002, weight_decay=0.01, clipnorm=1.0),
    optimizers.Nadam(schedules.CosineDecay(0.01, 100, warmup_target=0.1, warmup_steps=10)),
    optimizers.Adagrad(0.1, initial_accumulator_value=0.2, global_clipnorm=2.0),
    optimizers.Lion(schedules.PiecewiseConstantDecay([5], [0.1, 0.01]), weight_decay=0.1),
    optimizers.Adamax(0.003, beta_2=0.99, clipvalue=0.5),
    optimizers.Adam(amsgrad=True),
], ids=lambda o: type(o).__name__)
def test_config_round_trip(opt):
    c = optimizers.serialize(opt)
    import json
    c = json.loads(json.dumps(c))
    again = optimizers.get(c)
    assert type(again) is type(opt)
    assert again.get_config() == opt.get_config()
    assert again.learning_rate == opt.learning_rate
