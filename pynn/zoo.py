"""The default models of `pynn train`."""
from . import layers, optimizers
from .models import Model, Sequential


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


def _conv_bn(x, filters, kernel_size=3, strides=1, activation="relu", batch_norm=True):
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                      kernel_initializer="he_normal")(x)
    if batch_norm:
        x = layers.BatchNormalization()(x)
    if activation is not None:
        x = layers.Activation(activation)(x)
    return x


def resnet20(input_shape=(32, 32, 3), num_classes=10):
    """ResNet-20 v1 for CIFAR (He et al. 2016; the keras.io CIFAR-10 ResNet
    example, depth 20): a 16-filter stem, 3 stages x 3 basic blocks of
    16/32/64 filters, strided 1x1 projection shortcuts (no batch norm) where
    the shape changes, global 8x8 average pooling, softmax.  274,442
    parameters as Keras counts them."""
    inputs = layers.Input(shape=input_shape)
    x = _conv_bn(inputs, 16)
    filters = 16
    for stage in range(3):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            y = _conv_bn(x, filters, strides=strides)
            y = _conv_bn(y, filters, activation=None)
            if strides != 1:
                x = _conv_bn(x, filters, kernel_size=1, strides=strides, activation=None,
                             batch_norm=False)
            x = layers.add([x, y])
            x = layers.Activation("relu")(x)
        filters *= 2
    x = layers.AveragePooling2D(pool_size=8)(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_initializer="he_normal")(x)
    return Model(inputs, outputs, name="resnet20")


MODELS = {"cnn": cnn, "mlp": mlp, "resnet20": resnet20}
DEFAULT_OPTIMIZER = {"cnn": ("sgd", 0.01), "mlp": ("adam", 0.001), "resnet20": ("sgd", 0.01)}


def make_optimizer(name, lr=None):
    name = name.lower()
    if name == "sgd":
        return optimizers.SGD(0.01 if lr is None else lr, momentum=0.9)
    cls = {"adam": optimizers.Adam, "rmsprop": optimizers.RMSprop,
           "adadelta": optimizers.Adadelta}.get(name)
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}: expected sgd, adam, rmsprop or adadelta")
    return cls() if lr is None else cls(learning_rate=lr)
