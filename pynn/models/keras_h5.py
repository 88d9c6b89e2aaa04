"""Weights in Keras 3's HDF5 layout (model.weights.h5 of a .keras archive,
``*.weights.h5``), written and read.

Keras 3 walks the model: the model's own group ``vars`` (attribute
``name``), then ``layers/<name>/vars`` for each layer of ``model.layers``
where ``<name>`` is the snake_case of the layer CLASS made unique among its
siblings (``conv2d``, ``conv2d_1``, ...; never the layer's own name), nested
models recursing into ``layers/<name>/layers/...``; the datasets of a group
are ``0``, ``1``, ... in the layer's weight order (trainable weights, then
the others).  Groups exist for layers without weights too.  A compiled
model adds ``optimizer/vars`` (keras_optimizer.py).

Reading checks every group and dataset against the model (count, shape,
dtype, finite values) before anything is assigned, reading a dataset only
after its declared shape matched.
"""
import numpy as np

from .. import io
from ..layers.base import snake_case


def _keras_class(layer):
    from .saving import _class_name
    return _class_name(layer)


def keras_tree(model):
    """[(group path, object name, [(leaf layer, Weight), ...])] in the order
    Keras 3 walks the model ('' is the model's own group)."""
    out = [("", model.name, [])]

    def walk(m, prefix):
        used = {}
        for layer in m.layers:
            base = snake_case(_keras_class(layer))
            k = used.get(base)
            used[base] = 0 if k is None else k + 1
            name = base if k is None else f"{base}_{k + 1}"
            path = f"{prefix}layers/{name}"
            if getattr(layer, "is_model", False):
                layer._ensure_graph()
                out.append((path, layer.name, []))
                walk(layer, path + "/")
            else:
                specs = sorted(layer.specs, key=lambda s: not s.trainable)   # stable
                out.append((path, layer.name, [(layer, s) for s in specs]))
    walk(model, "")
    return out


def _vars_path(path):
    return f"{path}/vars" if path else "vars"


def write_weights(h5, model):
    """The model's weights into an open, writable h5py.File."""
    model._ensure_graph()
    model._ensure_allocated()
    for path, name, weights in keras_tree(model):
        g = h5.create_group(_vars_path(path))
        g.attrs["name"] = name
        for i, (layer, spec) in enumerate(weights):
            g.create_dataset(str(i), data=np.asarray(layer.ops.to_numpy(layer.w[spec.name])))


def checked_array(ds, shape, where, kinds="fiu"):
    """The values of h5py dataset ds after checking its declared shape
    (before reading), dtype and values."""
    import h5py
    if not isinstance(ds, h5py.Dataset):
        raise io.FileFormatError(f"{where} is not a dataset")
    if tuple(ds.shape) != tuple(shape):
        raise io.FileFormatError(f"{where} has shape {tuple(ds.shape)}, the model expects "
                                 f"{tuple(shape)}")
    if ds.dtype.kind not in kinds:
        raise io.FileFormatError(f"{where} holds {ds.dtype} values, not real numbers")
    try:
        a = ds[()]
    except (OSError, ValueError) as e:
        raise io.FileFormatError(f"{where} cannot be read (truncated or corrupt: {e})") from None
    a = np.asarray(a)
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise io.FileFormatError(f"{where} contains NaN or inf")
    return a


def read_weights(h5, model, where):
    """{pynn weight key: array} for model._assign_weights, from an open
    h5py.File in Keras 3's layout; raises naming ``where`` on any mismatch."""
    import h5py
    model._ensure_graph()
    model._ensure_allocated()
    index = {layer: i for i, layer in enumerate(model._leaves())}
    out = {}
    for path, name, weights in keras_tree(model):
        vp = _vars_path(path)
        g = h5.get(vp)
        if g is None:
            if weights:
                raise io.FileFormatError(f"{where}: no weights for layer {name!r} (group {vp!r} "
                                         "missing)")
            continue
        if not isinstance(g, h5py.Group):
            raise io.FileFormatError(f"{where}: {vp!r} is not a group")
        keys = set(g.keys())
        want = {str(i) for i in range(len(weights))}
        if keys != want:
            raise io.FileFormatError(
                f"{where}: layer {name!r} ({vp}) has {len(keys)} weight arrays "
                f"{sorted(keys)[:6]}, the model's layer {len(weights)}")
        for i, (layer, spec) in enumerate(weights):
            a = checked_array(g[str(i)], spec.shape, f"{where}: {vp}/{i} ({layer.name}/{spec.name})")
            out[f"weights/{index[layer]}/{layer.name}/{spec.name}"] = a
    return out


def open_h5(source, where, mode="r"):
    """h5py.File on a path or file object, errors naming ``where``."""
    import h5py
    try:
        return h5py.File(source, mode)
    except (OSError, ValueError) as e:
        raise io.FileFormatError(f"{where}: not a readable HDF5 file (truncated or corrupt: "
                                 f"{e})") from None


def require_h5py():
    try:
        import h5py  # noqa: F401
    except ImportError:
        raise ImportError("Keras files (.keras, .h5) need h5py: pip install h5py "
                          "(or the [keras] extra: pip install 'nnkernels[keras]')") from None
