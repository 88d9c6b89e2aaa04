"""``CPUOps``: the hot operations on the compiled kernels of nnkernels.

The matrix products pass ``precision="bfloat16"`` on to the kernels only
when it is asked for (``nk.dense_forward``, ``nk.dense_backward``,
``nk.conv2d``, ``nk.conv2d_backward``, ``nk.conv2d_backward_data``); float32
calls are made exactly as without it.
"""
import numpy as np

from .bf16 import is_bf16
from .ops import Ops

_BF16 = {"precision": "bfloat16"}
_NONE = {}


def _kw(precision):
    """The kernels' keyword for a product precision ({} for float32)."""
    return _BF16 if is_bf16(precision) else _NONE


class CPUOps(Ops):
    """Ops with the hot paths in nnkernels (float32 / float64, C-contiguous)."""

    name = "cpu"
    # conv2d_forward's out may be uint16 (bfloat16 bit patterns) and the
    # batch norm ops take such an x (nnkernels): pynn/models/fusion.py
    bf16_storage = True
    # batchnorm_backward may write dx over dy and dresidual over y (nnkernels
    # reads each element before it writes it): pynn/models/graph.py tells
    # a batch norm when nothing reads its output gradient, or its output,
    # after its backward
    bn_backward_in_place = True

    def __init__(self):
        import nnkernels
        self.nk = nnkernels

    def dense_forward(self, x, w, b=None, activation=None, out=None, *, precision=None):
        if activation in (None, "linear", "relu"):
            return self.nk.dense_forward(x, w, b, activation=activation, out=out,
                                         **_kw(precision))
        return super().dense_forward(x, w, b, activation, out, precision=precision)

    def dense_backward(self, dy, x, w, y=None, activation=None, *, need_dx=True,
                       dx=None, dw=None, db=None, precision=None):
        return self.nk.dense_backward(dy, x, w, y=y, activation=activation, need_dx=need_dx,
                                      need_db=db is not None, dx=dx, dw=dw, db=db,
                                      **_kw(precision))

    def conv2d_forward(self, x, w, b=None, *, strides=1, padding="valid", dilation=1, groups=1,
                       activation=None, out=None, precision=None):
        return self.nk.conv2d(x, w, b, strides=strides, padding=padding, dilation=dilation,
                              groups=groups, activation=activation, out=out, **_kw(precision))

    def conv2d_maxpool_forward(self, x, w, b=None, *, strides=1, padding="valid", dilation=1,
                               groups=1, activation=None, out=None, indices=None,
                               precision=None):
        return self.nk.conv2d_maxpool(x, w, b, strides=strides, padding=padding,
                                      dilation=dilation, groups=groups, activation=activation,
                                      out=out, indices=indices, **_kw(precision))

    def conv2d_maxpool_backward(self, dy, indices, x, w, y=None, activation=None, *, strides=1,
                                padding="valid", dilation=1, groups=1, need_dx=True,
                                need_dw=True, dx=None, dw=None, db=None, accumulate_dx=False,
                                precision=None):
        return self.nk.conv2d_maxpool_backward(dy, indices, x, w, strides=strides,
                                               padding=padding, dilation=dilation,
                                               groups=groups, activation=activation, y=y,
                                               need_dx=need_dx, need_dw=need_dw,
                                               need_db=db is not None, dx=dx, dw=dw, db=db,
                                               accumulate_dx=accumulate_dx, **_kw(precision))

    def conv2d_backward(self, dy, x, w, y=None, activation=None, *, strides=1, padding="valid",
                        dilation=1, groups=1, need_dx=True, need_dw=True, dx=None, dw=None,
                        db=None, accumulate_dx=False, precision=None):
        return self.nk.conv2d_backward(dy, x, w, strides=strides, padding=padding,
                                       dilation=dilation, groups=groups, activation=activation,
                                       y=y, need_dx=need_dx, need_dw=need_dw,
                                       need_db=db is not None, dx=dx, dw=dw, db=db,
                                       accumulate_dx=accumulate_dx, **_kw(precision))

    def conv2d_backward_data(self, dy, w, x_shape, *, strides=1, padding="valid", dilation=1,
                             groups=1, out=None, precision=None):
        return self.nk.conv2d_backward_data(dy, w, x_shape, strides=strides, padding=padding,
                                            dilation=dilation, groups=groups, out=out,
                                            **_kw(precision))

    def depthwise_conv2d_forward(self, x, w, b=None, *, strides=1, padding="valid", dilation=1,
                                 activation=None, out=None):
        return self.nk.depthwise_conv2d(x, w, b, strides=strides, padding=padding,
                                        dilation=dilation, activation=activation, out=out)

    def depthwise_conv2d_backward(self, dy, x, w, y=None, activation=None, *, strides=1,
                                  padding="valid", dilation=1, need_dx=True, dx=None, dw=None,
                                  db=None):
        return self.nk.depthwise_conv2d_backward(dy, x, w, strides=strides, padding=padding,
                                                 dilation=dilation, activation=activation, y=y,
                                                 need_dx=need_dx, need_db=db is not None, dx=dx,
                                                 dw=dw, db=db)

    def max_pool2d(self, x, pool_size=(2, 2), strides=None, padding="valid", out=None, indices=None):
        return self.nk.max_pool2d(x, pool_size, strides, padding, out=out, indices=indices)

    def max_pool2d_backward(self, dy, indices, x_shape, out=None, y=None, **geometry):
        return self.nk.max_pool2d_backward(dy, indices, x_shape, out=out, y=y, **geometry)

    def avg_pool2d(self, x, pool_size=(2, 2), strides=None, padding="valid", out=None):
        return self.nk.avg_pool2d(x, pool_size, strides, padding, out=out)

    def avg_pool2d_backward(self, dy, x_shape, pool_size=(2, 2), strides=None, padding="valid",
                            out=None):
        return self.nk.avg_pool2d_backward(dy, x_shape, pool_size, strides, padding, out=out)

    def global_avg_pool2d(self, x, out=None):
        return self.nk.global_avg_pool2d(x, out=out)

    def global_avg_pool2d_backward(self, dy, x_shape, out=None):
        return self.nk.global_avg_pool2d_backward(dy, x_shape, out=out)

    def global_max_pool2d(self, x, out=None, indices=None):
        return self.nk.global_max_pool2d(x, out=out, indices=indices)

    def global_max_pool2d_backward(self, dy, indices, x_shape, out=None):
        return self.nk.global_max_pool2d_backward(dy, indices, x_shape, out=out)

    def upsample2d(self, x, size, out=None):
        return self.nk.upsample2d_nearest(x, size, out=out)

    def upsample2d_backward(self, dy, size, out=None):
        return self.nk.upsample2d_nearest_backward(dy, size, out=out)

    def pad2d(self, x, padding, out=None):
        return self.nk.pad2d(x, padding, out=out)

    def crop2d(self, x, cropping, out=None):
        return self.nk.crop2d(x, cropping, out=out)

    def add(self, a, b, out=None):
        return self.nk.add(a, b, out=out)

    def add_n(self, xs, out=None):
        if len(xs) == 2 and xs[0].shape == xs[1].shape:
            return self.nk.add(xs[0], xs[1], out=out)
        return super().add_n(xs, out)

    def activation(self, name, x, out=None, **params):
        if name == "relu" and not params:
            return self.nk.relu(x, out=out)
        return super().activation(name, x, out, **params)   # the reference for the others

    def activation_backward(self, name, dy, y, out=None, x=None, **params):
        if name == "relu" and not params:
            return self.nk.relu_backward(dy, y, out=out)
        return super().activation_backward(name, dy, y, out, x, **params)

    def dropout(self, x, rate, seed, offset=0, out=None):
        return self.nk.dropout(x, rate, seed, offset=offset, out=out)

    def dropout_backward(self, dy, rate, seed, offset=0, out=None):
        return self.nk.dropout_backward(dy, rate, seed, offset=offset, out=out)

    def softmax_xent(self, logits, labels, *, dlogits=None, probs=None, from_logits=True,
                     grad_scale=None):
        return self.nk.softmax_xent(logits, labels, dlogits=dlogits, probs=probs,
                                    from_logits=from_logits, grad_scale=grad_scale)

    def batchnorm_forward(self, x, gamma, beta, **kw):
        return self.nk.batchnorm_forward(x, gamma, beta, **kw)

    def batchnorm_backward(self, dy, x, gamma, save_mean, save_invstd, **kw):
        return self.nk.batchnorm_backward(dy, x, gamma, save_mean, save_invstd, **kw)

    def from_bf16(self, a):
        """A bfloat16 activation (uint16 bit patterns) widened to float32;
        any other array as it is."""
        return self.nk.from_bf16(a) if a.dtype == np.uint16 else a

    def batchnorm_backward_inference(self, dy, x, gamma, moving_mean, moving_var, epsilon, *,
                                     y=None, **kw):
        # a frozen batch norm (constant statistics) after a convolution that
        # stores bfloat16 (ConvBF16Out): Ops' NumPy formula on x widened
        # (on the bit patterns it raised ValueError for its dx)
        return super().batchnorm_backward_inference(
            dy, self.from_bf16(x), gamma, moving_mean, moving_var, epsilon,
            y=None if y is None else self.from_bf16(y), **kw)

    def sum_squares(self, x):
        return self.nk.sum_squares(x)

    def sgd_update(self, p, g, lr, momentum=0.0, nesterov=False, m=None):
        self.nk.sgd_update(p, g, lr, momentum=momentum, nesterov=nesterov, m=m)

    def adam_update(self, p, g, m, v, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1):
        self.nk.adam_update(p, g, m, v, lr, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, step=step)

    def rmsprop_update(self, p, g, v, lr, rho=0.9, epsilon=1e-7, momentum=0.0, m=None,
                       centered=False, mg=None):
        self.nk.rmsprop_update(p, g, v, lr, rho=rho, epsilon=epsilon, momentum=momentum, m=m,
                               centered=centered, mg=mg)

    def adadelta_update(self, p, g, acc_g, acc_d, lr, rho=0.95, epsilon=1e-7):
        self.nk.adadelta_update(p, g, acc_g, acc_d, lr, rho=rho, epsilon=epsilon)


