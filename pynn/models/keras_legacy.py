"""Legacy Keras HDF5 files (``.h5`` / ``.hdf5``): what tf.keras 2 wrote with
``model.save("m.h5")`` and ``save_weights("w.h5")``, and what Keras 3 still
writes and reads.

A model file: root attributes ``model_config`` (JSON {"class_name",
"config"}), ``training_config`` (JSON: loss, metrics, ``optimizer_config``),
``keras_version``, ``backend``; group ``model_weights`` with attribute
``layer_names`` and one group per layer with attribute ``weight_names``
(dataset paths inside the group, in the layer's legacy order: trainable
weights, then the others; a nested model lists all of its weights);
``optimizer_weights`` (attribute ``weight_names``, Keras 3's
``optimizer.variables`` order: read, not written -- see save_legacy).  A weights file has the ``model_weights``
layout at its root.  Layers are matched by order among the layers with
weights, as Keras does.  Attributes longer than HDF5's 64 KiB header are
split by Keras into ``name0``, ``name1``, ...: read that way too.
"""
import json
import logging
import os

import numpy as np

from .. import io
from ..layers.base import InputLayer
from . import alloc_limit, keras_archive, keras_config, keras_h5, keras_optimizer

_log = logging.getLogger("pynn")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path):
    try:
        with open(path, "rb") as f:
            return f.read(8) == HDF5_MAGIC
    except OSError:
        return False


# ------------------------------------------------------------ weight order --
def _is_model(l):
    return getattr(l, "is_model", False)


def _sublayers(m):
    return [l for l in m.layers if not isinstance(l, InputLayer)]


def _all(l):
    if _is_model(l):
        return [w for s in _sublayers(l) for w in _all(s)]
    return [(l, s) for s in sorted(l.specs, key=lambda s: not s.trainable)]


def _trainable(l):
    if not l.trainable:
        return []
    if _is_model(l):
        return [w for s in _sublayers(l) for w in _trainable(s)]
    return [(l, s) for s in l.specs if s.trainable]


def _non_trainable(l):
    if not l.trainable:
        return _all(l)
    if _is_model(l):
        return [w for s in _sublayers(l) for w in _non_trainable(s)]
    return [(l, s) for s in l.specs if not s.trainable]


def legacy_weights(layer):
    """[(leaf layer, Weight)] in Keras' legacy order (trainable + non-trainable)."""
    return _trainable(layer) + _non_trainable(layer)


# -------------------------------------------------------------------- write --
def _legacy_entry(e):
    """A Keras 3 layer entry as the legacy writer stores it (no module)."""
    out = {"class_name": e["class_name"], "config": dict(e["config"])}
    if isinstance(out["config"].get("layers"), list):
        out["config"]["layers"] = [_legacy_entry(x) for x in out["config"]["layers"]]
    for k in ("name", "inbound_nodes"):
        if k in e:
            out[k] = e[k]
    return out


def _write_layers(group, model):
    prefix = f"{model.name}/" if type(model).__name__ == "Sequential" else ""
    layers = model.layers          # a Sequential's leave its InputLayer out, as Keras'
    group.attrs["layer_names"] = np.array([l.name.encode("utf8") for l in layers])
    group.attrs["backend"] = b"tensorflow"
    group.attrs["keras_version"] = keras_archive.KERAS_VERSION.encode("utf8")
    for layer in sorted(layers, key=lambda l: l.name):
        g = group.create_group(layer.name)
        names = []
        for leaf, spec in legacy_weights(layer) if not isinstance(layer, InputLayer) else []:
            inner = f"{layer.name}/{leaf.name}" if leaf is not layer else leaf.name
            names.append(f"{prefix}{inner}/{spec.name}")
            g.create_dataset(names[-1], data=np.asarray(leaf.ops.to_numpy(leaf.w[spec.name])))
        g.attrs["weight_names"] = np.array([n.encode("utf8") for n in names], dtype="S") \
            if names else np.array([], dtype="S1")
    tl = group.create_group("top_level_model_weights")
    tl.attrs["weight_names"] = np.array([], dtype="S1")


def _h5_bytes(fill):
    import io as _pyio
    import h5py
    buf = _pyio.BytesIO()
    with h5py.File(buf, "w") as h5:
        fill(h5)
    return buf.getvalue()


def save_legacy(model, path, overwrite=True, include_optimizer=True):
    keras_h5.require_h5py()
    path = os.fspath(path)
    if not keras_archive._may_write(model, path, overwrite):
        return
    model._ensure_graph()
    model._ensure_allocated()
    entry = _legacy_entry(keras_config.model_to_keras(model))
    cc = {}
    if include_optimizer and model.compiled:
        try:
            cc = keras_optimizer.compile_config(model)
        except NotImplementedError as e:
            _log.warning("%s: the compile settings are not saved (%s)", path, e)

    def fill(h5):
        h5.attrs["backend"] = "tensorflow"
        h5.attrs["keras_version"] = keras_archive.KERAS_VERSION
        h5.attrs["model_config"] = json.dumps(entry).encode("utf8")
        if cc:
            opt = cc.pop("optimizer")
            cc["optimizer_config"] = {"class_name": opt["class_name"], "config": opt["config"]}
            h5.attrs["training_config"] = json.dumps(cc).encode("utf8")
        _write_layers(h5.create_group("model_weights"), model)
        # no optimizer_weights: Keras 3.15 loads them into an optimizer built
        # without the model's variables, and fit then fails ("Unknown
        # variable"), also for the .h5 files Keras writes itself; without
        # them Keras compiles the model and trains it with a fresh optimizer
    data = _h5_bytes(fill)
    io.atomic_write(path, lambda f: f.write(data))


def save_weights_legacy(model, path, overwrite=True):
    keras_h5.require_h5py()
    path = os.fspath(path)
    if not keras_archive._may_write(model, path, overwrite):
        return
    model._ensure_graph()
    model._ensure_allocated()
    data = _h5_bytes(lambda h5: _write_layers(h5, model))
    io.atomic_write(path, lambda f: f.write(data))


# --------------------------------------------------------------------- read --
def _attr_list(obj, name, where):
    """A string-list attribute, also when Keras split it (name0, name1, ...)."""
    if name in obj.attrs:
        raw = obj.attrs[name]
    else:
        parts, k = [], 0
        while f"{name}{k}" in obj.attrs:
            parts.extend(list(obj.attrs[f"{name}{k}"]))
            k += 1
        if not k:
            raise io.FileFormatError(f"{where}: no {name!r} attribute")
        raw = parts
    raw = np.atleast_1d(np.asarray(raw))
    out = []
    for x in raw.tolist():
        out.append(x.decode("utf8") if isinstance(x, bytes) else str(x))
    return out


def _json_attr(h5, name, where, required=True):
    v = h5.attrs.get(name)
    if v is None:
        if required:
            raise io.FileFormatError(f"{where}: no {name!r} attribute: not a Keras model file "
                                     "(a weights file? use load_weights)")
        return None
    if isinstance(v, bytes):
        v = v.decode("utf8")
    try:
        return json.loads(str(v))
    except json.JSONDecodeError as e:
        raise io.FileFormatError(f"{where}: the {name} attribute is not valid JSON ({e})") from None


def read_layers(group, model, where):
    """{pynn weight key: array} from a legacy model_weights group."""
    import h5py
    names = _attr_list(group, "layer_names", where)
    saved = []
    for n in names:
        g = group.get(n)
        if not isinstance(g, h5py.Group):
            raise io.FileFormatError(f"{where}: layer {n!r} is listed but has no group")
        wn = _attr_list(g, "weight_names", where) if ("weight_names" in g.attrs or
                                                       "weight_names0" in g.attrs) else []
        wn = [w for w in wn if w]
        if wn:
            saved.append((n, g, wn))
    model._ensure_graph()
    model._ensure_allocated()
    ours = [l for l in model.layers if not isinstance(l, InputLayer) and legacy_weights(l)]
    if len(saved) != len(ours):
        raise io.FileFormatError(
            f"{where}: the file has weights for {len(saved)} layers "
            f"({[s[0] for s in saved][:6]}), the model {len(ours)} "
            f"({[l.name for l in ours][:6]})")
    index = {layer: i for i, layer in enumerate(model._leaves())}
    out = {}
    for (n, g, wn), layer in zip(saved, ours):
        want = legacy_weights(layer)
        if len(wn) != len(want):
            raise io.FileFormatError(f"{where}: layer {n!r} has {len(wn)} weights in the file, "
                                     f"the model's layer {layer.name!r} {len(want)}")
        for w, (leaf, spec) in zip(wn, want):
            if w not in g:
                raise io.FileFormatError(f"{where}: weight {n}/{w} is listed but missing")
            a = keras_h5.checked_array(g[w], spec.shape, f"{where}: {n}/{w}")
            out[f"weights/{index[leaf]}/{leaf.name}/{spec.name}"] = a
    return out


def _file_cap(path):
    return keras_archive.element_cap(os.path.getsize(path))


def load_legacy(path, compile=True):
    keras_h5.require_h5py()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    with keras_h5.open_h5(path, path) as h5:
        entry = _json_attr(h5, "model_config", path)
        if "model_weights" not in h5:
            raise io.FileFormatError(f"{path}: no model_weights group")
        with alloc_limit.limit(_file_cap(path), path):
            model = keras_config.model_from_keras(entry, path)
            model._assign_weights(read_layers(h5["model_weights"], model, path))
        tc = _json_attr(h5, "training_config", path, required=False) if compile else None
        if tc and keras_optimizer.compile_from_keras(model, tc, path) and \
                "optimizer_weights" in h5:
            _load_optimizer(model, h5["optimizer_weights"], path,
                            keras_optimizer.wrapper_variables(tc))
    return model


class _ListedGroup:
    """optimizer_weights seen as Keras 3's optimizer/vars (0, 1, ...)."""

    def __init__(self, group, names):
        self._g, self._n = group, names

    def keys(self):
        return [str(i) for i in range(len(self._n))]

    def __getitem__(self, k):
        return self._g[self._n[int(k)]]


def _load_optimizer(model, group, where, skip=0):
    names = _attr_list(group, "weight_names", where)
    for n in names:
        if n not in group:
            raise io.FileFormatError(f"{where}: optimizer weight {n!r} is listed but missing")
    keras_optimizer.load_optimizer_arrays(model, _ListedGroup(group, names), where, skip)


def load_weights_legacy(model, path):
    keras_h5.require_h5py()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    with keras_h5.open_h5(path, path) as h5:
        group = h5
        if "layer_names" not in h5.attrs and "layer_names0" not in h5.attrs:
            if "model_weights" in h5:
                group = h5["model_weights"]
            elif "vars" in h5 or "layers" in h5:        # Keras 3 layout under an .h5 name
                model._assign_weights(keras_h5.read_weights(h5, model, path))
                return
        model._assign_weights(read_layers(group, model, path))
