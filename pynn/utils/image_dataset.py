"""keras.utils.image_dataset_from_directory: a folder of images as a
PyDataset of batches (Pillow decodes; an optional dependency).

Keras' rules: with ``labels="inferred"`` every subfolder of ``directory`` is
a class (in alphanumeric order, or the order of ``class_names``) and its
images (``.bmp .gif .jpeg .jpg .png``, subfolders included) are its
samples; the file list is shuffled once with ``seed`` (when ``shuffle``)
before ``validation_split`` takes its last fraction for the "validation"
subset.  Images are converted to ``color_mode``, resized to ``image_size``
(height, width) and returned as float32 0..255 (no rescaling).  Each
epoch, ``fit(shuffle=True)`` shuffles the order of the batches; the images
inside a batch keep the once-shuffled order (Keras reshuffles images with a
tf.data buffer; this keeps every batch reproducible, so a resumed run is
exact).  Resizing is Pillow's: with ``bilinear``, shrinking is antialiased
(tf.image.resize is not), so pixel values may differ slightly from Keras'.
"""
import os

import numpy as np

from ..data_adapters import PyDataset

ALLOWED_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
_CHANNELS = {"grayscale": ("L", 1), "rgb": ("RGB", 3), "rgba": ("RGBA", 4)}
_UNSUPPORTED_INTERP = ("lanczos5", "gaussian", "mitchellcubic")


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("image_dataset_from_directory needs Pillow to decode images: "
                          "pip install pillow") from None
    return Image


def _resample(Image, interpolation):
    table = {"bilinear": "BILINEAR", "nearest": "NEAREST", "bicubic": "BICUBIC", "area": "BOX",
             "lanczos3": "LANCZOS"}
    if interpolation in _UNSUPPORTED_INTERP:
        raise NotImplementedError(f"interpolation={interpolation!r} is not supported; use one of "
                                  f"{sorted(table)}")
    if interpolation not in table:
        raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {sorted(table)}")
    res = getattr(Image, "Resampling", Image)
    return getattr(res, table[interpolation])


def _image_files(folder, follow_links):
    out = []
    for root, dirs, files in os.walk(folder, followlinks=follow_links):
        dirs.sort()
        out.extend(os.path.join(root, f) for f in sorted(files)
                   if f.lower().endswith(ALLOWED_FORMATS))
    return out


def _index_directory(directory, labels, class_names, follow_links):
    """(file paths, integer labels or None, class names)."""
    if labels == "inferred":
        subdirs = sorted(d for d in os.listdir(directory)
                         if os.path.isdir(os.path.join(directory, d)))
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if sorted(class_names) != subdirs:
                raise ValueError(f"class_names {class_names} must list exactly the subfolders of "
                                 f"{directory}: {subdirs}")
        else:
            class_names = subdirs
        paths, ids = [], []
        for i, c in enumerate(class_names):
            files = _image_files(os.path.join(directory, c), follow_links)
            paths += files
            ids += [i] * len(files)
        return paths, np.asarray(ids, dtype=np.int32), class_names
    if class_names is not None:
        raise ValueError("class_names can only be given with labels='inferred'")
    paths = _image_files(directory, follow_links)
    if labels is None:
        return paths, None, None
    ids = np.asarray(labels)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError("labels must be 'inferred', None, or a list of integer labels, one per "
                         "image file in alphanumeric order")
    if len(ids) != len(paths):
        raise ValueError(f"labels has {len(ids)} entries but {directory} has {len(paths)} image "
                         "files")
    if len(ids) and ids.min() < 0:
        raise ValueError("labels must be >= 0")
    return paths, ids.astype(np.int32), None


class ImageDirectoryDataset(PyDataset):
    """The batches of image_dataset_from_directory: ``(images, labels)`` or
    ``images`` (label_mode=None); ``class_names``, ``file_paths``."""

    def __init__(self, file_paths, labels, class_names, num_classes, label_mode, color_mode,
                 batch_size, image_size, interpolation):
        super().__init__()
        self.file_paths = list(file_paths)
        self._labels = labels
        self.class_names = class_names
        self.num_classes = num_classes
        self.label_mode = label_mode
        self.color_mode = color_mode
        self.batch_size = batch_size
        self.image_size = image_size
        self.interpolation = interpolation
        self._Image = _pil()
        self._resample = _resample(self._Image, interpolation)

    def __len__(self):
        return -(-len(self.file_paths) // self.batch_size)

    def load_image(self, path):
        mode, ch = _CHANNELS[self.color_mode]
        with self._Image.open(path) as img:
            img = img.convert(mode)
            h, w = self.image_size
            if img.size != (w, h):
                img = img.resize((w, h), self._resample)
            a = np.asarray(img, dtype=np.float32)
        return a.reshape(h, w, ch)

    def __getitem__(self, index):
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"batch {index} out of range ({n} batches)")
        index %= n
        lo, hi = index * self.batch_size, min((index + 1) * self.batch_size, len(self.file_paths))
        x = np.stack([self.load_image(p) for p in self.file_paths[lo:hi]])
        if self.label_mode is None:
            return x
        ids = self._labels[lo:hi]
        if self.label_mode == "int":
            y = ids.astype(np.int32)
        elif self.label_mode == "binary":
            y = ids.astype(np.float32).reshape(-1, 1)
        else:
            y = np.eye(self.num_classes, dtype=np.float32)[ids]
        return x, y


def image_dataset_from_directory(directory, labels="inferred", label_mode="int", class_names=None,
                                 color_mode="rgb", batch_size=32, image_size=(256, 256),
                                 shuffle=True, seed=None, validation_split=None, subset=None,
                                 interpolation="bilinear", follow_links=False,
                                 crop_to_aspect_ratio=False, pad_to_aspect_ratio=False,
                                 data_format=None, verbose=True):
    """A PyDataset of ``(images, labels)`` batches from a folder (see the
    module docstring); ``subset="both"`` returns (training, validation)."""
    _pil()
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"directory {directory!r} does not exist or is not a folder")
    if not (labels in ("inferred", None) or isinstance(labels, (list, tuple, np.ndarray))):
        raise ValueError(f"labels must be 'inferred', None or a list of labels, got {labels!r}")
    if label_mode not in ("int", "categorical", "binary", None):
        raise ValueError(f"label_mode must be 'int', 'categorical', 'binary' or None, got "
                         f"{label_mode!r}")
    if labels is None:
        label_mode = None
    if color_mode not in _CHANNELS:
        raise ValueError(f"color_mode must be one of {sorted(_CHANNELS)}, got {color_mode!r}")
    if batch_size is None:
        raise NotImplementedError("batch_size=None (single images) is not supported: give a "
                                  "batch size (fit takes batches)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    image_size = tuple(int(s) for s in image_size)
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"image_size must be (height, width) of positive ints, got {image_size}")
    for nm, v in (("crop_to_aspect_ratio", crop_to_aspect_ratio),
                  ("pad_to_aspect_ratio", pad_to_aspect_ratio)):
        if v:
            raise NotImplementedError(f"{nm}=True is not supported: images are resized to "
                                      "image_size (the aspect ratio may change)")
    if data_format not in (None, "channels_last"):
        raise NotImplementedError(f"data_format={data_format!r}: pynn is channels_last only")
    if validation_split is not None:
        if not 0 < validation_split < 1:
            raise ValueError(f"validation_split must be in (0, 1), got {validation_split}")
        if subset not in ("training", "validation", "both"):
            raise ValueError("with validation_split, give subset='training', 'validation' or "
                             f"'both', got {subset!r}")
        if shuffle and seed is None:
            raise ValueError("with validation_split and shuffle, give a seed so that the training "
                             "and validation subsets do not overlap")
    elif subset is not None:
        raise ValueError("subset needs validation_split")
    _resample(_pil(), interpolation)          # checks the name early

    paths, ids, class_names = _index_directory(directory, labels, class_names, follow_links)
    num_classes = (len(class_names) if class_names is not None
                   else (int(ids.max()) + 1 if ids is not None and len(ids) else 0))
    if label_mode == "binary" and num_classes != 2:
        raise ValueError(f"label_mode='binary' needs exactly 2 classes, found {num_classes}")
    if not paths:
        raise ValueError(f"no images found in {directory} (allowed formats: {ALLOWED_FORMATS})")
    if verbose:
        print(f"Found {len(paths)} files" + (f" belonging to {num_classes} classes."
                                             if ids is not None else "."))
    if shuffle:
        order = np.random.RandomState(np.random.randint(10**6) if seed is None else seed) \
            .permutation(len(paths))
        paths = [paths[i] for i in order]
        ids = None if ids is None else ids[order]

    def make(lo, hi, what):
        if hi <= lo:
            raise ValueError(f"validation_split={validation_split} leaves the {what} subset empty")
        if verbose and what:
            print(f"Using {hi - lo} files for {what}.")
        return ImageDirectoryDataset(paths[lo:hi], None if ids is None else ids[lo:hi],
                                     class_names, num_classes, label_mode, color_mode, batch_size,
                                     image_size, interpolation)
    n = len(paths)
    if validation_split is None:
        return make(0, n, "")
    k = n - int(validation_split * n)
    if subset == "training":
        return make(0, k, "training")
    if subset == "validation":
        return make(k, n, "validation")
    return make(0, k, "training"), make(k, n, "validation")
