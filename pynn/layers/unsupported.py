"""Keras layer names pynn does not implement.  They exist so that a Keras
script fails on construction with NotImplementedError saying what is not
supported and what to use instead, never with an AttributeError.  They are
not registered as loadable layer classes."""

_RNN = ("recurrent layers are not supported (pynn computes dense, convolutional and pooling "
        "layers on NHWC images); use Conv2D/Dense models, or Keras with a backend for sequences")
_1D = ("1-D layers are not supported: reshape the sequence to (N, 1, L, C) and use the 2-D "
       "layer ({alt}) with a (1, k) window")
_3D = "3-D (volumetric) layers are not supported; pynn has the 2-D layers ({alt})"
_TEXT = ("text and lookup preprocessing layers are not supported; preprocess the data with "
         "NumPy before calling fit")

_WHY = {
    "Lambda": ("Lambda layers are not supported: pynn cannot store code, so a Lambda would not "
               "be loadable from files; write a layer subclass (pynn.layers.Layer with forward "
               "and backward) instead - it is not loadable from files either"),
    "LSTM": _RNN, "GRU": _RNN, "SimpleRNN": _RNN, "RNN": _RNN, "LSTMCell": _RNN,
    "GRUCell": _RNN, "SimpleRNNCell": _RNN, "StackedRNNCells": _RNN, "Bidirectional": _RNN,
    "ConvLSTM1D": _RNN, "ConvLSTM2D": _RNN, "ConvLSTM3D": _RNN,
    "TimeDistributed": ("TimeDistributed is not supported: fold the time axis into the batch "
                        "with Reshape, apply the layer, and Reshape back"),
    "Embedding": ("Embedding is not supported: one-hot encode the indices with NumPy and use "
                  "Dense(output_dim, use_bias=False)"),
    "Masking": "Masking is not supported: pynn layers do not propagate masks",
    "Attention": "attention layers are not supported",
    "AdditiveAttention": "attention layers are not supported",
    "MultiHeadAttention": "attention layers are not supported",
    "GroupQueryAttention": "attention layers are not supported",
    "Conv1D": _1D.format(alt="Conv2D"), "Conv1DTranspose": _1D.format(alt="Conv2DTranspose"),
    "SeparableConv1D": _1D.format(alt="SeparableConv2D"),
    "DepthwiseConv1D": _1D.format(alt="DepthwiseConv2D"),
    "MaxPooling1D": _1D.format(alt="MaxPooling2D"),
    "AveragePooling1D": _1D.format(alt="AveragePooling2D"),
    "GlobalMaxPooling1D": _1D.format(alt="GlobalMaxPooling2D"),
    "GlobalAveragePooling1D": _1D.format(alt="GlobalAveragePooling2D"),
    "UpSampling1D": _1D.format(alt="UpSampling2D"),
    "ZeroPadding1D": _1D.format(alt="ZeroPadding2D"),
    "Cropping1D": _1D.format(alt="Cropping2D"),
    "Conv3D": _3D.format(alt="Conv2D"), "Conv3DTranspose": _3D.format(alt="Conv2DTranspose"),
    "MaxPooling3D": _3D.format(alt="MaxPooling2D"),
    "AveragePooling3D": _3D.format(alt="AveragePooling2D"),
    "GlobalMaxPooling3D": _3D.format(alt="GlobalMaxPooling2D"),
    "GlobalAveragePooling3D": _3D.format(alt="GlobalAveragePooling2D"),
    "UpSampling3D": _3D.format(alt="UpSampling2D"),
    "ZeroPadding3D": _3D.format(alt="ZeroPadding2D"),
    "Cropping3D": _3D.format(alt="Cropping2D"),
    "LocallyConnected1D": "locally connected layers are not supported",
    "LocallyConnected2D": "locally connected layers are not supported",
    "TextVectorization": _TEXT, "StringLookup": _TEXT, "IntegerLookup": _TEXT,
    "Hashing": _TEXT, "CategoryEncoding": _TEXT, "Discretization": _TEXT,
    "Dot": "Dot is not supported: use Multiply and a Dense layer, or NumPy outside the model",
}

# Keras 3 aliases of the names above
_ALIAS = {"Convolution1D": "Conv1D", "Convolution3D": "Conv3D", "MaxPool1D": "MaxPooling1D",
          "AvgPool1D": "AveragePooling1D", "GlobalMaxPool1D": "GlobalMaxPooling1D",
          "GlobalAvgPool1D": "GlobalAveragePooling1D", "MaxPool3D": "MaxPooling3D",
          "AvgPool3D": "AveragePooling3D", "GlobalMaxPool3D": "GlobalMaxPooling3D",
          "GlobalAvgPool3D": "GlobalAveragePooling3D",
          "Convolution1DTranspose": "Conv1DTranspose",
          "Convolution3DTranspose": "Conv3DTranspose"}


def _unsupported(name, why):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError(f"keras.layers.{name}: {why}")
    return type(name, (), {"__init__": __init__, "__doc__": f"Not supported: {why}",
                           "__module__": __name__})


UNSUPPORTED = {name: _unsupported(name, why) for name, why in _WHY.items()}
UNSUPPORTED.update({a: UNSUPPORTED[t] for a, t in _ALIAS.items()})
globals().update(UNSUPPORTED)
__all__ = sorted(UNSUPPORTED)
