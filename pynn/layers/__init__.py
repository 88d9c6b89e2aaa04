"""Layers with Keras names, arguments and defaults (NHWC, channels_last).

Where a new layer goes: its class in the module of its family (core, conv,
pooling, reshaping, merging, normalization, activation, regularization),
exported here (Keras names pynn lacks: unsupported.py; Keras 2 module paths:
convolutional.py, advanced_activations.py, merge.py); if it computes,
an Ops method with its NumPy reference in pynn/backend/ops.py (and a
compiled override in pynn/backend/cpu.py); tests in tests/test_pynn_layers.py
or tests/test_graph.py.  See pynn/layers/base.py for the layer contract.
"""
from .augmentation import (RandomBrightness, RandomContrast, RandomCrop, RandomFlip,
                           RandomRotation, RandomTranslation, RandomZoom)
from .base import Input, InputLayer, Layer, Weight, activation_name, reset_names
from .activation import ELU, LeakyReLU, PReLU, ReLU, Softmax
from .advanced_activations import ThresholdedReLU
from .conv import (Conv2D, Conv2DTranspose, Convolution2D, Convolution2DTranspose, DepthwiseConv2D,
                   SeparableConv2D, SeparableConvolution2D)
from .core import Activation, Dense, Dropout, Identity
from .merging import (Add, Average, Concatenate, Maximum, Minimum, Multiply, Subtract, add, average,
                      concatenate, maximum, minimum, multiply, subtract)
from .normalization import BatchNormalization, GroupNormalization, LayerNormalization
from .pooling import (AveragePooling2D, AvgPool2D, GlobalAveragePooling2D, GlobalAvgPool2D,
                      GlobalMaxPool2D, GlobalMaxPooling2D, MaxPool2D, MaxPooling2D)
from .noise import (GaussianDropout, GaussianNoise, SpatialDropout1D, SpatialDropout2D,
                    SpatialDropout3D)
from .preprocessing import Normalization, Rescaling, Resizing
from .regularization import ActivityRegularization
from .reshaping import (Cropping2D, Flatten, Permute, RepeatVector, Reshape, UpSampling2D,
                        ZeroPadding2D)
from .unsupported import *  # noqa: F401,F403  (Keras names that raise NotImplementedError)
from .unsupported import UNSUPPORTED as _UNSUPPORTED

from .. import initializers as _initializers


def get_class(class_name):
    """The layer class of a name in a model file (models included)."""
    cls = Layer._registry.get(class_name)
    if cls is None and class_name in _UNSUPPORTED:
        _UNSUPPORTED[class_name]()    # raises NotImplementedError saying why
    if cls is None:
        raise ValueError(f"unknown layer class {class_name!r}: pynn has no such layer "
                         "(custom layers and Lambda cannot be loaded from files)")
    return cls


def from_config(class_name, config):
    cls = get_class(class_name)
    config = dict(config)
    for k in list(config):
        if k.endswith("_initializer") and isinstance(config[k], dict):
            config[k] = _initializers.get(config[k])
    if class_name == "InputLayer":
        shape = config.get("shape")
        if shape is None and config.get("batch_shape") is not None:
            shape = tuple(config["batch_shape"])[1:]
        return InputLayer(shape=shape, name=config.get("name"))
    config.pop("data_format", None)
    return cls.from_config(config)
