"""The compile config and the optimizer's variables as Keras 3 saves them.

Keras 3 keeps ``compile_config`` (optimizer, loss, metrics) in config.json
and the optimizer's variables in ``optimizer/vars/<i>`` of the weights file,
in ``optimizer.variables`` order: ``iteration`` (int64), ``learning_rate``
(float32; absent with a schedule), then the slots, per trainable variable in
``model.trainable_variables`` order.  Per optimizer (checked against Keras
3.15.1's ``optimizer.variables``): SGD one ``momentum`` per variable
(momentum > 0); Adam/AdamW ``momentum, velocity`` interleaved per variable,
then every ``velocity_hat`` (amsgrad); RMSprop every ``velocity``, then every
``momentum`` (momentum > 0), then every ``average_gradient`` (centered);
Adadelta, Adagrad, Adamax, Lion their slots interleaved per variable; Nadam
``momentum, velocity`` interleaved, then the scalar ``u_product``.  pynn's
slots are flat over its parameter buffer (same order), so they map one to
one, split at the weights' offsets.
"""
import logging
import math

import numpy as np

from .. import losses, optimizers
from .keras_config import _strip, _wrap

_log = logging.getLogger("pynn")

# blocks of pynn slot names: the slots of a block interleaved per variable,
# the blocks one after the other (Keras' order)
def _blocks(opt):
    n = type(opt).__name__
    slots = list(opt.slots)
    if n == "RMSprop":
        return [[s] for s in slots]
    if n in ("Adam", "AdamW"):
        return [[s for s in slots if s != "vhat"]] + ([["vhat"]] if "vhat" in slots else [])
    return [slots] if slots else []


def _nadam_u_product(opt):
    u = 1.0
    for t in range(1, int(opt.iterations) + 1):
        u *= opt.beta_1 * (1.0 - 0.5 * math.pow(0.96, t))
    return u


def _trainable_shapes(model):
    eff = model._effective_trainable()
    return [s.shape for lay in model._leaves() for s in lay.specs if s.trainable and eff[lay]]


def optimizer_arrays(model):
    """The optimizer's variables in Keras 3's order (a built optimizer), or
    None when the model is not compiled."""
    if not model.compiled or model.optimizer is None:
        return None
    opt = model.optimizer
    opt.build(model.ops, model._params.shape[0], model._dtype)
    out = [np.asarray(int(opt.iterations), np.int64)]
    if not callable(opt._learning_rate):
        out.append(np.asarray(opt.current_learning_rate(), np.float32))
    segs = list(model._segments)
    shapes = _trainable_shapes(model)
    state = {k: model.ops.to_numpy(v) for k, v in opt.state.items()}
    for block in _blocks(opt):
        for (off, size), shape in zip(segs, shapes):
            for slot in block:
                out.append(np.array(state[slot][off:off + size]).reshape(shape))
    if type(opt).__name__ == "Nadam":
        out.append(np.asarray(_nadam_u_product(opt), model._dtype))
    return out


def wrapper_variables(cc):
    """How many variables of the file's optimizer come before those of the
    optimizer pynn trains with: 4 for Keras 3's LossScaleOptimizer (its own
    iteration, learning_rate, step_counter and dynamic_scale, then the inner
    optimizer's; checked against a file of Keras 3.15.1), else 0."""
    opt = (cc or {}).get("optimizer", (cc or {}).get("optimizer_config"))
    return 4 if isinstance(opt, dict) and opt.get("class_name") == "LossScaleOptimizer" else 0


def load_optimizer_arrays(model, group, where, skip=0):
    """Set the compiled model's optimizer state from Keras' optimizer/vars
    group (an h5py group), after ``skip`` variables of a wrapper
    (wrapper_variables); a layout that does not match is skipped with a
    warning, as Keras does."""
    from .keras_h5 import checked_array
    opt = model.optimizer
    opt.build(model.ops, model._params.shape[0], model._dtype)
    has_lr = not callable(opt._learning_rate)
    shapes = _trainable_shapes(model)
    blocks = _blocks(opt)
    n_slots = sum(len(b) for b in blocks) * len(shapes)
    n = skip + 1 + int(has_lr) + n_slots + int(type(opt).__name__ == "Nadam")
    keys = set(group.keys())
    if keys != {str(i) for i in range(n)}:
        _log.warning("%s: the optimizer in the file has %d variables, the model's %s needs %d: "
                     "its state is not loaded (training starts it afresh)", where, len(keys),
                     type(opt).__name__, n)
        return False
    it = checked_array(group[str(skip)], (), f"{where}: optimizer/vars/{skip} (iteration)")
    k = skip + 1 + int(has_lr)
    segs = list(model._segments)
    new = {s: np.array(model.ops.to_numpy(v)) for s, v in opt.state.items()}
    for block in blocks:
        for (off, size), shape in zip(segs, shapes):
            for slot in block:
                a = checked_array(group[str(k)], shape, f"{where}: optimizer/vars/{k} ({slot})")
                new[slot][off:off + size] = a.reshape(-1)
                k += 1
    for s, v in opt.state.items():
        v[...] = model.ops.asarray(new[s])
    opt.iterations = int(it)
    return True


# ------------------------------------------------------------ compile config --
def _loss_entries(model):
    out = []
    for l in model._losses:
        d = losses.serialize(l)
        out.append(_wrap(d, "keras.losses") if isinstance(d, dict) else d)
    return out[0] if len(out) == 1 else out


def compile_config(model):
    """Keras 3's compile_config of a compiled model ({} when not compiled)."""
    from . import compile_metrics as cm
    if not model.compiled:
        return {}
    opt = model.optimizer
    cfg = opt.get_config()
    if cfg.pop("decay", None):
        raise NotImplementedError("Keras 3 has no optimizer decay= (Keras 2): the optimizer "
                                  "cannot be written in a Keras 3 file")
    if isinstance(cfg.get("learning_rate"), dict):
        cfg["learning_rate"] = _wrap(cfg["learning_rate"], "keras.optimizers.schedules")
    if cfg.get("learning_rate") is None:
        raise NotImplementedError("a learning rate given as a function cannot be saved")

    def metrics(weighted):
        rows = cm.serializable([[r for r in row if bool(r[2]) == weighted]
                                for row in model._metric_specs])
        rows = [[_wrap(m, "keras.metrics") if isinstance(m, dict) else m for m in row]
                for row in rows]
        if not any(rows):
            return None
        return rows[0] if len(rows) == 1 else rows
    lw = list(model._loss_weights)
    return {"optimizer": {"module": "keras.optimizers", "class_name": type(opt).__name__,
                          "config": cfg, "registered_name": None},
            "loss": _loss_entries(model),
            "loss_weights": None if all(w == 1 for w in lw) else lw,
            "metrics": metrics(False), "weighted_metrics": metrics(True),
            "run_eagerly": False, "steps_per_execution": 1, "jit_compile": False}


def compile_from_keras(model, cc, where):
    """Compile the model from Keras' compile_config (Keras 3) or training_config
    (Keras 2); returns False (with a warning, as Keras) when it cannot."""
    if not cc:
        return False
    cc = _strip(cc)
    opt = cc.get("optimizer", cc.get("optimizer_config"))
    loss = cc.get("loss")
    try:
        if isinstance(opt, dict):
            ocfg = dict(opt.get("config") or {})
            ocfg.pop("is_legacy_optimizer", None)
            ocfg.pop("jit_compile", None)
            if isinstance(ocfg.get("learning_rate"), dict):
                ocfg["learning_rate"] = _strip(ocfg["learning_rate"])
            opt = optimizers.get({"class_name": opt.get("class_name"), "config": ocfg})
        if isinstance(loss, list):
            loss = [losses.get(l) for l in loss]
            loss = loss[0] if len(loss) == 1 else loss
        elif loss is not None:
            loss = losses.get(loss)

        def unwrap(m):
            if isinstance(m, list) and len(m) == 1 and isinstance(m[0], list):
                return m[0]
            return m or None
        model.compile(optimizer=opt, loss=loss, metrics=unwrap(cc.get("metrics")),
                      weighted_metrics=unwrap(cc.get("weighted_metrics")),
                      loss_weights=cc.get("loss_weights"))
    except (ValueError, TypeError, KeyError, NotImplementedError) as e:
        _log.warning("%s: the model could not be compiled from the file's compile config (%s): "
                     "it is returned uncompiled", where, e)
        return False
    return True

