"""Model files: architecture as JSON (Keras 3's functional config: layers,
their inbound nodes, input and output layers), weights and optimizer state
in one .npz (pynn/io.py: written atomically, read without pickle), and
checkpoints that add the training position for an exact resume.

Weights are stored under ``weights/<i>/<layer name>/<weight name>`` with
``i`` the position of the layer among the model's weight-carrying layers in
``model.layers`` order (nested models expanded); loading matches ``i`` and
the weight name, so files stay readable when automatic layer names differ.
"""
import logging
import os

import numpy as np

from .. import io, losses, optimizers
from . import compile_metrics as cm
from . import keras_files
from ..layers import InputLayer, from_config as layer_from_config
from ..symbolic import KerasTensor

_log = logging.getLogger("pynn")
_SAID_NOT_WRITING = False


def _tensor_ref(t):
    layer, ni, ti = t._keras_history
    return {"class_name": "__keras_tensor__",
            "config": {"shape": list(t.shape), "dtype": t.dtype, "keras_history": [layer.name, ni, ti]}}


def _node_index_map(model):
    """{(layer, node index in the layer): index among the nodes of this model}."""
    kept = {}
    for layer in model.layers:
        k = 0
        for i, node in enumerate(layer._inbound_nodes):
            if node in model._plan.nodes or (node.is_input and layer in model.layers):
                kept[(layer, i)] = k
                k += 1
    return kept


def functional_config(model):
    kept = _node_index_map(model)

    def ref(t):
        layer, ni, ti = t._keras_history
        r = _tensor_ref(t)
        r["config"]["keras_history"] = [layer.name, kept.get((layer, ni), ni), ti]
        return r

    layers = []
    nodes = set(model._plan.nodes)
    for layer in model.layers:
        inbound = []
        for node in layer._inbound_nodes:
            if node.is_input or node not in nodes:
                continue
            args = [ref(t) for t in node.input_tensors]
            inbound.append({"args": [args] if getattr(layer, "takes_list", False) else args,
                            "kwargs": {}})
        layers.append({"class_name": _class_name(layer), "config": layer.get_config(),
                       "name": layer.name, "inbound_nodes": inbound})

    def hist(t):
        layer, ni, ti = t._keras_history
        return [layer.name, kept.get((layer, ni), ni), ti]
    return {"name": model.name, "trainable": model.trainable, "layers": layers,
            "input_layers": [hist(t) for t in model._inputs],
            "output_layers": [hist(t) for t in model._outputs]}


def _class_name(layer):
    from .sequential import Sequential
    if isinstance(layer, Sequential):
        return "Sequential"
    if getattr(layer, "is_model", False):
        return "Functional"
    return type(layer).__name__


def layer_or_model_from_config(class_name, config):
    if class_name == "Sequential":
        from .sequential import Sequential
        return Sequential.from_config(config)
    if class_name in ("Functional", "Model"):
        from .functional import Model
        return Model.from_config(config)
    return layer_from_config(class_name, config)


def functional_from_config(cls, config, **kw):
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise io.FileFormatError("the model config has no list of layers")
    made, tensors = {}, {}
    for spec in config["layers"]:
        if not isinstance(spec, dict) or "class_name" not in spec or "config" not in spec:
            raise io.FileFormatError(f"a layer entry of the model config is malformed: {spec!r:.200}")
        layer = layer_or_model_from_config(spec["class_name"], spec["config"])
        made[spec.get("name", layer.name)] = layer
        if isinstance(layer, InputLayer):
            tensors[(layer.name, 0, 0)] = layer._tensor
    pending = [(spec, i, node) for spec in config["layers"]
               for i, node in enumerate(spec.get("inbound_nodes") or [])]
    done = [0] * len(pending)
    counts = {}

    def resolve(a):
        if isinstance(a, dict) and a.get("class_name") == "__keras_tensor__":
            h = a["config"]["keras_history"]
            return tensors.get((h[0], int(h[1]), int(h[2])))
        if isinstance(a, list) and len(a) == 3 and isinstance(a[0], str):   # Keras 2 style
            return tensors.get((a[0], int(a[1]), int(a[2])))
        if isinstance(a, list):
            r = [resolve(b) for b in a]
            return None if any(x is None for x in r) else r
        raise io.FileFormatError(f"cannot read a node argument of the model config: {a!r:.200}")

    progress = True
    while progress and not all(done):
        progress = False
        for k, (spec, i, node) in enumerate(pending):
            if done[k]:
                continue
            name = spec.get("name", spec["config"].get("name"))
            if counts.get(name, 0) != i:
                continue      # a shared layer's nodes are made in order
            args = node["args"] if isinstance(node, dict) else node
            ins = resolve(args[0] if len(args) == 1 else args)
            if ins is None:
                continue
            out = made[name](ins)
            outs = out if isinstance(out, list) else [out]
            for ti, t in enumerate(outs):
                tensors[(name, i, ti)] = t
            counts[name] = i + 1
            done[k] = 1
            progress = True
    if not all(done):
        raise io.FileFormatError("the model config has nodes whose inputs never appear")

    def pick(refs):
        try:
            return [tensors[(r[0], int(r[1]), int(r[2]))] for r in refs]
        except (KeyError, TypeError, IndexError):
            raise io.FileFormatError(f"the model config names unknown tensors {refs!r:.200}") from None
    ins, outs = pick(config.get("input_layers") or []), pick(config.get("output_layers") or [])
    return cls(ins if len(ins) > 1 else ins[0], outs if len(outs) > 1 else outs[0],
               name=config.get("name"), **kw)


class Saving:
    """The files half of Model (mixed into pynn.models.Model)."""

    def get_config(self):
        return functional_config(self)

    @classmethod
    def from_config(cls, config, seed=None):
        m = functional_from_config(cls, config)
        if seed is not None:
            m._reseed(seed)
        return m

    def _reseed(self, seed):
        """Re-initialise the weights from ``seed`` (a model made from a file
        before its weights are read)."""
        self.seed = int(seed)
        for layer in self._leaves():
            layer.w = {}
        self._allocate(keep_values=False)

    def _weight_arrays(self):
        self._ensure_graph()
        self._ensure_allocated()
        return {f"weights/{i}/{l.name}/{s.name}": self.ops.to_numpy(l.w[s.name])
                for i, l in enumerate(self._leaves()) for s in l.specs}

    def _meta(self, fmt, include_optimizer):
        meta = {"format": fmt, "class_name": _class_name(self), "config": self.get_config(),
                "seed": int(self.seed)}
        if include_optimizer and self.compiled:
            meta["compile"] = {"optimizer": optimizers.serialize(self.optimizer),
                               "loss": [losses.serialize(l) for l in self._losses],
                               "loss_weights": list(self._loss_weights),
                               "metrics": cm.serializable(
                                   [[r for r in row if not r[2]] for row in self._metric_specs]),
                               "weighted_metrics": cm.serializable(
                                   [[r for r in row if r[2]] for row in self._metric_specs]),
                               "iterations": int(self.optimizer.iterations)}
        return meta

    def _opt_arrays(self):
        if not self.compiled:
            return {}
        return {f"optimizer/{k}": self.ops.to_numpy(v) for k, v in self.optimizer.state.items()}

    def save_weights(self, filepath, overwrite=True):
        """The weights alone in one .npz (see pynn.io); ``*.weights.h5``:
        Keras 3's layout, other ``.h5``: Keras 2's (keras_files.py);
        overwrite=False: an existing file raises FileExistsError instead of
        being replaced."""
        if keras_files.kind(filepath, weights=True):
            return keras_files.save_weights(self, filepath, overwrite)
        self._write_model(filepath, "pynn.weights", False, overwrite=overwrite)

    def save(self, filepath, overwrite=True, include_optimizer=True):
        """Architecture + weights + optimizer state in one .npz (see pynn.io);
        overwrite=False: an existing file raises FileExistsError.  ``.keras``:
        a Keras 3 archive, ``.h5``: a legacy Keras HDF5 file (keras_files.py)."""
        if keras_files.kind(filepath):
            return keras_files.save(self, filepath, overwrite, include_optimizer)
        self._write_model(filepath, "pynn.model", include_optimizer, overwrite=overwrite)

    def _write_model(self, path, fmt, include_optimizer, overwrite=True, **extra_meta):
        self._join_launch()
        if not self._is_chief():
            # under MPI the ranks hold the same model: rank 0 writes, the others do not
            global _SAID_NOT_WRITING
            if not _SAID_NOT_WRITING:
                _SAID_NOT_WRITING = True
                _log.debug("MPI rank %d does not write model files such as %s: rank 0 does",
                           self._dist.rank, path)
            return
        if not overwrite and os.path.exists(path):
            raise FileExistsError(f"{path} exists (overwrite=False)")
        self._ensure_graph()
        arrays = self._weight_arrays()
        if include_optimizer:
            arrays.update(self._opt_arrays())
        meta = self._meta(fmt, include_optimizer)
        meta.update(extra_meta)
        io.write_atomic(path, arrays, meta)

    def _match_weight_arrays(self, arrays, path):
        """{our key: the file's array}, everything checked before anything changes."""
        by_pos = {}
        for k in arrays:
            parts = k.split("/")
            if len(parts) >= 4 and parts[0] == "weights":
                by_pos[(parts[1], parts[-1])] = k
        want = self._weight_arrays()
        missing = [k for k in want if (k.split("/")[1], k.split("/")[-1]) not in by_pos]
        n_file = sum(1 for k in arrays if k.startswith("weights/"))
        if missing or n_file != len(want):
            have = sorted(k for k in arrays if k.startswith("weights/"))
            raise ValueError(f"{path}: the file does not match this model: it has {n_file} weight "
                             f"arrays ({have[:3]}{' ...' if len(have) > 3 else ''}), the model "
                             f"{len(want)}" + (f"; missing {missing[:3]}" if missing else ""))
        out = {}
        for k, v in want.items():
            parts = k.split("/")
            fk = by_pos[(parts[1], parts[-1])]
            a = arrays[fk]
            if a.shape != v.shape:
                raise ValueError(f"{path}: {fk} has shape {a.shape}, the model expects {v.shape}")
            out[k] = a      # real and finite: checked by io.read (pynn.filecheck)
        return out

    def _assign_weights(self, matched):
        for i, l in enumerate(self._leaves()):
            for s in l.specs:
                l.w[s.name][...] = self.ops.asarray(matched[f"weights/{i}/{l.name}/{s.name}"])

    def load_weights(self, filepath, skip_mismatch=False):
        if skip_mismatch:
            raise NotImplementedError("load_weights(skip_mismatch=True) is not supported")
        if keras_files.kind(filepath, weights=True, reading=True):
            return keras_files.load_weights(self, filepath)
        arrays, meta = io.read(filepath, expect=("pynn.weights", "pynn.model", "pynn.checkpoint"))
        self._ensure_graph_from_file(meta)
        self._ensure_allocated()
        self._assign_weights(self._match_weight_arrays(arrays, filepath))

    def _ensure_graph_from_file(self, meta):
        self._ensure_graph()

    def _load_optimizer(self, arrays, meta, path):
        comp = meta.get("compile")
        if comp is None or not self.compiled:
            return
        self.optimizer.build(self.ops, self._params.shape[0], self._dtype)
        for k, v in self.optimizer.state.items():
            a = arrays.get(f"optimizer/{k}")
            if a is None or a.shape != v.shape:
                raise ValueError(f"{path}: optimizer slot {k!r} missing or of the wrong shape")
        for k, v in self.optimizer.state.items():
            v[...] = self.ops.asarray(arrays[f"optimizer/{k}"])
        self.optimizer.iterations = int(comp.get("iterations", 0))
        lr = (comp.get("optimizer") or {}).get("config", {}).get("learning_rate")
        if isinstance(lr, (int, float)) and isinstance(self.optimizer._learning_rate, float):
            self.optimizer.learning_rate = lr    # e.g. changed by a callback before the checkpoint

    # checkpoints (BackupAndRestore): model file + training position
    def _is_chief(self):
        return self._dist.rank == 0

    def _save_checkpoint(self, path, history=None):
        """history: {metric: [value per epoch done]} (kept in the checkpoint,
        so that a resumed run's History covers the whole run)."""
        if self._is_chief():
            self._write_model(path, "pynn.checkpoint", True, position=dict(self._pos),
                              history=history or {})

    def _restore_checkpoint(self, path, epochs=None):
        """Read the checkpoint (validated by io.read); ``epochs``: the run's
        number of epochs, which the checkpoint's epoch may not exceed."""
        arrays, meta = io.read(path, expect=("pynn.checkpoint",))
        matched = self._match_weight_arrays(arrays, path)
        pos = dict(meta["position"])
        if epochs is not None and pos["epoch"] > epochs:
            raise ValueError(f"{path}: the checkpoint is at epoch {pos['epoch']}, beyond the "
                             f"{epochs} epochs of this run")
        if "sums" not in pos:     # written before graph models: one output
            if "loss_sum" not in pos:
                raise io.FileFormatError(f"{path}: the training position has no metric sums")
            pos["sums"] = [pos.pop("loss_sum")] + [pos.pop("correct", 0.0)] * len(self._outputs)
        # resuming under another rank count is allowed: fit converts the step
        self._assign_weights(matched)
        self._load_optimizer(arrays, meta, path)
        if int(meta["seed"]) != int(self.seed):
            self._set_seed(int(meta["seed"]))
        self.resume_position = dict(pos, history=meta.get("history") or {})


def load_model(filepath, compile=True):
    """A model from a file written by model.save (or a checkpoint).  A file
    whose architecture or settings cannot be rebuilt raises
    pynn.io.FileFormatError naming the file (a layer pynn does not support:
    NotImplementedError).  Keras files (.keras, .h5) are read by keras_files."""
    if keras_files.kind(filepath, reading=True):
        return keras_files.load_model(filepath, compile=compile)
    arrays, meta = io.read(filepath, expect=("pynn.model", "pynn.checkpoint"))
    try:
        return _model_from_file(filepath, arrays, meta, compile)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        msg = str(e)
        if isinstance(e, KeyError):
            msg = f"missing entry {msg}"
        if not msg.startswith(os.fspath(filepath)):
            msg = f"{os.fspath(filepath)}: the model cannot be rebuilt from the file: {msg}"
        raise io.FileFormatError(msg) from None


def _model_from_file(filepath, arrays, meta, compile):
    from .functional import Model
    from .sequential import Sequential
    cfg = meta.get("config")
    if not cfg or not isinstance(cfg, dict):
        raise io.FileFormatError(f"{filepath}: no model architecture in the file")
    seed = int(meta.get("seed", 0))
    cls_name = meta.get("class_name", "Sequential")
    if cls_name == "Sequential":
        model = Sequential.from_config(cfg, seed=seed)
        model._ensure_graph()
    elif cls_name == "Functional":
        model = Model.from_config(cfg, seed=seed)
    else:
        raise io.FileFormatError(f"{filepath}: unknown model class {cls_name!r}")
    model._assign_weights(model._match_weight_arrays(arrays, filepath))
    comp = meta.get("compile")
    if compile and comp:
        loss = comp["loss"]
        if isinstance(loss, list):
            loss = [losses.get(l) for l in loss]
            loss = loss[0] if len(loss) == 1 else loss
        def per_output(value):
            value = value or None
            if value and all(isinstance(m, list) for m in value):
                value = value[0] if len(value) == 1 else value
            return value or None
        model.compile(optimizer=optimizers.get(comp["optimizer"]), loss=losses.get(loss)
                      if not isinstance(loss, list) else loss,
                      metrics=per_output(comp.get("metrics")),
                      weighted_metrics=per_output(comp.get("weighted_metrics")),
                      loss_weights=comp.get("loss_weights"))
        model._load_optimizer(arrays, meta, filepath)
    return model


def clone_model(model, input_tensors=None, clone_function=None):
    """A new model with the same architecture and freshly initialised weights
    (Keras' clone_model)."""
    if input_tensors is not None or clone_function is not None:
        raise NotImplementedError("clone_model(input_tensors / clone_function) is not supported")
    from .sequential import Sequential
    if isinstance(model, Sequential):
        return Sequential.from_config(model.get_config())
    cls = type(model)
    return cls.from_config(model.get_config())
