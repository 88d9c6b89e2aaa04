"""Per-sample losses and their gradients, written against ``xp`` (NumPy or
CuPy): the reference for :meth:`pynn.backend.ops.Ops.loss_rows`.

Each function takes the prediction ``p`` and the target ``t`` (same shape,
classes on the last axis) and returns ``(per, grad)``: ``per`` the loss of
every sample (the last axis reduced as Keras 3 does: a mean for the
elementwise losses, a sum for KL divergence, cosine similarity and the
categorical hinge) and ``grad = d per / d p`` (or None when not asked for).
The formulas are Keras 3's (keras/src/losses/losses.py), with its
``epsilon = 1e-7``.  The cross-entropies live in ``softmax_xent`` (fused
kernel) and :func:`binary_crossentropy` here.
"""
EPSILON = 1e-7


def _mean(xp, v, g, need):
    k = v.shape[-1]
    return v.mean(axis=-1), (g / k if need else None)


def mean_squared_error(xp, p, t, need=True):
    d = p - t
    return _mean(xp, d * d, 2 * d if need else None, need)


def mean_absolute_error(xp, p, t, need=True):
    d = p - t
    return _mean(xp, xp.abs(d), xp.sign(d) if need else None, need)


def mean_absolute_percentage_error(xp, p, t, need=True):
    den = xp.maximum(xp.abs(t), EPSILON)
    d = p - t
    return _mean(xp, 100.0 * xp.abs(d) / den, 100.0 * xp.sign(d) / den if need else None, need)


def mean_squared_logarithmic_error(xp, p, t, need=True):
    a = xp.log(xp.maximum(p, EPSILON) + 1.0)
    d = a - xp.log(xp.maximum(t, EPSILON) + 1.0)
    g = None
    if need:
        g = 2 * d / (xp.maximum(p, EPSILON) + 1.0) * (p > EPSILON)
    return _mean(xp, d * d, g, need)


def huber(xp, p, t, need=True, delta=1.0):
    e = p - t
    a = xp.abs(e)
    small = a <= delta
    v = xp.where(small, 0.5 * e * e, delta * a - 0.5 * delta * delta)
    return _mean(xp, v, xp.where(small, e, delta * xp.sign(e)) if need else None, need)


def log_cosh(xp, p, t, need=True):
    x = p - t
    # log(cosh(x)) = x + softplus(-2x) - log 2, softplus written without overflow
    z = -2 * x
    softplus = xp.maximum(z, 0) + xp.log1p(xp.exp(-xp.abs(z)))
    return _mean(xp, x + softplus - 0.6931471805599453, xp.tanh(x) if need else None, need)


def kl_divergence(xp, p, t, need=True):
    tc = xp.clip(t, EPSILON, 1.0)
    pc = xp.clip(p, EPSILON, 1.0)
    per = (tc * xp.log(tc / pc)).sum(axis=-1)
    g = None
    if need:
        g = -tc / pc * ((p >= EPSILON) & (p <= 1.0))
    return per, g


def poisson(xp, p, t, need=True):
    return _mean(xp, p - t * xp.log(p + EPSILON), (1.0 - t / (p + EPSILON)) if need else None,
                 need)


def hinge_labels(xp, t):
    """Keras 3: targets that are all 0 or 1 (over the whole batch) become -1/1."""
    if bool(xp.all((t == 0) | (t == 1))):
        return 2.0 * t - 1.0
    return t


def hinge(xp, p, t, need=True):
    t = hinge_labels(xp, t)
    m = 1.0 - t * p
    return _mean(xp, xp.maximum(m, 0), -t * (m > 0) if need else None, need)


def squared_hinge(xp, p, t, need=True):
    t = hinge_labels(xp, t)
    m = xp.maximum(1.0 - t * p, 0)
    return _mean(xp, m * m, -2 * t * m if need else None, need)


def categorical_hinge(xp, p, t, need=True):
    pos = (t * p).sum(axis=-1)
    negs = (1.0 - t) * p
    neg = negs.max(axis=-1)
    m = neg - pos + 1.0
    per = xp.maximum(m, 0)
    g = None
    if need:
        j = xp.argmax(negs, axis=-1)
        onehot = (xp.arange(p.shape[-1]) == j[..., None]).astype(p.dtype)
        g = (onehot * (1.0 - t) - t) * (m > 0)[..., None]
    return per, g


def cosine_similarity(xp, p, t, need=True):
    """-cos(t, p) over the last axis; x / max(|x|, eps) as Keras' normalize."""
    pn_len = xp.sqrt((p * p).sum(axis=-1, keepdims=True))
    tn = t / xp.maximum(xp.sqrt((t * t).sum(axis=-1, keepdims=True)), EPSILON)
    plen = xp.maximum(pn_len, EPSILON)
    pn = p / plen
    per = -(tn * pn).sum(axis=-1)
    g = None
    if need:
        proj = (tn * pn).sum(axis=-1, keepdims=True)
        g = -(tn - pn * proj * (pn_len > EPSILON)) / plen
    return per, g


def binary_crossentropy(xp, p, t, need=True, from_logits=False):
    if from_logits:
        e = xp.exp(-xp.abs(p))
        v = xp.maximum(p, 0) - p * t + xp.log1p(e)
        g = None
        if need:
            g = xp.where(p >= 0, 1 / (1 + e), e / (1 + e)) - t
        return _mean(xp, v, g, need)
    pc = xp.clip(p, EPSILON, 1 - EPSILON)
    v = -(t * xp.log(pc) + (1 - t) * xp.log(1 - pc))
    g = None
    if need:
        g = (pc - t) / (pc * (1 - pc)) * ((p >= EPSILON) & (p <= 1 - EPSILON))
    return _mean(xp, v, g, need)


def crossentropy_rows(xp, p, t, from_logits=False):
    """Per-sample categorical cross-entropy, no gradient: t one-hot/soft
    (N, K) or integer labels (N,).  Probabilities are renormalised per row
    and clipped to [eps, 1 - eps], as Keras does."""
    if from_logits:
        z = p - p.max(axis=-1, keepdims=True)
        logp = z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))
    else:
        logp = xp.log(xp.clip(p / p.sum(axis=-1, keepdims=True), EPSILON, 1 - EPSILON))
    if t.ndim == p.ndim - 1:
        return -xp.take_along_axis(logp, t.astype(xp.int64)[..., None], axis=-1)[..., 0]
    return -(t * logp).sum(axis=-1)


KINDS = {
    "mean_squared_error": mean_squared_error,
    "mean_absolute_error": mean_absolute_error,
    "mean_absolute_percentage_error": mean_absolute_percentage_error,
    "mean_squared_logarithmic_error": mean_squared_logarithmic_error,
    "huber": huber,
    "log_cosh": log_cosh,
    "kl_divergence": kl_divergence,
    "poisson": poisson,
    "hinge": hinge,
    "squared_hinge": squared_hinge,
    "categorical_hinge": categorical_hinge,
    "cosine_similarity": cosine_similarity,
    "binary_crossentropy": binary_crossentropy,
}
