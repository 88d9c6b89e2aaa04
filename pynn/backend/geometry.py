"""Convolution and pooling geometry, in one place: Keras/TensorFlow output
sizes and "same" padding, and the normalising of int-or-pair arguments."""
import numpy as np


def pair(v, what, min_value=1):
    """An int or a pair of ints -> (h, w), each >= min_value (Keras'
    standardize_tuple)."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        t = (int(v), int(v))
    else:
        try:
            t = tuple(int(a) for a in v)
        except (TypeError, ValueError):
            raise TypeError(f"{what} must be an int or a pair of ints, got {v!r}") from None
        if len(t) != 2 or any(float(a) != int(a) for a in v):
            raise ValueError(f"{what} must be an int or a pair of ints, got {v!r}")
    if min(t) < min_value:
        raise ValueError(f"{what} must be >= {min_value}, got {v!r}")
    return t


def padding_mode(p):
    """"valid" or "same" (any case) -> lower case; else ValueError."""
    if not isinstance(p, str) or p.lower() not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {p!r}")
    return p.lower()


def check_channels_last(data_format):
    if data_format not in (None, "channels_last"):
        raise NotImplementedError(
            f"data_format={data_format!r}: pynn computes in channels_last (NHWC) only; "
            "transpose the data to (N, H, W, C) and drop data_format")


def pool_output_hw(h, w, pool_size, strides, padding):
    """(OH, OW) of a pooling window over (h, w)."""
    return (conv_padding(h, pool_size[0], strides[0], 1, padding)[0],
            conv_padding(w, pool_size[1], strides[1], 1, padding)[0])


def transpose_conv_length(size, k, s, d, padding, output_padding=None):
    """Output length of a transposed convolution along one axis (Keras'
    deconv_output_length)."""
    ke = (k - 1) * d + 1
    if output_padding is None:
        if padding == "valid":
            return size * s + max(ke - s, 0)
        return size * s
    pad = ke // 2 if padding == "same" else 0
    return (size - 1) * s + ke - 2 * pad + output_padding


def conv_padding(size, k, s, d, padding):
    """(out_size, pad_before, pad_after) along one axis, Keras/TF rules."""
    ke = (k - 1) * d + 1
    if padding == "valid":
        if size < ke:
            return 0, 0, 0
        return (size - ke) // s + 1, 0, 0
    if padding == "same":
        o = -(-size // s)
        total = max((o - 1) * s + ke - size, 0)
        return o, total // 2, total - total // 2
    raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")


def conv_geometry(x_shape, w_shape, strides, padding, dilation):
    n, h, w_, c = x_shape
    kh, kw, ci, f = w_shape
    if ci != c:
        raise ValueError(f"x has {c} channels but the kernel expects {ci}")
    sh, sw = pair(strides, "strides")
    dh, dw = pair(dilation, "dilation")
    if isinstance(padding, str):
        oh, pt, pb = conv_padding(h, kh, sh, dh, padding)
        ow, pl, pr = conv_padding(w_, kw, sw, dw, padding)
    else:
        (pt, pb), (pl, pr) = padding
        oh = max((h + pt + pb - (kh - 1) * dh - 1) // sh + 1, 0)
        ow = max((w_ + pl + pr - (kw - 1) * dw - 1) // sw + 1, 0)
    return dict(n=n, h=h, w=w_, c=c, kh=kh, kw=kw, f=f, sh=sh, sw=sw, dh=dh, dw=dw,
                oh=oh, ow=ow, pt=pt, pb=pb, pl=pl, pr=pr)


