"""MNIST: 60,000 training and 10,000 test 28x28 grayscale images of handwritten
digits, labels 0..9."""
from .. import data

NAME = "mnist"


def find_data_dir(path=None):
    """The directory holding the four IDX files of MNIST, as a ``Path``
    (see :func:`pynn.data.find_dataset_dir`; ``FileNotFoundError`` if none)."""
    return data.find_dataset_dir(path, name=NAME)


def load_data(path=None):
    """Loads MNIST from local IDX files.

    Returns ``((x_train, y_train), (x_test, y_test))``: uint8 arrays of shapes
    ``(60000, 28, 28)``, ``(60000,)``, ``(10000, 28, 28)``, ``(10000,)``, like
    ``keras.datasets.mnist.load_data()``.

    ``path`` differs from Keras': here it is a *directory* holding the four IDX
    files (``train-images-idx3-ubyte`` etc., raw or ``.gz``), where Keras takes
    a cache file name (``mnist.npz``) and downloads into it.  Without ``path``
    the files are looked for in ``$PYNN_DATA/mnist``, ``$PYNN_DATA`` and
    ``/usr/share/datasets/mnist``; nothing is downloaded (Debian has no MNIST
    package: put the files in a directory and set ``PYNN_DATA``).

    Raises ``FileNotFoundError`` when the files are not found and
    :class:`pynn.data.IDXError` (a ``ValueError``) when they are invalid.
    """
    return data.load_idx_dataset(find_data_dir(path))
