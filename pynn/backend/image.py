"""Image geometry for augmentation: the one place the random image layers
(pynn/layers/augmentation.py) and ``ImageDataGenerator``
(pynn/preprocessing/image.py) transform pixels.

Every function works on a whole NHWC batch at once and is written against
``xp`` (NumPy or CuPy): no Python loop over images.

``affine_transform`` follows Keras 3's ``keras.ops.image.affine_transform``:
each image has 8 numbers ``[a0, a1, a2, b0, b1, b2, c0, c1]`` mapping an
output pixel (x, y) = (column, row) to the input point
``((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k)``, ``k = c0 x + c1 y + 1``.
The input is read there with bilinear or nearest interpolation; each tap that
falls outside the image is replaced according to ``fill_mode``:

- ``reflect``  (d c b a | a b c d | d c b a), about the edge of the last pixel
- ``wrap``     (a b c d | a b c d | a b c d)
- ``nearest``  (a a a a | a b c d | d d d d)
- ``constant`` (k k k k | a b c d | k k k k), k = ``fill_value``
"""
import numpy as np

FILL_MODES = ("reflect", "wrap", "constant", "nearest")
INTERPOLATIONS = ("bilinear", "nearest")


def check_fill_mode(fill_mode, interpolation="bilinear"):
    if fill_mode not in FILL_MODES:
        raise NotImplementedError(f"Unknown `fill_mode` {fill_mode!r}: expected one of "
                                  f"{FILL_MODES}")
    if interpolation not in INTERPOLATIONS:
        raise NotImplementedError(f"Unknown `interpolation` {interpolation!r}: expected one of "
                                  f"{INTERPOLATIONS}")


def _fix_index(xp, i, n, fill_mode):
    """Integer tap positions i (any int array) mapped into [0, n)."""
    if fill_mode == "reflect":
        i = i % (2 * n)
        return xp.where(i >= n, 2 * n - 1 - i, i)
    if fill_mode == "wrap":
        return i % n
    return xp.clip(i, 0, n - 1)       # nearest; constant (masked by the caller)


def affine_transform(xp, images, transforms, interpolation="bilinear", fill_mode="reflect",
                     fill_value=0.0, output_size=None, out=None):
    """images (N, H, W, C) -> (N, OH, OW, C) of the same dtype.
    transforms: (N, 8) (or (8,) for all images), any float array-like;
    output_size: (OH, OW), default (H, W)."""
    check_fill_mode(fill_mode, interpolation)
    if images.ndim != 4:
        raise ValueError(f"affine_transform expects NHWC images, got shape {images.shape}")
    n, h, w, c = images.shape
    oh, ow = (h, w) if output_size is None else (int(output_size[0]), int(output_size[1]))
    t = xp.asarray(transforms, dtype=xp.float64).reshape(-1, 8)
    if t.shape[0] not in (1, n):
        raise ValueError(f"{t.shape[0]} transforms for {n} images")
    t = xp.broadcast_to(t, (n, 8))
    a0, a1, a2, b0, b1, b2, c0, c1 = (t[:, i].reshape(n, 1, 1) for i in range(8))
    x = xp.arange(ow, dtype=xp.float64).reshape(1, 1, ow)
    y = xp.arange(oh, dtype=xp.float64).reshape(1, oh, 1)
    k = c0 * x + c1 * y + 1.0
    xs = (a0 * x + a1 * y + a2) / k       # (N, OH, OW) input column
    ys = (b0 * x + b1 * y + b2) / k       # (N, OH, OW) input row
    flat = xp.ascontiguousarray(images).reshape(n * h * w, c)
    base = (xp.arange(n, dtype=xp.int64) * (h * w)).reshape(n, 1, 1)
    fill = images.dtype.type(fill_value)

    def tap(yi, xi):
        """Pixels at integer taps (N, OH, OW) -> (N, OH, OW, C)."""
        v = flat[base + _fix_index(xp, yi, h, fill_mode) * w + _fix_index(xp, xi, w, fill_mode)]
        if fill_mode == "constant":
            inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
            v = xp.where(inside[..., None], v, fill)
        return v

    if interpolation == "nearest":
        res = tap(xp.rint(ys).astype(xp.int64), xp.rint(xs).astype(xp.int64))
    else:
        y0f, x0f = xp.floor(ys), xp.floor(xs)
        fy = (ys - y0f).astype(images.dtype)[..., None]
        fx = (xs - x0f).astype(images.dtype)[..., None]
        y0, x0 = y0f.astype(xp.int64), x0f.astype(xp.int64)
        top = tap(y0, x0) * (1 - fx) + tap(y0, x0 + 1) * fx
        bottom = tap(y0 + 1, x0) * (1 - fx) + tap(y0 + 1, x0 + 1) * fx
        res = top * (1 - fy) + bottom * fy
    if out is None:
        return res.astype(images.dtype, copy=False)
    out[...] = res
    return out


def resize_transform(in_hw, out_hw, offset=(0, 0)):
    """The transform (8 numbers) of a bilinear resize of the window of size
    in_hw at offset (row, col) to out_hw, with half-pixel centers (Keras /
    TF ``resize``): input = (output + 0.5) * in / out - 0.5."""
    sy, sx = in_hw[0] / out_hw[0], in_hw[1] / out_hw[1]
    return [sx, 0.0, offset[1] + 0.5 * sx - 0.5, 0.0, sy, offset[0] + 0.5 * sy - 0.5, 0.0, 0.0]


def flip(xp, images, horizontal, vertical, out=None):
    """Flip left-right the images where ``horizontal`` (bool (N,)) and
    top-bottom where ``vertical``; either may be None (no flip)."""
    res = images
    if horizontal is not None:
        res = xp.where(xp.asarray(horizontal).reshape(-1, 1, 1, 1), res[:, :, ::-1], res)
    if vertical is not None:
        res = xp.where(xp.asarray(vertical).reshape(-1, 1, 1, 1), res[:, ::-1], res)
    if out is None:
        return xp.array(res, copy=True) if res is images else res
    out[...] = res
    return out


def adjust_contrast(xp, images, factors, value_range=None, out=None):
    """(x - mean) * factor + mean, mean over each image's rows and columns
    per channel, one factor per image; clipped to value_range if given."""
    f = xp.asarray(factors, dtype=images.dtype).reshape(-1, 1, 1, 1)
    mean = images.mean(axis=(1, 2), keepdims=True)
    res = (images - mean) * f + mean
    if value_range is not None:
        res = xp.clip(res, value_range[0], value_range[1])
    if out is None:
        return res.astype(images.dtype, copy=False)
    out[...] = res
    return out


def adjust_brightness(xp, images, deltas, value_range=None, out=None):
    """x + delta, one delta per image; clipped to value_range if given."""
    d = xp.asarray(deltas, dtype=images.dtype).reshape(-1, 1, 1, 1)
    res = images + d
    if value_range is not None:
        res = xp.clip(res, value_range[0], value_range[1])
    if out is None:
        return res.astype(images.dtype, copy=False)
    out[...] = res
    return out


# -- transforms of the Keras layers (8 numbers per image, NumPy float64) --------


def translation_transforms(dx, dy):
    """Shift the content by dx columns and dy rows (per image)."""
    n = len(dx)
    t = np.zeros((n, 8))
    t[:, 0] = t[:, 4] = 1.0
    t[:, 2], t[:, 5] = -np.asarray(dx), -np.asarray(dy)
    return t


def rotation_transforms(angles, h, w):
    """Rotate by angles (radians, per image) about the image center
    ((w - 1) / 2, (h - 1) / 2), positive counter-clockwise as Keras."""
    cos, sin = np.cos(angles), np.sin(angles)
    t = np.zeros((len(angles), 8))
    t[:, 0], t[:, 1], t[:, 3], t[:, 4] = cos, -sin, sin, cos
    t[:, 2] = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2
    t[:, 5] = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2
    return t


def zoom_transforms(zx, zy, h, w):
    """Scale input coordinates by zx, zy (per image) about the image center:
    a zoom factor > 1 zooms out, < 1 zooms in."""
    zx, zy = np.asarray(zx, dtype=float), np.asarray(zy, dtype=float)
    t = np.zeros((len(zx), 8))
    t[:, 0], t[:, 4] = zx, zy
    t[:, 2] = (w - 1) / 2.0 * (1 - zx)
    t[:, 5] = (h - 1) / 2.0 * (1 - zy)
    return t
