"""Writes the Keras-made fixtures of tests/test_keras_files.py (run with a
Keras 3 install, not needed by the tests):

    /work/tfvenv/bin/python tests/data/keras/make_fixtures.py   # Keras 3.15.1, TF 2.21

Small models (a few KB each) covering the layers pynn reads: a Sequential
CNN (Conv2D, MaxPooling2D, Dropout, Flatten, Dense), a functional
ResNet-style block (Conv2D, BatchNormalization, Activation, Add,
GlobalAveragePooling2D, Dense) and a Sequential nested in a functional model;
each as .keras (compiled and trained one step: compile config and optimizer
variables) and legacy .h5, plus cnn.weights.h5, an input batch and Keras'
predictions on it, and for res/nested the predictions after one more
training step on (x, y2) (predictions.npz).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import layers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)


def cnn():
    return keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(4, 3, activation="relu"),
                             layers.Conv2D(6, 3, activation="relu"), layers.MaxPooling2D(2),
                             layers.Dropout(0.25), layers.Flatten(),
                             layers.Dense(8, activation="relu"), layers.Dropout(0.5),
                             layers.Dense(3, activation="softmax")], name="cnn")


def res():
    i = keras.Input((6, 6, 3))
    x = layers.Conv2D(4, 3, padding="same")(i)
    x = layers.BatchNormalization()(x)
    y = layers.Activation("relu")(x)
    y = layers.Conv2D(4, 3, padding="same")(y)
    y = layers.BatchNormalization()(y)
    y = layers.add([x, y])
    y = layers.Activation("relu")(y)
    y = layers.GlobalAveragePooling2D()(y)
    return keras.Model(i, layers.Dense(3, activation="softmax")(y), name="res")


def nested():
    inner = keras.Sequential([keras.Input((5,)), layers.Dense(4, activation="tanh"),
                              layers.Dense(3)], name="inner")
    i = keras.Input((5,))
    return keras.Model(i, layers.Dense(2, activation="sigmoid")(inner(i)), name="outer")


preds = {}
for name, make, shape, opt in [("cnn", cnn, (8, 8, 1), keras.optimizers.SGD(0.01, momentum=0.9)),
                                ("res", res, (6, 6, 3), keras.optimizers.Adam(1e-3)),
                                ("nested", nested, (5,), keras.optimizers.RMSprop(1e-3))]:
    m = make()
    m.compile(optimizer=opt, loss="sparse_categorical_crossentropy" if name != "nested" else "mse",
              metrics=["accuracy"] if name != "nested" else None)
    x = rng.random((4,) + shape, dtype=np.float32)
    y = rng.integers(0, 3, 4) if name != "nested" else rng.random((4, 2), dtype=np.float32)
    m.fit(x, y, epochs=1, batch_size=4, verbose=0)
    m.save(os.path.join(HERE, f"{name}.keras"))
    m.save(os.path.join(HERE, f"{name}.h5"))
    if name == "cnn":
        m.save_weights(os.path.join(HERE, f"{name}.weights.h5"))
    preds[f"{name}_x"] = x
    preds[f"{name}_y"] = m.predict(x, verbose=0)
    if name != "cnn":      # one more step (no dropout): shows the optimizer state was kept
        y2 = np.array([0, 1, 2, 1]) if name == "res" else \
            np.linspace(0, 1, 8, dtype=np.float32).reshape(4, 2)
        m.fit(x, y2, batch_size=4, epochs=1, shuffle=False, verbose=0)
        preds[f"{name}_y2"] = y2
        preds[f"{name}_next"] = m.predict(x, verbose=0)
np.savez(os.path.join(HERE, "predictions.npz"), **preds)
print("keras", keras.__version__, "->", sorted(os.listdir(HERE)))
