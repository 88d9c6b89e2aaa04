"""pynn's Keras files checked against a real Keras 3 (not a test: Keras is
not a dependency).  Two steps, two Pythons:

    python bench/keras_compat.py write DIR          # pynn: models, inputs, predictions
    /path/to/keras/python bench/keras_compat.py check DIR   # Keras 3: load, predict, train

``write`` trains the default CNN (SGD, momentum) and pynn.zoo.resnet20()
(Adam) one step on random data and saves each as .keras, .h5 and
.weights.h5 with an input batch and pynn's predictions; ``check`` loads
every file with keras.saving.load_model (weights into a Keras-built model
for .weights.h5), prints the max abs difference to pynn's predictions, and
fits one more step (Keras keeps training from the loaded optimizer).
"""
import os
import sys


def write(d):
    import numpy as np
    import pynn
    os.makedirs(d, exist_ok=True)
    pynn.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    for name, make, shape, opt in (("cnn", pynn.zoo.cnn, (28, 28, 1), pynn.optimizers.SGD(0.01, momentum=0.9)),
                                   ("resnet20", pynn.zoo.resnet20, (32, 32, 3), pynn.optimizers.Adam())):
        m = make()
        m.compile(opt, "sparse_categorical_crossentropy", metrics=["accuracy"])
        x = rng.random((16,) + shape, dtype=np.float32)
        m.fit(x, rng.integers(0, 10, 16), batch_size=8, epochs=1, verbose=0)
        for ext in (".keras", ".h5"):
            m.save(os.path.join(d, name + ext))
        m.save_weights(os.path.join(d, name + ".weights.h5"))
        np.save(os.path.join(d, name + "_x.npy"), x)
        np.save(os.path.join(d, name + "_y.npy"), m.predict(x, verbose=0))
        print(f"pynn wrote {name}: .keras .h5 .weights.h5")


def check(d):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import keras
    print("keras", keras.__version__)
    for name in ("cnn", "resnet20"):
        x, y = np.load(os.path.join(d, name + "_x.npy")), np.load(os.path.join(d, name + "_y.npy"))
        for ext in (".keras", ".h5"):
            m = keras.saving.load_model(os.path.join(d, name + ext))
            diff = float(np.abs(m.predict(x, verbose=0) - y).max())
            o = m.optimizer
            it = int(o.iterations)
            m.fit(x, np.zeros(len(x), int), batch_size=8, epochs=1, verbose=0)
            print(f"{name}{ext}: max abs diff {diff:.3g}; optimizer {type(o).__name__} at "
                  f"iteration {it}, {len(o.variables)} variables; fit one more epoch -> "
                  f"iteration {int(o.iterations)}")
        m2 = keras.models.clone_model(m)
        m2.load_weights(os.path.join(d, name + ".weights.h5"))
        print(f"{name}.weights.h5: max abs diff "
              f"{float(np.abs(m2.predict(x, verbose=0) - y).max()):.3g}")


if __name__ == "__main__":
    {"write": write, "check": check}[sys.argv[1]](sys.argv[2])
