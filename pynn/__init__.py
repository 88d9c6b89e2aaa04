"""pynn: a Keras-like layer API over the nnkernels compiled kernels.

``import pynn as keras`` runs Keras scripts (Sequential and functional models): layers, optimizers,
losses, callbacks, datasets and utils keep their Keras names, arguments and
defaults.  See README.md.
"""
from . import activations, backend, callbacks, config, data, data_adapters, datasets, initializers, \
    layers, losses, metrics, models, optimizers, utils, zoo
from . import constraints, preprocessing, regularizers
from . import dtype_policies, mixed_precision
from .dtype_policies import DTypePolicy, FloatDTypePolicy
from . import distributed   # imports mpi4py only under an MPI launch
from .layers import Input
from .models import Model, Sequential, clone_model, load_model
from .symbolic import KerasTensor

__version__ = "0.1.0"

__all__ = ["Model", "Sequential", "Input", "KerasTensor", "load_model", "clone_model", "layers", "optimizers", "losses", "metrics",
           "callbacks", "datasets", "utils", "activations", "initializers", "models", "backend",
           "distributed", "regularizers", "constraints", "preprocessing", "config",
           "dtype_policies", "mixed_precision", "DTypePolicy", "FloatDTypePolicy"]
