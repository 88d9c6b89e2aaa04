"""Datasets read from local files: MNIST and Fashion-MNIST (IDX format),
CIFAR-10 and CIFAR-100 (their binary version).

``pynn.datasets.<name>.load_data()`` returns ``((x_train, y_train), (x_test,
y_test))`` as its Keras namesake does; each module also has
``find_data_dir(path=None)``, the directory it would read.  Nothing is
downloaded: see :func:`pynn.data.find_dataset_dir` (MNIST, Fashion-MNIST) and
:func:`pynn.datasets.cifar10.find_data_dir` (CIFAR) for where the files are
looked for.  Invalid files raise :class:`pynn.data.IDXError` (a
``ValueError``; CIFAR raises its subclass :class:`CIFARError`).
"""
from . import cifar10, cifar100, fashion_mnist, mnist
from ._cifar import CIFARError

__all__ = ["cifar10", "cifar100", "fashion_mnist", "mnist", "CIFARError"]
