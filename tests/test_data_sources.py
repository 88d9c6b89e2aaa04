"""fit / evaluate / predict on generators and PyDataset objects
(pynn/data_adapters.py, pynn/models/training_sources.py).

The array path is the reference for "the same batches give the same
weights" (it is tested against NumPy elsewhere); one SGD step and the
evaluation loss are also checked against NumPy formulas written here.
"""
import importlib.util
import os
import sys
import textwrap
import warnings

import numpy as np
import pytest

import pynn
from pynn import callbacks, layers, optimizers
from pynn.data_adapters import PyDataset, adapter, unpack_batch

N, BS, NB = 40, 8, 5
RNG = np.random.default_rng(11)
X = RNG.standard_normal((N, 5)).astype(np.float32)
Y = RNG.integers(0, 3, N).astype(np.int64)


def model(seed=1, dtype="float32", opt=None):
    pynn.utils.set_random_seed(seed)
    m = pynn.Sequential([layers.Dense(8, activation="relu", input_shape=(5,)),
                         layers.Dense(3, activation="softmax")], dtype=dtype)
    m.compile(opt or optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy",
              metrics=["accuracy"])
    return m


class Batches(PyDataset):
    """Batch i = rows [i*bs, (i+1)*bs); records every index asked for."""

    def __init__(self, x=X, y=Y, bs=BS, **kw):
        super().__init__(**kw)
        self.x, self.y, self.bs = x, y, bs
        self.asked, self.epoch_ends = [], 0

    def __len__(self):
        return -(-len(self.x) // self.bs)

    def __getitem__(self, i):
        self.asked.append(i)
        s = slice(i * self.bs, (i + 1) * self.bs)
        return (self.x[s], self.y[s]) if self.y is not None else self.x[s]

    def on_epoch_end(self):
        self.epoch_ends += 1


def cycle(x=X, y=Y, bs=BS, with_y=True):
    while True:
        for s in range(0, len(x), bs):
            yield (x[s:s + bs], y[s:s + bs]) if with_y else x[s:s + bs]


def finite(k, x=X, y=Y, bs=BS):
    for i in range(k):
        yield x[i * bs:(i + 1) * bs], y[i * bs:(i + 1) * bs]


def same_weights(a, b):
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(u, v)


def array_run(epochs=3, **kw):
    m = model()
    h = m.fit(X, Y, batch_size=BS, epochs=epochs, shuffle=False, verbose=0, **kw)
    return m, h


# ------------------------------------------------------------------ same batches, same weights --
def test_pydataset_fit_equals_array_fit():
    ref, href = array_run(validation_data=(X, Y))
    m = model()
    h = m.fit(Batches(), epochs=3, shuffle=False, verbose=0, validation_data=Batches())
    same_weights(ref, m)
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_array_equal(h.history[k], href.history[k])
    assert m.optimizer.iterations == 3 * NB


def test_array_fit_with_pydataset_validation_and_freq():
    _, href = array_run(validation_data=(X, Y), validation_freq=2)
    _, h = array_run(validation_data=Batches(bs=16), validation_freq=2)
    _, hg = array_run(validation_data=cycle(bs=4), validation_steps=N // 4, validation_freq=2)
    assert len(h.history["val_loss"]) == 1
    for hh in (h, hg):
        assert hh.history["val_loss"] == pytest.approx(href.history["val_loss"], rel=1e-6)
        assert hh.history["val_accuracy"] == href.history["val_accuracy"]
    # validation_steps on arrays: the first steps * batch rows
    _, hs = array_run(epochs=1, validation_data=(X, Y), validation_steps=2)
    _, h16 = array_run(epochs=1, validation_data=(X[:16], Y[:16]))
    assert hs.history["val_loss"] == h16.history["val_loss"]


def test_generator_fit_equals_array_fit():
    ref, href = array_run(validation_data=(X, Y))
    m = model()
    h = m.fit(cycle(), steps_per_epoch=NB, epochs=3, verbose=0, validation_data=cycle(),
              validation_steps=NB)
    same_weights(ref, m)
    np.testing.assert_array_equal(h.history["val_loss"], href.history["val_loss"])


def test_generator_continues_across_epochs():
    # Keras' rule: with steps_per_epoch the iterator is not restarted, so 3
    # epochs of 2 steps take the 6 first batches: one epoch over 48 rows
    x = RNG.standard_normal((48, 5)).astype(np.float32)
    y = RNG.integers(0, 3, 48)
    ref = model()
    ref.fit(x, y, batch_size=BS, epochs=1, shuffle=False, verbose=0)
    m = model()
    m.fit(finite(6, x, y), steps_per_epoch=2, epochs=3, verbose=0)
    same_weights(ref, m)


def test_reiterable_restarts_each_epoch():
    batches = [(X[s:s + BS], Y[s:s + BS]) for s in range(0, N, BS)]

    class Loader:                      # a DataLoader-like object: iter() is fresh each time
        def __iter__(self):
            return iter(batches)
    ref, _ = array_run()
    m = model()
    m.fit(Loader(), epochs=3, verbose=0)
    same_weights(ref, m)


def test_one_sgd_step_from_generator_matches_numpy():
    pynn.utils.set_random_seed(4)
    m = pynn.Sequential([layers.Dense(3, activation="softmax", input_shape=(5,))], dtype="float64")
    m.compile(optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    w0, b0 = [a.copy() for a in m.get_weights()]
    xb, yb = X[:BS].astype(np.float64), Y[:BS]
    m.fit((b for b in [(xb, yb)]), epochs=1, verbose=0)
    z = xb @ w0 + b0
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - np.eye(3)[yb]) / BS                  # d(mean cross-entropy)/dz
    w, b = m.get_weights()
    np.testing.assert_allclose(w, w0 - 0.1 * xb.T @ g, rtol=0, atol=1e-12)
    np.testing.assert_allclose(b, b0 - 0.1 * g.sum(0), rtol=0, atol=1e-12)


# ------------------------------------------------------------------ PyDataset order --
def test_pydataset_shuffle_is_a_seeded_permutation_per_epoch():
    ds = Batches()
    m = model()
    m.fit(ds, epochs=3, verbose=0)          # shuffle=True: the batch order changes per epoch
    epochs = [ds.asked[i:i + NB] for i in range(1, 1 + 3 * NB, NB)]   # asked[0]: the peek
    assert ds.asked[0] == 0
    for e in epochs:
        assert sorted(e) == list(range(NB))
    assert len({tuple(e) for e in epochs}) > 1
    assert ds.epoch_ends == 3
    ds2 = Batches()
    model().fit(ds2, epochs=3, verbose=0)   # same seed: same orders
    assert ds2.asked == ds.asked


def test_pydataset_steps_below_len_continue_the_pass():
    ds = Batches()
    m = model()
    m.fit(ds, steps_per_epoch=2, epochs=3, shuffle=False, verbose=0)
    assert ds.asked[1:] == [0, 1, 2, 3, 4, 0]
    assert ds.epoch_ends == 3


def test_pydataset_steps_above_len_warn_and_cap():
    ds = Batches()
    m = model()
    with pytest.warns(UserWarning, match="PyDataset has 5 batches"):
        m.fit(ds, steps_per_epoch=9, epochs=2, shuffle=False, verbose=0)
    assert m.optimizer.iterations == 2 * NB


def test_pydataset_without_super_init_and_workers_note():
    class Bare(PyDataset):             # Keras-3 scripts sometimes skip super().__init__()
        def __len__(self):
            return NB

        def __getitem__(self, i):
            return X[i * BS:(i + 1) * BS], Y[i * BS:(i + 1) * BS]
    m = model()
    m.fit(Bare(), epochs=1, verbose=0)
    assert m.optimizer.iterations == NB
    assert pynn.utils.Sequence is PyDataset and pynn.utils.PyDataset is PyDataset
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        pynn.data_adapters._NOTED.discard("workers")
        model().fit(Batches(workers=4, use_multiprocessing=True), epochs=1, verbose=0)
    assert any("workers/use_multiprocessing" in str(i.message) for i in w)


def test_pydataset_sharding_over_ranks_is_disjoint_and_padded():
    ds = Batches()                        # 5 batches over 2 ranks: 3 steps each, one repeat
    seen = []
    for r in range(2):
        src = adapter(ds, shuffle=True, seed=3, rank=r, size=2)
        assert src.steps == 3
        ds.asked.clear()
        list(src.epoch(0))
        seen.append(list(ds.asked))
    everything = seen[0] + seen[1]
    assert len(seen[0]) == len(seen[1]) == 3
    assert set(everything) == set(range(NB)) and len(everything) == 6
    # the same as pynn.data.batch_indices over the batch indices (one place for the rule)
    from pynn.data import batch_indices
    for r in range(2):
        want = [int(i[0]) for i in batch_indices(NB, 1, True, 3, 0, 0, r, 2)]
        assert seen[r] == want


# ------------------------------------------------------------------ running out --
def test_generator_running_out_interrupts_training():
    m = model()
    with pytest.warns(UserWarning, match="ran out of data"):
        h = m.fit(finite(3), steps_per_epoch=2, epochs=3, verbose=0)
    assert m.optimizer.iterations == 3
    assert len(h.history["loss"]) == 2


def test_generator_without_steps_is_one_epoch():
    m = model()
    m.fit(finite(NB), epochs=1, verbose=0)       # consumed to the end: no warning
    assert m.optimizer.iterations == NB
    m2 = model()
    with pytest.warns(UserWarning, match="ran out of data"):
        h = m2.fit(finite(NB), epochs=2, verbose=0)
    assert len(h.history["loss"]) == 1 and m2.optimizer.iterations == NB


def test_exhausted_validation_generator_needs_validation_steps():
    m = model()
    with pytest.raises(ValueError, match="validation_steps"):
        m.fit(cycle(), steps_per_epoch=2, epochs=2, verbose=0, validation_data=finite(2))


# ------------------------------------------------------------------ evaluate / predict --
def _numpy_predict(m, x):
    w1, b1, w2, b2 = m.get_weights()
    h = np.maximum(x @ w1 + b1, 0)
    z = h @ w2 + b2
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def test_evaluate_from_sources_matches_numpy():
    m = model()
    m.fit(X, Y, epochs=1, verbose=0)
    p = _numpy_predict(m, X.astype(np.float64))
    loss = float(np.mean(-np.log(p[np.arange(N), Y])))
    acc = float(np.mean(p.argmax(1) == Y))
    for src, kw in ((Batches(), {}), (cycle(), {"steps": NB}), (finite(NB), {})):
        got = m.evaluate(src, verbose=0, **kw)
        assert got[0] == pytest.approx(loss, rel=1e-5)
        assert got[1] == acc
    d = m.evaluate(Batches(), verbose=0, return_dict=True)
    assert set(d) == {"loss", "accuracy"}
    # steps: only the first batches
    part = m.evaluate(Batches(), steps=2, verbose=0)
    q = p[:2 * BS]
    assert part[0] == pytest.approx(float(np.mean(-np.log(q[np.arange(16), Y[:16]]))), rel=1e-5)


def test_predict_from_sources():
    m = model()
    ref = m.predict(X, verbose=0)
    np.testing.assert_allclose(ref, _numpy_predict(m, X.astype(np.float64)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(m.predict(Batches(y=None)), ref)
    np.testing.assert_array_equal(m.predict(Batches()), ref)                # (x, y) batches: x
    np.testing.assert_array_equal(m.predict(cycle(with_y=False), steps=NB), ref)
    np.testing.assert_array_equal(m.predict(iter(np.split(X, 4))), ref)
    np.testing.assert_array_equal(m.predict(Batches(y=None), steps=2), ref[:16])


def test_sequential_without_input_shape_builds_from_first_batch():
    pynn.utils.set_random_seed(1)
    m = pynn.Sequential([layers.Dense(3, activation="softmax")])
    m.compile("sgd", "sparse_categorical_crossentropy")
    m.fit(Batches(), epochs=1, verbose=0)
    assert m.get_weights()[0].shape == (5, 3)


# ------------------------------------------------------------------ Keras 2 names --
def test_fit_generator_names_warn_and_match():
    ref, _ = array_run()
    m = model()
    with pytest.warns(DeprecationWarning, match="fit_generator is deprecated.*Model.fit"):
        m.fit_generator(cycle(), steps_per_epoch=NB, epochs=3, verbose=0, shuffle=False)
    same_weights(ref, m)
    with pytest.warns(DeprecationWarning, match="evaluate_generator"):
        ev = m.evaluate_generator(Batches(), steps=NB)
    assert ev == m.evaluate(X, Y, batch_size=BS, verbose=0)
    with pytest.warns(DeprecationWarning, match="predict_generator"):
        pr = m.predict_generator(Batches(y=None))
    np.testing.assert_array_equal(pr, m.predict(X, verbose=0))
    with pytest.warns(UserWarning, match="workers / use_multiprocessing"), \
            pytest.warns(DeprecationWarning):
        m.fit_generator(Batches(), epochs=1, verbose=0, workers=4, use_multiprocessing=True)


# ------------------------------------------------------------------ errors --
@pytest.mark.parametrize("kw, err, match", [
    (dict(y=Y), ValueError, "y must not be given"),
    (dict(batch_size=8), ValueError, "batch_size must not be given"),
    (dict(validation_split=0.2), ValueError, "validation_split needs array data"),
    (dict(steps_per_epoch=0), ValueError, "positive int"),
    (dict(class_weight={0: 1.0}), NotImplementedError, "class_weight"),
])
def test_fit_source_argument_errors(kw, err, match):
    with pytest.raises(err, match=match):
        model().fit(Batches(), verbose=0, **kw)


def test_bad_batches():
    with pytest.raises(ValueError, match="x alone"):
        model().fit(Batches(y=None), verbose=0)
    with pytest.raises(ValueError, match="4 entries"):
        model().fit(iter([(X, Y, Y, Y)]), verbose=0)
    with pytest.raises(NotImplementedError, match="sample weights"):
        model().fit(iter([(X, Y, np.ones(N))]), verbose=0)
    with pytest.raises(ValueError, match="yields no batches"):
        model().fit(iter([]), verbose=0)
    with pytest.raises(ValueError, match="expects inputs of shape"):
        model().fit(iter([(X[:, :4], Y)]), verbose=0)

    class Empty(PyDataset):
        def __len__(self):
            return 0
    with pytest.raises(ValueError, match="no batches"):
        model().fit(Empty(), verbose=0)
    with pytest.raises(ValueError, match="batch_size must not be given"):
        model().predict(Batches(), batch_size=4)


def test_unpack_batch_rule():
    a, b, c = np.zeros(2), np.ones(2), np.full(2, 2.0)
    assert unpack_batch(a)[0] is a and unpack_batch(a)[1:] == (None, None)
    assert unpack_batch((a,))[1] is None
    assert unpack_batch([a, b])[1] is b
    assert unpack_batch((a, b, c))[2] is c
    assert unpack_batch({"x": a})[0] == {"x": a}


def test_arrays_are_not_batch_sources():
    from pynn.data_adapters import is_batch_source
    for x in (X, [X], (X, Y), {"a": X}, "abc"):
        assert not is_batch_source(x)
    assert is_batch_source(Batches()) and is_batch_source(cycle()) and is_batch_source(iter([1]))


# ------------------------------------------------------------------ resume --
class Interrupt(Exception):
    pass


class InterruptAt(callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if self.model.optimizer.iterations == self.step:
            raise Interrupt(self.step)


@pytest.mark.parametrize("stop, steps_per_epoch", [(7, None), (3, None), (5, 3)])
def test_resume_with_pydataset_is_exact(tmp_path, stop, steps_per_epoch):
    kw = dict(epochs=3, verbose=0, steps_per_epoch=steps_per_epoch)     # shuffle=True
    ref = model()
    href = ref.fit(Batches(), **kw)

    def bar():
        return callbacks.BackupAndRestore(tmp_path, save_freq=1, delete_checkpoint=False)
    with pytest.raises(Interrupt):
        model().fit(Batches(), callbacks=[bar(), InterruptAt(stop)], **kw)
    ds = Batches()
    second = model(seed=999)             # another seed: only a real resume ends where ref ended
    h = second.fit(ds, callbacks=[bar()], **kw)
    same_weights(ref, second)
    assert second.optimizer.iterations == ref.optimizer.iterations
    assert h.history["loss"][-1] == href.history["loss"][-1]
    assert len(ds.asked) - 1 == ref.optimizer.iterations - stop     # only the batches left


def test_resume_checks_the_source(tmp_path):
    bar = callbacks.BackupAndRestore(tmp_path, save_freq=1, delete_checkpoint=False)
    with pytest.raises(Interrupt):
        model().fit(Batches(), epochs=2, verbose=0, callbacks=[bar, InterruptAt(3)])
    with pytest.raises(ValueError, match="checkpoint was written by a run with"):
        model().fit(Batches(bs=4), epochs=2, verbose=0,
                    callbacks=[callbacks.BackupAndRestore(tmp_path)])


def test_resume_with_generator_warns(tmp_path):
    bar = callbacks.BackupAndRestore(tmp_path, save_freq=1, delete_checkpoint=False)
    with pytest.raises(Interrupt):
        model().fit(cycle(), steps_per_epoch=NB, epochs=2, verbose=0,
                    callbacks=[bar, InterruptAt(3)])
    m = model()
    with pytest.warns(UserWarning, match="cannot be rewound"):
        m.fit(cycle(), steps_per_epoch=NB, epochs=2, verbose=0,
              callbacks=[callbacks.BackupAndRestore(tmp_path)])
    assert m.optimizer.iterations == 2 * NB


# ------------------------------------------------------------------ MPI --
WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    import pynn
    from pynn import layers
    sys.path.insert(0, {here!r})
    from test_data_sources import Batches, X, Y, model
    dist = pynn.distributed.init(threads=1)
    r, size = dist.rank, dist.size
    a = dist.attach(model())
    a.fit(Batches(bs=4), epochs=2, shuffle=False, verbose=0)   # rank r: batches r, r+2, r+4...
    def own():                                                    # each rank its own generator
        while True:
            for i in range(r, 10, size):
                yield X[4 * i:4 * i + 4], Y[4 * i:4 * i + 4]
    b = dist.attach(model())
    b.fit(own(), steps_per_epoch=5, epochs=2, verbose=0)
    ev = a.evaluate(Batches(bs=4), verbose=0)
    if r == 0:
        np.savez({out!r}, *(a.get_weights() + b.get_weights()), ev=np.array(ev))
""")


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None,
                    reason="mpi4py missing: pip install '.[mpi]'")
def test_mpi_pydataset_shards_by_index_and_generators_per_rank(tmp_path):
    from test_mpi import run_mpi
    out = tmp_path / "w.npz"
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(here=os.path.dirname(os.path.abspath(__file__)), out=str(out)))
    run_mpi([sys.executable, str(script)], n=2, timeout=120)
    got = np.load(out)
    # the global batch of step k is batches 2k and 2k+1 of 4 rows: rows 8k..8k+7
    ref = model()
    ref.fit(X, Y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    w = ref.get_weights()
    for i, v in enumerate(w + w):
        np.testing.assert_allclose(got[f"arr_{i}"], v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["ev"], ref.evaluate(X, Y, verbose=0), rtol=1e-5)
