"""Batch sources other than arrays for fit / evaluate / predict.

- :class:`PyDataset` (``keras.utils.PyDataset``; ``Sequence`` is the Keras 2
  name): an indexable list of batches -- ``__len__`` batches,
  ``__getitem__(i)`` the i-th, ``on_epoch_end()`` after every epoch.
  Because it is indexable, the batch order of every epoch is a function of
  ``(seed, pass)`` (:func:`pynn.data.batch_indices` over the batch indices),
  so a run resumed by ``BackupAndRestore`` continues at exactly the batch it
  stopped at, and under MPI the batches are sharded by index over the ranks
  (rank r takes the r-th of every ``size`` batches, padded cyclically so all
  ranks take the same number of steps).  ``workers`` /
  ``use_multiprocessing`` / ``max_queue_size`` are accepted; the batches are
  loaded in the training process, one at a time (a note says so once).
- Python generators and other iterators yielding ``(x, y)``,
  ``(x, y, sample_weight)`` or ``x`` (predict).  An iterator is consumed
  once: with ``steps_per_epoch`` the next epoch continues where the last one
  stopped (Keras' rule); running out stops training with a warning.  A
  re-iterable object that is not an iterator (``iter(obj) is not obj``, e.g.
  a DataLoader) is iterated afresh every epoch.  An iterator cannot be
  rewound, so a resumed run continues with fresh batches (a warning says
  so); under MPI every rank consumes its own iterator, and
  ``steps_per_epoch`` is required (every rank must take the same steps).

The array path (:class:`pynn.data.Batcher`) is untouched: these adapters are
only used when ``x`` is one of the objects above.
"""
import itertools
import warnings

import numpy as np

from . import data

__all__ = ["PyDataset", "Sequence", "is_batch_source", "unpack_batch", "adapter"]


class PyDataset:
    """Base class of indexable batch sources (``keras.utils.PyDataset``).

    Subclasses define ``__len__`` (number of batches) and ``__getitem__(i)``
    returning ``(x, y)``, ``(x, y, sample_weight)`` or ``x``, and may define
    ``on_epoch_begin`` / ``on_epoch_end``.  Call ``super().__init__(**kwargs)``
    to pass ``workers``, ``use_multiprocessing`` and ``max_queue_size``
    (accepted; batches are loaded in the calling process)."""

    def __init__(self, workers=1, use_multiprocessing=False, max_queue_size=10):
        self._workers = int(workers)
        self._use_multiprocessing = bool(use_multiprocessing)
        self._max_queue_size = int(max_queue_size)

    @property
    def workers(self):
        return getattr(self, "_workers", 1)

    @workers.setter
    def workers(self, value):
        self._workers = int(value)

    @property
    def use_multiprocessing(self):
        return getattr(self, "_use_multiprocessing", False)

    @use_multiprocessing.setter
    def use_multiprocessing(self, value):
        self._use_multiprocessing = bool(value)

    @property
    def max_queue_size(self):
        return getattr(self, "_max_queue_size", 10)

    @max_queue_size.setter
    def max_queue_size(self, value):
        self._max_queue_size = int(value)

    def __len__(self):
        raise NotImplementedError(f"{type(self).__name__} must define __len__ (number of batches)")

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__ (one batch)")

    @property
    def num_batches(self):
        return len(self)

    def on_epoch_begin(self):
        pass

    def on_epoch_end(self):
        pass


Sequence = PyDataset     # keras.utils.Sequence (Keras 2); Keras 3 keeps it as an alias


def _is_array_like(x):
    return isinstance(x, (np.ndarray, list, tuple, dict, str, bytes)) or hasattr(x, "__array__")


def is_batch_source(x):
    """True for what this module adapts: a PyDataset (or any object with
    ``__len__``, ``__getitem__`` and ``on_epoch_end``, as keras.utils.Sequence
    subclasses of other packages) or an iterator / iterable of batches."""
    if x is None or _is_array_like(x):
        return False
    return _is_pydataset(x) or hasattr(x, "__next__") or hasattr(x, "__iter__")


def _is_pydataset(x):
    return isinstance(x, PyDataset) or (hasattr(x, "__getitem__") and hasattr(x, "__len__")
                                        and hasattr(x, "on_epoch_end") and not _is_array_like(x))


def unpack_batch(batch):
    """``(x, y, sample_weight)`` of one batch (Keras' rule: a tuple or list of
    1, 2 or 3 entries is ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``;
    anything else is ``x``.  Several inputs: yield ``((x1, x2), y)``)."""
    if isinstance(batch, list):
        batch = tuple(batch)
    if not isinstance(batch, tuple):
        return batch, None, None
    if not 1 <= len(batch) <= 3:
        raise ValueError(f"a batch must be x, (x,), (x, y) or (x, y, sample_weight); got a tuple "
                         f"of {len(batch)} entries (several inputs: yield ((x1, x2), y))")
    return tuple(batch) + (None,) * (3 - len(batch))


_NOTED = set()


def _note_once(key, msg):
    if key not in _NOTED:
        _NOTED.add(key)
        warnings.warn(msg, UserWarning, stacklevel=4)


class IndexedSource:
    """A PyDataset's batches: ``pass`` p of the data is the order
    ``batch_indices(len, 1, shuffle, seed, p, rank, size)`` over the batch
    indices; an epoch of ``steps`` steps is the stretch ``[epoch*steps,
    (epoch+1)*steps)`` of the concatenated passes (Keras continues the
    iteration across epochs when steps_per_epoch < len)."""
    resumable = True

    def __init__(self, ds, steps=None, shuffle=False, seed=0, rank=0, size=1, what="x"):
        self.ds = ds
        if getattr(ds, "workers", 1) > 1 or getattr(ds, "use_multiprocessing", False):
            _note_once("workers", "PyDataset workers/use_multiprocessing are accepted but not used "
                                  "by pynn: batches are loaded in the training process, one at a time")
        n = len(ds)
        if n < 1:
            raise ValueError(f"{what}: the PyDataset has no batches (len() = {n})")
        self.n_batches = n
        self.shuffle, self.seed, self.rank, self.size = bool(shuffle), int(seed), rank, size
        self.per_pass = data.shard_length(n, size)     # this rank's batches per pass
        if steps is None:
            steps = self.per_pass
        elif steps > self.per_pass:
            _note_once(("steps", what), f"{what}: {steps} steps per epoch but the PyDataset has "
                       f"{self.per_pass} batches{' per rank' if size > 1 else ''}: each epoch runs "
                       f"{self.per_pass} steps (Keras stops an epoch when its input runs out)")
            steps = self.per_pass
        self.steps = int(steps)

    def describe(self):
        return {"source": "pydataset", "batches": self.n_batches}

    def peek(self):
        return self.ds[0]

    def epoch(self, epoch, start_step=0):
        """The batches of steps start_step, start_step+1, ... of ``epoch``."""
        g = epoch * self.steps + start_step
        for _ in range(start_step, self.steps):
            p, s = divmod(g, self.per_pass)
            idx = next(data.batch_indices(self.n_batches, 1, self.shuffle, self.seed, p, s,
                                          self.rank, self.size))
            yield self.ds[int(idx[0])]
            g += 1

    def eval_batches(self, steps=None):
        """Evaluation: this rank's share of the first ``steps`` batches, in order."""
        total = self.n_batches if steps is None else min(int(steps), self.n_batches)
        for i in range(self.rank, total, self.size):
            yield self.ds[i]

    def end_epoch(self):
        self.ds.on_epoch_end()

    def begin_epoch(self):
        if hasattr(self.ds, "on_epoch_begin"):
            self.ds.on_epoch_begin()


class IterSource:
    """A generator / iterator (consumed once, continued across epochs) or a
    re-iterable object (iterated afresh each epoch)."""
    resumable = False

    def __init__(self, obj, steps=None, what="x"):
        self.obj = obj
        self.reiterable = hasattr(obj, "__iter__") and iter(obj) is not obj
        self._it = iter(obj)
        self.steps = None if steps is None else int(steps)
        self.exhausted = False
        self.what = what

    def describe(self):
        return {"source": "iterator", "batches": None}

    def peek(self):
        try:
            first = next(self._it)
        except StopIteration:
            raise ValueError(f"{self.what}: the generator yields no batches") from None
        self._it = itertools.chain([first], self._it)
        return first

    def epoch(self, epoch, start_step=0):
        """The next batches: up to ``steps - start_step`` of them, or until
        the iterator ends.  A re-iterable object restarts every epoch
        without steps_per_epoch, and when it runs out with it."""
        if self.reiterable and self.steps is None:
            self._it = iter(self.obj)
        count = itertools.count(start_step) if self.steps is None else range(start_step, self.steps)
        for _ in count:
            try:
                b = next(self._it)
            except StopIteration:
                if self.reiterable:
                    self._it = iter(self.obj)
                else:
                    self.exhausted = True
                return
            yield b

    def eval_batches(self, steps=None):
        if self.reiterable and steps is None:
            self._it = iter(self.obj)
        for _ in (itertools.count() if steps is None else range(int(steps))):
            try:
                yield next(self._it)
            except StopIteration:
                if self.reiterable:
                    self._it = iter(self.obj)
                return

    def begin_epoch(self):
        pass

    def end_epoch(self):
        pass


def adapter(x, steps=None, shuffle=False, seed=0, rank=0, size=1, what="x"):
    """The source for ``x`` (a PyDataset or an iterable of batches)."""
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps for {what} must be a positive int, got {steps!r}")
    if _is_pydataset(x):
        return IndexedSource(x, steps, shuffle, seed, rank, size, what)
    if is_batch_source(x):
        return IterSource(x, steps, what)
    raise TypeError(f"{what}: expected arrays, a PyDataset or a generator, got {type(x).__name__}")
