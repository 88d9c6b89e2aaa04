"""Horovod's Keras API on pynn's MPI data parallelism.

Horovod's Keras examples run by changing one import::

    import pynn.horovod as hvd    # instead of: import horovod.keras as hvd
                                  #         or: import horovod.tensorflow.keras as hvd

Launched with ``mpiexec -n N python script.py`` (or ``horovodrun``-free
``srun``), every model's ``fit`` already trains data-parallel
(pynn.distributed: the first fit joins the job; gradients are averaged over
the ranks with an allreduce overlapped with backward; rank 0's weights are
broadcast at the start).  This module gives Horovod scripts the names they
use, with Horovod's semantics: ``batch_size`` is per rank and the script
scales the learning rate by ``hvd.size()`` itself.  Underneath is mpi4py;
without an MPI launch everything works as one process (size 1, rank 0).

Not supported (a clear error): ``backward_passes_per_step > 1`` (local
gradient accumulation), ``op=Sum`` / ``Adasum`` in ``DistributedOptimizer``,
fp16 gradient compression, ``BroadcastGlobalVariablesCallback`` with a root
other than rank 0, process sets; TF1 sessions (``tf.ConfigProto``,
``K.set_session``) are out of scope.
"""
import numpy as np

from .. import distributed as _distributed
from . import callbacks   # noqa: F401  (hvd.callbacks.*)

Average, Sum, Adasum, Min, Max, Product = "Average", "Sum", "Adasum", "Min", "Max", "Product"


class Compression:
    """Horovod's gradient compression choices: ``none`` only (pynn reduces
    float32 gradients as they are)."""
    none = "none"
    fp16 = "fp16"


def init(comm=None, process_sets=None):
    """Start (or join) the job's process group; also sets the kernel threads
    per rank (pynn.distributed.init)."""
    if comm is not None or process_sets is not None:
        raise NotImplementedError("hvd.init(comm=..., process_sets=...): pynn runs on "
                                  "MPI_COMM_WORLD only; call hvd.init()")
    _distributed.init()


def _group():
    g = _distributed.get_group()
    if g is None:
        raise ValueError("Horovod has not been initialized; use hvd.init().")
    return g


def is_initialized():
    return _distributed.get_group() is not None


def size():
    return _group().size


def rank():
    return _group().rank


def local_size():
    return _group().local_size


def local_rank():
    return _group().local_rank


def cross_size():
    """The number of nodes."""
    return _group().nodes


def cross_rank():
    """This node's index among the nodes (the ranks' node order)."""
    g = _group()
    if not g.active:
        return 0
    leaders = g.comm.allgather(g.rank if g.local_rank == 0 else None)
    firsts = sorted(r for r in leaders if r is not None)
    mine = g.local.bcast(g.rank if g.local_rank == 0 else None, root=0)
    return firsts.index(mine)


def mpi_threads_supported():
    g = _group()
    if not g.active:
        return True
    return g.MPI.Query_thread() >= g.MPI.THREAD_MULTIPLE


def mpi_enabled():
    return True


def mpi_built():
    return True


def gloo_enabled():
    return False


def nccl_built():
    return False


def DistributedOptimizer(optimizer, name=None, device_dense="", device_sparse="",
                         compression=Compression.none, sparse_as_dense=False,
                         gradient_predivide_factor=1.0, op=Average, backward_passes_per_step=1,
                         average_aggregated_gradients=False, num_groups=0, groups=None,
                         process_set=None, **kwargs):
    """The optimizer itself, marked as distributed: pynn's ``fit`` already
    averages the gradients over the ranks before every update (Horovod's
    ``op=Average``), so no wrapping is needed.  ``gradient_predivide_factor``
    only splits the averaging differently in Horovod: the result is the same."""
    if op not in (Average, None):
        raise NotImplementedError(f"DistributedOptimizer(op={op!r}): pynn averages gradients "
                                  "(op=hvd.Average); scale the learning rate instead of summing")
    if compression not in (Compression.none, None):
        raise NotImplementedError("DistributedOptimizer(compression=...): pynn reduces float32 "
                                  "gradients uncompressed; use hvd.Compression.none")
    if int(backward_passes_per_step) != 1:
        raise NotImplementedError(
            "DistributedOptimizer(backward_passes_per_step > 1): local gradient accumulation is "
            "not supported; use a larger batch_size per rank (or more ranks) instead")
    if process_set is not None or groups is not None:
        raise NotImplementedError("DistributedOptimizer(process_set=/groups=): pynn reduces "
                                  "over all ranks in one buffer")
    if kwargs:
        raise TypeError(f"DistributedOptimizer: unexpected keyword argument(s) {sorted(kwargs)}")
    optimizer.horovod_distributed = True
    return optimizer


# ------------------------------------------------------------ collectives on arrays --
def _array(tensor):
    a = np.asarray(tensor)
    if a.dtype == object:
        raise TypeError(f"expected a numeric array or scalar, got {type(tensor).__name__}")
    return a


def allreduce(tensor, average=None, device_dense="", compression=Compression.none, op=None,
              name=None, prescale_factor=1.0, postscale_factor=1.0, process_set=None):
    """The sum (``op=hvd.Sum``) or mean (default, ``op=hvd.Average``) of
    ``tensor`` over the ranks, on every rank (a NumPy array)."""
    if average is not None and op is not None:
        raise ValueError("give average= or op=, not both")
    if op is None:
        op = Average if average in (None, True) else Sum
    if op not in (Average, Sum, Min, Max):
        raise NotImplementedError(f"allreduce(op={op!r}): use hvd.Average, hvd.Sum, hvd.Min "
                                  "or hvd.Max")
    a = _array(tensor) * prescale_factor
    work = a.astype(np.float64) if a.dtype.kind in "iub" and op == Average else a
    g = _group()
    if g.active:
        mpi_op = {Average: g.MPI.SUM, Sum: g.MPI.SUM, Min: g.MPI.MIN, Max: g.MPI.MAX}[op]
        work = np.ascontiguousarray(work)
        out = np.empty_like(work)
        g.comm.Allreduce(work, out, op=mpi_op)
        work = out
    if op == Average:
        work = work / g.size
    return work * postscale_factor if postscale_factor != 1.0 else work


def allgather(tensor, name=None, process_set=None):
    """The ranks' tensors concatenated along axis 0 (first dimensions may
    differ), on every rank."""
    a = _array(tensor)
    if a.ndim == 0:
        a = a.reshape(1)
    g = _group()
    if not g.active:
        return a.copy()
    parts = g.comm.allgather(a)
    if any(p.shape[1:] != a.shape[1:] or p.dtype != a.dtype for p in parts):
        raise ValueError("allgather: the ranks' tensors differ beyond the first dimension "
                         "or in dtype: " + ", ".join(f"{p.shape} {p.dtype}" for p in parts))
    return np.concatenate(parts)


def broadcast(tensor, root_rank, name=None, process_set=None):
    """Rank ``root_rank``'s tensor, on every rank."""
    g = _group()
    if not 0 <= int(root_rank) < g.size:
        raise ValueError(f"root_rank {root_rank} is not a rank of this job (size {g.size})")
    a = _array(tensor)
    if not g.active:
        return a.copy()
    return g.comm.bcast(a, root=int(root_rank))


def broadcast_object(obj, root_rank=0, name=None, process_set=None):
    """A picklable Python object of ``root_rank``, on every rank (mpi4py
    pickles it between the ranks of this job; nothing is read from files)."""
    g = _group()
    return g.comm.bcast(obj, root=int(root_rank)) if g.active else obj


def load_model(filepath, custom_optimizers=None, custom_objects=None, compression=None):
    """``pynn.models.load_model``; the loaded model joins the job by itself."""
    from ..models import load_model as _load
    if custom_optimizers or custom_objects:
        raise NotImplementedError("load_model(custom_optimizers=/custom_objects=): pynn files "
                                  "hold pynn's own optimizers and layers only")
    return _load(filepath)
