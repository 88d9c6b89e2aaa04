"""CIFAR-100: 50,000 training and 10,000 test 32x32 colour images of 100 fine
classes (labels 0..99) grouped into 20 coarse superclasses (labels 0..19).

Read from the *binary version* (``cifar-100-binary.tar.gz``, extracted to
``cifar-100-binary/``); the python (pickle) version is never read.
"""
import os

from . import _cifar
from ._cifar import CIFARError

__all__ = ["load_data", "load_batch", "find_data_dir", "CIFARError", "LABEL_MODES",
           "FINE_LABEL_NAMES", "COARSE_LABEL_NAMES", "NAME", "SPEC"]

NAME = "cifar100"
#: label_mode -> index of its label byte in a record (<coarse><fine><image>)
LABEL_MODES = {"coarse": 0, "fine": 1}

FINE_LABEL_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
COARSE_LABEL_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)

SPEC = _cifar.Spec(
    title="CIFAR-100",
    name=NAME,
    folder="cifar-100-binary",
    train_files=("train.bin",),
    test_files=("test.bin",),
    labels=(("coarse", 20), ("fine", 100)),
    binary_archive="cifar-100-binary.tar.gz",
    python_folder="cifar-100-python",
    python_archive="cifar-100-python.tar.gz",
    python_markers=("train", "meta"),
)


def _label_index(label_mode):
    if isinstance(label_mode, str) and label_mode in LABEL_MODES:
        return LABEL_MODES[label_mode]
    hint = ""
    if isinstance(label_mode, os.PathLike) or (isinstance(label_mode, str) and os.sep in label_mode):
        hint = " (a directory goes in path=: load_data(path=DIR))"
    raise ValueError(f'label_mode must be one of "fine", "coarse". Received: '
                     f"label_mode={label_mode!r}{hint}")


def find_data_dir(path=None):
    """The directory holding ``train.bin`` and ``test.bin``, as a ``Path``.

    ``path`` (the directory itself or one containing ``cifar-100-binary``),
    else ``$PYNN_DATA/cifar-100-binary``, ``$PYNN_DATA/cifar100/cifar-100-binary``,
    ``$PYNN_DATA/cifar100``, ``$PYNN_DATA``, else ``/usr/share/datasets/cifar100``
    and its ``cifar-100-binary``.  Raises ``FileNotFoundError`` (where it
    looked, how to provide the files) when none holds them.
    """
    return _cifar.find_dir(SPEC, path)


def load_batch(path, label_mode="fine"):
    """One binary file as ``(x, y)``: uint8 ``(N, 32, 32, 3)`` and ``(N, 1)``."""
    return _cifar.load_batch(path, SPEC, _label_index(label_mode))


def load_data(label_mode="fine", path=None):
    """Loads CIFAR-100 from the local binary-version files.

    Returns ``((x_train, y_train), (x_test, y_test))`` like
    ``keras.datasets.cifar100.load_data(label_mode)``: uint8 images of shapes
    ``(50000, 32, 32, 3)`` and ``(10000, 32, 32, 3)`` (channels last,
    C-contiguous) and uint8 labels of shapes ``(50000, 1)`` and ``(10000, 1)``:
    the fine labels 0..99 with ``label_mode="fine"``, the coarse ones 0..19
    with ``"coarse"`` (anything else raises ``ValueError``).  The number of
    records per file is read from the file sizes.

    ``path`` is pynn's addition (keyword it: the first argument is
    ``label_mode``, as in Keras): a directory holding ``train.bin`` and
    ``test.bin``, or one containing ``cifar-100-binary``.  Without it see
    :func:`find_data_dir`; nothing is downloaded.

    Raises ``FileNotFoundError`` when the files are not found and
    :class:`CIFARError` (a :class:`pynn.data.IDXError`, hence ``ValueError``)
    when one is invalid: empty, not a whole number of 3074-byte records, or a
    coarse label out of 0..19 or fine label out of 0..99 (both are checked
    whatever ``label_mode``).
    """
    index = _label_index(label_mode)
    return _cifar.load(SPEC, find_data_dir(path), index)
