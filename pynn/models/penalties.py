"""The model side of regularizers and constraints (Keras semantics).

- :func:`loss_sum`: the regularization term of the loss for a batch of n
  samples: n * (weight penalties + activity penalties of the last forward),
  added to the loss sum the logs report (train and evaluate, as Keras adds
  ``model.losses`` to the loss).
- :func:`add_weight_gradients`: after the gradient is complete (under MPI:
  after the allreduce, so the penalty's gradient is added once, on every
  rank identically), ``g += d penalty / d w`` for each regularized weight.
  (Activity penalties add their gradient in the layer's backward.)
- :func:`apply_constraints`: after the optimizer step, ``w = c(w)``.

Only trainable weights of trainable layers are regularized or constrained
(Keras regularizes ``trainable_weights`` and constrains what the optimizer
updates).
"""
from .. import constraints


def _leaves(model, attr):
    """(layer, weight name, object) for the trainable weights with ``attr``."""
    trainable = model._trainable_leaves
    for layer in model._leaf_list:
        objs = getattr(layer, attr, None)
        if not objs or layer not in trainable:
            continue
        specs = {s.name: s for s in layer.specs}
        for wname, obj in objs.items():
            s = specs.get(wname)
            if s is not None and s.trainable:
                yield layer, wname, obj


def _contexts(store):
    for key, ctx in store.items():
        if isinstance(key, str):
            continue
        yield ctx
        sub = getattr(ctx, "store", None)
        if sub:
            yield from _contexts(sub)


def penalty(model):
    """Weight penalties now + activity penalties of the last forward."""
    total = sum(reg(layer.w[w]) for layer, w, reg in _leaves(model, "weight_regularizers"))
    if any(getattr(l, "activity_regularizer", None) is not None for l in model._leaf_list):
        total += sum(getattr(c, "activity_loss", 0.0) for c in _contexts(model._store))
    return float(total)


def loss_sum(model, n):
    """The regularization term of the loss summed over a batch of n samples."""
    return n * penalty(model)


def add_weight_gradients(model):
    for layer, w, reg in _leaves(model, "weight_regularizers"):
        reg.add_gradient(layer.w[w], layer.g[w], 1.0)


def apply_constraints(model):
    for layer, w, c in _leaves(model, "weight_constraints"):
        constraints.apply(c, layer.w[w], model.ops)
