"""What Dense and the convolution layers share for Keras' regularizer and
constraint arguments: ``kernel_regularizer`` / ``bias_regularizer`` (a
penalty on a weight: added to the loss, its gradient to the weight's),
``activity_regularizer`` (a penalty on the layer's output divided by the
batch size, as Keras; its gradient is added to the output gradient in
backward) and ``kernel_constraint`` / ``bias_constraint`` (applied after
each optimizer step).  The model side (summing the penalties, adding the
weight gradients, applying the constraints) is pynn/models/penalties.py.
"""
from .. import constraints, regularizers


class _Penalized:
    """Mixin for layers with weight regularizers/constraints."""

    activity_regularizer = None
    weight_regularizers = {}
    weight_constraints = {}

    def _init_penalties(self, weight_args, activity_regularizer=None):
        """weight_args: {argument name: (weight name, value)} with arguments
        ending in ``_regularizer`` or ``_constraint``."""
        self._penalty_args = list(weight_args)
        self.weight_regularizers, self.weight_constraints = {}, {}
        for arg, (wname, value) in weight_args.items():
            if arg.endswith("_regularizer"):
                obj = regularizers.get(value)
                if obj is not None:
                    self.weight_regularizers[wname] = obj
            else:
                obj = constraints.get(value)
                if obj is not None:
                    self.weight_constraints[wname] = obj
            setattr(self, arg, obj)
        self.activity_regularizer = regularizers.get(activity_regularizer)

    def _penalty_config(self):
        c = {}
        for arg in self._penalty_args:
            mod = regularizers if arg.endswith("_regularizer") else constraints
            c[arg] = mod.serialize(getattr(self, arg))
        c["activity_regularizer"] = regularizers.serialize(self.activity_regularizer)
        return c

    # -- the output penalty -----------------------------------------------------
    def _record_activity(self, y, batch):
        """After forward: this call's output penalty (Keras divides it by the batch size)."""
        if self.activity_regularizer is not None:
            self.ctx.activity_loss = self.activity_regularizer(y) / batch
            self.ctx.activity_batch = batch

    def _activity_grad(self, dy, y):
        """dy plus the output penalty's gradient (in a buffer of the layer's).
        Under MPI each rank's penalty is of its own batch and the gradients
        are summed over the ranks: each adds 1/ranks of its gradient, so the
        sum is the gradient of the penalty averaged over the ranks."""
        reg = self.activity_regularizer
        if reg is None:
            return dy
        owner = getattr(self, "_owner", None)
        ranks = owner._dist.size if owner is not None else 1
        d = self._buf("dy_activity", dy.shape)
        d[...] = dy
        reg.add_gradient(y, d, 1.0 / (self.ctx.activity_batch * ranks))
        return d
