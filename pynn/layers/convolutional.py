"""Keras 2's module path keras.layers.convolutional (``from
pynn.layers.convolutional import Conv2D``): the convolution and 2-D
reshaping layers under their Keras names."""
from .conv import (Conv2D, Conv2DTranspose, Convolution2D, Convolution2DTranspose,  # noqa: F401
                   DepthwiseConv2D, SeparableConv2D, SeparableConvolution2D)
from .reshaping import Cropping2D, UpSampling2D, ZeroPadding2D  # noqa: F401
from .unsupported import (Conv1D, Conv1DTranspose, Conv3D, Conv3DTranspose,  # noqa: F401
                          Convolution1D, Convolution3D, Cropping1D, Cropping3D,
                          SeparableConv1D, UpSampling1D, UpSampling3D, ZeroPadding1D,
                          ZeroPadding3D)
