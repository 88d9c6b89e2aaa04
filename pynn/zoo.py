"""The default models of `pynn train`."""
from . import layers, optimizers
from .model import Sequential


def cnn(input_shape=(28, 28, 1), num_classes=10):
    """The classic Keras MNIST CNN (1,199,882 parameters on 28x28x1)."""
    return Sequential([
        layers.Conv2D(32, (3, 3), activation="relu", input_shape=input_shape),
        layers.Conv2D(64, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Dropout(0.25),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ], name="cnn")


def mlp(input_dim=784, num_classes=10):
    """Dense 512-512-10 (669,706 parameters on 784 inputs)."""
    return Sequential([
        layers.Dense(512, activation="relu", input_shape=(input_dim,)),
        layers.Dense(512, activation="relu"),
        layers.Dense(num_classes, activation="softmax"),
    ], name="mlp")


MODELS = {"cnn": cnn, "mlp": mlp}
DEFAULT_OPTIMIZER = {"cnn": ("sgd", 0.01), "mlp": ("adam", 0.001)}


def make_optimizer(name, lr=None):
    name = name.lower()
    if name == "sgd":
        return optimizers.SGD(0.01 if lr is None else lr, momentum=0.9)
    cls = {"adam": optimizers.Adam, "rmsprop": optimizers.RMSprop,
           "adadelta": optimizers.Adadelta}.get(name)
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}: expected sgd, adam, rmsprop or adadelta")
    return cls() if lr is None else cls(learning_rate=lr)
