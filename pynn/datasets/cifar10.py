"""CIFAR-10: 50,000 training and 10,000 test 32x32 colour images of 10 classes,
labels 0..9:

0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 6 frog, 7 horse,
8 ship, 9 truck.

Read from the *binary version* (``cifar-10-binary.tar.gz``, extracted to
``cifar-10-batches-bin/``); the python (pickle) version is never read.
"""
from . import _cifar
from ._cifar import CIFARError

__all__ = ["load_data", "load_batch", "find_data_dir", "CIFARError", "CLASS_NAMES", "NAME", "SPEC"]

NAME = "cifar10"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")

SPEC = _cifar.Spec(
    title="CIFAR-10",
    name=NAME,
    folder="cifar-10-batches-bin",
    train_files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    test_files=("test_batch.bin",),
    labels=(("", 10),),
    binary_archive="cifar-10-binary.tar.gz",
    python_folder="cifar-10-batches-py",
    python_archive="cifar-10-python.tar.gz",
    python_markers=("data_batch_1",),
)


def find_data_dir(path=None):
    """The directory holding ``data_batch_1.bin`` ... ``data_batch_5.bin`` and
    ``test_batch.bin``, as a ``Path``.

    ``path`` (the directory itself or one containing ``cifar-10-batches-bin``),
    else ``$PYNN_DATA/cifar-10-batches-bin``, ``$PYNN_DATA/cifar10/cifar-10-batches-bin``,
    ``$PYNN_DATA/cifar10``, ``$PYNN_DATA``, else ``/usr/share/datasets/cifar10`` and
    its ``cifar-10-batches-bin``.  Raises ``FileNotFoundError`` (where it looked,
    how to provide the files) when none holds them.
    """
    return _cifar.find_dir(SPEC, path)


def load_batch(path):
    """One binary batch file as ``(x, y)``: uint8 ``(N, 32, 32, 3)`` and ``(N, 1)``."""
    return _cifar.load_batch(path, SPEC)


def load_data(path=None):
    """Loads CIFAR-10 from the local binary-version files.

    Returns ``((x_train, y_train), (x_test, y_test))`` like
    ``keras.datasets.cifar10.load_data()``: uint8 images of shapes
    ``(50000, 32, 32, 3)`` and ``(10000, 32, 32, 3)`` (channels last,
    C-contiguous) and uint8 labels 0..9 of shapes ``(50000, 1)`` and
    ``(10000, 1)``; the train set is ``data_batch_1.bin`` ... ``data_batch_5.bin``
    in that order.  The number of records per file is not fixed: it is read
    from the file sizes.

    ``path`` differs from Keras' (which has none): a directory holding the
    files, or a directory containing ``cifar-10-batches-bin``.  Without it see
    :func:`find_data_dir`; nothing is downloaded.

    Raises ``FileNotFoundError`` when the files are not found and
    :class:`CIFARError` (a :class:`pynn.data.IDXError`, hence ``ValueError``)
    when one is invalid: empty, not a whole number of 3073-byte records, or a
    label out of 0..9.
    """
    return _cifar.load(SPEC, find_data_dir(path))
