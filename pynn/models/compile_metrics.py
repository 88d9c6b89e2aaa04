"""compile(metrics=..., weighted_metrics=...) for the training loop.

A model's metric state during fit/evaluate is one flat list of sums (see
``Trainer._zero_sums``): the loss total, the per-output losses (several
outputs), one correct count per output (the accuracy counted inside the loss
kernel), then the state vector of every other metric (``Metric.batch_state``)
in order.  Sums add over batches and, under MPI, over ranks, so every metric
is aggregated exactly.  ``metrics`` are unweighted and ``weighted_metrics``
use the sample weights, as in Keras 3.
"""
from dataclasses import dataclass

import numpy as np

from .. import metrics as M


@dataclass
class Slot:
    name: str            # log name without the output prefix
    kind: str            # "kernel" (the loss's correct count) or "generic"
    metric: object       # pynn.metrics.Metric for generic slots
    weighted: bool
    offset: int = 0      # generic: position of its state in the sums
    size: int = 0


def _name(m):
    if isinstance(m, str):
        return m
    if isinstance(m, dict):
        return M.get(m).name
    if isinstance(m, type):
        return M.get(m).name
    if isinstance(m, M.Metric):
        return m.name
    return getattr(m, "__name__", None) or str(m)


def _rows(value, names, what, per_output):
    if value is None:
        return [[] for _ in names]
    if isinstance(value, dict):
        per_output(value, names, what)   # checks the names
        rows = [value.get(n) or [] for n in names]
    elif len(names) > 1 and isinstance(value, (list, tuple)) and value and \
            all(isinstance(m, (list, tuple)) or m is None for m in value):
        rows = per_output(list(value), names, what)
    elif isinstance(value, (list, tuple)):
        rows = [list(value)] * len(names)
    else:
        if not (isinstance(value, (str, M.Metric)) or callable(value)):
            raise ValueError(f"{what} must be a list, a dict or a metric, got {value!r}")
        rows = [[value]] * len(names)
    return [[r] if not isinstance(r, (list, tuple)) else list(r) for r in
            (row or [] for row in rows)]


def per_output_specs(metrics, weighted_metrics, names, per_output):
    """Per output: a list of (log name, identifier, weighted)."""
    specs = []
    for ms, ws in zip(_rows(metrics, names, "metrics", per_output),
                      _rows(weighted_metrics, names, "weighted_metrics", per_output)):
        row, seen = [], {}
        for m in ms:
            if m is None:
                continue
            nm = _name(m)
            if nm in seen:     # Keras: a repeated name gets _1, _2...
                seen[nm] += 1
                nm = f"{nm}_{seen[nm] - 1}"
            else:
                seen[nm] = 1
            row.append((nm, m, False))
        for m in ws:
            if m is None:
                continue
            nm = _name(m)
            if nm in seen:
                nm = f"weighted_{nm}"
            seen[nm] = seen.get(nm, 0) + 1
            row.append((nm, m, True))
        # validate now (unknown names raise at compile, as Keras)
        for nm, m, _ in row:
            if not (isinstance(m, str) and m.lower() in ("accuracy", "acc")):
                M.get(m)
        specs.append(row)
    return specs


def names(specs):
    return [[nm for nm, _, _ in row] for row in specs]


def log_names(metric_names, output_names):
    if len(output_names) <= 1:
        return list(metric_names[0]) if metric_names else []
    return [f"{o}_{m}" for o, ms in zip(output_names, metric_names) for m in ms]


def serializable(specs):
    """The identifiers as saved in a model file: strings, or metric configs."""
    out = []
    for row in specs:
        r = []
        for nm, m, w in row:
            if isinstance(m, str):
                r.append(m)
            else:
                obj = M.get(m)
                if type(obj) is M.MeanMetricWrapper:
                    raise NotImplementedError(
                        f"saving a model compiled with the custom metric function {nm!r} is "
                        "not supported: save with include_optimizer=False and compile again")
                r.append(M.serialize(obj))
        out.append(r)
    return out


def _kernel_ok(m, loss, weighted):
    """The loss kernel already counts this accuracy (no extra pass)."""
    kind = getattr(loss, "accuracy_kind", None)
    if weighted or kind is None:
        return False
    if isinstance(m, str) and m.lower() in ("accuracy", "acc"):
        return True
    obj = M.get(m)
    if getattr(obj, "accuracy_kind", None) != kind:
        return False
    return obj.get_config().get("threshold", 0.5) == 0.5


def _accuracy_for(n_out, loss):
    """Keras' rule for "accuracy" when the loss does not count it."""
    if n_out == 1:
        return M.BinaryAccuracy
    if getattr(loss, "accuracy_kind", None) == "sparse_categorical":
        return M.SparseCategoricalAccuracy
    return M.CategoricalAccuracy


def resolve(specs, losses, n_out, first):
    """Per output: the Slots; generic slots' state offsets start at ``first``
    (after the loss sums and the correct counts)."""
    slots, off = [], first
    for row, loss, k in zip(specs, losses, n_out):
        out = []
        for nm, m, weighted in row:
            if _kernel_ok(m, loss, weighted):
                out.append(Slot(nm, "kernel", None, weighted))
                continue
            if isinstance(m, str) and m.lower() in ("accuracy", "acc"):
                obj = _accuracy_for(k, loss)(name=nm)
            else:
                obj = M.get(m)
            out.append(Slot(nm, "generic", obj, weighted, off, obj.state_size))
            off += obj.state_size
        slots.append(out)
    return slots


def total_size(slots, first):
    end = first
    for row in slots:
        for s in row:
            if s.kind == "generic":
                end = max(end, s.offset + s.size)
    return end


def needs_outputs(row):
    return any(s.kind == "generic" for s in row)


def add_generic(sums, row, y_true, y_pred, sample_weight):
    """Add the generic metrics' batch states of one output into ``sums``
    (host NumPy arrays in)."""
    for s in row:
        if s.kind != "generic":
            continue
        st = s.metric.batch_state(y_true, y_pred, sample_weight if s.weighted else None)
        for j, v in enumerate(np.asarray(st, dtype=np.float64)):
            sums[s.offset + j] += float(v)


def results(row, sums, correct, seen):
    """{name: value} of one output's metrics."""
    out = {}
    for s in row:
        if s.kind == "kernel":
            out[s.name] = correct / seen if seen else float("nan")
        else:
            out[s.name] = s.metric.result_of(np.asarray(sums[s.offset:s.offset + s.size]))
    return out
