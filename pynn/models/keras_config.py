"""Model configs as Keras writes them (config.json of a .keras archive, the
``model_config`` attribute of a legacy .h5), both ways.

pynn -> Keras: pynn's own configs (already Keras 3's keys) get what Keras 3
adds around them: ``module`` / ``registered_name``, dtype policies,
``build_config``, single inputs/outputs as one ``[layer, node, tensor]``.

Keras -> pynn: Keras 3 and Keras 2 configs are brought to pynn's form
(serialization wrappers stripped, dtype policies to names, Keras 2's node
lists to Keras 3's, initializer classes to pynn initializers); options pynn
lacks are accepted only at their neutral value (``None``, ``False``,
``channels_last`` ...), anything else raises naming the layer and option.
Nothing runs code from a file: Lambda layers and custom (registered) classes
are refused with a clear error.
"""
import inspect

from .. import dtype_policies, initializers, io
from ..layers import get_class
from ..layers.base import Layer, snake_case

# what Keras 3.15 writes as "module" for the classes pynn has
_MODEL_MODULES = {"Sequential": ("keras", None),
                  "Functional": ("keras.src.models.functional", "Functional")}
_MODULE_BY_SUFFIX = {"_initializer": "keras.initializers", "_regularizer": "keras.regularizers",
                     "_constraint": "keras.constraints"}
# Keras options pynn does not take, and the value at which they change nothing
_NEUTRAL = {"data_format": ("channels_last",), "renorm_momentum": None, "autocast": (True,),
            "input_axes": (None,), "output_axes": (None,)}
_CODE_LAYERS = ("Lambda", "TFOpLambda", "SlicingOpLambda")


class UnsupportedLayer(io.FileFormatError):
    """A model file names a layer or an option pynn does not have."""


# ----------------------------------------------------------- pynn -> Keras --
def _policy(dtype, layer=None):
    """Keras 3's serialized DTypePolicy of a layer in a model of ``dtype``
    (the layer's own policy as it runs there, e.g. mixed_bfloat16)."""
    policy = dtype_policies.DTypePolicy(str(dtype)) if layer is None else \
        dtype_policies.effective_policy(layer._dtype_policy, dtype)
    return dtype_policies.serialize(policy)


def _wrap(obj, module):
    """A {"class_name", "config"} dict as Keras 3 serializes it."""
    if not isinstance(obj, dict) or "class_name" not in obj:
        return obj
    out = {"module": obj.get("module", module), "class_name": obj["class_name"],
           "config": dict(obj.get("config") or {}), "registered_name": obj.get("registered_name")}
    return out


def layer_config_to_keras(layer, dtype):
    """Keras 3's {"module", "class_name", "config", "registered_name",
    "build_config"} of one pynn layer or model."""
    from .saving import _class_name
    cls = _class_name(layer)
    if getattr(layer, "is_model", False):
        return model_to_keras(layer, dtype)
    cfg = dict(layer.get_config())
    if cls != "InputLayer":
        cfg.pop("input_shape", None)
        cfg["dtype"] = _policy(dtype, layer)
    if cls == "SpatialDropout1D":
        cfg.pop("data_format", None)     # Keras' SpatialDropout1D takes none
    for k, v in list(cfg.items()):
        for suffix, module in _MODULE_BY_SUFFIX.items():
            if k.endswith(suffix) and isinstance(v, dict):
                cfg[k] = _wrap(v, module)
    out = {"module": "keras.layers", "class_name": cls, "config": cfg, "registered_name": None}
    if cls != "InputLayer" and layer.input_shape is not None:
        out["build_config"] = {"input_shape": _batch_shape(layer.input_shape)}
    return out


def _batch_shape(shape):
    if isinstance(shape, list):
        return [[None] + list(s) for s in shape]
    return [None] + list(shape)


def model_to_keras(model, dtype=None):
    """The whole model as Keras 3 serializes it (config.json less the
    compile_config)."""
    from .saving import _class_name, functional_config
    from .sequential import Sequential
    dtype = dtype or model._dtype.name
    if isinstance(model, Sequential):
        model._ensure_graph()
        cfg = model.get_config()
        cfg["dtype"] = _policy(dtype, model)
        layers = [model._input_layer] + model.layers
        cfg["layers"] = [layer_config_to_keras(l, dtype) for l in layers]
        cls = "Sequential"
    else:
        cfg = functional_config(model)
        cls = "Functional"
        for spec, layer in zip(cfg["layers"], model.layers):
            k = layer_config_to_keras(layer, dtype)
            k["name"], k["inbound_nodes"] = spec["name"], spec["inbound_nodes"]
            spec.clear()
            spec.update(k)
        for key in ("input_layers", "output_layers"):
            if len(cfg[key]) == 1:
                cfg[key] = cfg[key][0]
    module, registered = _MODEL_MODULES[cls]
    out = {"module": module, "class_name": cls, "config": cfg, "registered_name": registered}
    shape = model._inputs[0].shape if len(model._inputs) == 1 else [t.shape for t in model._inputs]
    out["build_config"] = {"input_shape": list(shape) if not isinstance(shape, list)
                           else [list(s) for s in shape]}
    return out


# ----------------------------------------------------------- Keras -> pynn --
def _strip(obj):
    """Keras 3's serialization wrappers off (module, registered_name, ids)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items()
                if k not in ("module", "registered_name", "shared_object_id")}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _accepted(cls):
    """The keyword arguments cls(...) takes (its __init__s up the MRO)."""
    names = set()
    for c in cls.__mro__:
        init = c.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names.update(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind == p.VAR_KEYWORD for p in params) or c is Layer:
            break
    names.discard("self")
    return names


def _initializer(value, where):
    """A Keras initializer config as a pynn initializer."""
    if not isinstance(value, dict):
        return value
    name, cfg = value.get("class_name"), dict(value.get("config") or {})
    for k in ("input_axes", "output_axes"):
        if cfg.get(k) is None:
            cfg.pop(k, None)
    try:
        maker = initializers._BY_NAME.get(snake_case(str(name)))
        if maker is not None and not isinstance(maker, type):
            return maker(**cfg)          # GlorotUniform, HeNormal, ...: functions in pynn
        return initializers.get({"class_name": name, "config": cfg})
    except (TypeError, ValueError) as e:
        raise UnsupportedLayer(f"{where}: initializer {name!r} ({e})") from None


def _policy_name(name, where):
    """A dtype policy name of a file, checked: float32, float64, mixed_bfloat16."""
    try:
        return dtype_policies.DTypePolicy(name).name
    except (NotImplementedError, ValueError, TypeError) as e:
        raise UnsupportedLayer(f"{where}: dtype {name!r} is not supported ({e})") from None


def _layer_config(class_name, cfg, where):
    """A Keras layer config in the form pynn's from_config takes."""
    cls = get_class(class_name)
    cfg = dict(cfg)
    dt = cfg.get("dtype")
    if isinstance(dt, dict):
        dt = (dt.get("config") or {}).get("name")
    if class_name == "InputLayer":
        if cfg.get("batch_shape") is None and cfg.get("batch_input_shape") is not None:
            cfg["batch_shape"] = cfg.pop("batch_input_shape")   # Keras 2
        if cfg.get("sparse") or cfg.get("ragged"):
            raise UnsupportedLayer(f"{where}: sparse or ragged inputs are not supported")
        return cfg
    if dt is not None:
        cfg["dtype"] = _policy_name(dt, where)
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise UnsupportedLayer(f"{where}: data_format={cfg['data_format']!r} is not supported "
                               "(pynn computes channels_last)")
    ok = _accepted(cls)
    for k in list(cfg):
        if k in ok:
            if k.endswith("_initializer"):
                cfg[k] = _initializer(cfg[k], f"{where}, {k}")
            continue
        v = cfg[k]
        neutral = _NEUTRAL.get(k, (None, False))
        if neutral is None or v in neutral or (v is None) or v is False:
            del cfg[k]
            continue
        raise UnsupportedLayer(f"{where}: option {k}={v!r:.80} of {class_name} is not supported by "
                               "pynn")
    if class_name == "BatchNormalization" and isinstance(cfg.get("axis"), list):
        if len(cfg["axis"]) != 1:
            raise UnsupportedLayer(f"{where}: BatchNormalization over several axes "
                                   f"{cfg['axis']} is not supported")
        cfg["axis"] = cfg["axis"][0]       # Keras 2 writes [3]
    return cfg


def _check_class(entry, where):
    cn = entry.get("class_name")
    if not isinstance(cn, str):
        raise io.FileFormatError(f"{where}: a layer entry has no class_name")
    if cn in _CODE_LAYERS:
        raise UnsupportedLayer(f"{where}: layer {_name_of(entry)!r} is a {cn} layer: it holds "
                               "Python code, which pynn never loads or runs from a file")
    reg = entry.get("registered_name")
    if reg not in (None, cn, "Functional") or str(entry.get("module") or "keras").split(".")[0] \
            not in ("keras", "tf_keras", "tensorflow"):
        raise UnsupportedLayer(f"{where}: layer {_name_of(entry)!r} is the custom class "
                               f"{reg or cn!r} (module {entry.get('module')!r}): custom objects "
                               "cannot be loaded by pynn")
    return cn


def _name_of(entry):
    cfg = entry.get("config") if isinstance(entry.get("config"), dict) else {}
    return entry.get("name", cfg.get("name"))


def _node_ref(a):
    """A Keras 2 inbound tensor [name, node, tensor, kwargs] as Keras 3's."""
    return {"class_name": "__keras_tensor__",
            "config": {"keras_history": [a[0], int(a[1]), int(a[2])]}}


def _nodes(nodes, where):
    out = []
    for node in nodes or []:
        if isinstance(node, dict):
            out.append({"args": node.get("args", []), "kwargs": {}})
            continue
        if not isinstance(node, list) or not all(isinstance(a, list) and len(a) >= 3
                                                 for a in node):
            raise io.FileFormatError(f"{where}: an inbound node is malformed: {node!r:.200}")
        refs = [_node_ref(a) for a in node]           # Keras 2: [[name, node, tensor, {}], ...]
        out.append({"args": refs if len(refs) == 1 else [refs], "kwargs": {}})
    return out


def _refs(refs):
    if isinstance(refs, list) and len(refs) == 3 and isinstance(refs[0], str):
        return [refs]                                 # Keras 3: one [layer, node, tensor]
    return refs


def model_config_from_keras(entry, where):
    """(class name, pynn config) of a Keras model entry {"class_name", "config"}."""
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        raise io.FileFormatError(f"{where}: the model config is not a {{class_name, config}} "
                                 "object")
    cn = _check_class(entry, where)
    if cn not in ("Sequential", "Functional", "Model"):
        raise UnsupportedLayer(f"{where}: the model is a {cn!r}: pynn loads Sequential and "
                               "functional models")
    cfg = dict(entry["config"])
    layers = cfg.get("layers")
    if not isinstance(layers, list):
        raise io.FileFormatError(f"{where}: the model config has no list of layers")
    out_layers = []
    for spec in layers:
        if not isinstance(spec, dict):
            raise io.FileFormatError(f"{where}: a layer entry is malformed: {spec!r:.200}")
        lcn = _check_class(spec, where)
        name = _name_of(spec)
        if lcn in ("Sequential", "Functional", "Model"):
            sub_cn, sub_cfg = model_config_from_keras(spec, where)
            new = {"class_name": "Functional" if sub_cn != "Sequential" else sub_cn,
                   "config": sub_cfg}
        else:
            try:
                lcfg = _layer_config(lcn, _strip(spec.get("config") or {}),
                                     f"{where}: layer {name!r} ({lcn})")
            except (NotImplementedError, ValueError) as e:
                if isinstance(e, io.FileFormatError):
                    raise
                raise UnsupportedLayer(f"{where}: layer {name!r}: {e}") from None
            new = {"class_name": lcn, "config": lcfg}
        if "inbound_nodes" in spec:
            new["name"] = name
            new["inbound_nodes"] = _nodes(spec["inbound_nodes"], where)
        out_layers.append(new)
    cfg["layers"] = out_layers
    if cn == "Sequential":
        dt = cfg.get("dtype")
        dt = (dt.get("config") or {}).get("name", "float32") if isinstance(dt, dict) \
            else (dt or "float32")
        cfg["dtype"] = _policy_name(dt, f"{where}: the model")
        return "Sequential", cfg
    cfg["input_layers"] = _refs(cfg.get("input_layers"))
    cfg["output_layers"] = _refs(cfg.get("output_layers"))
    return "Functional", cfg


def model_from_keras(entry, where):
    """A pynn model (weights not yet loaded) from a Keras model config."""
    from .functional import Model
    from .sequential import Sequential
    cn, cfg = model_config_from_keras(entry, where)
    try:
        if cn == "Sequential":
            model = Sequential.from_config(cfg)
            model._ensure_graph()
        else:
            model = Model.from_config(cfg)
    except io.FileFormatError as e:
        raise io.FileFormatError(f"{where}: {e}") from None
    except (NotImplementedError, TypeError, ValueError) as e:
        raise UnsupportedLayer(f"{where}: the model cannot be built in pynn: {e}") from None
    return model

