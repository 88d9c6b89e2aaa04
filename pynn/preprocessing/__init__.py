"""keras.preprocessing: ``pynn.preprocessing.image.ImageDataGenerator``
(the legacy Keras API, ``from keras.preprocessing.image import
ImageDataGenerator``)."""
from . import image

__all__ = ["image"]
