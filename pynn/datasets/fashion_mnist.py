"""Fashion-MNIST: 60,000 training and 10,000 test 28x28 grayscale images of 10
classes of clothing (Zalando Research), labels 0..9:

0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt,
7 Sneaker, 8 Bag, 9 Ankle boot.
"""
from .. import data

NAME = "fashion-mnist"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def find_data_dir(path=None):
    """The directory holding the four IDX files of Fashion-MNIST, as a ``Path``
    (see :func:`pynn.data.find_dataset_dir`; ``FileNotFoundError`` if none)."""
    return data.find_dataset_dir(path, name=NAME)


def load_data(path=None):
    """Loads Fashion-MNIST from local IDX files.

    Returns ``((x_train, y_train), (x_test, y_test))``: uint8 arrays of shapes
    ``(60000, 28, 28)``, ``(60000,)``, ``(10000, 28, 28)``, ``(10000,)``, like
    ``keras.datasets.fashion_mnist.load_data()``.

    ``path`` differs from Keras': here it is a *directory* holding the four IDX
    files (``train-images-idx3-ubyte`` etc., raw or ``.gz``), where Keras takes
    a cache file name under ``~/.keras/datasets`` and downloads into it.
    Without ``path`` the files are looked for in ``$PYNN_DATA/fashion-mnist``,
    ``$PYNN_DATA`` and ``/usr/share/datasets/fashion-mnist`` (installed by the
    Debian package ``dataset-fashion-mnist``); nothing is downloaded.

    Raises ``FileNotFoundError`` (saying what to install or set) when the
    files are not found, and :class:`pynn.data.IDXError` (a ``ValueError``)
    when they are invalid.
    """
    return data.load_idx_dataset(find_data_dir(path))
