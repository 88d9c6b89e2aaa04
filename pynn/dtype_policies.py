"""keras.dtype_policies: a layer's dtype policy (its compute and variable dtypes).

``DTypePolicy(name)`` (also ``keras.mixed_precision.Policy``), Keras 3's
names and semantics, for the policies pynn can honour:

- ``"float32"``: compute and variables in float32 (the default);
- ``"float64"``: compute and variables in float64 (pynn's float64 models);
- ``"mixed_bfloat16"``: variables (weights, optimizer state, checkpoints)
  in float32; the matrix products of Dense and the convolutions round their
  operands to bfloat16 and accumulate in float32 (see ``pynn.mixed_precision``).

``"mixed_float16"``, ``"float16"`` and ``"bfloat16"`` (bfloat16 variables)
raise ``NotImplementedError`` naming ``"mixed_bfloat16"``; quantized
policies (``"int8"``, ``"float8"``, ...) raise ``NotImplementedError``.

The global policy (``set_dtype_policy`` / ``dtype_policy``, also in
``keras.config`` and, as ``set_global_policy`` / ``global_policy``, in
``keras.mixed_precision``) is the default of layers constructed afterwards,
as in Keras.  Until one is set it is ``DTypePolicy(keras.config.floatx())``;
``keras.utils.clear_session()`` resets it (Keras 3 does too).
"""
import numpy as np

__all__ = ["DTypePolicy", "FloatDTypePolicy", "get", "serialize", "deserialize",
           "set_dtype_policy", "dtype_policy", "POLICY_NAMES"]

# the policies pynn runs: name -> (compute dtype, variable dtype)
_POLICIES = {"float32": ("float32", "float32"), "float64": ("float64", "float64"),
             "mixed_bfloat16": ("bfloat16", "float32")}
POLICY_NAMES = tuple(_POLICIES)
_QUANTIZATION_MODES = ("int8", "float8", "int4", "gptq", "awq")
_GLOBAL = None


def _refuse(name):
    """The error for a policy name pynn does not run (None when it does)."""
    if name == "mixed_float16":
        return NotImplementedError(
            "dtype policy 'mixed_float16' is not supported: pynn's kernels run on CPUs, which "
            "have no fast float16 arithmetic (and float16 would need loss scaling); use "
            "'mixed_bfloat16' (float32 variables, bfloat16 products with float32 "
            "accumulation, no loss scaling needed)")
    if name in ("bfloat16", "float16"):
        return NotImplementedError(
            f"dtype policy {name!r} ({name} variables) is not supported: pynn keeps weights, "
            "optimizer state and checkpoints in float32; use 'mixed_bfloat16' (float32 "
            "variables, bfloat16 products with float32 accumulation)")
    if name.startswith(_QUANTIZATION_MODES):
        return NotImplementedError(f"quantized dtype policy {name!r} is not supported; "
                                   f"pynn runs {', '.join(map(repr, POLICY_NAMES))}")
    try:
        dt = np.dtype(name)
    except TypeError:
        dt = None
    if dt is not None:
        return NotImplementedError(f"dtype policy {name!r} is not supported: layers compute in "
                                   f"float32 or float64, or with 'mixed_bfloat16'")
    return ValueError(f"Cannot convert {name!r} to a mixed precision DTypePolicy. Valid "
                      f"policies in pynn: {', '.join(map(repr, POLICY_NAMES))}")


class DTypePolicy:
    """A dtype policy: ``name``, ``compute_dtype``, ``variable_dtype`` (Keras 3).

    ``DTypePolicy()`` (no name) is a copy of the global policy, as in Keras.
    Policies compare equal by name.  pynn's layers keep their variables in
    float32 under every policy but ``"float64"``: the array dtype of a layer is
    its model's (``Model(dtype=...)``), and ``layer.dtype`` / ``compute_dtype``
    report what the layer actually runs once it is placed in a model.
    """

    def __init__(self, name=None):
        if name is None:
            name = dtype_policy().name
        if not isinstance(name, str):
            raise TypeError("'name' must be a string, such as 'mixed_bfloat16'. "
                            f"Received: name={name!r} (of type {type(name)})")
        if name not in _POLICIES:
            raise _refuse(name)
        self._name = name
        self._compute_dtype, self._variable_dtype = _POLICIES[name]

    @property
    def name(self):
        return self._name

    @property
    def compute_dtype(self):
        """The dtype of the layer's products: "float32", "float64" or
        "bfloat16" (operands rounded to bfloat16, float32 accumulation)."""
        return self._compute_dtype

    @property
    def variable_dtype(self):
        """The dtype of the weights: "float32" (or "float64")."""
        return self._variable_dtype

    @property
    def quantization_mode(self):
        return None

    def get_config(self):
        return {"name": self._name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f'<DTypePolicy "{self._name}">'

    def __eq__(self, other):
        return isinstance(other, DTypePolicy) and other._name == self._name

    def __hash__(self):
        return hash(("DTypePolicy", self._name))


class FloatDTypePolicy(DTypePolicy):
    """Keras 3's alias of DTypePolicy."""


def serialize(policy):
    """A policy as Keras 3 writes it in configs (``"dtype"`` of a layer)."""
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": policy.name},
            "registered_name": None}


def deserialize(config):
    """A policy from its serialized form: Keras 3's {"module", "class_name",
    "config", "registered_name"} or Keras 2's {"class_name": "Policy", "config"}."""
    if not isinstance(config, dict):
        raise ValueError(f"a serialized dtype policy is a dict, got {config!r:.200}")
    cn = config.get("class_name")
    if cn not in ("DTypePolicy", "FloatDTypePolicy", "Policy"):
        if isinstance(cn, str) and "Quantized" in cn:
            raise NotImplementedError(f"dtype policy class {cn!r} (quantization) is not supported")
        raise ValueError(f"unknown dtype policy class {cn!r}; expected 'DTypePolicy'")
    cfg = config.get("config") or {}
    if not isinstance(cfg, dict) or not isinstance(cfg.get("name"), str):
        raise ValueError(f"the dtype policy config has no name: {config!r:.200}")
    return DTypePolicy(cfg["name"])


def get(identifier):
    """A DTypePolicy from None (the global policy), a policy, a name, a
    serialized policy (dict) or a NumPy dtype (np.float32, "float64")."""
    if identifier is None:
        return dtype_policy()
    if isinstance(identifier, DTypePolicy):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        return DTypePolicy(identifier)
    try:
        name = np.dtype(identifier).name
    except TypeError:
        raise ValueError("Cannot interpret `dtype` argument. Expected a string or an instance "
                         f"of DTypePolicy. Received: dtype={identifier!r}") from None
    return DTypePolicy(name)


def set_dtype_policy(policy):
    """Set the global dtype policy: the default of layers constructed
    afterwards (a name or a DTypePolicy; None goes back to the default,
    ``DTypePolicy(floatx())``, as Keras 2's ``set_global_policy(None)``)."""
    global _GLOBAL
    if policy is None:
        _GLOBAL = None
        return
    if isinstance(policy, str):
        policy = DTypePolicy(policy)
    elif not isinstance(policy, DTypePolicy):
        raise ValueError("Invalid `policy` argument. Expected the string name of a policy (such "
                         "as 'mixed_bfloat16') or a `DTypePolicy` instance. Received: "
                         f"policy={policy!r} (of type {type(policy)})")
    _GLOBAL = policy


def dtype_policy():
    """The global dtype policy (DTypePolicy(floatx()) until one is set)."""
    if _GLOBAL is not None:
        return _GLOBAL
    from .config import floatx
    return DTypePolicy(floatx())


def effective_policy(policy, array_dtype):
    """What a layer of ``policy`` runs when its arrays are ``array_dtype``
    (its model's dtype; None before it is placed): float64 arrays compute
    in float64, float32 arrays in float32 or, under mixed_bfloat16, with
    bfloat16 products."""
    if array_dtype is None:
        return policy
    name = np.dtype(array_dtype).name
    if name == "float64":
        return policy if policy.name == "float64" else DTypePolicy("float64")
    if policy.compute_dtype == "bfloat16" or policy.name == name:
        return policy
    return DTypePolicy(name)
