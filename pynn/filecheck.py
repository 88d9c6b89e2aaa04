"""What a valid pynn file holds: the one set of rules that pynn.io checks
before it writes a file and after it reads one, so that whatever pynn
writes it can read back, and whatever it refuses to read it never writes.

- the metadata is a JSON object naming a known ``format`` and an int
  ``version``;
- every array holds real numbers (no strings, objects or complex values)
  and no NaN or inf (weights and optimizer slots alike);
- ``seed`` and the optimizer's ``iterations`` are ints >= 0;
- a checkpoint's training position has every field, each of its type and
  range: ``epoch``, ``step``, ``seen`` >= 0, ``n``, ``batch_size``,
  ``ranks`` >= 1, ``step`` within an epoch, ``shuffle`` a bool, finite
  metric ``sums``; its ``history`` (the logs of the epochs done, if any) a
  dict of lists of numbers, no longer than the epochs done.

:func:`check` raises ``error`` (ValueError for a write, pynn.io's
FileFormatError for a read) with a message that names the file.
"""
import math
import os

import numpy as np

from . import checks

FORMATS = ("pynn.model", "pynn.weights", "pynn.checkpoint")


class _Bad(Exception):
    pass


def _fail(msg):
    raise _Bad(msg)


def _field(where, d, key, kind, minimum=None, required=True):
    if key not in d:
        if required:
            _fail(f"{where} has no {key!r} field")
        return None
    v = d[key]
    try:
        if kind is int:
            return checks.integer(f"{where} {key!r}", v, minimum)
        if kind is float:
            return checks.real(f"{where} {key!r}", v)
    except (TypeError, ValueError) as e:
        _fail(str(e))
    if not isinstance(v, kind):
        _fail(f"{where} {key!r} must be a {kind.__name__}, got {v!r:.100}")
    return v


def _check_arrays(arrays):
    for k, a in arrays.items():
        if not isinstance(a, np.ndarray):
            _fail(f"entry {k!r} is not an array")
        try:
            checks.finite_array(f"array {k!r}", a)
        except (TypeError, ValueError) as e:
            _fail(str(e))


def _check_position(pos):
    where = "the training position"
    if not isinstance(pos, dict):
        _fail(f"{where} is not a JSON object")
    for key in ("epoch", "step", "seen"):
        _field(where, pos, key, int, 0)
    source = pos.get("n") is None and pos.get("batch_size") is None and "steps" in pos
    if not source:
        for key in ("n", "batch_size"):
            _field(where, pos, key, int, 1)
    ranks = _field(where, pos, "ranks", int, 1, required=False) or 1
    _field(where, pos, "seed", int, 0)
    _field(where, pos, "shuffle", bool)
    if source:   # fit on a PyDataset / generator (models/training_sources.py): steps per epoch
        steps = _field(where, pos, "steps", int, 1)
    else:
        from .data import steps_per_epoch
        steps = steps_per_epoch(pos["n"], pos["batch_size"], ranks)
    if pos["step"] > steps:
        _fail(f"{where} is at step {pos['step']} of an epoch of {steps} steps")
    if "sums" in pos:
        sums = _field(where, pos, "sums", list)
        for v in sums:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                _fail(f"{where} has a metric sum that is not a finite number: {v!r:.50}")
    else:                       # written before graph models: one output
        _field(where, pos, "loss_sum", float)


def _check_history(hist, epochs_done):
    for k, vals in hist.items():
        if not isinstance(vals, list) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                             for v in vals):
            _fail(f"the history: {k!r} is not a list of numbers")
        if len(vals) > epochs_done:
            _fail(f"the history: {k!r} has {len(vals)} epochs, more than the {epochs_done} done")


def _check_meta(meta, version):
    if not isinstance(meta, dict):
        _fail(f"the metadata is a JSON {type(meta).__name__}, not an object")
    fmt = meta.get("format")
    if fmt not in FORMATS:
        _fail(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    v = _field("the metadata", meta, "version", int, 1)
    if v > version:
        _fail(f"format version {v} is newer than this pynn's ({version})")
    _field("the metadata", meta, "seed", int, 0, required=False)
    _field("the metadata", meta, "class_name", str, required=False)
    _field("the metadata", meta, "config", dict, required=False)
    comp = _field("the metadata", meta, "compile", dict, required=False)
    if comp is not None:
        for key in ("optimizer", "loss"):
            if key not in comp:
                _fail(f"the compile settings have no {key!r}")
        _field("the compile settings", comp, "iterations", int, 0, required=False)
    if fmt == "pynn.checkpoint":
        if "position" not in meta:
            _fail("the checkpoint has no training position")
        _check_position(meta["position"])
        _check_history(_field("the checkpoint", meta, "history", dict, required=False) or {},
                       meta["position"]["epoch"])


def check(path, arrays, meta, version, error, note=""):
    """Raise ``error("<path>: <note><what is wrong>")`` unless ``arrays``
    (name -> ndarray) and ``meta`` (the parsed JSON) make a valid pynn file
    of format version <= ``version``."""
    try:
        _check_meta(meta, version)
        _check_arrays(arrays)
    except _Bad as e:
        raise error(f"{os.fspath(path)}: {note}{e}") from None
