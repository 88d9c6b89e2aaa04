"""Callbacks as course scripts use them: a custom Callback subclass that
stops training, EarlyStopping, CSVLogger, LambdaCallback, class weights and
a generator as input.  Only the import differs from Keras."""
import os

import numpy as np
import pynn as keras

EPOCHS = int(os.environ.get("EPOCHS", "20"))  # the test runs a short epoch
OUT = os.environ.get("CKPT_DIR", ".")


class StopAtAccuracy(keras.callbacks.Callback):
    def __init__(self, target):
        super().__init__()
        self.target = target
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs.get("accuracy", 0) >= self.target:
            print(f"\nreached {self.target:.0%} accuracy, stopping")
            self.model.stop_training = True


(x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
x_train, x_test = x_train[..., None] / 255.0, x_test[..., None] / 255.0

model = keras.models.Sequential([
    keras.layers.Conv2D(16, 3, activation="relu", input_shape=(28, 28, 1)),
    keras.layers.MaxPooling2D(),
    keras.layers.Flatten(),
    keras.layers.Dense(64, activation="relu"),
    keras.layers.Dense(10, activation="softmax"),
])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
stopper = StopAtAccuracy(0.999)
log = []
callbacks = [
    stopper,
    keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True),
    keras.callbacks.CSVLogger(os.path.join(OUT, "training.csv")),
    keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: log.append(logs["loss"])),
]
class_weight = {c: 1.0 for c in range(10)}
class_weight[6] = 2.0  # "Shirt" is the hard class
model.fit(x_train, y_train, epochs=EPOCHS, batch_size=64, validation_split=0.1,
          class_weight=class_weight, callbacks=callbacks)
assert stopper.batches > 0 and len(log) >= 1


def batches(x, y, n):
    while True:
        for i in range(0, len(x) - n + 1, n):
            yield x[i:i + n], y[i:i + n]


model.fit(batches(x_train, y_train, 64), steps_per_epoch=len(x_train) // 64, epochs=1)
print(model.evaluate(x_test, y_test, return_dict=True))
