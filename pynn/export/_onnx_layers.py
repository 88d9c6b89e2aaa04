"""Each pynn layer as standard ONNX ops (opset 17).

Tensors keep the model's layout (NHWC, channels last): a convolution or
pooling is wrapped in Transposes to ONNX's NCHW and back (onnxruntime's
optimizer removes the back-to-back pairs), so Flatten, Dense, Concatenate
and every axis keep pynn's meaning.  Geometry (Keras' "same" padding,
asymmetric for even windows and strides, the transposed convolution's
output size) comes from pynn/backend/geometry.py, the rules pynn computes
with.  ``convert(b, layer, inputs, in_shapes, h)`` returns the output
names; a layer class missing from CONVERTERS raises NotImplementedError.
"""
import numpy as np

from ..backend.geometry import conv_padding
from ..backend.ops import resize_box, resize_weights
from ._onnx_activations import activation

_TO_NCHW, _TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


def _weight(b, layer, name, transform=None):
    """The initializer of a layer's weight (stored once per layer and name)."""
    key = (id(layer), name, transform.__name__ if transform else None)
    if key in b._consts:
        return b._consts[key]
    v = np.asarray(layer.ops.to_numpy(layer.w[name]))
    return b.const(f"{layer.name}/{name}", transform(v) if transform else v, key=key)


def _pads(in_shape, kernel, strides, dilation, padding):
    """ONNX pads [top, left, bottom, right] of Keras' padding on (H, W) of
    the (N, H, W, C) shape ``in_shape``."""
    (_, t, bt), (_, l, r) = (conv_padding(in_shape[1 + i], kernel[i], strides[i], dilation[i],
                                          padding) for i in (0, 1))
    return [t, l, bt, r]


def _act(b, layer, y, h, rank=4):
    return activation(b, layer.activation, y, h, rank)


# -- convolutions -------------------------------------------------------------
def _conv_nchw(b, layer, x, in_shape, w, bias, h, group=1, geometry=True):
    """A Conv on NHWC ``x`` via NCHW; returns the NHWC output."""
    xt = b.op("Transpose", [x], h, perm=_TO_NCHW)
    kh, kw = layer.kernel_size
    attrs = dict(kernel_shape=[kh, kw], group=group)
    if geometry:
        attrs.update(strides=list(layer.strides), dilations=list(layer.dilation_rate),
                     pads=_pads(in_shape, layer.kernel_size, layer.strides, layer.dilation_rate,
                                layer.padding))
    y = b.op("Conv", [xt, w] + ([bias] if bias else []), h, **attrs)
    return b.op("Transpose", [y], h, perm=_TO_NHWC)


def _oihw(k):            # (KH, KW, I, O) -> (O, I, KH, KW)
    return k.transpose(3, 2, 0, 1)


def _depthwise_oihw(k):  # (KH, KW, C, M) -> (C*M, 1, KH, KW), output channel c*M + m
    kh, kw, c, m = k.shape
    return k.reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None]


def conv2d(b, layer, xs, shapes, h):
    bias = _weight(b, layer, "bias") if layer.use_bias else None
    y = _conv_nchw(b, layer, xs[0], shapes[0], _weight(b, layer, "kernel", _oihw), bias, h,
                   group=layer.groups)
    return [_act(b, layer, y, h)]


def depthwise_conv2d(b, layer, xs, shapes, h):
    bias = _weight(b, layer, "bias") if layer.use_bias else None
    y = _conv_nchw(b, layer, xs[0], shapes[0], _weight(b, layer, "kernel", _depthwise_oihw), bias,
                   h, group=shapes[0][-1])
    return [_act(b, layer, y, h)]


def separable_conv2d(b, layer, xs, shapes, h):
    c = shapes[0][-1]
    xt = b.op("Transpose", [xs[0]], h, perm=_TO_NCHW)
    t = b.op("Conv", [xt, _weight(b, layer, "depthwise_kernel", _depthwise_oihw)], h,
             kernel_shape=list(layer.kernel_size), group=c, strides=list(layer.strides),
             dilations=list(layer.dilation_rate),
             pads=_pads(shapes[0], layer.kernel_size, layer.strides, layer.dilation_rate,
                        layer.padding))
    bias = [_weight(b, layer, "bias")] if layer.use_bias else []
    y = b.op("Conv", [t, _weight(b, layer, "pointwise_kernel", _oihw)] + bias, h,
             kernel_shape=[1, 1])
    return [_act(b, layer, b.op("Transpose", [y], h, perm=_TO_NHWC), h)]


def _iohw(k):            # Conv2DTranspose kernel (KH, KW, F, C_in) -> (C_in, F, KH, KW)
    return k.transpose(3, 2, 0, 1)


def conv2d_transpose(b, layer, xs, shapes, h):
    """pynn computes the transposed convolution as the data gradient of the
    convolution from its output (size O) to its input with the layer's
    padding: ONNX's ConvTranspose with that convolution's leading pads; the
    trailing pad / output_padding only set the length O."""
    in_shape = shapes[0][1:]
    out_shape = layer.compute_output_shape(tuple(in_shape))
    pads_begin, pads_end, out_pad = [], [], []
    for i in (0, 1):
        k, s, d = layer.kernel_size[i], layer.strides[i], layer.dilation_rate[i]
        o = out_shape[i]
        _, before, _ = conv_padding(o, k, s, d, layer.padding)
        full = s * (in_shape[i] - 1) + (k - 1) * d + 1 - before
        pads_begin.append(before)
        pads_end.append(max(full - o, 0))
        out_pad.append(max(o - full, 0))
    xt = b.op("Transpose", [xs[0]], h, perm=_TO_NCHW)
    bias = [_weight(b, layer, "bias")] if layer.use_bias else []
    y = b.op("ConvTranspose", [xt, _weight(b, layer, "kernel", _iohw)] + bias, h,
             kernel_shape=list(layer.kernel_size), strides=list(layer.strides),
             dilations=list(layer.dilation_rate), pads=pads_begin + pads_end,
             output_padding=out_pad)
    return [_act(b, layer, b.op("Transpose", [y], h, perm=_TO_NHWC), h)]


# -- dense, pooling -----------------------------------------------------------
def dense(b, layer, xs, shapes, h):
    y = b.op("MatMul", [xs[0], _weight(b, layer, "kernel")], h)
    if layer.use_bias:
        y = b.op("Add", [y, _weight(b, layer, "bias")], h)
    return [_act(b, layer, y, h, rank=len(shapes[0]))]


def _pool(op_type, **extra):
    def convert(b, layer, xs, shapes, h):
        xt = b.op("Transpose", [xs[0]], h, perm=_TO_NCHW)
        y = b.op(op_type, [xt], h, kernel_shape=list(layer.pool_size), strides=list(layer.strides),
                 pads=_pads(shapes[0], layer.pool_size, layer.strides, (1, 1), layer.padding),
                 **extra)
        return [b.op("Transpose", [y], h, perm=_TO_NHWC)]
    return convert


def _global_pool(op_type):
    def convert(b, layer, xs, shapes, h):
        return [b.op(op_type, [xs[0]], h, axes=[1, 2], keepdims=int(layer.keepdims))]
    return convert


# -- normalisation ------------------------------------------------------------
def batch_norm(b, layer, xs, shapes, h):
    """Inference: (x - moving_mean) * (gamma / sqrt(moving_variance + eps)) + beta,
    the factors computed in float64 as pynn does."""
    get = lambda n: np.asarray(layer.ops.to_numpy(layer.w[n]), dtype=np.float64)  # noqa: E731
    a = 1.0 / np.sqrt(get("moving_variance") + layer.epsilon)
    if layer.scale:
        a = a * get("gamma")
    y = b.op("Sub", [xs[0], b.const(f"{layer.name}/moving_mean", get("moving_mean"))], h)
    y = b.op("Mul", [y, b.const(f"{layer.name}/scale", a)], h)
    if layer.center:
        y = b.op("Add", [y, _weight(b, layer, "beta")], h)
    return [y]


def _moments_norm(b, layer, x, axes, h):
    """x * inv + (beta - mean * inv), inv = gamma / sqrt(var + eps): Keras 3's
    LayerNormalization / GroupNormalization over ``axes``."""
    mean = b.op("ReduceMean", [x], h, axes=list(axes), keepdims=1)
    d = b.op("Sub", [x, mean], h)
    var = b.op("ReduceMean", [b.op("Mul", [d, d], h)], h, axes=list(axes), keepdims=1)
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.scalar(f"{h}/eps", layer.epsilon)],
                                                 h)], h)], h)
    shape = layer._pshape
    if layer.scale:
        g = _weight(b, layer, "gamma", lambda v, s=shape: v.reshape(s))
        inv = b.op("Mul", [inv, g], h)
    y = b.op("Mul", [d, inv], h)
    if layer.center:
        y = b.op("Add", [y, _weight(b, layer, "beta", lambda v, s=shape: v.reshape(s))], h)
    return y


def layer_norm(b, layer, xs, shapes, h):
    return [_moments_norm(b, layer, xs[0], layer._axes, h)]


def group_norm(b, layer, xs, shapes, h):
    shape = tuple(shapes[0][1:])
    view = layer._view((0,) + shape)
    v = b.op("Reshape", [xs[0], b.ints(f"{h}/view", view)], h)
    y = _moments_norm(b, layer, v, layer._axes, h)
    return [b.op("Reshape", [y, b.ints(f"{h}/shape", (0,) + shape)], h)]


def normalization(b, layer, xs, shapes, h):
    if layer.input_mean is not None:
        mean, var = layer._mean_b, layer._var_b
    else:
        mean = np.asarray(layer.ops.to_numpy(layer.w["mean"])).reshape(layer._bshape)
        var = np.asarray(layer.ops.to_numpy(layer.w["variance"])).reshape(layer._bshape)
    mean = np.asarray(mean, dtype=b.dtype)
    d = np.maximum(np.sqrt(np.asarray(var, dtype=b.dtype)), b.dtype.type(1e-7))
    m, dc = b.const(f"{layer.name}/mean", mean), b.const(f"{layer.name}/std", d)
    if layer.invert:
        return [b.op("Add", [m, b.op("Mul", [xs[0], dc], h)], h)]
    return [b.op("Div", [b.op("Sub", [xs[0], m], h), dc], h)]


def rescaling(b, layer, xs, shapes, h):
    y = b.op("Mul", [xs[0], b.const(f"{layer.name}/scale", layer.scale)], h)
    return [b.op("Add", [y, b.const(f"{layer.name}/offset", layer.offset)], h)]


# -- activations ----------------------------------------------------------------
def activation_layer(b, layer, xs, shapes, h):
    return [activation(b, layer.activation, xs[0], h, len(shapes[0]), layer.act_params)]


def prelu(b, layer, xs, shapes, h):
    return [b.op("PRelu", [xs[0], _weight(b, layer, "alpha")], h)]


def identity(b, layer, xs, shapes, h):
    """Dropout and the noise layers at inference, ActivityRegularization, Identity."""
    return [b.op("Identity", [xs[0]], h)]


# -- reshaping ----------------------------------------------------------------
def flatten(b, layer, xs, shapes, h):
    return [b.op("Flatten", [xs[0]], h, axis=1)]     # NHWC order, as pynn's


def reshape(b, layer, xs, shapes, h):
    out = layer.compute_output_shape(tuple(shapes[0][1:]))
    return [b.op("Reshape", [xs[0], b.ints(f"{h}/shape", (0,) + tuple(out))], h)]


def zero_padding(b, layer, xs, shapes, h):
    (t, bt), (l, r) = layer.padding
    return [b.op("Pad", [xs[0], b.ints(f"{h}/pads", [0, t, l, 0, 0, bt, r, 0])], h,
                 mode="constant")]


def cropping(b, layer, xs, shapes, h):
    (t, bt), (l, r) = layer.cropping
    hh, ww = shapes[0][1], shapes[0][2]
    return [b.op("Slice", [xs[0], b.ints(f"{h}/starts", [t, l]),
                           b.ints(f"{h}/ends", [hh - bt, ww - r]), b.ints(f"{h}/axes", [1, 2])], h)]


def upsampling(b, layer, xs, shapes, h):
    """Nearest neighbour: (N, H, 1, W, 1, C) broadcast to (N, H, sh, W, sw, C)."""
    _, hh, ww, c = shapes[0]
    sh, sw = layer.size
    y = b.op("Reshape", [xs[0], b.ints(f"{h}/split", [0, hh, 1, ww, 1, c])], h)
    y = b.op("Expand", [y, b.ints(f"{h}/repeat", [1, 1, sh, 1, sw, 1])], h)
    return [b.op("Reshape", [y, b.ints(f"{h}/shape", [0, hh * sh, ww * sw, c])], h)]


def permute(b, layer, xs, shapes, h):
    return [b.op("Transpose", [xs[0]], h, perm=[0] + list(layer.dims))]


def repeat_vector(b, layer, xs, shapes, h):
    y = b.op("Unsqueeze", [xs[0], b.ints(f"{h}/axis", [1])], h)
    return [b.op("Expand", [y, b.ints(f"{h}/repeat", [1, layer.n, 1])], h)]


def resizing(b, layer, xs, shapes, h):
    """TF's half-pixel resize as pynn computes it: the (lo, hi, frac) tables
    of resize_weights as Gathers and lerps, after the aspect-ratio crop / pad."""
    _, hh, ww, c = shapes[0]
    top, left, bh, bw = resize_box(hh, ww, layer.height, layer.width, layer.crop_to_aspect_ratio,
                                   layer.pad_to_aspect_ratio)
    x = xs[0]
    if layer.crop_to_aspect_ratio:
        x = b.op("Slice", [x, b.ints(f"{h}/starts", [top, left]),
                           b.ints(f"{h}/ends", [top + bh, left + bw]), b.ints(f"{h}/axes", [1, 2])],
                 h)
    elif (bh, bw) != (hh, ww):
        pads = [0, top, left, 0, 0, bh - hh - top, bw - ww - left, 0]
        x = b.op("Pad", [x, b.ints(f"{h}/pads", pads), b.scalar(f"{h}/fill", layer.fill_value)], h,
                 mode="constant")

    def along(x, axis, size, target, lerp_shape):
        lo, hi, frac = resize_weights(size, target, layer.interpolation)
        a = b.op("Gather", [x, b.ints(f"{h}/lo", lo)], h, axis=axis)
        if layer.interpolation == "nearest":
            return a
        hi_v = b.op("Gather", [x, b.ints(f"{h}/hi", hi)], h, axis=axis)
        f = b.const(f"{h}/frac", frac.reshape(lerp_shape))
        return b.op("Add", [a, b.op("Mul", [b.op("Sub", [hi_v, a], h), f], h)], h)

    rows = along(x, 2, bw, layer.width, (-1, 1))              # along the width, then the height
    return [along(rows, 1, bh, layer.height, (-1, 1, 1))]


# -- merging --------------------------------------------------------------------
def _chain(op_type):
    def convert(b, layer, xs, shapes, h):
        y = xs[0]
        for x in xs[1:]:
            y = b.op(op_type, [y, x], h)
        return [y]
    return convert


def average(b, layer, xs, shapes, h):
    y = _chain("Add")(b, layer, xs, shapes, h)[0]
    return [b.op("Mul", [y, b.scalar(f"{h}/inv_n", 1.0 / len(xs))], h)]


def _variadic(op_type):
    def convert(b, layer, xs, shapes, h):
        return [b.op(op_type, list(xs), h)]
    return convert


def concatenate(b, layer, xs, shapes, h):
    rank = len(shapes[0])
    axis = layer.axis if layer.axis >= 0 else layer.axis + rank
    return [b.op("Concat", list(xs), h, axis=axis)]


CONVERTERS = {
    "Dense": dense, "Conv2D": conv2d, "DepthwiseConv2D": depthwise_conv2d,
    "SeparableConv2D": separable_conv2d, "Conv2DTranspose": conv2d_transpose,
    "MaxPooling2D": _pool("MaxPool"), "AveragePooling2D": _pool("AveragePool", count_include_pad=0),
    "GlobalAveragePooling2D": _global_pool("ReduceMean"),
    "GlobalMaxPooling2D": _global_pool("ReduceMax"),
    "BatchNormalization": batch_norm, "LayerNormalization": layer_norm,
    "GroupNormalization": group_norm, "Normalization": normalization, "Rescaling": rescaling,
    "Resizing": resizing,
    "Activation": activation_layer, "ReLU": activation_layer, "LeakyReLU": activation_layer,
    "ELU": activation_layer, "Softmax": activation_layer, "PReLU": prelu,
    "Dropout": identity, "SpatialDropout1D": identity, "SpatialDropout2D": identity,
    "SpatialDropout3D": identity, "GaussianNoise": identity, "GaussianDropout": identity,
    "ActivityRegularization": identity, "Identity": identity,
    "Flatten": flatten, "Reshape": reshape, "ZeroPadding2D": zero_padding,
    "Cropping2D": cropping, "UpSampling2D": upsampling, "Permute": permute,
    "RepeatVector": repeat_vector,
    "Add": _chain("Add"), "Subtract": _chain("Sub"), "Multiply": _chain("Mul"),
    "Average": average, "Maximum": _variadic("Max"), "Minimum": _variadic("Min"),
    "Concatenate": concatenate,
}


def convert(b, layer, inputs, in_shapes, h):
    """The output names of ``layer`` applied to the tensors ``inputs`` (of
    batch-including shapes ``in_shapes``)."""
    fn = CONVERTERS.get(type(layer).__name__)
    if fn is None or type(layer).__module__.split(".")[:2] != ["pynn", "layers"]:
        raise NotImplementedError(
            f"ONNX export: layer {layer.name!r} ({type(layer).__name__}) has no ONNX mapping; "
            f"the layers that export are {sorted(CONVERTERS)}")
    return fn(b, layer, inputs, in_shapes, h)
