"""pynn: a Keras-like layer API over the nnkernels compiled kernels."""
__version__ = "0.1.0"
