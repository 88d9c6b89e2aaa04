"""Datasets in IDX format (MNIST, Fashion-MNIST), read from local files.

``pynn.datasets.fashion_mnist.load_data()`` and ``pynn.datasets.mnist.load_data()``
return ``((x_train, y_train), (x_test, y_test))`` as their Keras namesakes do.
Nothing is downloaded: see :func:`pynn.data.find_dataset_dir` for where the
files are looked for.
"""
from . import fashion_mnist, mnist

__all__ = ["fashion_mnist", "mnist"]
